"""Cluster material for operators: ``init`` (a new cluster), ``add-node`` (a join token
for one more node) and ``join`` (a node's config and key from a token).

The join token carries what a joining node needs to reach and authenticate
to the cluster: the cluster secret, the master address, the inviting node's
id, coordination address and public key (pinned by the joiner), and the
cluster's timing settings (every node must use the same ones). It does NOT
carry the master key: that moves only as the operator's own copy of the
key file (``join --master-key``). The token is a secret (anyone holding it
can speak in the cluster), so it is printed with a warning, never logged,
and never part of an error message.

Nothing here overwrites a file: every target is checked before the first
write, and the key writers refuse existing files anyway.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from onionmesh.config import Config, ConfigError, parse_config
from onionmesh.crypto.keys import (
    SECRET_KEY_FILE,
    Ed25519Identity,
    KeyFileError,
    save_hidden_service_dir,
    save_pem,
)
from onionmesh.mesh.errors import MeshConfigError
from onionmesh.mesh.identity import check_node_id
from onionmesh.node.errors import SetupError, TokenError
from onionmesh.node.keyfiles import (
    cluster_secret_path,
    load_cluster_secret,
    load_node_key,
    new_cluster_secret,
    write_cluster_secret,
)
from onionmesh.node.startup import load_master_key_file

TOKEN_PREFIX = "onionmesh-join-1."
MAX_TOKEN_CHARS = 4096  # a real token is a few hundred characters
CONFIG_NAME = "onionmesh.toml"
# The settings every node of a cluster must share; the token carries them.
SHARED_TIMING = {
    "coordination": ("heartbeat_interval", "lease_duration", "lease_grace",
                     "clock_skew_tolerance"),
    "resilience": ("dead_threshold", "removal_grace_period"),
}
TOKEN_WARNING = (
    "This join token is a SECRET: it holds the cluster secret. Pass it to the new node "
    "over a private channel only; never paste it into logs, tickets or chat."
)
MASTER_KEY_NOTE = (
    "The master key is not in the token. Copy the master key file to nodes that may publish "
    "yourself (e.g. scp, mode 0600) and pass it to `onionmesh join --master-key`."
)


@dataclass(frozen=True)
class JoinToken:
    cluster_secret: bytes
    master_address: str
    inviter_id: str
    inviter_address: str
    inviter_public_key: bytes
    timing: Mapping[str, Mapping[str, Any]]

    def __repr__(self) -> str:  # never show the secret
        return f"JoinToken(master={self.master_address!r}, inviter={self.inviter_id!r})"

    def encode(self) -> str:
        body = {
            "v": 1,
            "cluster_secret": self.cluster_secret.hex(),
            "master": self.master_address,
            "inviter": {"id": self.inviter_id, "address": self.inviter_address,
                        "public_key": self.inviter_public_key.hex()},
            "timing": {s: dict(v) for s, v in self.timing.items()},
        }
        raw = json.dumps(body, separators=(",", ":"), sort_keys=True).encode()
        return TOKEN_PREFIX + base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_token(text: str) -> JoinToken:
    """Parse a join token; TokenError names the problem, never the token."""
    text = text.strip()
    if len(text) > MAX_TOKEN_CHARS:
        raise TokenError(f"join token is longer than {MAX_TOKEN_CHARS} characters; copy it again")
    if not text.startswith(TOKEN_PREFIX):
        raise TokenError(f"not an onionmesh join token (it must start with {TOKEN_PREFIX!r})")
    payload = text[len(TOKEN_PREFIX):]
    try:
        raw = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
        body = json.loads(raw)
    except (binascii.Error, ValueError, RecursionError):
        raise TokenError("join token is damaged (not base64 JSON); copy it again") from None
    if not isinstance(body, dict):
        raise TokenError("join token is damaged (its payload is not a JSON object)")
    try:
        if body.get("v") != 1:
            raise TokenError(f"join token version {body.get('v')!r} is not supported")
        secret = bytes.fromhex(body["cluster_secret"])
        inviter = body["inviter"]
        public_key = bytes.fromhex(inviter["public_key"])
        token = JoinToken(secret, str(body["master"]), check_node_id(inviter["id"]),
                          str(inviter["address"]), public_key, dict(body["timing"]))
    except TokenError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, MeshConfigError):
        raise TokenError("join token is incomplete or has fields of the wrong type") from None
    for section, keys in token.timing.items():
        if not isinstance(keys, dict) or not all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in keys.values()
        ):
            raise TokenError(f"join token timing for [{section}] is not a table of numbers")
    if len(token.cluster_secret) < 16 or len(token.inviter_public_key) != 32:
        raise TokenError("join token carries a short cluster secret or a bad public key")
    # The rest is checked by validating the config the token produces.
    return token


# -- TOML ------------------------------------------------------------------------------------


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        return json.dumps(str(value))
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        inner = ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items())
        return "{ " + inner + " }" if inner else "{}"
    raise SetupError(f"cannot write {type(value).__name__} into a config file")


def render_config(sections: Mapping[str, Mapping[str, Any]],
                  comments: Mapping[str, str] | None = None) -> str:
    """TOML text for ``sections`` (simple values only); ``comments`` go above sections."""
    lines = ["# onionmesh node configuration (see docs/operator.md)", ""]
    for section, keys in sections.items():
        if comments and section in comments:
            lines.extend(f"# {line}" for line in comments[section].splitlines())
        lines.append(f"[{section}]")
        for key, value in keys.items():
            if value is None:
                continue
            lines.append(f"{key} = {_toml_value(value)}")
        lines.append("")
    return "\n".join(lines)


# -- init / add-node / join --------------------------------------------------------------------


@dataclass(frozen=True)
class NodeFiles:
    """Where one node's files go under a directory."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / CONFIG_NAME

    @property
    def node_key(self) -> Path:
        return self.root / "node_key.pem"

    @property
    def cluster_secret(self) -> Path:
        return self.root / "cluster_secret"

    @property
    def master_dir(self) -> Path:
        return self.root / "master"

    @property
    def master_key(self) -> Path:
        return self.master_dir / SECRET_KEY_FILE

    @property
    def state_dir(self) -> Path:
        return self.root / "state"


