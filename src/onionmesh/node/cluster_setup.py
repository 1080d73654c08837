"""Cluster material for operators: ``init`` (a new cluster), ``add-node`` (a join token
for one more node) and ``join`` (a node's config and keys through the join exchange).

``init`` makes the master key, the cluster secret, the first node's key, the
cluster's *authority key* and the roster signed by it, listing the first node
(files 0600). ``add-node`` (on a node with the authority key) records a fresh
one-time join key in the node's token bookkeeping and prints a token
(``join_tokens``): it holds no long-lived secret. ``join`` reads the token from
stdin or a file, makes the new node's key, and runs the join exchange with
the sponsor named in the token (its running daemon answers on its
coordination port): the answer carries the node's authority-signed roster
entry, the roster and the cluster secret boxed to this node. Only then is
anything written, so a refused join leaves nothing behind.

The master key never travels in a token: it moves only as the operator's own
copy of the key file (``join --master-key``).

Nothing here overwrites a file: every target is checked before the first
write, and the key writers refuse existing files anyway.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nacl.signing import SigningKey

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
from onionmesh.mesh.join import Joiner, JoinError, JoinResult
from onionmesh.mesh.join_attempts import BootstrapPeer, JoinAttempts, JoinRetryConfig
from onionmesh.mesh.roster import (
    AuthorityKey,
    MemberEntry,
    Roster,
    RosterError,
    load_roster,
    save_authority_key,
    save_roster,
)
from onionmesh.node.coordination_keys import (
    coordination_key_files,
    ensure_join_onion_key,
    join_onion_key_path,
    new_coordination_keys,
    save_coordination_keys,
    save_join_onion_key,
)
from onionmesh.node.coordination_peers import entry_addresses
from onionmesh.node.errors import KeyCheckError, SetupError, TokenError
from onionmesh.node.join_tokens import (
    JoinTokenBody,
    TokenStore,
    decode_token,
    encode_token,
)
from onionmesh.node.keyfiles import (
    cluster_secret_path,
    new_cluster_secret,
    write_cluster_secret,
)
from onionmesh.node.membership import load_authority, tokens_path
from onionmesh.node.startup import load_master_key_file

CONFIG_NAME = "onionmesh.toml"
# The settings every node of a cluster must share; the token carries them.
SHARED_TIMING = {
    "coordination": ("heartbeat_interval", "lease_duration", "lease_grace",
                     "datagram_max_age"),
    "resilience": ("dead_threshold", "removal_grace_period", "clock_skew_tolerance"),
}
_RENAMED_TIMING = {("coordination", "clock_skew_tolerance"): "datagram_max_age"}
TOKEN_WARNING = (
    "This join token admits one node, once, until it expires. Until then it is a secret: "
    "pass it to the new node over a private channel and feed it to `onionmesh join` on "
    "stdin or from a file (never on the command line, where other users can read it)."
)
MASTER_KEY_NOTE = (
    "The master key is not in the token. Copy the master key file to nodes that may publish "
    "yourself (e.g. scp, mode 0600) and pass it to `onionmesh join --master-key`."
)
JoinExchange = Callable[[Joiner, JoinTokenBody], JoinResult]


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

    @property
    def roster(self) -> Path:
        return self.root / "roster"

    @property
    def authority_key(self) -> Path:
        return self.root / "authority_key"


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
    timing: Mapping[str, Mapping[str, Any]] | None = None, tor_options: Sequence[str] = (),
    service_ports: Sequence[str] = (), authority: bool = False,
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
                         "cluster_secret_path": "cluster_secret"},
        "membership": {"roster_path": "roster",
                       "authority_key_path": "authority_key" if authority else None},
        "resilience": {"require_ntp_sync": True, "clock_check": "refuse"},
        "logging": {"level": "info"},
    }
    for section, keys in (timing or {}).items():
        allowed = SHARED_TIMING.get(section, ())
        for key, value in keys.items():
            # A token from a node before the rename names the datagram window by its
            # old, misleading name; the config gets the new one.
            key = _RENAMED_TIMING.get((section, key), key)
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
    """A new cluster in ``root``: master key, cluster secret, node key, authority key, the
    signed roster listing this node, the first node's config, and a first join token.

    ``settings`` (``{section: {key: value}}``) override or add config keys, e.g. a fast
    heartbeat profile for tests.
    """
    files = NodeFiles(root)
    _refuse_existing([files.config, files.node_key, files.cluster_secret, files.master_key,
                      files.roster, files.authority_key])
    master = Ed25519Identity.generate()
    node = Ed25519Identity.generate()
    authority = AuthorityKey.generate()
    sections = node_sections(
        node_id=node_id, master_address=master.onion_address, listen=listen,
        advertise=advertise, priority=priority, master_key=Path("master") / SECRET_KEY_FILE,
        tor_options=tor_options, service_ports=service_ports, authority=True,
    )
    _merge(sections, settings)
    text = render_config(sections)
    config = _validated(text, files.config)
    _refuse_existing(coordination_key_files(config))
    # The WireGuard key and coordination onion are made now, whether or not [wireguard]
    # is enabled yet, so the signed roster entry names them from the start.
    coordination = new_coordination_keys()
    # Its join onion in its entry too: should the authority key move to another node,
    # that node's tokens name this one as a relay.
    _refuse_existing([join_onion_key_path(config)])
    join_onion = Ed25519Identity.generate()
    roster = Roster(authority.public_key)
    roster.merge_entry(authority.sign_entry(
        MemberEntry(node_id, node.public_key, True, int(time.time()),
                    coordination.wg_public_raw, coordination.onion_address,
                    *entry_addresses(config), join_onion.onion_address)))
    _prepare_dir(root)
    try:
        save_hidden_service_dir(master, files.master_dir)
        save_pem(node, files.node_key)
        save_authority_key(files.authority_key, authority)
        save_roster(files.roster, roster)
        save_coordination_keys(config, coordination)
        save_join_onion_key(config, join_onion)
    except (KeyFileError, RosterError, KeyCheckError) as exc:
        raise SetupError(str(exc)) from None
    write_cluster_secret(files.cluster_secret, new_cluster_secret())
    _write_config(files.config, text)
    return InitResult(files, master.onion_address, issue_token(config))


def _write_config(path: Path, text: str) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise SetupError(f"refusing to overwrite existing file {path}") from None
    except OSError as exc:
        raise SetupError(f"cannot write {path}: {exc.strerror}") from None
    with os.fdopen(fd, "w") as handle:
        handle.write(text)


def parse_bootstrap(items: Sequence[str]) -> list[tuple[str, str]]:
    """``ID@ADDRESS.onion`` items (``add-node --bootstrap``, ``join --known-peer``)."""
    from onionmesh.node.join_tokens import check_bootstrap_peer

    peers = []
    for item in items:
        node_id, sep, onion = item.partition("@")
        if not sep:
            raise SetupError(f"bootstrap peer {item[:80]!r} must be ID@<56 base32>.onion")
        peers.append(check_bootstrap_peer(node_id, onion))
    return peers


MAX_BOOTSTRAP_PEERS = 16  # what a token holds (join_tokens.JoinTokenBody.bootstrap)


def issue_token(config: Config, *, node_id: str | None = None, may_publish: bool = True,
                lifetime: float | None = None, now: float | None = None,
                bootstrap: Sequence[tuple[str, str]] = ()) -> str:
    """``add-node``: a single-use join token with this node as the sponsor.

    The token's one-time join key is recorded (public half only) in this node's
    token bookkeeping, which its running daemon consults to answer the join.
    """
    from onionmesh.node.settings import advertise_address

    if node_id is not None:
        try:
            check_node_id(node_id)
        except MeshConfigError as exc:
            raise SetupError(str(exc)) from None
    authority = load_authority(config)
    assert config.membership.roster_path is not None  # the config requires it with a key
    try:
        roster = load_roster(config.membership.roster_path,
                             expected_authority=authority.public_key)
    except RosterError as exc:
        raise SetupError(exc.detail) from None
    if node_id is not None and node_id in roster:
        raise SetupError(f"node {node_id!r} is already in the roster")
    issued = time.time() if now is None else now
    lifetime = config.membership.token_lifetime if lifetime is None else lifetime
    join_seed = os.urandom(32)
    TokenStore(tokens_path(config)).issue(
        bytes(SigningKey(join_seed).verify_key), issued, lifetime, may_publish=may_publish,
        node_id=node_id,
    )
    timing = {s: {k: getattr(getattr(config, s), k) for k in keys}
              for s, keys in SHARED_TIMING.items()}
    # This node's join onion first (its daemon answers there), then the alternatives: those
    # named with --bootstrap, then every other member whose roster entry names its join
    # onion (each relays the request to this node over the mesh), up to what a token holds.
    join_onion = ensure_join_onion_key(config).onion_address
    members = [(m.node_id, m.join_onion) for m in roster.members()
               if m.join_onion and m.node_id != config.node_id]
    peers: list[tuple[str, str]] = []
    for peer in [(config.node_id, join_onion), *bootstrap, *members]:
        if peer[1] not in {o for _, o in peers} and len(peers) < MAX_BOOTSTRAP_PEERS:
            peers.append(peer)
    return encode_token(JoinTokenBody(
        join_seed, authority.public_key, config.master.address, config.node_id,
        advertise_address(config), issued + lifetime, timing, peers,
    ))


def udp_exchange(joiner: Joiner, token: JoinTokenBody) -> JoinResult:
    """The join exchange over UDP with the sponsor's running daemon."""
    from onionmesh.node.join_udp import join_over_udp

    return join_over_udp(joiner, token.sponsor_address)


