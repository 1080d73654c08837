"""The simulator engine on its own, driven by the test-only FakeCore.

These tests check that the engine is deterministic, that its network model
does what the scenario asks, and that its invariant checker catches cores
that break each rule (deliberately broken FakeCore variants).
"""

from __future__ import annotations

import itertools
import random

import pytest

from onionmesh.errors import OnionmeshError
from onionmesh.sim.clock import EventQueue
from onionmesh.sim.coreapi import Timing
from onionmesh.sim.errors import InvariantViolation, ScenarioError
from onionmesh.sim.network import LinkProfile, Network
from onionmesh.sim.runner import nodes_for_seed, parse_range, replay_command, run_seed
from onionmesh.sim.scenario import Bounds, SimParams, Start
from onionmesh.sim.simulation import Simulation
from tests.sim.fakecore import FakeConfig, FakeFactory


def test_event_queue_orders_by_time_then_insertion() -> None:
    q = EventQueue()
    q.schedule(2.0, "b")
    q.schedule(1.0, "a1")
    q.schedule(1.0, "a2")
    q.schedule(0.5, "z")
    assert [q.pop().kind for _ in range(len(q))] == ["z", "a1", "a2", "b"]
    assert q.peek_time() is None


def test_network_loss_duplication_and_partitions() -> None:
    net = Network(random.Random(1))
    assert net.delays(0, 1) and net.is_clean
    net.degrade(LinkProfile(loss=1.0))
    assert all(net.delays(0, 1) == [] for _ in range(50))
    net.heal()
    net.degrade(LinkProfile(duplicate=1.0, delay_min=0.1, delay_max=0.2))
    copies = net.delays(0, 1)
    assert len(copies) == 2 and all(0.1 <= d <= 0.2 for d in copies)
    net.heal()
    net.block(0, 1)  # asymmetric: 0 -> 1 cut, 1 -> 0 open
    assert net.delays(0, 1) == [] and net.delays(1, 0)
    assert not net.is_clean
    net.heal()
    net.partition([[0, 1], [2]])
    assert net.delays(0, 2) == [] and net.delays(2, 1) == [] and net.delays(0, 1)
    net.heal()
    net.isolate(2, range(3))
    assert net.delays(2, 0) == [] and net.delays(1, 2) == [] and net.delays(0, 1)


def test_reordering_lets_a_later_send_overtake() -> None:
    net = Network(random.Random(7))
    net.degrade(LinkProfile(reorder=1.0, reorder_extra=5.0, delay_min=0.01, delay_max=0.02))
    delays = [net.delays(0, 1)[0] for _ in range(20)]
    assert any(later + 0.1 < earlier for earlier, later in itertools.pairwise(delays))


@pytest.mark.parametrize(
    "bad",
    [dict(loss=1.5), dict(delay_min=0.3, delay_max=0.1), dict(duplicate=-0.1),
     dict(reorder_extra=-1.0)],
)
def test_bad_link_profile_is_a_typed_error(bad: dict) -> None:
    with pytest.raises(ScenarioError) as info:
        LinkProfile(**bad)
    assert isinstance(info.value, OnionmeshError)
    assert next(iter(bad)).split("_")[0] in str(info.value)


@pytest.mark.parametrize("text", ["x", "1-3", "5-3", "", "3-"])
def test_bad_node_range_is_a_typed_error(text: str) -> None:
    with pytest.raises(ScenarioError):
        parse_range(text)


def test_node_range_and_per_seed_node_count() -> None:
    assert parse_range("3-50") == (3, 50)
    assert parse_range("7") == (7, 7)
    counts = {nodes_for_seed(s, 3, 15) for s in range(200)}
    assert counts == set(range(3, 16))
    assert nodes_for_seed(42, 3, 15) == nodes_for_seed(42, 3, 15)


def test_bad_sim_params_are_typed_errors() -> None:
    with pytest.raises(ScenarioError):
        SimParams(nodes=1)
    with pytest.raises(ScenarioError):
        SimParams(nodes=3, faults_per_cycle=(3, 1))


def test_same_seed_same_trace_different_seed_different_trace() -> None:
    a = run_seed(5, 6, factory=FakeFactory(), cycles=2)
    b = run_seed(5, 6, factory=FakeFactory(), cycles=2)
    c = run_seed(6, 6, factory=FakeFactory(), cycles=2)
    assert a.ok and b.ok and c.ok
    assert a.trace_digest == b.trace_digest
    assert a.stats == b.stats
    assert a.trace_digest != c.trace_digest


def test_fake_core_keeps_every_invariant_and_the_checker_really_checks() -> None:
    # (The HSDir convergence check is about the real publish core: test_publish_sim.)
    totals = {"settled": 0, "appearance": 0, "removal": 0, "injected": 0}
    rejected: dict[str, int] = {}
    faults = 0
    for seed in range(40):
        result = run_seed(seed, 3 + seed % 8, factory=FakeFactory(), cycles=2)
        assert result.ok, result.summary()
        for k in totals:
            totals[k] += result.checks[k]
        for k, v in result.stats.rejected.items():
            rejected[k] = rejected.get(k, 0) + v
        faults += result.stats.faults
    assert all(v > 0 for v in totals.values()), totals
    assert faults > 80
    # Beyond-tolerance clocks happened and their traffic was refused.
    assert rejected.get("stale", 0) > 0


