"""docs/scenarios.md §5 (WireGuard tunnel failure) on 3 namespace hosts with real wireguard-go and
real tor, at the default mesh timings: blocking one host's WireGuard port moves its
heartbeats to tor within a bound, nobody is declared dead, the publisher stays, and
WireGuard carries them again after unblocking."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from onionmesh.mesh.config import MeshConfig
from onionmesh.testnet.meshlab import WG_PORT, MeshLab
from onionmesh.testnet.netns import require_lab_tools
from onionmesh.testnet.network import TorNetwork
from onionmesh.transport.paths import PathConfig

pytestmark = [pytest.mark.netns, pytest.mark.tor, pytest.mark.tornet, pytest.mark.slow]

DEFAULTS = MeshConfig()
DEAD_AFTER = (DEFAULTS.dead_threshold + DEFAULTS.heartbeat_slack) * DEFAULTS.heartbeat_interval
PATHS = PathConfig.for_heartbeat(DEFAULTS.heartbeat_interval, DEAD_AFTER)


@pytest.fixture(scope="module")
def meshlab(tornet: TorNetwork) -> Iterator[MeshLab]:
    missing = require_lab_tools()
    if missing:
        pytest.fail(f"needs {', '.join(missing)}", pytrace=False)
    lab = MeshLab(tornet, 3, mesh={}, tag="fb").start()
    try:
        yield lab
    finally:
        lab.stop()
    assert lab.lab.leftovers() == []


def all_alive(lab: MeshLab) -> bool:
    for i in lab.hosts:
        status = lab.status(i)
        if status is None or sorted(status["peers"].values()) != ["alive", "alive"]:
            return False
    return True


def settled(lab: MeshLab) -> bool:
    """All alive and one publisher that every node agrees on."""
    return all_alive(lab) and len(publishers(lab)) == 1 and None not in publishers(lab)


def none_dead(lab: MeshLab) -> bool:
    """No false death (a lost heartbeat may make a peer "suspect" for a moment)."""
    return all("dead" not in (lab.status(i) or {"peers": {}})["peers"].values()
               for i in lab.hosts)


def publishers(lab: MeshLab) -> set[str | None]:
    return {(lab.status(i) or {}).get("publisher") for i in lab.hosts}


def test_blocked_tunnel_falls_back_to_tor_and_returns(meshlab: MeshLab) -> None:
    meshlab.wait_until(lambda: settled(meshlab), 120, "3 nodes alive, one publisher")
    assert all(meshlab.path(i, j) == "wireguard" for i in (1, 2, 3) for j in (1, 2, 3) if i != j)
    publisher = publishers(meshlab).pop()
    # Tor streams are warm before any fault (so a fallback does not wait for circuits).
    meshlab.wait_until(lambda: all(
        all(p["tor_stream"] and p["tor_stream"]["connected"]
            for p in meshlab.status(i)["paths"]["peers"].values()) for i in (1, 2, 3)),
        180, "tor streams to every peer open")

    meshlab.lab.block_udp_port(3, WG_PORT)
    bound = PATHS.fallback_after + 2 * PATHS.probe_interval + 1.0
    meshlab.wait_until(lambda: meshlab.path(1, 3) == meshlab.path(2, 3) == "tor"
                       and meshlab.path(3, 1) == meshlab.path(3, 2) == "tor", bound,
                       "all paths to and from host 3 on tor")
    assert meshlab.path(1, 2) == "wireguard"  # the others' tunnel is untouched
    # Hold the block for twice the time to death: heartbeats flow over tor, nobody dies
    # (a heartbeat lost during the switch may make a peer "suspect" for a moment), the
    # publisher does not change, and everyone is alive again over tor.
    end = time.monotonic() + 2 * DEAD_AFTER
    while time.monotonic() < end:
        assert none_dead(meshlab), [meshlab.status(i)["peers"] for i in (1, 2, 3)]
        assert publishers(meshlab) == {publisher}
        time.sleep(0.5)
    meshlab.wait_until(lambda: all_alive(meshlab), DEFAULTS.heartbeat_interval * 2,
                       "everyone alive over tor")
    assert meshlab.events("PeerDead") == []
    status3 = meshlab.status(3)
    assert status3["paths"]["received"]["tor"] > 0 and status3["paths"]["sent"]["tor"] > 0
    fallback = status3["paths"]["peers"]["n1"]
    assert fallback["fallback_since"] is not None and fallback["fallbacks"] == 1
    assert {e["peer"] for i, e in meshlab.events("FellBackToTor") if i == 3} == {"n1", "n2"}

    meshlab.lab.unblock_udp_port(3, WG_PORT)
    restore_bound = PATHS.backoff_cap * (1 + PATHS.jitter) + 2 * PATHS.probe_interval
    meshlab.wait_until(lambda: all(meshlab.path(i, j) == "wireguard" for i in (1, 2, 3)
                                   for j in (1, 2, 3) if i != j), restore_bound,
                       "every path back on WireGuard")
    assert len(meshlab.events("WireGuardRestored")) >= 4
    meshlab.wait_until(lambda: all_alive(meshlab), DEFAULTS.heartbeat_interval * 2,
                       "everyone alive over WireGuard")
    assert publishers(meshlab) == {publisher}
    assert meshlab.events("PeerDead") == []


def test_slow_lossy_tunnel_no_false_deaths_and_latency_past_tolerance_falls_back(
        meshlab: MeshLab) -> None:
    """Scenario 4: 200 ms and 1 s added latency with 10 % loss on host 3's tunnel: no
    death, no publisher change. Latency past the configured tolerance (the fallback
    threshold) moves host 3's peers to tor, as configured, still without a death."""
    meshlab.wait_until(lambda: settled(meshlab), 120, "all alive, one publisher")
    publisher = publishers(meshlab).pop()
    dead_before = len(meshlab.events("PeerDead"))
    try:
        for delay_ms in (200, 1000):
            meshlab.lab.delay(3, WG_PORT, delay_ms, loss=10)
            end = time.monotonic() + DEAD_AFTER + DEFAULTS.heartbeat_interval
            while time.monotonic() < end:
                assert none_dead(meshlab)
                assert publishers(meshlab) == {publisher}
                time.sleep(0.5)
            rtt = meshlab.status(1)["paths"]["peers"]["n3"]["rtt_wireguard"]
            assert rtt is not None and rtt > delay_ms / 1000 * 0.5  # the delay is real
        # Past the tolerance: WireGuard ACKs come later than fallback_after.
        meshlab.lab.delay(3, WG_PORT, (PATHS.fallback_after + 2) * 1000)
        meshlab.wait_until(lambda: meshlab.path(1, 3) == meshlab.path(2, 3) == "tor",
                           PATHS.fallback_after + 3 * PATHS.probe_interval + 2,
                           "host 3's peers on tor")
        assert none_dead(meshlab) and publishers(meshlab) == {publisher}
    finally:
        meshlab.lab.clear_delay(3, WG_PORT)
    restore_bound = PATHS.backoff_cap * (1 + PATHS.jitter) + 2 * PATHS.probe_interval + 10
    meshlab.wait_until(lambda: all(meshlab.path(i, j) == "wireguard" for i in (1, 2, 3)
                                   for j in (1, 2, 3) if i != j), restore_bound,
                       "back on WireGuard")
    assert len(meshlab.events("PeerDead")) == dead_before
    assert publishers(meshlab) == {publisher}


