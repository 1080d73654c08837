"""A throw-away descriptor-signing key that signs as fast as libsodium allows.

A master descriptor needs a fresh descriptor-signing key and ~2 signatures per intro
point. ``crypto.keys.Ed25519Identity`` signs through the expanded-key path (it must
support tor's 64-byte key files), which costs a few Python-level scalar operations
per signature; for a key we generate ourselves from a random seed, libsodium's
``crypto_sign`` produces the identical RFC 8032 signature in one native call.
The seed never leaves this object and is not part of its repr.
"""

from __future__ import annotations

import os

import nacl.bindings


class FreshSigningKey:
    """A random ed25519 key satisfying ``crypto.certs.Signer`` (``public_key``, ``sign``)."""

    __slots__ = ("_secret", "public_key")

    def __init__(self) -> None:
        self.public_key, self._secret = nacl.bindings.crypto_sign_seed_keypair(os.urandom(32))

    def sign(self, message: bytes) -> bytes:
        """Standard Ed25519 signature (64 bytes)."""
        return nacl.bindings.crypto_sign(message, self._secret)[:64]

    def __repr__(self) -> str:
        return f"FreshSigningKey(public_key={self.public_key.hex()!r})"
