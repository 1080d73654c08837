"""docs/scenarios.md §5 with the real daemon: 3 namespace hosts each running `onionmesh run`
with `[wireguard] enabled` (set up by init/add-node/join, so every node's WireGuard key
and coordination onion come from the signed roster), real wireguard-go and real tor, at
the default timings. Blocking one host's WireGuard port moves its heartbeats to tor:
nobody is declared dead, no second publisher, its intro points stay in the master
descriptor the HSDirs serve; after unblocking, every path is back on WireGuard."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import pytest

from onionmesh.errors import OnionmeshError
from onionmesh.mesh.config import MeshConfig
from onionmesh.mesh.vocabulary import PeerState
from onionmesh.testnet.daemonlab import DaemonLab
from onionmesh.testnet.meshlab import WG_PORT
from onionmesh.testnet.netns import require_lab_tools
from onionmesh.testnet.network import TorNetwork
from onionmesh.testnet.nodes import run_coroutine
from onionmesh.tor.control import TorController
from onionmesh.tor.intro_points import read_own_descriptor
from onionmesh.transport.paths import PathConfig
from tests.cluster.helpers import fetched_intro_keys

pytestmark = [pytest.mark.netns, pytest.mark.tor, pytest.mark.tornet, pytest.mark.slow]

DEFAULTS = MeshConfig()
DEAD_AFTER = (DEFAULTS.dead_threshold + DEFAULTS.heartbeat_slack) * DEFAULTS.heartbeat_interval
PATHS = PathConfig.for_heartbeat(DEFAULTS.heartbeat_interval, DEAD_AFTER)
NODES = (1, 2, 3)


@pytest.fixture(scope="module")
def daemonlab(tornet: TorNetwork) -> Iterator[DaemonLab]:
    missing = require_lab_tools()
    if missing:
        pytest.fail(f"needs {', '.join(missing)}", pytrace=False)
    lab = DaemonLab(tornet, 3, tag="dw").start()
    try:
        yield lab
    finally:
        lab.stop()
    assert lab.lab.leftovers() == []


def states(lab: DaemonLab) -> dict[int, dict[str, PeerState]]:
    docs = {i: lab.status(i) for i in NODES}
    return {i: {n: p.state for n, p in doc.peers.items()} if doc else {} for i, doc in
            docs.items()}


def all_alive(lab: DaemonLab) -> bool:
    return all(sorted(view.values()) == [PeerState.ALIVE] * 2 for view in states(lab).values())


def publishers(lab: DaemonLab) -> set[str | None]:
    return {doc.cluster.publisher if doc and doc.cluster else None
            for doc in (lab.status(i) for i in NODES)}


def all_paths(lab: DaemonLab, path: str) -> bool:
    return all(lab.path(i, j) == path for i in NODES for j in NODES if i != j)


async def _node_keys(lab: DaemonLab, index: int, client) -> set[bytes]:
    """The node's intro keys in both its descriptors: its tor's current one and the one a
    client fetches now (around a period start the master carries either)."""
    keys = await _own_intro_keys(lab, index)
    doc = lab.status(index)
    if doc is not None and doc.node.onion_address:
        with contextlib.suppress(OnionmeshError):
            keys |= await fetched_intro_keys(client, doc.node.onion_address)
    return keys


async def _own_intro_keys(lab: DaemonLab, index: int) -> set[bytes]:
    from onionmesh.descriptor.parse import parse_descriptor
    from onionmesh.hsdir.timeperiod import period_length_minutes
    from onionmesh.publish.publisher import fetch_consensus

    doc = lab.status(index)
    assert doc is not None and doc.node.onion_address
    address = doc.node.onion_address
    controller = await TorController.connect(port=lab.hosts[index].tor.control_port)
    try:
        length = period_length_minutes(await fetch_consensus(controller))
        text = await read_own_descriptor(controller, address)
    finally:
        await controller.close()
    if not text:
        return set()
    return {ip.auth_key for ip in parse_descriptor(text, address, period_length=length)
            .intro_points}


def served_keys(lab: DaemonLab, client) -> set[bytes]:
    return run_coroutine(fetched_intro_keys(client, lab.master_address), timeout=60)


def test_daemons_fall_back_to_tor_on_a_blocked_tunnel_and_return(
        daemonlab: DaemonLab, tornet: TorNetwork) -> None:
    lab = daemonlab
    lab.wait_until(lambda: all_alive(lab) and len(publishers(lab) - {None}) == 1, 180,
                   "3 daemons alive over WireGuard, one publisher")
    assert all_paths(lab, "wireguard")
    (publisher,) = publishers(lab)
    status = lab.status(1)
    assert status is not None and status.coordination is not None
    assert status.coordination.backend in ("kernel", "wireguard-go")
    assert status.coordination.missing_peers == [] and status.coordination.problems == []
    # Tor streams to every peer's coordination onion warm before the fault.
    lab.wait_until(lambda: all(
        doc is not None and doc.coordination is not None and all(
            p.tor_stream is not None and p.tor_stream.connected
            for p in doc.coordination.peers.values())
        for doc in (lab.status(i) for i in NODES)), 240, "tor streams to every peer open")
    # Host 3's intro points are in the master descriptor the HSDirs serve.
    client = tornet.add_client(f"{lab.lab.prefix}c")
    try:
        lab.wait_until(lambda: run_coroutine(_node_keys(lab, 3, client), timeout=90)
                       & served_keys(lab, client), 240, "n3's intro points served", 3.0)

        lab.lab.block_udp_port(3, WG_PORT)
        blocked_at = time.monotonic()
        bound = PATHS.fallback_after + 2 * PATHS.probe_interval + 2.0
        lab.wait_until(lambda: lab.path(1, 3) == lab.path(2, 3) == "tor"
                       and lab.path(3, 1) == lab.path(3, 2) == "tor", bound,
                       "every path to and from host 3 on tor")
        switched = time.monotonic() - blocked_at
        assert lab.path(1, 2) == "wireguard"
        # Twice the time to death on tor: nobody dead, the same single publisher.
        end = time.monotonic() + 2 * DEAD_AFTER
        while time.monotonic() < end:
            view = states(lab)
            assert all(PeerState.DEAD not in v.values() for v in view.values()), view
            assert publishers(lab) == {publisher}
            time.sleep(0.5)  # sampling period of the invariant check
        lab.wait_until(lambda: all_alive(lab), 2 * DEFAULTS.heartbeat_interval,
                       "everyone alive over tor")
        doc3 = lab.status(3)
        assert doc3 is not None and doc3.coordination is not None
        assert doc3.coordination.received["tor"] > 0 and doc3.coordination.sent["tor"] > 0
        on_tor = doc3.coordination.peers["n1"]
        assert on_tor.fallback_since is not None and on_tor.fallbacks == 1
        assert "mesh traffic now goes over tor" in lab.log_text(3)
        lab.wait_until(lambda: {a["subject"] for a in lab.alerts(3)
                                if a["kind"] == "tor_fallback"} == {"n1", "n2"}, 10,
                       "tor_fallback alerts on host 3")
        # Its intro points are still in what the HSDirs serve.
        lab.wait_until(lambda: run_coroutine(_node_keys(lab, 3, client), timeout=90)
                       & served_keys(lab, client), 60, "n3's intro points still served", 3.0)

        lab.lab.unblock_udp_port(3, WG_PORT)
        restore = PATHS.backoff_cap * (1 + PATHS.jitter) + 2 * PATHS.probe_interval + 5
        lab.wait_until(lambda: all_paths(lab, "wireguard"), restore,
                       "every path back on WireGuard")
        assert "mesh traffic back on WireGuard" in lab.log_text(3)
        lab.wait_until(lambda: {a["subject"] for a in lab.alerts(3)
                                if a["kind"] == "wireguard_restored"} == {"n1", "n2"}, 10,
                       "wireguard_restored alerts on host 3")
        assert not any(a["kind"] == "node_dead" for i in NODES for a in lab.alerts(i))
        lab.wait_until(lambda: all_alive(lab), 2 * DEFAULTS.heartbeat_interval,
                       "everyone alive over WireGuard")
        assert publishers(lab) == {publisher}
        assert all("declared DEAD" not in lab.log_text(i) for i in NODES)
        print(f"block -> tor in {switched:.1f} s")
    finally:
        client.stop()


def test_a_removed_member_loses_its_wireguard_peer(daemonlab: DaemonLab) -> None:
    """The WireGuard peers follow the roster: `onionmesh remove-node n3` on n1 reaches n2
    by gossip, and both drop n3's WireGuard peer and tor stream. (Last in this module: it
    changes the shared cluster.)"""
    import subprocess
    import sys

    from onionmesh.config import load_config
    from onionmesh.node.coordination_keys import load_coordination_keys

    lab = daemonlab
    lab.wait_until(lambda: all_alive(lab), 120, "all alive")
    n3_key = load_coordination_keys(load_config(lab.hosts[3].config_path)).wireguard.public_key

    def wg_peers(index: int) -> str:
        config = load_config(lab.hosts[index].config_path)
        return lab.lab.run(index, ["wg", "show", str(config.wireguard.interface), "peers"])

    assert n3_key in wg_peers(1) and n3_key in wg_peers(2)
    done = subprocess.run([sys.executable, "-m", "onionmesh.cli", "remove-node", "-c",
                           str(lab.hosts[1].config_path), "n3"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    for index in (1, 2):
        lab.wait_until(lambda i=index: n3_key not in wg_peers(i) and (
            (doc := lab.status(i)) is not None and doc.coordination is not None
            and set(doc.coordination.peers) == {f"n{j}" for j in (1, 2) if j != i}),
            3 * DEFAULTS.heartbeat_interval + 15, f"n{index} dropped n3's WireGuard peer")
    assert "WireGuard peers now" in lab.log_text(2)
    assert lab.path(1, 2) == lab.path(2, 1) == "wireguard"