def tor_exchange(socks: tuple[str, int] | str, *, known_peers: Sequence[tuple[str, str]] = (),
                 retry: JoinRetryConfig | None = None) -> JoinExchange:
    """The join exchange through tor (``socks``: the joiner's tor SOCKS port, host/port
    or a unix socket path): the token's bootstrap peers, then ``known_peers``, each
    attempt on a fresh circuit, with the retry schedule of ``mesh.join_attempts``."""
    import asyncio

    from onionmesh.node.join_tor import join_over_tor

    def run(joiner: Joiner, token: JoinTokenBody) -> JoinResult:
        peers = tuple(BootstrapPeer(i, o) for i, o in [*token.bootstrap, *known_peers])
        if not peers:
            raise SetupError("the token names no join onion and no --known-peer was given: "
                             "this token is from an onionmesh that joins only directly "
                             "(use --via direct, or ask for a new token)")
        max_age = float(token.timing.get("coordination", {}).get(
            "datagram_max_age", token.timing.get("coordination", {}).get(
                "clock_skew_tolerance", 300.0)))
        attempts = JoinAttempts(peers, token.expires_at, retry or JoinRetryConfig(),
                                os.urandom(8).hex())
        _check_socks(socks)
        return asyncio.run(join_over_tor(joiner, attempts, socks, max_age=max_age))

    return run


