"""Tor's order-preserving revision counters (rend-spec-v3 [REV-COUNTER], tor crypto_ope.c).

tor sets a descriptor's revision counter to OPE(seconds since the start of
the SRV protocol run the descriptor is placed with, plus one), where

* the OPE key is SHA3-256("rev-counter-generation\\0" | blinded secret key),
  the prefix WITH its terminating NUL (tor hashes ``sizeof`` the C string)
  and all 64 bytes of the expanded blinded secret key (a' || prefix'),
  hs_service.c ``generate_ope_cipher_for_desc``;
* OPE(n) = sum over the first n little-endian uint16 words of the AES-256-CTR
  keystream (zero IV) of (word + 1), for 1 <= n <= 2**18;
* tor clamps n to 2**18 (about 73 h), so counters stop growing after that.

Using tor's exact keying means a master address that tor served before
keeps monotonic counters when onionmesh takes over, and every node of the
cluster computes the same counter for the same second.

The sum is computed in bulk: one AES-CTR call over 2n zero bytes, never one
cipher call per second. The words are summed as sum(low bytes) + 256 *
sum(high bytes), each byte plane summed by zlib's adler32 in 256-byte chunks:
adler32's first half is 1 + the byte sum modulo 65521, and 256 bytes sum to
at most 65280, so no reduction ever happens and the result is exact. This is
about 5x faster than summing an array of words. ``cryptography`` provides
AES-CTR; nothing maintained provides this OPE, hence this module.
"""

from __future__ import annotations

import hashlib
import zlib
from typing import Protocol

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from onionmesh.hsdir.errors import RevisionCounterError

__all__ = [
    "OPE_INPUT_MAX",
    "HasExpandedSecret",
    "ope_encrypt",
    "ope_key",
    "revision_counter",
    "revision_counter_from_secret",
    "revision_plaintext",
]

# crypto_ope.h OPE_INPUT_MAX.
OPE_INPUT_MAX = 1 << 18
_KEY_PREFIX = b"rev-counter-generation\x00"
_ZERO_IV = bytes(16)
# 256 bytes of 0xff sum to 65280 < 65521 (adler32's modulus): exact chunk sums.
_ADLER_CHUNK = 256


class HasExpandedSecret(Protocol):
    """Anything holding a 64-byte expanded blinded secret key (crypto.BlindedKey does)."""

    @property
    def expanded_secret(self) -> bytes: ...


def ope_key(expanded_secret: bytes) -> bytes:
    """The 32-byte OPE key tor derives from a 64-byte expanded blinded secret key."""
    if not isinstance(expanded_secret, bytes | bytearray) or len(expanded_secret) != 64:
        raise RevisionCounterError("the blinded secret key must be 64 bytes (a' || prefix')")
    return hashlib.sha3_256(_KEY_PREFIX + bytes(expanded_secret)).digest()


def ope_encrypt(key: bytes, plaintext: int) -> int:
    """tor's crypto_ope_encrypt: sum of the first ``plaintext`` keystream words, each + 1."""
    if not isinstance(key, bytes | bytearray) or len(key) != 32:
        raise RevisionCounterError("the OPE key must be 32 bytes")
    if not isinstance(plaintext, int) or not 1 <= plaintext <= OPE_INPUT_MAX:
        raise RevisionCounterError(f"OPE plaintext must be in 1..{OPE_INPUT_MAX}")
    encryptor = Cipher(algorithms.AES(bytes(key)), modes.CTR(_ZERO_IV)).encryptor()
    keystream = encryptor.update(bytes(2 * plaintext)) + encryptor.finalize()
    # Little-endian words: low bytes at even offsets, high bytes at odd ones.
    return _byte_sum(keystream[0::2]) + 256 * _byte_sum(keystream[1::2]) + plaintext


def _byte_sum(data: bytes) -> int:
    """Exact sum of the bytes of ``data``, at C speed (see the module docstring)."""
    view = memoryview(data)
    return sum(
        (zlib.adler32(view[i : i + _ADLER_CHUNK]) & 0xFFFF) - 1
        for i in range(0, len(data), _ADLER_CHUNK)
    )


def revision_plaintext(srv_start: int, now: float) -> int:
    """Seconds since ``srv_start`` plus one, clamped to OPE_INPUT_MAX as tor does."""
    seconds = int(now) - int(srv_start) + 1
    if seconds < 1:
        raise RevisionCounterError(
            f"now ({int(now)}) is before the start of the SRV run ({int(srv_start)})"
        )
    return min(seconds, OPE_INPUT_MAX)


def revision_counter_from_secret(expanded_secret: bytes, srv_start: int, now: float) -> int:
    """The revision counter tor would put in a descriptor signed with this blinded key."""
    return ope_encrypt(ope_key(expanded_secret), revision_plaintext(srv_start, now))


def revision_counter(blinded: HasExpandedSecret, srv_start: int, now: float) -> int:
    """Revision counter for a blinded key (any object with ``expanded_secret``).

    ``srv_start`` is :attr:`DescriptorPeriod.srv_start` of the descriptor:
    the previous SRV run for the first descriptor, the current run for the
    second.
    """
    try:
        secret = blinded.expanded_secret
    except AttributeError as exc:
        raise RevisionCounterError("blinded key object has no expanded_secret") from exc
    return revision_counter_from_secret(secret, srv_start, now)
