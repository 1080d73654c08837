"""The daemon's coordination link, pure parts: keys, roster -> peers, torrc, status."""

from __future__ import annotations

import base64
import os
import subprocess
from pathlib import Path

import msgspec
import pytest

from onionmesh.config import Config, parse_config
from onionmesh.crypto.keys import Ed25519Identity
from onionmesh.mesh.identity import PeerSeed
from onionmesh.mesh.roster import MemberEntry
from onionmesh.node.coordination_keys import (
    coordination_key_path,
    ensure_coordination_keys,
    load_coordination_keys,
    wireguard_key_path,
)
from onionmesh.node.coordination_peers import (
    coordination_peers,
    entry_addresses,
    with_roster_seeds,
)
from onionmesh.node.errors import KeyCheckError
from onionmesh.node.snapshot import format_status
from onionmesh.node.tor_instance import managed_torrc
from onionmesh.status_document import PeerPathStatus, decode_status
from onionmesh.tor.torrc import write_ob_config
from onionmesh.transport.paths import PathConfig, PathSelector
from onionmesh.wireguard.keys import WireGuardKeyPair, decode_key

MASTER = "a" * 56 + ".onion"


def _config(tmp_path: Path, extra: str = "") -> Config:
    text = (f'[node]\nid = "n1"\nstate_dir = "{tmp_path}"\n[master]\naddress = "{MASTER}"\n'
            '[coordination]\nlisten = "10.77.0.1:7443"\npeers = ["n3@10.77.0.3:7500"]\n'
            '[membership]\nroster_path = "roster"\n'
            + extra +
            '[wireguard]\nenabled = true\naddress = "10.77.0.1/24"\n'
            'peers = { n2 = { endpoint = "10.231.0.2:51820", tunnel_ip = "10.77.0.2" }, '
            'n3 = { endpoint = "10.231.0.3:51820", tunnel_ip = "10.77.0.3" } }\n')
    return parse_config(text, tmp_path / "onionmesh.toml")


def _member(node_id: str, wg: bool = True, onion: bool = True) -> MemberEntry:
    return MemberEntry(node_id, os.urandom(32), True, 1,
                       decode_key(WireGuardKeyPair.generate().public_key) if wg else b"",
                       Ed25519Identity.generate().onion_address if onion else "")


def test_keys_are_made_once_private_and_never_overwritten(tmp_path: Path):
    config = _config(tmp_path)
    keys = ensure_coordination_keys(config)
    for path in (wireguard_key_path(config), coordination_key_path(config)):
        assert path.stat().st_mode & 0o777 == 0o600
    again = ensure_coordination_keys(config)
    assert again.wireguard.public_key == keys.wireguard.public_key
    assert again.onion_address == keys.onion_address
    assert len(keys.wg_public_raw) == 32 and keys.onion_address.endswith(".onion")
    assert keys.onion_address != "" and "private" not in repr(keys)
    wireguard_key_path(config).chmod(0o644)
    with pytest.raises(KeyCheckError, match=r"wireguard-key-file.*chmod 600"):
        load_coordination_keys(config)
    wireguard_key_path(config).chmod(0o600)
    coordination_key_path(config).write_bytes(b"not a key")
    with pytest.raises(KeyCheckError, match="coordination-key-file"):
        load_coordination_keys(config)


def test_roster_members_become_wireguard_peers_and_tor_peers(tmp_path: Path):
    config = _config(tmp_path)
    n2, n3, n4 = _member("n2"), _member("n3", onion=False), _member("n4")
    peers = coordination_peers(config, [_member("n1"), n2, n3, n4])
    assert [p.node_id for p in peers.wireguard] == ["n2", "n3"]
    assert peers.wireguard[0].public_key == base64.b64encode(n2.wg_key).decode()
    assert peers.wireguard[0].endpoint == "10.231.0.2:51820"
    links = {p.node_id: p for p in peers.links}
    # Mesh port: the one [coordination] peers names for n3, else our own.
    assert links["n2"].address == "10.77.0.2:7443" and links["n3"].address == "10.77.0.3:7500"
    assert links["n2"].tor is not None
    assert links["n2"].tor.onion == n2.coord_onion.removesuffix(".onion")
    assert links["n3"].tor is None
    assert peers.missing == (
        "n3: its roster entry has no coordination onion (no tor fallback for it)",
        "n4: its roster entry has no WireGuard endpoint and tunnel (mesh) address (made "
        "before entries carried them, or without [wireguard] endpoint) and there is no "
        "[wireguard] peers entry for it",
    )
    # A member carrying our WireGuard key, or one another member has, is left out.
    own = decode_key(WireGuardKeyPair.generate().public_key)
    copy = MemberEntry("n3", os.urandom(32), True, 1, n2.wg_key, "")
    mine = MemberEntry("n3", os.urandom(32), True, 1, own, "")
    assert coordination_peers(config, [n2, copy]).missing == (
        "n3: its roster entry has the WireGuard key of n2",)
    assert [p.node_id for p in coordination_peers(config, [n2, mine], own).wireguard] == ["n2"]
    keyless = MemberEntry("n2", os.urandom(32), True, 1)
    only = coordination_peers(config, [keyless])
    assert only.wireguard == () and only.missing == (
        "n2: its roster entry has no WireGuard key",)


