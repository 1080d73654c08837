"""Restricted discovery (client authorization) of the master address: the operator's side.

The master descriptor's middle layer carries one ``auth-client`` entry per
authorized client (rend-spec-v3 [HS-DESC-SECOND-LAYER]); only a client holding
one of the x25519 secret keys can read the intro points. The public keys live
in the node config, ``[master] authorized_clients = { name = "<base32>" }``,
in tor's ``authorized_clients`` format; every node that may publish needs the
same list. ``onionmesh client add`` can generate a keypair and writes the
client's half in tor's ``ClientOnionAuthDir`` format
(``<address>:descriptor:x25519:<base32 secret>``).

Editing the config rewrites only the ``authorized_clients`` line of ``[master]``
(the rest of the file, comments included, is kept), validates the result and
replaces the file atomically with its old permissions.
"""

from __future__ import annotations

import base64
import re
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from onionmesh.config import ConfigError, client_public_key, load_config, parse_config
from onionmesh.crypto.securefile import atomic_write
from onionmesh.errors import OnionmeshError

_LINE = re.compile(r"^\s*authorized_clients\s*=")
_SECTION = re.compile(r"^\s*\[\s*([A-Za-z0-9_.-]+)\s*\]\s*(#.*)?$")


class ClientAuthError(OnionmeshError):
    """A client could not be added or removed (the message says why; nothing changed)."""


def b32(key: bytes) -> str:
    return base64.b32encode(key).decode("ascii").rstrip("=")


def generate_client_keypair() -> tuple[str, str]:
    """(public, secret) x25519 keys in tor's base32 form."""
    secret = X25519PrivateKey.generate()
    return b32(secret.public_key().public_bytes_raw()), b32(secret.private_bytes_raw())


def client_auth_file_line(master_address: str, secret_b32: str) -> str:
    """One ``.auth_private`` file for tor's ``ClientOnionAuthDir``."""
    return f"{master_address.removesuffix('.onion')}:descriptor:x25519:{secret_b32}\n"


def _with_clients(text: str, clients: dict[str, str]) -> str:
    """``text`` with ``[master] authorized_clients`` set to ``clients``."""
    inner = ", ".join(f'"{name}" = "{key}"' for name, key in sorted(clients.items()))
    new_line = f"authorized_clients = {{ {inner} }}" if inner else "authorized_clients = {}"
    lines = text.splitlines()
    section, master_at, replaced = None, None, False
    out: list[str] = []
    for line in lines:
        match = _SECTION.match(line)
        if match:
            section = match.group(1)
            if section == "master":
                master_at = len(out)
        if section == "master" and _LINE.match(line):
            out.append(new_line)
            replaced = True
            continue
        out.append(line)
    if not replaced:
        if master_at is None:
            raise ClientAuthError("the config has no [master] section")
        out.insert(master_at + 1, new_line)
    return "\n".join(out) + "\n"


def set_clients(config_path: Path, clients: dict[str, str]) -> None:
    """Write ``clients`` into the config, validated first; the file keeps its mode."""
    try:
        text = config_path.read_text(encoding="utf-8")
        mode = config_path.stat().st_mode & 0o777
    except OSError as exc:
        raise ClientAuthError(f"cannot read {config_path}: {exc.strerror}") from None
    new = _with_clients(text, clients)
    try:
        parse_config(new, config_path)
    except ConfigError as exc:
        raise ClientAuthError(f"the edited config would be invalid, nothing written: {exc}") \
            from None
    atomic_write(config_path, new.encode("utf-8"), mode=mode, overwrite=True)


def add_client(config_path: Path, name: str, public_key: str | None) -> tuple[str, str | None]:
    """Authorize ``name``; generates a keypair unless ``public_key`` is given.
    Returns (public key, secret key or None)."""
    config = load_config(config_path)
    clients = dict(config.master.authorized_clients)
    if name in clients:
        raise ClientAuthError(f"client {name!r} is already authorized (remove it first)")
    secret = None
    if public_key is None:
        public_key, secret = generate_client_keypair()
    else:
        public_key = public_key.strip().removeprefix("descriptor:x25519:").upper()
        try:
            client_public_key(public_key)
        except ValueError as exc:
            raise ClientAuthError(f"public key of {name!r} {exc}") from None
    clients[name] = public_key
    set_clients(config_path, clients)
    return public_key, secret


def remove_client(config_path: Path, name: str) -> None:
    config = load_config(config_path)
    clients = dict(config.master.authorized_clients)
    if name not in clients:
        raise ClientAuthError(f"no authorized client named {name!r}")
    del clients[name]
    set_clients(config_path, clients)


def write_client_file(path: Path, master_address: str, secret_b32: str) -> None:
    """The client's ``.auth_private`` file (0600; never overwrites)."""
    if path.suffix != ".auth_private":
        raise ClientAuthError(f"{path}: tor reads only files ending in .auth_private")
    atomic_write(path, client_auth_file_line(master_address, secret_b32).encode(), mode=0o600)


__all__ = ["ClientAuthError", "add_client", "client_auth_file_line", "generate_client_keypair",
           "remove_client", "set_clients", "write_client_file"]
