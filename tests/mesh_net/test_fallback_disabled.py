"""`tor_fallback_enabled = false`: a blocked tunnel is a dead peer, as configured (3
namespace hosts, real wireguard-go and tor, heartbeat 1 s to keep the test short)."""

from __future__ import annotations

import pytest

from onionmesh.mesh.config import MeshConfig
from onionmesh.testnet.meshlab import WG_PORT, MeshLab
from onionmesh.testnet.netns import require_lab_tools
from onionmesh.testnet.network import TorNetwork

pytestmark = [pytest.mark.netns, pytest.mark.tor, pytest.mark.tornet, pytest.mark.slow]

FAST = {"heartbeat_interval": 1.0, "lease_duration": 3.0, "lease_grace": 0.5}
CONFIG = MeshConfig(**FAST)
DEAD_AFTER = (CONFIG.dead_threshold + CONFIG.heartbeat_slack) * CONFIG.heartbeat_interval


def test_blocked_tunnel_without_fallback_is_a_dead_peer(tornet: TorNetwork) -> None:
    missing = require_lab_tools()
    if missing:
        pytest.fail(f"needs {', '.join(missing)}", pytrace=False)
    lab = MeshLab(tornet, 3, mesh=FAST, fallback_enabled=False, tag="nf").start()
    try:
        lab.wait_until(lambda: all(sorted((lab.status(i) or {"peers": {}})["peers"].values())
                                   == ["alive", "alive"] for i in (1, 2, 3)), 120, "all alive")
        lab.lab.block_udp_port(3, WG_PORT)
        lab.wait_until(lambda: lab.status(1)["peers"]["n3"] == "dead"
                       and lab.status(2)["peers"]["n3"] == "dead", DEAD_AFTER + 10,
                       "n3 declared dead by both peers")
        # No path ever left WireGuard, and the selector said why once per peer.
        assert all(lab.path(i, j) == "wireguard" for i in (1, 2, 3) for j in (1, 2, 3)
                   if i != j)
        assert lab.events("FellBackToTor") == []
        downs = {(i, e["peer"]) for i, e in lab.events("WireGuardDown")}
        assert {(1, "n3"), (2, "n3"), (3, "n1"), (3, "n2")} <= downs
        assert all("tor fallback disabled" in e["message"] for _, e in lab.events("WireGuardDown"))
        lab.lab.unblock_udp_port(3, WG_PORT)
        lab.wait_until(lambda: lab.status(1)["peers"]["n3"] == "alive", 30, "n3 recovered")
    finally:
        lab.stop()
    assert lab.lab.leftovers() == []
