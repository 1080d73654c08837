"""Pure parts of the WireGuard layer: keys, names, spec checks, dump parsing, repair plans."""

from __future__ import annotations

import ipaddress
import os
import subprocess
from pathlib import Path

import pytest

from onionmesh.wireguard.dump import DeviceState, LinkState, parse_ip_addr_json, parse_wg_dump
from onionmesh.wireguard.errors import CommandError, DumpParseError, WireGuardError
from onionmesh.wireguard.keys import WireGuardKeyPair, decode_key, public_key_of
from onionmesh.wireguard.names import check_interface_name, default_interface_name
from onionmesh.wireguard.plan import (
    AddAddress,
    ConfigureDevice,
    CreateInterface,
    Observation,
    RemoveAddress,
    RemovePeer,
    SetLinkUp,
    SetPeer,
    peer_health,
    plan_repairs,
)
from onionmesh.wireguard.spec import InterfaceSpec, PeerSpec

NOW = 1_800_000_000.0
A, B, C = (WireGuardKeyPair.generate() for _ in range(3))


def peer(pair: WireGuardKeyPair, n: int) -> PeerSpec:
    return PeerSpec(f"n{n}", pair.public_key, f"10.9.0.{n}:51820",
                    ipaddress.ip_address(f"10.10.0.{n}"))


SPEC = InterfaceSpec("omtest", 51820, ipaddress.ip_interface("10.10.0.1/24"), A.public_key, 5,
                     (peer(B, 2), peer(C, 3)))


def test_key_pair_matches_wg_pubkey(tmp_path: Path) -> None:
    pair = WireGuardKeyPair.generate()
    out = subprocess.run(["wg", "pubkey"], input=pair.private_key + "\n", text=True,
                         capture_output=True, check=True).stdout.strip()
    assert out == pair.public_key
    path = tmp_path / "wg.key"
    pair.save(path)
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert WireGuardKeyPair.load(path) == pair
    assert WireGuardKeyPair.load_or_create(path) == pair
    with pytest.raises(WireGuardError, match="refusing to overwrite"):
        WireGuardKeyPair.generate().save(path)


def test_bad_keys_are_named_and_never_echoed(tmp_path: Path) -> None:
    with pytest.raises(WireGuardError, match="44 base64"):
        decode_key("abc")
    with pytest.raises(WireGuardError, match="not valid base64"):
        decode_key("!" * 43 + "=")
    path = tmp_path / "wg.key"
    path.write_text("x" * 40 + "\n")
    with pytest.raises(WireGuardError, match=str(path)) as info:
        WireGuardKeyPair.load(path)
    assert "x" * 10 not in str(info.value)
    with pytest.raises(WireGuardError, match="no such WireGuard key"):
        WireGuardKeyPair.load(tmp_path / "missing")
    assert public_key_of(A.private_key) == A.public_key
    assert A.private_key not in repr(A)


def test_interface_names() -> None:
    one = default_interface_name("n1", Path("/var/lib/a"))
    assert one == default_interface_name("n1", Path("/var/lib/a"))
    assert one != default_interface_name("n1", Path("/var/lib/b"))
    assert one != default_interface_name("n2", Path("/var/lib/a"))
    assert len(one) <= 15 and check_interface_name(one) == one
    for bad in ("", "a" * 16, "wg 0", "..", "a/b"):
        with pytest.raises(WireGuardError, match="1-15 characters"):
            check_interface_name(bad)