def test_trace_file_is_written(tmp_path) -> None:
    path = tmp_path / "trace.jsonl"
    result = run_seed(3, 4, factory=FakeFactory(), trace_path=str(path))
    lines = path.read_text().splitlines()
    assert result.ok and len(lines) > 100
    assert '"kind": "action"' in lines[0]


# -- the checker catches broken cores -------------------------------------------------


def _first_failure(broken: str, seeds: range, **params) -> str | None:
    for seed in seeds:
        result = run_seed(seed, 3 + seed % 5, factory=FakeFactory(broken), cycles=2, **params)
        if not result.ok:
            assert result.replay in result.summary()
            return result.invariant
    return None


def test_checker_catches_a_core_that_accepts_replays() -> None:
    invariant = _first_failure("accept_replays", range(20), injections_per_heartbeat=3.0)
    assert invariant is not None and invariant.startswith("injected_")


def test_checker_catches_a_core_without_rate_limit() -> None:
    invariant = _first_failure("no_rate_limit", range(20), rotation_probability=2.0)
    assert invariant == "republish_rate"


def test_checker_catches_a_core_that_never_drops_dead_peers() -> None:
    invariant = _first_failure("never_remove", range(20), faults_per_cycle=(3, 5))
    assert invariant == "dead_not_removed"


def test_checker_catches_two_publishers() -> None:
    assert _first_failure("always_publish", range(5)) in ("single_publisher", "leadership_churn")


def test_checker_catches_a_core_that_ignores_timestamps() -> None:
    invariant = _first_failure("no_skew_check", range(20), beyond_skew_probability=0.5)
    assert invariant == "skew_accepted"


def test_checker_catches_a_stolen_lease() -> None:
    """A restart that grabs the lease from a healthy publisher is reported."""

    def prepare(sim: Simulation) -> None:
        # Make every restarted node claim at once (skip the warm-up wait).
        original = sim.factory.make_core

        def make_core(spec, secret, bootstrap, now):
            core = original(spec, secret, bootstrap, now)
            if sim.t > 1.5 * sim.timing.heartbeat_interval:
                core.broken = "always_publish"
            return core

        sim.factory.make_core = make_core  # type: ignore[method-assign]

    seen = set()
    for seed in range(30):
        result = run_seed(seed, 4, factory=FakeFactory(), cycles=2, prepare=prepare,
                          faults_per_cycle=(2, 4))
        seen.add(result.invariant)
    assert seen & {"lease_stolen", "leadership_churn", "single_publisher"}


def test_violation_message_names_the_invariant_and_time() -> None:
    exc = InvariantViolation("single_publisher", 12.5, "2 publishers")
    assert "single_publisher" in str(exc) and "12.500" in str(exc)
    assert isinstance(exc, OnionmeshError)
    cmd = replay_command(17, 9, "fast", 2)
    assert cmd.startswith("python -m onionmesh.sim run --seed 17 --nodes 9 --profile fast")
    assert "\n" not in cmd


def test_bounds_follow_the_config() -> None:
    timing = Timing.from_config(FakeConfig())
    bounds = Bounds.from_timing(timing)
    slow = Bounds.from_timing(Timing.from_config(FakeConfig(removal_grace_period=40.0)))
    assert slow.removal - bounds.removal == pytest.approx(36.0)
    # Settling waits at least a lease plus its grace; windows fit every deadline.
    assert bounds.settle > timing.lease_duration + timing.lease_grace
    assert bounds.stable_window >= max(bounds.removal, bounds.settle + bounds.appearance)


def test_beyond_tolerance_node_is_refused_both_ways() -> None:
    def prepare(sim: Simulation) -> None:
        sim.schedule = [
            (at, Start(a.node, 2.5 * sim.timing.datagram_max_age, True))
            if isinstance(a, Start) and a.node == 1 and at < 1.0 else (at, a)
            for at, a in sim.schedule
        ]

    result = run_seed(11, 4, factory=FakeFactory(), cycles=1, prepare=prepare,
                      faults_per_cycle=(0, 0), beyond_skew_probability=0.0)
    assert result.ok, result.summary()
    assert result.stats.rejected.get("stale", 0) > 10


def test_soak_prints_each_failing_seed_with_its_replay_command(monkeypatch, capsys) -> None:
    import onionmesh.sim.runner as runner
    from onionmesh.sim.__main__ import main

    monkeypatch.setattr(runner, "make_factory", lambda profile: FakeFactory("no_rate_limit"))
    status = main(["soak", "--seeds", "6", "--nodes", "3-4", "--workers", "1", "--cycles", "1"])
    out = capsys.readouterr().out.splitlines()
    failed = [line for line in out if "FAILED" in line]
    replays = [line.strip() for line in out if line.strip().startswith("replay: ")]
    assert status == 1
    assert failed and len(replays) == len(failed)
    for line in replays:
        parts = line.removeprefix("replay: ").split()
        assert parts[:4] == ["python", "-m", "onionmesh.sim", "run"]
        assert "--seed" in parts and "--nodes" in parts
    assert out[-1].startswith("6 seeds, ") and "republish_rate" in out[-1]
