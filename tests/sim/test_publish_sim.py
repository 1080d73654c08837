"""The real PublishCore in the simulator, against HSDirs that lose, revert and get strays.

The CI soak (test_mesh_sim.test_ci_soak) runs it on every seed; these tests show the
end-of-run HSDir check bites and drive a stray publisher by hand.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from onionmesh.publish.core import PublishCore, Verdict
from onionmesh.sim.publishing import STRAY, convergence_bound
from onionmesh.sim.runner import make_factory, nodes_for_seed, run_seed
from onionmesh.sim.scenario import SimParams
from onionmesh.sim.simulation import Simulation


def test_checker_catches_a_publish_core_blind_to_foreign_descriptors(monkeypatch) -> None:
    # Every fetched descriptor taken for our own: strays and reverted copies stay.
    monkeypatch.setattr(PublishCore, "classify", lambda self, observed: Verdict.OWN_CURRENT)
    failures = [run_seed(seed, nodes_for_seed(seed, 3, 15), quick=True).invariant
                for seed in range(25)]
    assert "hsdir_divergence" in failures


def test_seeds_with_strays_and_faults_converge() -> None:
    results = [run_seed(seed, nodes_for_seed(seed, 3, 15), quick=True) for seed in range(40)]
    assert all(r.ok for r in results), [r.summary() for r in results if not r.ok]
    assert sum(r.checks["hsdir"] for r in results) >= 36
    assert sum(r.stats.foreign_reports for r in results) > 0


def _quiet(nodes: int, seed: int) -> Simulation:
    params = SimParams(nodes=nodes, cycles=0, faults_per_cycle=(0, 0), rotation_probability=0.0,
                       injections_per_heartbeat=0.0, beyond_skew_probability=0.0)
    sim = Simulation(make_factory("fast"), params, seed)
    for node in sim.nodes:
        node.spec = replace(node.spec, eligible=True)
    sim.end = 300.0
    sim.begin()
    return sim


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_stray_publisher_is_detected_and_superseded_everywhere(seed: int) -> None:
    sim = _quiet(4, seed)
    sim.run_until(sim.bounds.stable_window)
    publishing = sim.publishing
    assert publishing is not None
    [pub] = [n for n in sim.nodes if n.core is not None and n.core.is_publisher]
    assert publishing.check_converged(pub) is None
    publishing.fault("stray", skew=30.0)  # its clock ahead: its revisions win at first
    stray_at = sim.t
    assert all(publishing.model.latest(p, h).origin == STRAY
               for p in publishing.model.periods for h in publishing.model.hsdirs[p])
    sim.run_until(stray_at + sim.bounds.settle + convergence_bound(1.0))
    assert sim.stats.foreign_reports >= 1
    [pub] = [n for n in sim.nodes if n.core is not None and n.core.is_publisher]
    assert publishing.check_converged(pub) is None
