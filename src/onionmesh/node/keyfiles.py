"""Where a node's key material lives, and strict loaders for each piece.

Three secrets per node, all files of mode 0600 that are never overwritten:

* the master key, tor's ``hs_ed25519_secret_key`` format (``[master] key_path``);
  only nodes that hold it may publish;
* the node key, a PKCS#8 PEM Ed25519 key (``[node] key_path``, default
  ``<state_dir>/node_key.pem``): it signs the node's mesh messages and is also
  the key of the node's own onion service (the PEM keeps the seed that the
  mesh signer needs; tor gets the same key in its own format);
* the cluster secret, 32 random bytes as hex (``[coordination]
  cluster_secret_path``, default ``<state_dir>/cluster_secret``).

Loaders refuse files that other users can read, like ssh does: a secret that
leaked once cannot be un-leaked, so the operator is told to fix the mode.
"""

from __future__ import annotations

import hashlib
import os
import stat
import tempfile
from pathlib import Path

from onionmesh.config import Config
from onionmesh.crypto.keys import Ed25519Identity, KeyFileError, load_pem
from onionmesh.crypto.securefile import SecureFileError, atomic_write
from onionmesh.node.errors import KeyCheckError
from onionmesh.node.path_safety import UnsafePath, check_secret_path, private_dir

CLUSTER_SECRET_BYTES = 32
_MAX_SECRET_FILE = 4096


def state_dir(config: Config) -> Path:
    return Path(config.node.state_dir)


def node_key_path(config: Config) -> Path:
    return Path(config.node.key_path or state_dir(config) / "node_key.pem")


def cluster_secret_path(config: Config) -> Path:
    path = config.coordination.cluster_secret_path
    return Path(path or state_dir(config) / "cluster_secret")


def service_dir(config: Config) -> Path:
    """The node's HiddenServiceDir (managed tor) or where an existing tor keeps it."""
    return Path(config.service.key_dir or state_dir(config) / "service")


_MAX_UNIX_PATH = 100  # sun_path holds 108 bytes on Linux; keep a margin


def unix_socket_path(config: Config, name: str) -> Path:
    """``<state_dir>/<name>``, or a private short directory when that is too long for
    a unix socket (deep state directories, test temp paths)."""
    path = state_dir(config) / name
    if len(str(path)) <= _MAX_UNIX_PATH:
        return path
    digest = hashlib.sha256(str(state_dir(config).resolve()).encode()).hexdigest()[:16]
    short = Path(tempfile.gettempdir()) / f"onionmesh-{digest}"
    return short / name


def socks_socket_path(config: Config) -> Path:
    """The managed tor's SOCKS socket for the tor channel (unix: no local TCP port)."""
    return unix_socket_path(config, "tor-socks.sock")


def ensure_private_dir(directory: Path) -> None:
    """Create ``directory`` with mode 0700 (tor insists on it for control sockets);
    one that is a symlink or another user's is refused (``UnsafePath``)."""
    private_dir(directory)


def status_socket_path(config: Config) -> Path:
    return unix_socket_path(config, "status.sock")


def check_private_mode(path: Path, check: str) -> None:
    """Refuse a secret file that is missing, not a regular file, or readable by others."""
    try:
        info = path.stat()
    except FileNotFoundError:
        raise KeyCheckError(check, f"{path} does not exist") from None
    except OSError as exc:
        raise KeyCheckError(check, f"{path} cannot be read: {exc.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise KeyCheckError(check, f"{path} is not a regular file")
    if info.st_mode & 0o077:
        raise KeyCheckError(
            check, f"{path} has mode {stat.S_IMODE(info.st_mode):04o}; other users may read it "
            f"(run: chmod 600 {path})",
        )
    try:
        check_secret_path(path)
    except UnsafePath as exc:
        raise KeyCheckError(check, str(exc)) from None


def load_node_key(config: Config) -> Ed25519Identity:
    path = node_key_path(config)
    check_private_mode(path, "node-key-file")
    try:
        identity = load_pem(path)
    except KeyFileError as exc:
        raise KeyCheckError("node-key-file", f"{path}: {exc}") from None
    return identity


def encode_cluster_secret(secret: bytes, *accepted: bytes) -> bytes:
    """One hex line per secret: the one this node sends with, then those it also accepts
    (only during a rotation, ``onionmesh rotate-secret``)."""
    return b"".join(s.hex().encode("ascii") + b"\n" for s in (secret, *accepted))


def decode_cluster_secrets(data: bytes, where: str) -> tuple[bytes, tuple[bytes, ...]]:
    """(the secret to send with, the other secret of a rotation if any)."""
    try:
        lines = [line.strip() for line in data.decode("ascii").splitlines() if line.strip()]
        secrets = [bytes.fromhex(line) for line in lines]
    except (UnicodeDecodeError, ValueError):
        raise KeyCheckError("cluster-secret", f"{where} is not hex text") from None
    if not 1 <= len(secrets) <= 2:
        raise KeyCheckError("cluster-secret", f"{where} must hold one secret (two during a "
                                              f"rotation), not {len(secrets)}")
    for secret in secrets:
        if len(secret) < 16:
            raise KeyCheckError(
                "cluster-secret", f"{where} holds {len(secret)} bytes; at least 16 are needed"
            )
    return secrets[0], tuple(secrets[1:])


def decode_cluster_secret(data: bytes, where: str) -> bytes:
    return decode_cluster_secrets(data, where)[0]


def _read_cluster_secret_file(config: Config) -> tuple[Path, bytes]:
    path = cluster_secret_path(config)
    check_private_mode(path, "cluster-secret")
    try:
        with open(path, "rb") as handle:
            data = handle.read(_MAX_SECRET_FILE + 1)
    except OSError as exc:
        raise KeyCheckError("cluster-secret", f"{path} cannot be read: {exc.strerror}") from None
    if len(data) > _MAX_SECRET_FILE:
        raise KeyCheckError("cluster-secret", f"{path} is too large to be a cluster secret")
    return path, data


def load_cluster_secret(config: Config) -> bytes:
    return load_cluster_secrets(config)[0]


def load_cluster_secrets(config: Config) -> tuple[bytes, tuple[bytes, ...]]:
    path, data = _read_cluster_secret_file(config)
    return decode_cluster_secrets(data, str(path))


def write_cluster_secret(path: Path, secret: bytes) -> None:
    """Write the secret (0600); an existing file is never replaced."""
    try:
        atomic_write(path, encode_cluster_secret(secret), mode=0o600, overwrite=False)
    except SecureFileError as exc:
        raise KeyCheckError("cluster-secret", str(exc)) from None


def replace_cluster_secrets(path: Path, secret: bytes, *accepted: bytes) -> None:
    """A rotation step: rewrite the file atomically (0600)."""
    try:
        atomic_write(path, encode_cluster_secret(secret, *accepted), mode=0o600, overwrite=True)
    except SecureFileError as exc:
        raise KeyCheckError("cluster-secret", str(exc)) from None


def new_cluster_secret() -> bytes:
    return os.urandom(CLUSTER_SECRET_BYTES)
