"""The node's WireGuard key pair: X25519, base64 as `wg genkey`/`wg pubkey` print it.

Made with ``cryptography`` rather than `wg genkey` so no key ever passes through a
command line or a pipe we did not open. The private key file is written atomically
with mode 0600 and is never overwritten (losing it changes the node's roster entry).
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from onionmesh.crypto.securefile import SecureFileError, atomic_write
from onionmesh.wireguard.errors import WireGuardError

KEY_BYTES = 32


def decode_key(text: str, what: str = "WireGuard key") -> bytes:
    """A base64 WireGuard key (44 characters) -> 32 bytes; a clear error otherwise."""
    stripped = text.strip()
    if len(stripped) != 44 or not stripped.endswith("="):
        raise WireGuardError(f"{what} must be 44 base64 characters (32 bytes), "
                             f"got {len(stripped)} characters")
    try:
        raw = base64.b64decode(stripped, validate=True)
    except (binascii.Error, ValueError):
        raise WireGuardError(f"{what} is not valid base64") from None
    if len(raw) != KEY_BYTES:
        raise WireGuardError(f"{what} must decode to 32 bytes, got {len(raw)}")
    return raw


def encode_key(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def public_key_of(private: str) -> str:
    raw = decode_key(private, "WireGuard private key")
    public = X25519PrivateKey.from_private_bytes(raw).public_key()
    return encode_key(public.public_bytes(Encoding.Raw, PublicFormat.Raw))


@dataclass(frozen=True)
class WireGuardKeyPair:
    private_key: str = field(repr=False)
    public_key: str

    @classmethod
    def generate(cls) -> WireGuardKeyPair:
        key = X25519PrivateKey.generate()
        private = encode_key(key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption()))
        return cls(private, public_key_of(private))

    @classmethod
    def load(cls, path: Path) -> WireGuardKeyPair:
        try:
            text = path.read_text("ascii")
        except FileNotFoundError:
            raise WireGuardError(f"{path}: no such WireGuard key file") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise WireGuardError(f"{path}: cannot read the WireGuard key: {exc}") from None
        try:
            return cls(text.strip(), public_key_of(text))
        except WireGuardError as exc:
            raise WireGuardError(f"{path}: {exc}") from None

    def save(self, path: Path) -> None:
        try:
            atomic_write(path, (self.private_key + "\n").encode("ascii"), mode=0o600)
        except SecureFileError as exc:
            raise WireGuardError(str(exc)) from None

    @classmethod
    def load_or_create(cls, path: Path) -> WireGuardKeyPair:
        if path.exists():
            return cls.load(path)
        pair = cls.generate()
        pair.save(path)
        return pair