def _addressed(node_id: str, i: int, endpoint: str = "", mesh: str = "") -> MemberEntry:
    base = _member(node_id)
    return MemberEntry(node_id, base.node_key, True, 1, base.wg_key, base.coord_onion,
                       endpoint or f"192.0.2.{i}:51820", mesh or f"10.77.0.{i}:7443")


def _bare_config(tmp_path: Path, peers: str = "", endpoint: str = "") -> Config:
    """n1 with WireGuard on and no [coordination]/[wireguard] peers, as `join` writes it."""
    return parse_config(
        f'[node]\nid = "n1"\nstate_dir = "{tmp_path}"\n[master]\naddress = "{MASTER}"\n'
        '[coordination]\nlisten = "10.77.0.1:7443"\n[membership]\nroster_path = "roster"\n'
        '[wireguard]\nenabled = true\naddress = "10.77.0.1/24"\n' + endpoint + peers,
        tmp_path / "onionmesh.toml")


def test_peers_come_from_the_signed_roster_entries_without_config_lines(tmp_path: Path):
    config = _bare_config(tmp_path)
    n2, n3 = _addressed("n2", 2), _addressed("n3", 3, mesh="10.77.0.3:7500")
    peers = coordination_peers(config, [_addressed("n1", 1), n2, n3])
    assert peers.missing == ()
    assert [(p.node_id, p.endpoint, str(p.tunnel_ip)) for p in peers.wireguard] == [
        ("n2", "192.0.2.2:51820", "10.77.0.2"), ("n3", "192.0.2.3:51820", "10.77.0.3")]
    assert [(p.node_id, p.address) for p in peers.links] == [
        ("n2", "10.77.0.2:7443"), ("n3", "10.77.0.3:7500")]  # the entry's mesh port
    # A new member in the roster is a new peer; a member gone is no peer.
    n4 = _addressed("n4", 4)
    assert [p.node_id for p in coordination_peers(config, [n3, n4]).wireguard] == ["n3", "n4"]
    # The mesh seeds: configured peers first, then every addressed member once.
    seeds = with_roster_seeds([PeerSeed("n2", "10.77.0.2:7443")], peers)
    assert [(s.node_id, s.address) for s in seeds] == [
        ("n2", "10.77.0.2:7443"), ("n3", "10.77.0.3:7500")]


def test_config_peers_override_the_roster_addressing_never_the_key(tmp_path: Path):
    config = _bare_config(tmp_path, peers=(
        'peers = { n2 = { endpoint = "198.51.100.7:4000", tunnel_ip = "10.77.0.20" } }\n'))
    n2 = _addressed("n2", 2)
    (peer,) = coordination_peers(config, [n2]).wireguard
    assert (peer.endpoint, str(peer.tunnel_ip)) == ("198.51.100.7:4000", "10.77.0.20")
    assert peer.public_key == base64.b64encode(n2.wg_key).decode()
    (link,) = coordination_peers(config, [n2]).links
    assert link.address == "10.77.0.20:7443"  # the entry's mesh port, the override's IP