def test_spec_refuses_inconsistent_peers() -> None:
    with pytest.raises(WireGuardError, match="own WireGuard key"):
        InterfaceSpec("x", 1, SPEC.address, A.public_key, 5, (peer(A, 2),))
    with pytest.raises(WireGuardError, match="share one WireGuard key"):
        InterfaceSpec("x", 1, SPEC.address, A.public_key, 5, (peer(B, 2), peer(B, 3)))
    with pytest.raises(WireGuardError, match="tunnel address"):
        InterfaceSpec("x", 1, SPEC.address, A.public_key, 5, (peer(B, 1),))
    with pytest.raises(WireGuardError, match="IP literal"):
        PeerSpec("n", B.public_key, "example.org:1", ipaddress.ip_address("10.0.0.1"))
    with pytest.raises(WireGuardError, match="host:port"):
        PeerSpec("n", B.public_key, "10.0.0.1", ipaddress.ip_address("10.0.0.1"))
    with pytest.raises(WireGuardError, match="listen port"):
        InterfaceSpec("x", 0, SPEC.address, A.public_key)


DUMP = (
    f"{A.private_key}\t{A.public_key}\t51820\toff\n"
    f"{B.public_key}\t(none)\t10.9.0.2:51820\t10.10.0.2/32\t{int(NOW) - 10}\t1000\t2000\t5\n"
    f"{C.public_key}\t(none)\t(none)\t(none)\t0\t0\t0\toff\n"
)


def test_parse_wg_dump() -> None:
    state = parse_wg_dump(DUMP)
    assert state.public_key == A.public_key and state.has_private_key
    assert state.listen_port == 51820
    b, c = state.peers
    assert (b.endpoint, b.allowed_ips, b.rx_bytes, b.tx_bytes, b.persistent_keepalive) == (
        "10.9.0.2:51820", ("10.10.0.2/32",), 1000, 2000, 5)
    assert (c.endpoint, c.allowed_ips, c.latest_handshake, c.persistent_keepalive) == (
        None, (), 0, 0)
    assert "private" not in repr(state).lower() or A.private_key not in repr(state)


@pytest.mark.parametrize("text, problem", [
    ("", "empty"),
    ("a\tb\n", "line 1: expected 4"),
    ("k\tp\tnotaport\toff\n", "listen-port must be a number"),
    ("k\tp\t1\toff\nx\ty\n", "line 2: expected 8"),
    ("k\tp\t1\toff\nx\t(none)\t(none)\t(none)\tsoon\t0\t0\toff\n", "latest-handshake"),
])
def test_bad_dumps(text: str, problem: str) -> None:
    with pytest.raises(DumpParseError, match=problem) as info:
        parse_wg_dump(text)
    assert A.private_key not in str(info.value)


def test_dump_errors_never_echo_the_private_key() -> None:
    with pytest.raises(DumpParseError) as info:
        parse_wg_dump(f"{A.private_key}\t{A.public_key}\tbad\toff\n")
    assert A.private_key not in str(info.value)


def test_parse_ip_json() -> None:
    text = ('[{"ifname":"omtest","flags":["POINTOPOINT","UP","LOWER_UP"],'
            '"addr_info":[{"family":"inet","local":"10.10.0.1","prefixlen":24}]}]')
    link = parse_ip_addr_json(text, "omtest")
    assert link.up and link.addresses == (ipaddress.ip_interface("10.10.0.1/24"),)
    for bad in ("nope", "[]", '[{"addr_info":[{"local":"x"}]}]'):
        with pytest.raises(DumpParseError, match="omtest"):
            parse_ip_addr_json(bad, "omtest")


LINK = LinkState("omtest", True, (SPEC.address,))


def test_missing_interface_is_created_and_fully_configured() -> None:
    plan = plan_repairs(SPEC, Observation(link=None, device=None), NOW)
    assert plan.problems == ()
    assert plan.actions[0] == CreateInterface()
    assert ConfigureDevice() in plan.actions
    assert {a.peer.node_id for a in plan.actions if isinstance(a, SetPeer)} == {"n2", "n3"}
    assert plan.actions[-2:] == (AddAddress(SPEC.address), SetLinkUp())


def test_dead_wireguard_go_is_restarted() -> None:
    seen = Observation(link=LINK, device=parse_wg_dump(DUMP), process_alive=False)
    assert plan_repairs(SPEC, seen, NOW).actions[0] == CreateInterface()