def _check_socks(socks: tuple[str, int] | str) -> None:
    """Fail at once, and say so, when no tor listens where the join would go through."""
    import socket

    family = socket.AF_UNIX if isinstance(socks, str) else (
        socket.AF_INET6 if ":" in socks[0] else socket.AF_INET)
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.settimeout(5.0)
            probe.connect(socks)
    except OSError as exc:
        where = socks if isinstance(socks, str) else f"{socks[0]}:{socks[1]}"
        raise SetupError(
            f"no tor SOCKS port at {where} ({exc.strerror or exc}): joining through tor needs "
            "a running tor (e.g. `apt install tor`, SOCKS on 127.0.0.1:9050) or --tor-socks"
        ) from None


def join_cluster(token_text: str, root: Path, *, node_id: str, listen: str,
                 advertise: str | None = None, priority: int = 100,
                 master_key: Path | None = None, tor_options: Sequence[str] = (),
                 service_ports: Sequence[str] = (),
                 settings: Mapping[str, Mapping[str, Any]] | None = None,
                 exchange: JoinExchange = udp_exchange) -> InitResult:
    """A joining node's config, keys, roster and cluster secret in ``root``, from a token.

    ``settings`` as for ``init_cluster`` (applied after the token's timing). Nothing is
    written unless the sponsor admits the node.
    """
    token = decode_token(token_text)
    try:
        check_node_id(node_id)
    except MeshConfigError as exc:
        raise SetupError(str(exc)) from None
    if node_id == token.sponsor_id:
        raise SetupError(f"node id {node_id!r} is the inviting node's; pick another")
    if time.time() >= token.expires_at:
        raise TokenError("this join token has expired; ask for a new one (`onionmesh add-node`)")
    files = NodeFiles(root)
    targets = [files.config, files.node_key, files.cluster_secret, files.roster]
    master: Ed25519Identity | None = None
    if master_key is not None:
        master = load_master_key_file(master_key, token.master_address)
        targets.append(files.master_key)
    _refuse_existing(targets)
    sections = node_sections(
        node_id=node_id, master_address=token.master_address, listen=listen,
        advertise=advertise, priority=priority,
        master_key=Path("master") / SECRET_KEY_FILE if master is not None else None,
        peers=[f"{token.sponsor_id}@{token.sponsor_address}"], timing=token.timing,
        tor_options=tor_options, service_ports=service_ports,
    )
    _merge(sections, settings)
    comments = None if master is not None else {
        "master": "No key_path: this node never publishes until you copy the master key\n"
                  "here (mode 0600) and set key_path = \"master/hs_ed25519_secret_key\"."
    }
    text = render_config(sections, comments)
    config = _validated(text, files.config)
    _refuse_existing([*coordination_key_files(config), join_onion_key_path(config)])
    node = Ed25519Identity.generate()
    assert node.seed is not None
    coordination = new_coordination_keys()
    # Its join onion (where it relays joins once a member) goes into its roster entry, so
    # the authority's `add-node` names it in later tokens.
    join_onion = Ed25519Identity.generate()
    wg_endpoint, mesh_address = entry_addresses(config)
    joiner = Joiner(token.join_seed, token.authority_key, node_id, node.seed, time.time(),
                    entropy=os.urandom(64), wg_key=coordination.wg_public_raw,
                    coord_onion=coordination.onion_address, wg_endpoint=wg_endpoint,
                    mesh_address=mesh_address, join_onion=join_onion.onion_address)
    result = exchange(joiner, token)
    if result.cluster_secret is None:
        raise SetupError("the sponsor sent no cluster secret")
    _prepare_dir(root)
    try:
        if master is not None:
            save_hidden_service_dir(master, files.master_dir)
        save_pem(node, files.node_key)
        save_roster(files.roster, result.roster)
        save_coordination_keys(config, coordination)
        save_join_onion_key(config, join_onion)
    except (KeyFileError, RosterError, KeyCheckError) as exc:
        raise SetupError(str(exc)) from None
    write_cluster_secret(cluster_secret_path(config), result.cluster_secret)
    _write_config(files.config, text)
    return InitResult(files, token.master_address)


