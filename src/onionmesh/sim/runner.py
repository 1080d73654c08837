"""Running seeds: one run, many runs (soak), and the replay command of a failure.

The node count of a soak seed is drawn from its own ``random.Random`` keyed
on the seed, so ``soak`` and ``run --seed S --nodes N`` reproduce the same
run. Config profiles name the core configurations the simulator is run with.
"""

from __future__ import annotations

import multiprocessing
import os
import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from onionmesh.sim.coreapi import CoreFactory, MeshCoreFactory
from onionmesh.sim.errors import InvariantViolation, ScenarioError
from onionmesh.sim.scenario import SimParams
from onionmesh.sim.simulation import Simulation, Stats

# "fast" scales every interval of the defaults down by 5 (heartbeat 1 s instead
# of 5 s): the same number of heartbeats per scenario, so the same logic is
# exercised, in a fifth of the simulated time.
#
# Every profile narrows the datagram window (datagram_max_age, 300 s in a node) to
# 30 s. The simulator draws clock offsets from it (scenario.py: in-window nodes within
# +-0.3 x, so +-9 s, out-of-window ones 1.6..3 x) and does not run the node shell's
# clock hold (peers' median, [resilience] clock_skew_tolerance 10 s, node/daemon.py):
# with the node's 300 s, "in-window" clocks would be up to 90 s apart and sign
# revision counters a real node would be held back from signing. The window's logic
# (refuse both ways beyond it, never inside) does not depend on its width.
SIM_DATAGRAM_MAX_AGE = 30.0
PROFILES: dict[str, dict[str, Any]] = {
    "default": {"datagram_max_age": SIM_DATAGRAM_MAX_AGE},
    "fast": {
        "datagram_max_age": SIM_DATAGRAM_MAX_AGE,
        "heartbeat_interval": 1.0,
        "dead_threshold": 3,
        "removal_grace_period": 6.0,
        "lease_duration": 3.0,
        "lease_grace": 0.4,
        "min_publish_interval": 2.0,
        "flap_window": 60.0,
        "flap_hold": 12.0,
        "resend_interval": 0.4,
    },
}
# The same timings with every core in roster mode (signed membership, docs/security.md).
PROFILES["fast-roster"] = {**PROFILES["fast"], "roster": True}


def parse_range(text: str) -> tuple[int, int]:
    """Parse ``"3-15"`` or ``"7"`` into an inclusive (lo, hi) node-count range."""
    try:
        lo_s, dash, hi_s = text.partition("-")
        lo = int(lo_s)
        hi = int(hi_s) if dash else lo
    except ValueError as exc:
        raise ScenarioError(f"node range must look like 3-15 or 7, got {text!r}") from exc
    if not 2 <= lo <= hi:
        raise ScenarioError(f"node range must satisfy 2 <= lo <= hi, got {text!r}")
    return lo, hi


def nodes_for_seed(seed: int, lo: int, hi: int) -> int:
    """The node count a soak gives ``seed`` (independent of the run's own RNG)."""
    return random.Random(f"nodes/{seed}").randint(lo, hi)


def replay_command(seed: int, nodes: int, profile: str, cycles: int, quick: bool = False) -> str:
    """The one-line command that re-runs exactly this seed."""
    return (
        f"python -m onionmesh.sim run --seed {seed} --nodes {nodes} --profile {profile} "
        f"--cycles {cycles}{' --quick' if quick else ''} --trace trace-{seed}.jsonl"
    )


# The CI shape of a run: no separate warm-up window and a shorter chaos window.
QUICK = {"warmup_window": False, "chaos_heartbeats": 5.0}


@dataclass(frozen=True)
class RunResult:
    """Outcome of one seed."""

    seed: int
    nodes: int
    profile: str
    cycles: int
    quick: bool
    invariant: str | None
    detail: str | None
    trace_digest: str
    simulated_seconds: float
    stats: Stats = field(compare=False)
    checks: dict[str, int] = field(compare=False, default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when no invariant was violated."""
        return self.invariant is None

    @property
    def replay(self) -> str:
        """One-line replay command for this seed."""
        return replay_command(self.seed, self.nodes, self.profile, self.cycles, self.quick)

    def summary(self) -> str:
        """One line for a report: verdict, seed, and the replay command on failure."""
        if self.ok:
            return f"seed {self.seed} ({self.nodes} nodes): ok, trace {self.trace_digest[:16]}"
        head = f"seed {self.seed} ({self.nodes} nodes): FAILED {self.detail}"
        return f"{head}\n  replay: {self.replay}"


def make_factory(profile: str) -> CoreFactory:
    """The real MeshCore factory for a named config profile."""
    if profile not in PROFILES:
        raise ScenarioError(f"unknown profile {profile!r}; known: {', '.join(PROFILES)}")
    return MeshCoreFactory(**PROFILES[profile])


def run_seed(
    seed: int,
    nodes: int,
    profile: str = "fast",
    cycles: int = 1,
    quick: bool = False,
    factory: CoreFactory | None = None,
    keep_trace: bool = False,
    trace_path: str | None = None,
    prepare: Callable[[Simulation], None] | None = None,
    **params: Any,
) -> RunResult:
    """Run one seed; a violated invariant becomes a failed RunResult, not an exception."""
    factory = factory if factory is not None else make_factory(profile)
    if quick:
        params = {**QUICK, **params}
    sim_params = SimParams(nodes=nodes, cycles=cycles, keep_trace=keep_trace or bool(trace_path),
                           **params)
    sim = Simulation(factory, sim_params, seed)
    if prepare is not None:
        prepare(sim)
    invariant = detail = None
    try:
        sim.run()
    except InvariantViolation as exc:
        invariant, detail = exc.invariant, str(exc)
    if trace_path:
        sim.trace.write_jsonl(trace_path)
    c = sim.checker
    checks = {
        "settled": c.settled_checks,
        "appearance": c.appearance_checks,
        "removal": c.removal_checks,
        "injected": c.injections_checked,
        "hsdir": c.hsdir_checks,
    }
    return RunResult(seed, nodes, profile, cycles, quick, invariant, detail, sim.trace.digest,
                     sim.t, sim.stats, checks)


@dataclass(frozen=True)
class SoakJob:
    """One seed of a soak (picklable for worker processes)."""

    seed: int
    nodes: int
    profile: str
    cycles: int
    quick: bool = False


def _run_job(job: SoakJob) -> RunResult:
    return run_seed(job.seed, job.nodes, job.profile, job.cycles, job.quick)


def soak_jobs(
    seeds: Iterable[int], lo: int, hi: int, profile: str, cycles: int, quick: bool = False
) -> list[SoakJob]:
    """The jobs of a soak over ``seeds`` with node counts in ``lo..hi``."""
    return [SoakJob(s, nodes_for_seed(s, lo, hi), profile, cycles, quick) for s in seeds]


def soak(jobs: list[SoakJob], workers: int = 1, niceness: int = 0) -> Iterator[RunResult]:
    """Run jobs, in worker processes when ``workers > 1``; yields results in job order.

    ``niceness``: the worker processes lower their priority by this much, so a soak that
    shares the machine with real tor processes (the test suite) does not starve them.
    """
    if workers <= 1:
        for job in jobs:
            yield _run_job(job)
        return
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(workers, initializer=os.nice, initargs=(niceness,)) as pool:
        yield from pool.imap(_run_job, jobs, chunksize=8)


__all__ = [
    "PROFILES",
    "RunResult",
    "SoakJob",
    "make_factory",
    "nodes_for_seed",
    "parse_range",
    "replay_command",
    "run_seed",
    "soak",
    "soak_jobs",
]
