"""Tor v3 onion addresses (rend-spec-v3 section 6, "Encoding onion addresses").

An address is ``base32(PUBKEY | CHECKSUM | VERSION) + ".onion"`` where PUBKEY is
the service's 32-byte ed25519 identity key, VERSION is the single byte 0x03 and
CHECKSUM is the first two bytes of ``SHA3-256(".onion checksum" | PUBKEY | VERSION)``.

Decisions (documented because callers rely on them):

* Decoding accepts the address with or without the ``.onion`` suffix and in any
  letter case (DNS names are case-insensitive); encoding always returns lowercase.
* Anything around the 56 base32 characters is rejected with an ``AddressError``:
  surrounding whitespace, a trailing dot, a doubled ``.onion.onion`` suffix and
  subdomains such as ``www.<addr>.onion``. A balancer is configured with a
  service's bare address; silently stripping labels would hide config mistakes.
* Decoding checks the *format* (length, alphabet, version, checksum). With
  ``check_key=True`` it also requires the key to be a canonical ed25519 point in the
  prime-order subgroup, as tor's client-side ``hs_address_is_valid`` does (an address
  whose key has a torsion component is an alias of another address). The default is
  format-only because tests and simulations use arbitrary 32-byte keys; a key that is
  not a valid point is still rejected later, with a ``BlindingError``, by ``blinding``.
"""

from __future__ import annotations

import base64
import hashlib

import nacl.bindings

from onionmesh.errors import OnionmeshError

ONION_SUFFIX = ".onion"
ADDRESS_VERSION = 3
ADDRESS_LENGTH = 56  # base32 characters without the suffix: 35 bytes * 8 / 5
_CHECKSUM_PREFIX = b".onion checksum"
_BASE32_ALPHABET = frozenset("abcdefghijklmnopqrstuvwxyz234567")


class AddressError(OnionmeshError):
    """A string is not a valid v3 onion address; the message says which part is wrong."""


def _checksum(public_key: bytes, version: int) -> bytes:
    digest = hashlib.sha3_256(_CHECKSUM_PREFIX + public_key + bytes([version])).digest()
    return digest[:2]


def encode_onion_address(public_key: bytes) -> str:
    """Return ``"<56 lowercase base32 chars>.onion"`` for a 32-byte ed25519 public key."""
    if not isinstance(public_key, bytes | bytearray) or len(public_key) != 32:
        raise AddressError("public key must be 32 bytes")
    public_key = bytes(public_key)
    raw = public_key + _checksum(public_key, ADDRESS_VERSION) + bytes([ADDRESS_VERSION])
    return base64.b32encode(raw).decode("ascii").lower() + ONION_SUFFIX


def decode_onion_address(address: str, *, check_key: bool = False) -> bytes:
    """Return the 32-byte ed25519 public key named by a v3 onion address.

    Raises ``AddressError`` naming the problem: type, suffix/subdomain, length,
    alphabet, version, checksum, or (with ``check_key``) an invalid public key.
    """
    if not isinstance(address, str):
        raise AddressError(f"onion address must be a string, not {type(address).__name__}")
    if not address.isascii():
        # Checked before lower(): some non-ASCII letters (e.g. the Kelvin sign) lowercase
        # to ASCII and would otherwise sneak through as base32.
        raise AddressError("onion address contains non-ASCII characters (outside base32)")
    label = address.lower()
    if label.endswith(ONION_SUFFIX):
        label = label[: -len(ONION_SUFFIX)]
    if "." in label:
        # Covers ".onion.onion", "www.<addr>.onion", trailing dots and v2-style names.
        raise AddressError(
            "onion address has an unexpected suffix or subdomain: "
            "expected '<56 base32 characters>' optionally followed by '.onion'"
        )
    if len(label) != ADDRESS_LENGTH:
        raise AddressError(
            f"onion address must have {ADDRESS_LENGTH} base32 characters, got {len(label)}"
        )
    bad = sorted({ch for ch in label if ch not in _BASE32_ALPHABET})
    if bad:
        shown = ", ".join(repr(ch) for ch in bad[:5])
        raise AddressError(f"onion address contains characters outside base32: {shown}")
    raw = base64.b32decode(label.upper())  # cannot fail: length and alphabet are checked
    public_key, checksum, version = raw[:32], raw[32:34], raw[34]
    if version != ADDRESS_VERSION:
        raise AddressError(f"onion address has version {version}, expected {ADDRESS_VERSION}")
    if checksum != _checksum(public_key, version):
        raise AddressError("onion address checksum does not match (mistyped address?)")
    if check_key and not is_valid_public_key(public_key):
        raise AddressError("onion address does not contain a valid ed25519 public key")
    return public_key


def is_valid_public_key(public_key: bytes) -> bool:
    """True if ``public_key`` is a canonical ed25519 point of prime order (no torsion)."""
    return (isinstance(public_key, bytes | bytearray) and len(public_key) == 32
            and bool(nacl.bindings.crypto_core_ed25519_is_valid_point(bytes(public_key))))


def is_valid_onion_address(address: object, *, check_key: bool = False) -> bool:
    """True if ``decode_onion_address`` would accept ``address``."""
    try:
        decode_onion_address(address, check_key=check_key)  # type: ignore[arg-type]
    except AddressError:
        return False
    return True


def normalize_onion_address(address: str) -> str:
    """Return the canonical lowercase ``<addr>.onion`` form, validating it first."""
    return encode_onion_address(decode_onion_address(address))