def test_roster_addressing_that_cannot_route_is_left_out_and_named(tmp_path: Path):
    config = _bare_config(tmp_path)
    outside = _addressed("n2", 2, mesh="10.78.0.2:7443")
    mine = _addressed("n3", 3, mesh="10.77.0.1:7443")
    first, twin = _addressed("n4", 4), _addressed("n5", 5, mesh="10.77.0.4:7443")
    half = MemberEntry("n6", os.urandom(32), True, 1, _member("n6").wg_key, "",
                       "192.0.2.6:51820")
    peers = coordination_peers(config, [outside, mine, first, twin, half])
    assert [p.node_id for p in peers.wireguard] == ["n4"]
    assert peers.missing == (
        "n2: its tunnel address 10.78.0.2 is outside this node's tunnel network 10.77.0.0/24",
        "n3: its tunnel address 10.77.0.1 is n1's",
        "n5: its tunnel address 10.77.0.4 is n4's",
        "n6: its roster entry has no tunnel (mesh) address (made before entries carried "
        "them, or without [wireguard] endpoint) and there is no [wireguard] peers entry "
        "for it",
    )


def test_init_signs_the_endpoint_and_mesh_address_into_the_entry(tmp_path: Path):
    assert entry_addresses(_bare_config(tmp_path)) == ("", "")
    config = _bare_config(tmp_path, endpoint='endpoint = "192.0.2.1:51820"\n')
    assert entry_addresses(config) == ("192.0.2.1:51820", "10.77.0.1:7443")


@pytest.mark.tor
@pytest.mark.parametrize("extra", ["", "[tor]\nsocks_port = 19050\n",
                                   "[resilience]\ntor_fallback_enabled = false\n"])
def test_managed_tor_gets_a_unix_socks_port_for_the_fallback_only(tmp_path: Path, extra: str):
    """The managed torrc, checked by a real tor (``tor --verify-config``)."""
    config = _config(tmp_path, extra)
    (tmp_path / "tor").mkdir(mode=0o700)
    write_ob_config(tmp_path / "hs", Ed25519Identity.generate().onion_address)  # as the daemon does
    text = managed_torrc(config, tmp_path / "tor", tmp_path / "hs", tmp_path / "c.sock")
    socks = [line for line in text.splitlines() if line.startswith("SocksPort")]
    # New consensuses at once, so a period boundary is seen before clients see it.
    assert {"FetchDirInfoEarly 1", "FetchDirInfoExtraEarly 1"} <= set(text.splitlines())
    if "fallback" in extra:
        assert socks == ["SocksPort 0"]
    else:
        assert f"SocksPort unix:{tmp_path}/tor-socks.sock ExtendedErrors" in socks
        assert ("SocksPort 19050" in socks) == ("19050" in extra)
    (tmp_path / "torrc").write_text(text)
    checked = subprocess.run(["tor", "--verify-config", "-f", str(tmp_path / "torrc")],
                             capture_output=True, text=True, timeout=60, check=False)
    assert checked.returncode == 0, checked.stdout[-1000:]


def test_status_shows_each_peers_path_handshake_and_fallback(tmp_path: Path):
    selector = PathSelector(PathConfig(), 1000.0)
    selector.set_peers(["n2"], 1000.0)
    view = selector.status(1001.0)["n2"]
    assert msgspec.convert(view, PeerPathStatus).path.value == "wireguard"
    doc = decode_status({
        "node": {"id": "n1", "state": "running"}, "master_address": MASTER,
        "clock": {"verdict": "ok", "message": "clock OK"},
        "coordination": {
            "interface": "om0123456789", "tunnel_address": "10.77.0.1/24",
            "tor_fallback": True, "backend": "wireguard-go",
            "missing_peers": ["n4: no [wireguard] peers entry (endpoint, tunnel_ip)"],
            "peers": {
                "n2": {**view, "path": "tor", "fallback_since": 1_800_000_000.0,
                       "last_handshake_age": 190.0, "fallbacks": 1,
                       "tor_stream": {"connected": True, "connects": 1}},
                "n3": {"path": "wireguard", "last_handshake_age": 3.0},
            },
        },
    })
    assert doc.coordination is not None
    assert doc.coordination.peers["n2"].tor_stream.connected
    text = format_status(doc)
    assert "coordination: WireGuard om0123456789 (wireguard-go) at 10.77.0.1/24" in text
    assert "n2               over tor       last handshake 190 s ago since 2027-01-15" in text
    assert "n3               over wireguard last handshake 3 s ago" in text
    assert "! n4: no [wireguard] peers entry" in text
