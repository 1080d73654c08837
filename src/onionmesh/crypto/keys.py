"""Onion-service identity keys and tor's key files.

``Ed25519Identity`` keeps the secret key in tor's *expanded* form (clamped scalar
``a`` || 32-byte nonce prefix) because that is what tor's ``hs_ed25519_secret_key``
holds: a key that tor generated has no seed, so it cannot be turned into an RFC
8032 seed, a ``cryptography`` key or a PKCS#8 PEM. Keys created from a seed keep
the seed as well, which is what PEM export needs.

File formats (tor's ``src/lib/crypt_ops/crypto_format.c``, "tagged" files):

* ``hs_ed25519_secret_key``: ``"== ed25519v1-secret: type0 ==\\0\\0\\0"`` (32 bytes)
  followed by the 64-byte expanded key.
* ``hs_ed25519_public_key``: ``"== ed25519v1-public: type0 ==\\0\\0\\0"`` + 32 bytes.
* ``hostname``: ``"<address>.onion\\n"``.
* PKCS#8 PEM (``-----BEGIN PRIVATE KEY-----``), via ``cryptography``; holds a seed.

Secret files are written atomically with mode 0600 and never overwrite an
existing file unless ``overwrite=True`` (see ``securefile``). No function puts key
bytes into a message, a repr or a log line.
"""

from __future__ import annotations

import hmac
import os
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from onionmesh.crypto import ed25519
from onionmesh.crypto.address import AddressError, decode_onion_address, encode_onion_address
from onionmesh.crypto.ed25519 import verify_signature
from onionmesh.crypto.securefile import SecureFileError, atomic_write
from onionmesh.errors import OnionmeshError

__all__ = [
    "HOSTNAME_FILE",
    "PUBLIC_KEY_FILE",
    "SECRET_KEY_FILE",
    "Ed25519Identity",
    "KeyFileError",
    "KeyIntegrityError",
    "check_hidden_service_dir",
    "check_key_integrity",
    "decode_public_key_file",
    "decode_secret_key_file",
    "encode_public_key_file",
    "encode_secret_key_file",
    "identity_from_pem",
    "identity_to_pem",
    "load_hidden_service_dir",
    "load_hostname",
    "load_pem",
    "load_public_key",
    "load_secret_key",
    "save_hidden_service_dir",
    "save_hostname",
    "save_pem",
    "save_public_key",
    "save_secret_key",
    "verify_signature",
]

SECRET_KEY_FILE = "hs_ed25519_secret_key"
PUBLIC_KEY_FILE = "hs_ed25519_public_key"
HOSTNAME_FILE = "hostname"
SECRET_KEY_HEADER = b"== ed25519v1-secret: type0 ==\0\0\0"
PUBLIC_KEY_HEADER = b"== ed25519v1-public: type0 ==\0\0\0"
# Upper bound on what a loader reads: a key file is under 100 bytes, a PEM a few hundred.
_MAX_KEY_FILE_SIZE = 64 * 1024


class KeyFileError(OnionmeshError):
    """A key or key file is malformed, missing or unwritable (never contains key bytes)."""


class KeyIntegrityError(KeyFileError):
    """Key material disagrees with itself; ``check`` names the failed check.

    ``check`` is one of ``"public-key-file"``, ``"onion-address"``, ``"hostname-file"``.
    """

    def __init__(self, check: str, message: str) -> None:
        super().__init__(f"key integrity check '{check}' failed: {message}")
        self.check = check


class Ed25519Identity:
    """An ed25519 secret key in tor's expanded form (64 bytes: clamped scalar a || prefix).

    Satisfies the ``Signer`` protocol of ``onionmesh.crypto.certs``.
    """

    __slots__ = ("_seed", "expanded", "public_key")

    expanded: bytes
    public_key: bytes

    def __init__(self, expanded: bytes, *, _seed: bytes | None = None) -> None:
        if not isinstance(expanded, bytes | bytearray) or len(expanded) != 64:
            raise KeyFileError("expanded ed25519 secret key must be 64 bytes")
        expanded = bytes(expanded)
        if not ed25519.is_clamped(expanded[:32]):
            # Tor always stores a clamped scalar; anything else is corruption, and an
            # unclamped scalar with bit 255 set would give a wrong public key.
            raise KeyFileError("expanded ed25519 secret key has an unclamped scalar")
        self.expanded = expanded
        self.public_key = ed25519.public_key_from_scalar(expanded[:32])
        self._seed = _seed

    @classmethod
    def generate(cls) -> Ed25519Identity:
        """A fresh random key (from a seed, so it can also be exported as PEM)."""
        return cls.from_seed(os.urandom(32))

    @classmethod
    def from_seed(cls, seed: bytes) -> Ed25519Identity:
        """The key for an RFC 8032 32-byte seed."""
        if not isinstance(seed, bytes | bytearray) or len(seed) != 32:
            raise KeyFileError("ed25519 seed must be 32 bytes")
        seed = bytes(seed)
        return cls(ed25519.expand_seed(seed), _seed=seed)

    @classmethod
    def from_expanded(cls, expanded: bytes) -> Ed25519Identity:
        """The key for tor's 64-byte expanded form (no seed: PEM export impossible)."""
        return cls(expanded)

    @property
    def seed(self) -> bytes | None:
        """The RFC 8032 seed if this key was created from one, else None."""
        return self._seed

    @property
    def onion_address(self) -> str:
        """``"<56 base32 chars>.onion"`` for this key."""
        return encode_onion_address(self.public_key)

    def sign(self, message: bytes) -> bytes:
        """Standard Ed25519 signature (64 bytes), verifiable with ``verify_signature``."""
        return ed25519.sign_expanded(self.expanded[:32], self.expanded[32:], self.public_key,
                                     message)

    def __repr__(self) -> str:
        return f"Ed25519Identity(onion_address={self.onion_address!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Ed25519Identity):
            return NotImplemented
        return hmac.compare_digest(self.expanded, other.expanded)

    def __hash__(self) -> int:
        return hash(self.public_key)