def local_exchange(sponsor_config: Config) -> JoinExchange:
    """The sponsor's answer computed in this process, for setting up nodes offline (tests,
    the demo) while the sponsor's daemon is not running: the same ``JoinService`` the
    daemon runs, with its token bookkeeping; only the carrier differs. The sponsor's
    roster file gets the new entry."""
    from onionmesh.node.join_service import JoinService
    from onionmesh.node.keyfiles import load_node_key
    from onionmesh.node.membership import load_node_roster, make_sponsor

    def run(joiner: Joiner, token: JoinTokenBody) -> JoinResult:
        roster = load_node_roster(sponsor_config, load_node_key(sponsor_config).public_key)
        assert roster is not None and sponsor_config.membership.roster_path is not None
        path = sponsor_config.membership.roster_path

        def admitted(entry: Any) -> None:
            roster.merge_entry(entry)
            save_roster(path, roster)

        service = JoinService(make_sponsor(sponsor_config, roster), TokenStore(
            tokens_path(sponsor_config)), time.time, admitted)
        for reply in service.handle(joiner.request(), "local"):
            try:
                result = joiner.receive(reply, time.time())
            except JoinError:
                break
            if result is not None:
                return result
        raise SetupError("the sponsor refused the join (token unknown, used or expired)")

    return run