def test_name_used_in_another_namespace_is_a_problem_not_a_repair() -> None:
    plan = plan_repairs(SPEC, Observation(link=None, device=parse_wg_dump(DUMP)), NOW)
    assert plan.actions == () and "another network namespace" in plan.problems[0]


def test_link_that_is_not_wireguard_is_a_problem() -> None:
    plan = plan_repairs(SPEC, Observation(link=LINK, device=None, device_error="nope"), NOW)
    assert plan.actions == () and "not a WireGuard device" in plan.problems[0]
    assert "nope" in plan.problems[0]


def test_peer_drift_is_repaired() -> None:
    stranger = WireGuardKeyPair.generate().public_key
    dump = DUMP + f"{stranger}\t(none)\t(none)\t(none)\t0\t0\t0\toff\n"
    seen = Observation(link=LinkState("omtest", False, (ipaddress.ip_interface("1.2.3.4/8"),)),
                       device=parse_wg_dump(dump), process_alive=True)
    actions = plan_repairs(SPEC, seen, NOW).actions
    assert RemovePeer(stranger) in actions
    # n3 has no endpoint, no allowed ip and no keepalive: set fully.
    assert SetPeer(SPEC.peers[1], True) in actions
    # n2 is configured and handshook 10 s ago: left alone.
    assert all(not (isinstance(a, SetPeer) and a.peer.node_id == "n2") for a in actions)
    assert RemoveAddress(ipaddress.ip_interface("1.2.3.4/8")) in actions
    assert AddAddress(SPEC.address) in actions and SetLinkUp() in actions
    assert ConfigureDevice() not in actions


def test_roamed_peer_keeps_its_endpoint_until_stale() -> None:
    roamed = DUMP.replace("10.9.0.2:51820", "10.9.9.9:4000")
    seen = Observation(link=LINK, device=parse_wg_dump(roamed))
    assert not any(isinstance(a, SetPeer) and a.peer.node_id == "n2"
                   for a in plan_repairs(SPEC, seen, NOW).actions)
    later = plan_repairs(SPEC, seen, NOW + 1000).actions
    assert SetPeer(SPEC.peers[0], True) in later


def test_wrong_key_or_port_is_reconfigured() -> None:
    other = DUMP.replace("\t51820\toff\n", "\t4000\toff\n", 1)
    seen = Observation(link=LINK, device=parse_wg_dump(other))
    assert ConfigureDevice() in plan_repairs(SPEC, seen, NOW).actions
    no_key = DeviceState(None, False, 51820, ())
    assert ConfigureDevice() in plan_repairs(SPEC, Observation(LINK, no_key), NOW).actions


def test_in_sync_means_no_actions() -> None:
    dump = DUMP.replace("(none)\t(none)\t(none)\t0\t0\t0\toff",
                        f"(none)\t10.9.0.3:51820\t10.10.0.3/32\t{int(NOW) - 5}\t0\t0\t5")
    assert plan_repairs(SPEC, Observation(LINK, parse_wg_dump(dump)), NOW).actions == ()


def test_peer_health() -> None:
    health = {h.node_id: h for h in peer_health(SPEC, parse_wg_dump(DUMP), NOW)}
    assert health["n2"].handshake_age == 10 and not health["n2"].stale
    assert health["n2"].rx_bytes == 1000 and health["n2"].tx_bytes == 2000
    assert health["n3"].latest_handshake is None and health["n3"].stale
    assert all(h.stale and not h.configured for h in peer_health(SPEC, None, NOW))
    assert peer_health(SPEC, parse_wg_dump(DUMP), NOW + 181)[0].stale


def test_command_error_message() -> None:
    err = CommandError(["wg", "set", "x"], 1, "Unable to modify interface\n")
    assert str(err) == "`wg set x` failed: exit 1: Unable to modify interface"
    assert "not found" in str(CommandError(["wg"], None, "wg not found on PATH"))