# --- tor's tagged key files -------------------------------------------------------------


def encode_secret_key_file(identity: Ed25519Identity) -> bytes:
    """Bytes of an ``hs_ed25519_secret_key`` file."""
    return SECRET_KEY_HEADER + identity.expanded


def decode_secret_key_file(data: bytes) -> Ed25519Identity:
    """Parse ``hs_ed25519_secret_key`` bytes; ``KeyFileError`` for anything malformed."""
    if not isinstance(data, bytes | bytearray):
        raise KeyFileError("secret key file content must be bytes")
    if not bytes(data[:32]) == SECRET_KEY_HEADER:
        raise KeyFileError("secret key file lacks the '== ed25519v1-secret: type0 ==' header")
    if len(data) != 96:
        raise KeyFileError(f"secret key file must be 96 bytes, got {len(data)}")
    try:
        return Ed25519Identity.from_expanded(bytes(data[32:]))
    except ed25519.Ed25519Error as exc:
        raise KeyFileError(f"secret key file holds an invalid key: {exc}") from exc


def encode_public_key_file(public_key: bytes) -> bytes:
    """Bytes of an ``hs_ed25519_public_key`` file."""
    if len(public_key) != 32:
        raise KeyFileError("public key must be 32 bytes")
    return PUBLIC_KEY_HEADER + bytes(public_key)


def decode_public_key_file(data: bytes) -> bytes:
    """Parse ``hs_ed25519_public_key`` bytes into the 32-byte public key."""
    if not isinstance(data, bytes | bytearray):
        raise KeyFileError("public key file content must be bytes")
    if not bytes(data[:32]) == PUBLIC_KEY_HEADER:
        raise KeyFileError("public key file lacks the '== ed25519v1-public: type0 ==' header")
    if len(data) != 64:
        raise KeyFileError(f"public key file must be 64 bytes, got {len(data)}")
    return bytes(data[32:])


def _read_small(path: str | os.PathLike[str], what: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            data = handle.read(_MAX_KEY_FILE_SIZE + 1)
    except OSError as exc:
        raise KeyFileError(f"cannot read {what} {os.fspath(path)}: {exc.strerror}") from exc
    if len(data) > _MAX_KEY_FILE_SIZE:
        raise KeyFileError(f"{what} {os.fspath(path)} is too large to be a key file")
    return data


def _write(path: str | os.PathLike[str], data: bytes, overwrite: bool) -> None:
    try:
        atomic_write(path, data, mode=0o600, overwrite=overwrite)
    except SecureFileError as exc:
        raise KeyFileError(str(exc)) from exc


def load_secret_key(path: str | os.PathLike[str]) -> Ed25519Identity:
    """Load tor's ``hs_ed25519_secret_key`` file."""
    return decode_secret_key_file(_read_small(path, "secret key file"))


def save_secret_key(identity: Ed25519Identity, path: str | os.PathLike[str], *,
                    overwrite: bool = False) -> None:
    """Write ``hs_ed25519_secret_key`` atomically, mode 0600; refuses to overwrite by default."""
    _write(path, encode_secret_key_file(identity), overwrite)


def load_public_key(path: str | os.PathLike[str]) -> bytes:
    """Load tor's ``hs_ed25519_public_key`` file; returns the 32-byte key."""
    return decode_public_key_file(_read_small(path, "public key file"))


def save_public_key(public_key: bytes, path: str | os.PathLike[str], *,
                    overwrite: bool = False) -> None:
    """Write ``hs_ed25519_public_key`` atomically (mode 0600, as tor does)."""
    _write(path, encode_public_key_file(public_key), overwrite)


def load_hostname(path: str | os.PathLike[str]) -> str:
    """Read a ``hostname`` file and return its validated, lowercase onion address."""
    data = _read_small(path, "hostname file")
    try:
        text = data.decode("ascii").strip()
        return encode_onion_address(decode_onion_address(text))
    except UnicodeDecodeError as exc:
        raise KeyFileError(f"hostname file {os.fspath(path)} is not ASCII") from exc
    except AddressError as exc:
        raise KeyFileError(f"hostname file {os.fspath(path)}: {exc}") from exc


def save_hostname(onion_address: str, path: str | os.PathLike[str], *,
                  overwrite: bool = False) -> None:
    """Write a ``hostname`` file (``"<addr>.onion\\n"``) atomically."""
    try:
        canonical = encode_onion_address(decode_onion_address(onion_address))
    except AddressError as exc:
        raise KeyFileError(f"cannot save hostname: {exc}") from exc
    _write(path, (canonical + "\n").encode("ascii"), overwrite)


# --- PKCS#8 PEM -------------------------------------------------------------------------


def identity_to_pem(identity: Ed25519Identity) -> bytes:
    """Unencrypted PKCS#8 PEM. Only possible for keys created from a seed."""
    if identity.seed is None:
        raise KeyFileError(
            "this key has no seed (it came from tor's expanded form), and a PKCS#8 PEM "
            "can only hold a seed: keep it in tor's hs_ed25519_secret_key format instead"
        )
    return Ed25519PrivateKey.from_private_bytes(identity.seed).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def identity_from_pem(data: bytes) -> Ed25519Identity:
    """Parse an unencrypted PKCS#8 PEM holding an Ed25519 key."""
    if not isinstance(data, bytes | bytearray):
        raise KeyFileError("PEM content must be bytes")
    try:
        key = serialization.load_pem_private_key(bytes(data), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        # cryptography's messages describe the structure, never the key bytes.
        raise KeyFileError("not an unencrypted PKCS#8 PEM private key") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"PEM holds a {type(key).__name__}, not an Ed25519 private key")
    seed = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                             serialization.NoEncryption())
    return Ed25519Identity.from_seed(seed)


