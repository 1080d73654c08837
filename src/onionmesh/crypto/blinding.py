"""Key blinding for v3 onion services (rend-spec-v3 appendix A.2, [KEYBLIND]).

For each time period a service publishes its descriptor under a *blinded* key:

    N  = "key-blind" | INT_8(period_number) | INT_8(period_length)
    h  = clamp(SHA3-256(BLIND_STRING | A | B | N))      (the optional secret s is empty)
    A' = h * A
    a' = h * a mod l
    prefix' = SHA-512("Derive temporary signing key hash input" | prefix)[:32]

where ``BLIND_STRING = "Derive temporary signing key" | INT_1(0)``, ``B`` is the
ed25519 base point written as its decimal coordinates, and ``period_length`` is
in minutes (1440 on the live network).

Why PyNaCl's low-level libsodium bindings: both ``A' = h*A`` (a point times an
arbitrary scalar, no clamping applied by the library) and ``a' = h*a mod l`` need
scalar and point arithmetic, which ``cryptography`` does not expose at all. The
libsodium routines are constant-time and about 40 times faster than stem's
pure-Python big-integer code (blinding costs about 0.2 ms per descriptor here:
bench/RESULTS.md, descriptor build breakdown).

Signing with ``a'`` derives each nonce from a *secret* prefix (see
``ed25519.sign_expanded``); it is never constant or public. Tor uses ``prefix'``
itself, which is the same in every period while ``a'`` changes; the same message
signed in two periods would then share its nonce, and since every ``a' = h * a``
with a public ``h``, two such signatures give away the master scalar ``a``. So we
sign with a nonce prefix derived per period from ``prefix'`` (``BlindedKey``);
``expanded_secret`` stays tor's ``a' || prefix'`` because the revision-counter OPE
key is derived from it and must match what any other publisher computes.
"""

from __future__ import annotations

import hashlib
import hmac

import nacl.bindings as sodium
import nacl.exceptions

from onionmesh.crypto import ed25519
from onionmesh.crypto.keys import Ed25519Identity
from onionmesh.errors import OnionmeshError

BLIND_STRING = b"Derive temporary signing key\x00"
NONCE_PREFIX_STRING = b"onionmesh blinded-key nonce prefix per period\x00"
PREFIX_STRING = b"Derive temporary signing key hash input"
# The base point as rend-spec writes it: "(x, y)" with decimal coordinates.
BASEPOINT_STRING = (
    b"(15112221349535400772501151409588531511454012693041857206046113283949847762202, "
    b"46316835694926478169428394003475163141307993866256225615783033603165251855960)"
)
_MAX_UINT64 = 2**64 - 1


class BlindingError(OnionmeshError):
    """Bad input to key blinding (wrong length key, invalid point, out-of-range period)."""


def _check_period(period_number: int, period_length: int) -> None:
    for name, value in (("period_number", period_number), ("period_length", period_length)):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_UINT64:
            raise BlindingError(f"{name} must be an integer in [0, 2**64)")


def blinding_factor(public_key: bytes, period_number: int, period_length: int) -> bytes:
    """The clamped 32-byte blinding factor ``h`` for ``public_key`` and a time period."""
    if not isinstance(public_key, bytes | bytearray) or len(public_key) != 32:
        raise BlindingError("public key must be 32 bytes")
    _check_period(period_number, period_length)
    nonce = (b"key-blind" + period_number.to_bytes(8, "big")
             + period_length.to_bytes(8, "big"))
    digest = hashlib.sha3_256(BLIND_STRING + bytes(public_key) + BASEPOINT_STRING
                              + nonce).digest()
    return ed25519.clamp_scalar(digest)


def blind_public_key_with_factor(public_key: bytes, factor: bytes) -> bytes:
    """``clamp(factor) * A``: tor's ``ed25519_public_blind`` for a raw 32-byte parameter."""
    if not isinstance(public_key, bytes | bytearray) or len(public_key) != 32:
        raise BlindingError("public key must be 32 bytes")
    if len(factor) != 32:
        raise BlindingError("blinding factor must be 32 bytes")
    try:
        return sodium.crypto_scalarmult_ed25519_noclamp(ed25519.clamp_scalar(factor),
                                                        bytes(public_key))
    except nacl.exceptions.RuntimeError as exc:
        # libsodium refuses non-canonical, small-order and off-subgroup points.
        raise BlindingError("public key is not a valid ed25519 point") from exc


