"""The real PublishCore in the simulator, against HSDirs that lose, revert and get strays.

The CI soak (test_mesh_sim.test_ci_soak) runs it on every seed; these tests show the
end-of-run HSDir check bites and drive a stray publisher by hand.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from onionmesh.publish.core import PublishCore, Verdict
from onionmesh.sim.publishing import STRAY, Stored, convergence_bound
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


def test_seed_1142_partition_loser_copies_of_the_next_period_are_replaced() -> None:
    # A 3-way partition makes n01 and n02 publish at once; n02 sees n01's descriptor,
    # supersedes it on the HSDirs of both periods and is killed. n01's own rebuild of the
    # fetchable period (an intro point rotated) replaced n02's copies there before a
    # check could see one, so n02's higher revision stayed on the next period's HSDirs.
    sims: list[Simulation] = []
    result = run_seed(1142, 4, "fast", 1, quick=True, keep_trace=True, prepare=sims.append)
    assert result.ok, result.summary()
    assert result.checks["hsdir"] == 1
    details = [d for _, kind, _, d in sims[0].trace.records if kind == "publish"]
    assert any("(with-fetchable-period)" in d for d in details)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_rebuilding_the_fetchable_period_replaces_an_unseen_copy_of_the_next(seed: int) -> None:
    # The same situation by hand: a publisher of the cluster that lost a partition left
    # a higher revision with its (older) intro points on every HSDir of both periods; the
    # winner rebuilds the fetchable period at once (its intro points changed), so the
    # checks never see the loser's copy.
    sim = _quiet(4, seed)
    sim.run_until(sim.bounds.stable_window)
    publishing = sim.publishing
    assert publishing is not None
    [pub] = [n for n in sim.nodes if n.core is not None and n.core.is_publisher]
    assert publishing.check_converged(pub) is None
    core = publishing.slots[pub.index].core
    loser = next(n for n in sim.nodes if n is not pub).spec.node_id + "#1"
    for period in publishing.model.periods:
        revision = core.tracker.revision(period)
        keys = core.intro_keys_of(period, revision)
        assert revision is not None and keys
        stale = frozenset(sorted(keys)[1:]) | {b"\x01" * 16}
        for hsdir in publishing.model.hsdirs[period]:
            assert publishing.model.post(period, hsdir, Stored(revision + 1, loser, stale))
    fetchable = publishing.model.fetchable
    pub.intro_sets[fetchable].append(sim._new_ip())
    sim._give_intro_points(pub.index, pub.incarnation)
    sim.run_until(sim.t + sim.bounds.settle + convergence_bound(1.0))
    assert sim.stats.foreign_reports == 0  # the checks never saw the loser's copy
    assert publishing.check_converged(pub) is None


def _many(seed: int, nodes: int) -> Simulation:
    params = SimParams(nodes=nodes, cycles=0, faults_per_cycle=(0, 0), rotation_probability=0.0,
                       injections_per_heartbeat=0.0, beyond_skew_probability=0.0,
                       ips_per_period=(2, 4))
    sim = Simulation(make_factory("fast"), params, seed)
    for node in sim.nodes:
        node.spec = replace(node.spec, eligible=True)
    sim.end = 300.0
    sim.begin()
    sim.run_until(sim.bounds.stable_window)
    return sim


def test_coverage_check_bites_when_every_hsdir_gets_the_first_descriptor(monkeypatch) -> None:
    monkeypatch.setattr("onionmesh.publish.core.assign_hsdirs",
                        lambda fetch, store, count: dict.fromkeys(store, 0))
    sim = _many(1, 26)  # more nodes than one descriptor has slots
    assert sim.publishing is not None
    [pub] = [n for n in sim.nodes if n.core is not None and n.core.is_publisher]
    assert "no HSDir serves a descriptor with" in (sim.publishing.check_converged(pub) or "")


@pytest.mark.parametrize(("seed", "nodes"), [(1, 14), (2, 14), (3, 26)])
def test_many_nodes_every_node_is_in_a_descriptor_some_hsdir_serves(seed: int,
                                                                     nodes: int) -> None:
    # 14 or 26 nodes with 2..4 intro points each: more than one descriptor carries, so the
    # publisher splits them over its HSDirs; once converged every node the plan offered
    # is in the descriptor some HSDir serves, and each HSDir holds its own descriptor.
    sim = _many(seed, nodes)
    publishing = sim.publishing
    assert publishing is not None
    [pub] = [n for n in sim.nodes if n.core is not None and n.core.is_publisher]
    assert publishing.check_converged(pub) is None
    assert publishing.coverage_checks >= 1
    core = publishing.slots[pub.index].core
    fetchable = publishing.model.fetchable
    assert core.descriptor_counts[fetchable] > 1
    served = [publishing.model.latest(fetchable, h) for h in publishing.model.hsdirs[fetchable]]
    assert len({s.keys for s in served if s is not None}) == core.descriptor_counts[fetchable]
    assert all(0 < len(s.keys) <= 20 for s in served if s is not None)