def load_pem(path: str | os.PathLike[str]) -> Ed25519Identity:
    """Load an Ed25519 PKCS#8 PEM key file."""
    return identity_from_pem(_read_small(path, "PEM key file"))


def save_pem(identity: Ed25519Identity, path: str | os.PathLike[str], *,
             overwrite: bool = False) -> None:
    """Write a PKCS#8 PEM key file atomically, mode 0600."""
    _write(path, identity_to_pem(identity), overwrite)


# --- hidden-service directories and integrity ------------------------------------------


def save_hidden_service_dir(identity: Ed25519Identity, directory: str | os.PathLike[str], *,
                            overwrite: bool = False) -> None:
    """Write tor's three key files into ``directory`` (created with mode 0700 if missing).

    The secret key goes first: if it already exists and ``overwrite`` is false nothing
    is written at all.
    """
    path = Path(directory)
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise KeyFileError(f"cannot create directory {path}: {exc.strerror}") from exc
    save_secret_key(identity, path / SECRET_KEY_FILE, overwrite=overwrite)
    save_public_key(identity.public_key, path / PUBLIC_KEY_FILE, overwrite=True)
    save_hostname(identity.onion_address, path / HOSTNAME_FILE, overwrite=True)


def check_key_integrity(identity: Ed25519Identity, *, public_key: bytes | None = None,
                        onion_address: str | None = None) -> None:
    """Check that the public key derived from ``identity`` matches what is stored.

    ``public_key`` is the content of ``hs_ed25519_public_key`` and ``onion_address`` the
    configured address; each given one is checked. Raises ``KeyIntegrityError`` whose
    ``check`` names the first mismatch (``"public-key-file"`` or ``"onion-address"``).
    """
    if public_key is not None and not hmac.compare_digest(bytes(public_key),
                                                          identity.public_key):
        raise KeyIntegrityError("public-key-file",
                                "the stored public key is not the secret key's public key")
    if onion_address is not None:
        try:
            configured = decode_onion_address(onion_address)
        except AddressError as exc:
            raise KeyIntegrityError("onion-address", str(exc)) from exc
        if configured != identity.public_key:
            raise KeyIntegrityError(
                "onion-address",
                f"the secret key belongs to {identity.onion_address}, not {onion_address}",
            )


def check_hidden_service_dir(directory: str | os.PathLike[str],
                             onion_address: str | None = None) -> Ed25519Identity:
    """Load a hidden-service directory's secret key and check every file against it.

    Checks the public key file and the hostname file when they exist, and the
    configured ``onion_address`` when given. Returns the identity on success.
    """
    path = Path(directory)
    identity = load_secret_key(path / SECRET_KEY_FILE)
    if (path / PUBLIC_KEY_FILE).exists():
        check_key_integrity(identity, public_key=load_public_key(path / PUBLIC_KEY_FILE))
    if (path / HOSTNAME_FILE).exists():
        try:
            hostname = load_hostname(path / HOSTNAME_FILE)
        except KeyFileError as exc:
            raise KeyIntegrityError("hostname-file", str(exc)) from exc
        if hostname != identity.onion_address:
            raise KeyIntegrityError(
                "hostname-file",
                f"hostname file says {hostname} but the secret key is {identity.onion_address}",
            )
    if onion_address is not None:
        check_key_integrity(identity, onion_address=onion_address)
    return identity


def load_hidden_service_dir(directory: str | os.PathLike[str]) -> Ed25519Identity:
    """Alias of ``check_hidden_service_dir`` without a configured address."""
    return check_hidden_service_dir(directory)