def blind_public_key(public_key: bytes, period_number: int, period_length: int) -> bytes:
    """The 32-byte blinded public key ``A' = h * A``."""
    factor = blinding_factor(public_key, period_number, period_length)
    return blind_public_key_with_factor(public_key, factor)


class BlindedKey:
    """A blinded signing key for one time period; satisfies ``certs.Signer``.

    ``expanded_secret`` is ``a' || prefix'`` (64 bytes, secret; tor keys its
    revision-counter OPE with ``a'``). It never appears in the repr.
    """

    __slots__ = ("_nonce_prefix", "expanded_secret", "period_length", "period_number",
                 "public_key")

    public_key: bytes
    expanded_secret: bytes
    period_number: int
    period_length: int

    def __init__(self, public_key: bytes, expanded_secret: bytes, period_number: int,
                 period_length: int) -> None:
        if len(public_key) != 32 or len(expanded_secret) != 64:
            raise BlindingError("blinded key needs a 32-byte public key and 64-byte secret")
        self.public_key = bytes(public_key)
        self.expanded_secret = bytes(expanded_secret)
        self.period_number = period_number
        self.period_length = period_length
        self._nonce_prefix = period_nonce_prefix(self.expanded_secret[32:], period_number,
                                                 period_length)

    def sign(self, message: bytes) -> bytes:
        """Ed25519 signature valid under ``public_key``; nonce from this period's prefix."""
        return ed25519.sign_expanded(self.expanded_secret[:32], self._nonce_prefix,
                                     self.public_key, message)

    def __repr__(self) -> str:
        return (f"BlindedKey(public_key={self.public_key.hex()!r}, "
                f"period_number={self.period_number}, period_length={self.period_length})")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, BlindedKey):
            return NotImplemented
        return hmac.compare_digest(self.expanded_secret, other.expanded_secret)

    def __hash__(self) -> int:
        return hash(self.public_key)


def blind_expanded_secret(expanded: bytes, factor: bytes) -> bytes:
    """``a' || prefix'`` from an expanded secret ``a || prefix`` and a blinding factor.

    The factor is clamped first (a no-op for ``blinding_factor``'s output), as tor's
    ``ed25519_secret_key_blind`` does with its raw parameter.
    """
    if len(expanded) != 64 or len(factor) != 32:
        raise BlindingError("need a 64-byte expanded secret and a 32-byte blinding factor")
    clamped = ed25519.clamp_scalar(factor)
    scalar = sodium.crypto_core_ed25519_scalar_mul(ed25519.reduce_scalar(expanded[:32]),
                                                   ed25519.reduce_scalar(clamped))
    prefix = hashlib.sha512(PREFIX_STRING + expanded[32:]).digest()[:32]
    return scalar + prefix


def period_nonce_prefix(blinded_prefix: bytes, period_number: int, period_length: int) -> bytes:
    """The secret nonce prefix for one period: never shared by two periods' keys."""
    _check_period(period_number, period_length)
    return hashlib.sha512(
        NONCE_PREFIX_STRING + blinded_prefix + period_number.to_bytes(8, "big")
        + period_length.to_bytes(8, "big")
    ).digest()[:32]


def blind_identity(identity: Ed25519Identity, period_number: int,
                   period_length: int) -> BlindedKey:
    """Blind ``identity`` for a time period (``period_length`` in minutes)."""
    factor = blinding_factor(identity.public_key, period_number, period_length)
    public_key = blind_public_key_with_factor(identity.public_key, factor)
    secret = blind_expanded_secret(identity.expanded, factor)
    # Cheap self-check: a' * B must equal h * A, or the signatures would be invalid.
    if ed25519.public_key_from_scalar(secret[:32]) != public_key:
        raise BlindingError("blinded secret and public key disagree")
    return BlindedKey(public_key, secret, period_number, period_length)