def _refuse_existing(paths: Sequence[Path]) -> None:
    existing = [str(p) for p in paths if p.exists() or p.is_symlink()]
    if existing:
        raise SetupError(
            "refusing to overwrite existing files (nothing was written): " + ", ".join(existing)
        )


def _prepare_dir(root: Path) -> None:
    try:
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise SetupError(f"cannot create {root}: {exc.strerror}") from None


def node_sections(
    *, node_id: str, master_address: str, listen: str, advertise: str | None,
    priority: int, master_key: Path | None, peers: Sequence[str] = (),
    peer_keys: Mapping[str, str] | None = None, timing: Mapping[str, Mapping[str, Any]] | None
    = None, tor_options: Sequence[str] = (), service_ports: Sequence[str] = (),
) -> dict[str, dict[str, Any]]:
    """The config sections ``init`` and ``join`` write (paths relative to the config)."""
    sections: dict[str, dict[str, Any]] = {
        "node": {"id": node_id, "priority": priority, "state_dir": "state",
                 "key_path": "node_key.pem"},
        "master": {"address": master_address,
                   "key_path": str(master_key) if master_key else None},
        "service": {"ports": list(service_ports) or ["80 127.0.0.1:8080"]},
        "tor": {"managed": True, "extra_torrc": list(tor_options)},
        "coordination": {"listen": listen, "advertise": advertise, "peers": list(peers),
                         "peer_keys": dict(peer_keys or {}),
                         "cluster_secret_path": "cluster_secret"},
        "resilience": {"require_ntp_sync": True, "clock_check": "refuse"},
        "logging": {"level": "info"},
    }
    for section, keys in (timing or {}).items():
        allowed = SHARED_TIMING.get(section, ())
        for key, value in keys.items():
            if key in allowed:
                sections[section][key] = value
    return sections


def _merge(sections: dict[str, dict[str, Any]],
           settings: Mapping[str, Mapping[str, Any]] | None) -> None:
    for section, keys in (settings or {}).items():
        sections.setdefault(section, {}).update(keys)


def _validated(text: str, path: Path) -> Config:
    try:
        return parse_config(text, path)
    except ConfigError as exc:
        raise SetupError(f"the generated config is invalid: {exc}") from None


@dataclass(frozen=True)
class InitResult:
    files: NodeFiles
    master_address: str
    token: str = ""

    def __repr__(self) -> str:
        return f"InitResult(root={self.files.root}, master={self.master_address!r})"


