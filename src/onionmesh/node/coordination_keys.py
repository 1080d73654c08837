"""The node's two coordination keys: its WireGuard key and its coordination onion key.

* ``[wireguard] key_path`` (default ``<state_dir>/wireguard.key``): the X25519 key of
  the node's WireGuard interface, base64 as ``wg genkey`` prints it. It is also the
  node's client-authorization key for the other members' coordination onions (both
  uses are X25519 Diffie-Hellman; docs/coordination.md).
* ``[wireguard] coordination_key_path`` (default ``<state_dir>/coordination_onion.pem``):
  the Ed25519 key of the node's coordination onion (PKCS#8 PEM), so its address is
  stable across restarts. It is not the node key: the coordination onion must never be
  linkable to the node's Onionbalance instance service.

Both are made at ``init``/``join`` (``ensure_coordination_keys``), mode 0600, and never
overwritten: their public halves are in the node's signed roster entry, so a new key
would cut the node off. ``load_coordination_keys`` only reads (the daemon's start).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from pathlib import Path

from onionmesh.config import Config
from onionmesh.crypto.keys import Ed25519Identity, KeyFileError, load_pem, save_pem
from onionmesh.node.errors import KeyCheckError
from onionmesh.node.keyfiles import check_private_mode, state_dir
from onionmesh.wireguard.errors import WireGuardError
from onionmesh.wireguard.keys import WireGuardKeyPair, decode_key

WIREGUARD_KEY_FILE = "wireguard.key"
COORDINATION_KEY_FILE = "coordination_onion.pem"


def wireguard_key_path(config: Config) -> Path:
    return Path(config.wireguard.key_path or state_dir(config) / WIREGUARD_KEY_FILE)


def coordination_key_path(config: Config) -> Path:
    return Path(config.wireguard.coordination_key_path
                or state_dir(config) / COORDINATION_KEY_FILE)


@dataclass(frozen=True)
class CoordinationKeys:
    wireguard: WireGuardKeyPair = field(repr=False)
    onion: Ed25519Identity = field(repr=False)

    @property
    def wg_public_raw(self) -> bytes:
        """The WireGuard public key as the roster stores it (32 bytes)."""
        return decode_key(self.wireguard.public_key)

    @property
    def onion_address(self) -> str:
        """``<56 base32>.onion``: the coordination onion, as the roster stores it."""
        return self.onion.onion_address


def new_coordination_keys() -> CoordinationKeys:
    """Fresh keys, in memory: ``init``/``join`` sign their public halves into the roster
    entry first and write the files only once the node is in (``save_coordination_keys``)."""
    return CoordinationKeys(WireGuardKeyPair.generate(), Ed25519Identity.generate())


def coordination_key_files(config: Config) -> list[Path]:
    return [wireguard_key_path(config), coordination_key_path(config)]


def save_coordination_keys(config: Config, keys: CoordinationKeys) -> None:
    """Write both keys (0600) where the config says; an existing file is never replaced."""
    wg_path, onion_path = wireguard_key_path(config), coordination_key_path(config)
    for path in (wg_path, onion_path):
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise KeyCheckError("coordination-key-file",
                                f"cannot create {path.parent}: {exc.strerror}") from None
    try:
        if wg_path.exists():
            raise WireGuardError(f"refusing to overwrite existing file {wg_path}")
        keys.wireguard.save(wg_path)
    except WireGuardError as exc:
        raise KeyCheckError("wireguard-key-file", f"{wg_path}: {exc}") from None
    try:
        save_pem(keys.onion, onion_path, overwrite=False)
    except KeyFileError as exc:
        raise KeyCheckError("coordination-key-file", f"{onion_path}: {exc}") from None


def ensure_coordination_keys(config: Config) -> CoordinationKeys:
    """Make whichever key is missing (0600), keep any that exists; for init and join."""
    wg_path, onion_path = wireguard_key_path(config), coordination_key_path(config)
    if not wg_path.exists():
        try:
            WireGuardKeyPair.generate().save(wg_path)
        except WireGuardError as exc:
            raise KeyCheckError("wireguard-key-file", f"{wg_path}: {exc}") from None
    if not onion_path.exists():
        try:
            save_pem(Ed25519Identity.generate(), onion_path, overwrite=False)
        except KeyFileError as exc:
            raise KeyCheckError("coordination-key-file", f"{onion_path}: {exc}") from None
    return load_coordination_keys(config)


def load_coordination_keys(config: Config) -> CoordinationKeys:
    """Both keys, checked like the node key (private mode, format); reads only."""
    wg_path, onion_path = wireguard_key_path(config), coordination_key_path(config)
    check_private_mode(wg_path, "wireguard-key-file")
    check_private_mode(onion_path, "coordination-key-file")
    try:
        pair = WireGuardKeyPair.load(wg_path)
    except WireGuardError as exc:
        raise KeyCheckError("wireguard-key-file", str(exc)) from None
    try:
        onion = load_pem(onion_path)
    except KeyFileError as exc:
        raise KeyCheckError("coordination-key-file", f"{onion_path}: {exc}") from None
    return CoordinationKeys(pair, onion)


def wg_key_text(raw: bytes) -> str:
    """A roster entry's 32-byte WireGuard key in WireGuard's base64 form."""
    return base64.b64encode(raw).decode("ascii")


# -- the join onion ----------------------------------------------------------------------

JOIN_ONION_KEY_FILE = "join_onion.pem"


def join_onion_key_path(config: Config) -> Path:
    return Path(state_dir(config)) / JOIN_ONION_KEY_FILE


def save_join_onion_key(config: Config, identity: Ed25519Identity) -> None:
    """A joiner's join onion key, made before its join (its request names the address, so
    its roster entry does), written once it is admitted; never replaces a key."""
    path = join_onion_key_path(config)
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        save_pem(identity, path, overwrite=False)
    except KeyFileError as exc:
        raise KeyCheckError("join-onion-key-file", f"{path}: {exc}") from None
    except OSError as exc:
        raise KeyCheckError("join-onion-key-file",
                            f"cannot create {path.parent}: {exc.strerror}") from None


def ensure_join_onion_key(config: Config) -> Ed25519Identity:
    """The node's join onion key (0600; made on first use by ``add-node`` or the daemon,
    never replaced: tokens name its address). Its own key, so the join onion cannot be
    linked to the coordination onion or the node's instance service."""
    path = join_onion_key_path(config)
    if not path.exists():
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            save_pem(Ed25519Identity.generate(), path, overwrite=False)
        except KeyFileError as exc:
            if not path.exists():  # another process made it meanwhile: use that one
                raise KeyCheckError("join-onion-key-file", f"{path}: {exc}") from None
        except OSError as exc:
            raise KeyCheckError("join-onion-key-file",
                                f"cannot create {path.parent}: {exc.strerror}") from None
    check_private_mode(path, "join-onion-key-file")
    try:
        return load_pem(path)
    except KeyFileError as exc:
        raise KeyCheckError("join-onion-key-file", f"{path}: {exc}") from None
