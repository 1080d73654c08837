"""Ed25519 with *expanded* secret keys (scalar ``a`` || nonce prefix), on libsodium.

Tor stores onion-service identity keys in expanded form and derives blinded keys
(rend-spec-v3 [KEYBLIND]) whose scalar is not the hash of any seed, so neither
``cryptography`` nor PyNaCl's high-level ``SigningKey`` can sign with them: both
want an RFC 8032 seed. ``cryptography`` exposes no scalar or point arithmetic at
all, so this module uses PyNaCl's thin libsodium bindings
(``crypto_core_ed25519_scalar_*`` and ``crypto_scalarmult_ed25519_base_noclamp``)
to run the RFC 8032 signing equation on an expanded key. Verification needs
nothing special and uses ``cryptography``.

Nonce safety: ``r = SHA-512(prefix | M) mod l`` with the key's *secret* 32-byte
prefix. A constant or public prefix makes ``r`` computable by anyone and leaks
the secret scalar from a single signature (GoBalance's key-leak bug), so the
prefix length is checked and never replaced by a default.
"""

from __future__ import annotations

import hashlib

import nacl.bindings as sodium
import nacl.exceptions
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from onionmesh.errors import OnionmeshError

#: Order of the prime-order subgroup of edwards25519.
GROUP_ORDER = 2**252 + 27742317777372353535851937790883648493


class Ed25519Error(OnionmeshError):
    """An ed25519 scalar, prefix or point is malformed (message never holds key bytes)."""


def clamp_scalar(scalar: bytes) -> bytes:
    """Apply RFC 8032 clamping to a 32-byte little-endian scalar."""
    b = bytearray(scalar)
    b[0] &= 248
    b[31] &= 63
    b[31] |= 64
    return bytes(b)


def is_clamped(scalar: bytes) -> bool:
    """True if the low three bits are clear, bit 255 clear and bit 254 set."""
    return len(scalar) == 32 and scalar[0] & 7 == 0 and scalar[31] & 0xC0 == 0x40


def reduce_scalar(value: bytes) -> bytes:
    """Reduce a little-endian integer of at most 64 bytes modulo the group order."""
    if len(value) > 64:
        raise Ed25519Error("scalar input longer than 64 bytes")
    return sodium.crypto_core_ed25519_scalar_reduce(value.ljust(64, b"\0"))


def expand_seed(seed: bytes) -> bytes:
    """RFC 8032 key expansion: clamp(SHA-512(seed)[:32]) || SHA-512(seed)[32:]."""
    if len(seed) != 32:
        raise Ed25519Error("ed25519 seed must be 32 bytes")
    digest = hashlib.sha512(seed).digest()
    return clamp_scalar(digest[:32]) + digest[32:]


def public_key_from_scalar(scalar: bytes) -> bytes:
    """Return ``scalar * B`` encoded (``scalar`` must be below 2**255 and nonzero mod l)."""
    if len(scalar) != 32 or scalar[31] & 0x80:
        raise Ed25519Error("ed25519 scalar must be 32 bytes below 2**255")
    try:
        return sodium.crypto_scalarmult_ed25519_base_noclamp(scalar)
    except nacl.exceptions.RuntimeError as exc:  # zero scalar: the identity point
        raise Ed25519Error("ed25519 scalar is zero modulo the group order") from exc


def sign_expanded(scalar: bytes, prefix: bytes, public_key: bytes, message: bytes) -> bytes:
    """RFC 8032 Ed25519 signature with an expanded key ``(scalar, prefix)``.

    ``public_key`` must be ``scalar * B``; callers derive it once and cache it.
    """
    if len(scalar) != 32 or len(prefix) != 32 or len(public_key) != 32:
        raise Ed25519Error("expanded key needs a 32-byte scalar, prefix and public key")
    message = bytes(message)
    r = reduce_scalar(hashlib.sha512(prefix + message).digest())
    big_r = sodium.crypto_scalarmult_ed25519_base_noclamp(r)
    k = reduce_scalar(hashlib.sha512(big_r + public_key + message).digest())
    # scalar_mul reduces its result; reduce the (possibly unreduced, clamped) scalar first
    # so the product is computed on canonical inputs.
    s = sodium.crypto_core_ed25519_scalar_add(
        sodium.crypto_core_ed25519_scalar_mul(k, reduce_scalar(scalar)), r
    )
    return big_r + s


def verify_signature(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """True if ``signature`` is a valid Ed25519 signature of ``message`` by ``public_key``.

    Never raises for malformed input: a wrong-length key or signature is simply invalid.
    """
    if not isinstance(public_key, bytes | bytearray) or len(public_key) != 32:
        return False
    if not isinstance(signature, bytes | bytearray) or len(signature) != 64:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(bytes(public_key)).verify(
            bytes(signature), bytes(message)
        )
    except (InvalidSignature, ValueError):
        return False
    return True