def init_cluster(root: Path, *, node_id: str = "n1", listen: str = "127.0.0.1:7443",
                 advertise: str | None = None, priority: int = 100,
                 tor_options: Sequence[str] = (), service_ports: Sequence[str] = (),
                 settings: Mapping[str, Mapping[str, Any]] | None = None) -> InitResult:
    """A new cluster in ``root``: master key, cluster secret, node key, first node config.

    ``settings`` (``{section: {key: value}}``) override or add config keys, e.g. a fast
    heartbeat profile for tests.
    """
    files = NodeFiles(root)
    _refuse_existing([files.config, files.node_key, files.cluster_secret, files.master_key])
    master = Ed25519Identity.generate()
    node = Ed25519Identity.generate()
    sections = node_sections(
        node_id=node_id, master_address=master.onion_address, listen=listen,
        advertise=advertise, priority=priority, master_key=Path("master") / SECRET_KEY_FILE,
        tor_options=tor_options, service_ports=service_ports,
    )
    _merge(sections, settings)
    text = render_config(sections)
    config = _validated(text, files.config)
    _prepare_dir(root)
    try:
        save_hidden_service_dir(master, files.master_dir)
        save_pem(node, files.node_key)
    except KeyFileError as exc:
        raise SetupError(str(exc)) from None
    write_cluster_secret(files.cluster_secret, new_cluster_secret())
    _write_config(files.config, text)
    return InitResult(files, master.onion_address, make_token(config))


def _write_config(path: Path, text: str) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise SetupError(f"refusing to overwrite existing file {path}") from None
    except OSError as exc:
        raise SetupError(f"cannot write {path}: {exc.strerror}") from None
    with os.fdopen(fd, "w") as handle:
        handle.write(text)


def make_token(config: Config) -> str:
    """``add-node``: a join token naming this node (from its config and keys) as the inviter."""
    from onionmesh.node.settings import advertise_address

    secret = load_cluster_secret(config)
    node = load_node_key(config)
    timing = {s: {k: getattr(getattr(config, s), k) for k in keys}
              for s, keys in SHARED_TIMING.items()}
    return JoinToken(secret, config.master.address, config.node_id,
                     advertise_address(config), node.public_key, timing).encode()


def join_cluster(token_text: str, root: Path, *, node_id: str, listen: str,
                 advertise: str | None = None, priority: int = 100,
                 master_key: Path | None = None, tor_options: Sequence[str] = (),
                 service_ports: Sequence[str] = (),
                 settings: Mapping[str, Mapping[str, Any]] | None = None) -> InitResult:
    """A joining node's config, node key and cluster secret in ``root``, from a token.

    ``settings`` as for ``init_cluster`` (applied after the token's timing).
    """
    token = decode_token(token_text)
    try:
        check_node_id(node_id)
    except MeshConfigError as exc:
        raise SetupError(str(exc)) from None
    if node_id == token.inviter_id:
        raise SetupError(f"node id {node_id!r} is the inviting node's; pick another")
    files = NodeFiles(root)
    targets = [files.config, files.node_key, files.cluster_secret]
    master: Ed25519Identity | None = None
    if master_key is not None:
        master = load_master_key_file(master_key, token.master_address)
        targets.append(files.master_key)
    _refuse_existing(targets)
    sections = node_sections(
        node_id=node_id, master_address=token.master_address, listen=listen,
        advertise=advertise, priority=priority,
        master_key=Path("master") / SECRET_KEY_FILE if master is not None else None,
        peers=[f"{token.inviter_id}@{token.inviter_address}"],
        peer_keys={token.inviter_id: token.inviter_public_key.hex()}, timing=token.timing,
        tor_options=tor_options, service_ports=service_ports,
    )
    _merge(sections, settings)
    comments = None if master is not None else {
        "master": "No key_path: this node never publishes until you copy the master key\n"
                  "here (mode 0600) and set key_path = \"master/hs_ed25519_secret_key\"."
    }
    text = render_config(sections, comments)
    config = _validated(text, files.config)
    _prepare_dir(root)
    try:
        if master is not None:
            save_hidden_service_dir(master, files.master_dir)
        save_pem(Ed25519Identity.generate(), files.node_key)
    except KeyFileError as exc:
        raise SetupError(str(exc)) from None
    write_cluster_secret(cluster_secret_path(config), token.cluster_secret)
    _write_config(files.config, text)
    return InitResult(files, token.master_address)
