"""Coordination over WireGuard with tor as the fallback, on 3 namespace hosts (root).

Measures, with real wireguard-go and real tor (a private network on loopback, one tor
per host reached over unix sockets; see onionmesh.testnet.meshlab):
  * heartbeat round trip over WireGuard and over the tor fallback (the path layer's
    probe/ACK round trip, smoothed as the selector keeps it, per ordered pair);
  * time from blocking host 3's WireGuard port until every path to and from it is on
    tor (heartbeats flow over tor);
  * time from unblocking until every path is back on WireGuard.
Timings per profile: ``default`` (the mesh defaults: heartbeat 5 s) and ``fast``
(heartbeat 1 s). join -> intro points on all responsible HSDirs: bench/join.py.

    .venv/bin/python bench/mesh_net.py [--profiles default fast] [--rounds 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from onionmesh.mesh.config import MeshConfig
from onionmesh.testnet import TorNetwork
from onionmesh.testnet.meshlab import WG_PORT, MeshLab
from onionmesh.transport.paths import PathConfig

PROFILES: dict[str, dict[str, Any]] = {
    "default": {},
    "fast": {"heartbeat_interval": 1.0, "lease_duration": 3.0, "lease_grace": 0.5},
}
PAIRS = [(i, j) for i in (1, 2, 3) for j in (1, 2, 3) if i != j]


def rtts(lab: MeshLab, key: str, pairs: list[tuple[int, int]]) -> list[float]:
    values = []
    for i, j in pairs:
        peer = lab.status(i)["paths"]["peers"][f"n{j}"]
        if peer.get(key) is not None:
            values.append(float(peer[key]) * 1000)
    return values


def all_on(lab: MeshLab, path: str, pairs: list[tuple[int, int]]) -> bool:
    return all(lab.path(i, j) == path for i, j in pairs)


def run_profile(network: TorNetwork, name: str, rounds: int) -> dict[str, Any]:
    mesh = PROFILES[name]
    config = MeshConfig(**mesh)
    dead_after = (config.dead_threshold + config.heartbeat_slack) * config.heartbeat_interval
    paths = PathConfig.for_heartbeat(config.heartbeat_interval, dead_after)
    print(f"profile {name}: starting 3 hosts", flush=True)
    lab = MeshLab(network, 3, mesh=mesh, tag="bn").start()
    result: dict[str, Any] = {"profile": name, "heartbeat": config.heartbeat_interval,
                              "dead_after": dead_after, "fallback_after": paths.fallback_after,
                              "to_tor": [], "to_wg": [], "rtt_wg": [], "rtt_tor": []}
    try:
        lab.wait_until(lambda: all_on(lab, "wireguard", PAIRS) and all(
            p["tor_stream"] and p["tor_stream"]["connected"]
            for i in (1, 2, 3) for p in lab.status(i)["paths"]["peers"].values()),
            300, "mesh up with warm tor streams")
        time.sleep(5 * paths.probe_interval)  # let the smoothed WireGuard RTT settle
        result["rtt_wg"] = rtts(lab, "rtt_wireguard", PAIRS)
        host3 = [(i, j) for i, j in PAIRS if 3 in (i, j)]
        for _ in range(rounds):
            lab.lab.block_udp_port(3, WG_PORT)
            result["to_tor"].append(lab.wait_until(lambda: all_on(lab, "tor", host3), 120,
                                                   "fallback", interval=0.05))
            print(f"  blocked: all on tor after {result['to_tor'][-1]:.2f} s", flush=True)
            time.sleep(max(10.0, 4 * paths.probe_interval))  # tor probes every interval
            result["rtt_tor"] += rtts(lab, "rtt_tor", host3)
            lab.lab.unblock_udp_port(3, WG_PORT)
            result["to_wg"].append(lab.wait_until(lambda: all_on(lab, "wireguard", PAIRS),
                                                  300, "restore", interval=0.05))
            print(f"  unblocked: all on WireGuard after {result['to_wg'][-1]:.2f} s",
                  flush=True)
            time.sleep(2 * paths.probe_interval)
        result["dead_events"] = len(lab.events("PeerDead"))
    finally:
        lab.stop()
    return result


def fmt(values: list[float], unit: str = "s") -> str:
    if not values:
        return "-"
    return (f"median {statistics.median(values):.2f} {unit} "
            f"(min {min(values):.2f}, max {max(values):.2f}, n={len(values)})")


def report(r: dict[str, Any]) -> None:
    print(f"\nprofile {r['profile']}: heartbeat {r['heartbeat']:g} s, dead after "
          f"{r['dead_after']:g} s, fallback after {r['fallback_after']:.2f} s without ACK")
    print(f"  heartbeat RTT over WireGuard: {fmt(r['rtt_wg'], 'ms')}")
    print(f"  heartbeat RTT over tor:       {fmt(r['rtt_tor'], 'ms')}")
    print(f"  block -> all on tor:          {fmt(r['to_tor'])}")
    print(f"  unblock -> all on WireGuard:  {fmt(r['to_wg'])}")
    print(f"  PeerDead events during the runs: {r['dead_events']}")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", nargs="+", default=["default", "fast"],
                        choices=sorted(PROFILES))
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    base = Path(tempfile.mkdtemp(prefix="ommn-"))
    network = TorNetwork(base / "tornet", 10)
    results: list[dict[str, Any]] = []
    try:
        network.start()
        print("private Tor network up", flush=True)
        for name in args.profiles:
            results.append(run_profile(network, name, args.rounds))
            report(results[-1])
    finally:
        network.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