def test_clock_skew_within_and_past_tolerance(meshlab: MeshLab) -> None:
    """Scenario 5: a node whose clock is 10 s off is a member like any other; one 2x the
    tolerance off has its datagrams refused both ways (as configured), so it never
    becomes alive again for its peers while it runs, and they never for it."""
    meshlab.wait_until(lambda: all_alive(meshlab), 120, "all alive")
    tolerance = DEFAULTS.datagram_max_age
    meshlab.restart_node(3, clock_offset=10.0)
    meshlab.wait_until(lambda: meshlab.status(3) is not None and all_alive(meshlab), 60,
                       "node 3 back with a 10 s offset")
    meshlab.restart_node(3, clock_offset=2 * tolerance)  # its clean stop says Leave first
    meshlab.wait_until(lambda: meshlab.status(3) is not None, 60, "node 3 running, skewed")
    end = time.monotonic() + DEAD_AFTER + DEFAULTS.heartbeat_interval
    while time.monotonic() < end:
        for i in (1, 2):
            assert meshlab.status(i)["peers"].get("n3") != "alive"
        assert "alive" not in meshlab.status(3)["peers"].values()
        time.sleep(0.5)
    meshlab.restart_node(3, clock_offset=0.0)
    meshlab.wait_until(lambda: meshlab.status(3) is not None and all_alive(meshlab), 120,
                       "node 3 back in sync")


def test_killed_node_is_declared_dead_and_rejoins(meshlab: MeshLab) -> None:
    """Scenario 1 at the mesh level: SIGKILL one node; the others declare it dead and
    keep one publisher; restarted, it is back (descriptor contents: see the report)."""
    meshlab.wait_until(lambda: all_alive(meshlab), 120, "all alive")
    meshlab.kill(2)
    meshlab.wait_until(lambda: (meshlab.status(1) or {})["peers"].get("n2") == "dead"
                       and (meshlab.status(3) or {})["peers"].get("n2") == "dead",
                       DEAD_AFTER + 10, "n2 declared dead")
    meshlab.wait_until(lambda: len({(meshlab.status(i) or {}).get("publisher")
                                    for i in (1, 3)} - {None, "n2"}) == 1,
                       DEFAULTS.lease_duration * 3, "one live publisher")
    meshlab.start_node(2)
    meshlab.wait_until(lambda: all_alive(meshlab), 120, "n2 back")
