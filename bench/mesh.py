"""Benchmark: the mesh core at 10, 50 and 100 nodes, in the deterministic simulator.

For each cluster size, every node starts within one heartbeat interval on a
clean simulated network (default MeshConfig: heartbeat 5 s), and we measure:

* time to full membership: simulated seconds until every node sees every
  other node as alive (bootstrap knows one or two peers; gossip does the rest);
* time to the first PublishRequested;
* messages and bytes sent per node per heartbeat interval, in steady state;
* CPU time (process_time, core plus simulator overhead) per simulated
  node-hour, measured over a steady-state window and scaled to an hour.

It then prints how each figure grows with N (ratio between sizes, next to
the ratio of N). Run: ``.venv/bin/python bench/mesh.py`` (``--quick`` for a
shorter steady window). The simulator is deterministic: the message and
time figures are identical on every run; only the CPU figures vary.
"""

from __future__ import annotations

import argparse
import itertools
import time
from dataclasses import dataclass

from onionmesh.sim.coreapi import MeshCoreFactory
from onionmesh.sim.scenario import SimParams
from onionmesh.sim.simulation import Simulation

SIZES = (10, 50, 100)


@dataclass(frozen=True)
class Figures:
    nodes: int
    membership_s: float
    first_publish_s: float
    msgs_per_node_hb: float
    bytes_per_node_hb: float
    cpu_per_node_hour_s: float


def _full_membership(sim: Simulation) -> bool:
    ids = {n.spec.node_id for n in sim.nodes}
    for node in sim.nodes:
        assert node.core is not None
        views = node.core.peers()
        others = ids - {node.spec.node_id}
        if any(views.get(i) is None or views[i].state != "alive" for i in others):
            return False
    return True


def measure(nodes: int, steady_heartbeats: int, seed: int = 1) -> Figures:
    """Start a clean cluster, wait for membership, then measure a steady window."""
    factory = MeshCoreFactory()
    params = SimParams(
        nodes=nodes,
        cycles=0,
        faults_per_cycle=(0, 0),
        rotation_probability=0.0,
        injections_per_heartbeat=0.0,
        beyond_skew_probability=0.0,
    )
    sim = Simulation(factory, params, seed)
    hb = sim.timing.heartbeat_interval
    sim.end = 10_000 * hb  # the bench decides when to stop
    sim.begin()
    step = hb / 20
    membership = first_publish = None
    t = 0.0
    while membership is None or first_publish is None:
        t += step
        sim.run_until(t)
        if membership is None and t > hb and _full_membership(sim):
            membership = t
        if first_publish is None and sim.stats.publishes:
            first_publish = t
        if t > 200 * hb:
            raise RuntimeError(f"{nodes} nodes did not converge in 200 heartbeats")
    # Steady state: skip one lease so the election has settled, then measure.
    sim.run_until(t + sim.timing.lease_duration)
    sent0, bytes0 = sim.stats.datagrams_sent, sim.stats.bytes_sent
    t0 = sim.t
    cpu0 = time.process_time()
    sim.run_until(t0 + steady_heartbeats * hb)
    cpu = time.process_time() - cpu0
    window = sim.t - t0
    beats = window / hb
    return Figures(
        nodes=nodes,
        membership_s=membership,
        first_publish_s=first_publish,
        msgs_per_node_hb=(sim.stats.datagrams_sent - sent0) / nodes / beats,
        bytes_per_node_hb=(sim.stats.bytes_sent - bytes0) / nodes / beats,
        cpu_per_node_hour_s=cpu / nodes * 3600.0 / window,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="5 steady heartbeats instead of 20")
    args = ap.parse_args()
    beats = 5 if args.quick else 20
    results = [measure(n, beats) for n in SIZES]
    print(f"mesh core, default MeshConfig (heartbeat 5 s), steady window {beats} heartbeats")
    print(
        f"{'nodes':>6} {'membership':>11} {'1st publish':>12} {'msgs/node/hb':>13} "
        f"{'bytes/node/hb':>14} {'CPU s/node-h':>13}"
    )
    for r in results:
        print(
            f"{r.nodes:>6} {r.membership_s:>10.2f}s {r.first_publish_s:>11.2f}s "
            f"{r.msgs_per_node_hb:>13.1f} {r.bytes_per_node_hb:>14.0f} "
            f"{r.cpu_per_node_hour_s:>13.2f}"
        )
    print("growth with N (ratio between sizes; N ratio in brackets):")
    for a, b in itertools.pairwise(results):
        print(
            f"  {a.nodes:>3} -> {b.nodes:<3} [N x{b.nodes / a.nodes:.1f}]: "
            f"membership x{b.membership_s / a.membership_s:.2f}, "
            f"msgs/node/hb x{b.msgs_per_node_hb / a.msgs_per_node_hb:.2f}, "
            f"bytes/node/hb x{b.bytes_per_node_hb / a.bytes_per_node_hb:.2f}, "
            f"CPU/node-h x{b.cpu_per_node_hour_s / a.cpu_per_node_hour_s:.2f}"
        )


if __name__ == "__main__":
    main()
