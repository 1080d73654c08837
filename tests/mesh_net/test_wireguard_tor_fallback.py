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


def publishers(lab: MeshLab) -> set[str | None]:
    return {(lab.status(i) or {}).get("publisher") for i in lab.hosts}


def test_blocked_tunnel_falls_back_to_tor_and_returns(meshlab: MeshLab) -> None:
    meshlab.wait_until(lambda: all_alive(meshlab) and len(publishers(meshlab)) == 1
                       and None not in publishers(meshlab), 120, "3 nodes alive, one publisher")
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
    # Hold the block for twice the time to death: heartbeats flow over tor, nobody dies,
    # the publisher does not change.
    end = time.monotonic() + 2 * DEAD_AFTER
    while time.monotonic() < end:
        assert all_alive(meshlab), [meshlab.status(i)["peers"] for i in (1, 2, 3)]
        assert publishers(meshlab) == {publisher}
        time.sleep(0.5)
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
    assert all_alive(meshlab) and publishers(meshlab) == {publisher}
    assert meshlab.events("PeerDead") == []
