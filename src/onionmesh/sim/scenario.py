"""Scenario generation: the schedule of starts, faults, rotations and attacks of one run.

A run alternates stable windows (clean network, no faults) with chaos windows
(kills, restarts, partitions, asymmetric blocks, degraded links, operator
removals). Every window boundary and fault time is drawn from the run's RNG
before the run starts, so the schedule is part of what the seed determines.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from onionmesh.sim.coreapi import Timing
from onionmesh.sim.errors import ScenarioError
from onionmesh.sim.network import LinkProfile


@dataclass(frozen=True)
class SimParams:
    """Knobs of one simulated run (times in heartbeat intervals unless said otherwise)."""

    nodes: int
    cycles: int = 1
    chaos_heartbeats: float = 6.0
    warmup_window: bool = True  # a checked stable window before the first chaos window
    faults_per_cycle: tuple[int, int] = (1, 4)
    rotation_probability: float = 0.05  # per node per heartbeat interval
    injections_per_heartbeat: float = 0.5
    beyond_skew_probability: float = 0.08  # per clock draw
    clock_step_probability: float = 0.2  # a restart comes back with a new clock offset
    ips_per_period: tuple[int, int] = (1, 4)
    ip_size: int = 160
    # > 0: every intro point names one of this many relays in its link specifiers,
    # so nodes' intro points share relays (the plan must keep one per relay).
    relay_pool: int = 0
    periods: int = 2
    hsdir: bool = True  # model the HSDirs so publishers see each other's descriptors
    keep_trace: bool = False

    def __post_init__(self) -> None:
        if not 2 <= self.nodes <= 1000:
            raise ScenarioError(f"nodes must be within 2..1000, got {self.nodes}")
        if self.cycles < 0:
            raise ScenarioError(f"cycles must be >= 0, got {self.cycles}")
        lo, hi = self.faults_per_cycle
        if not 0 <= lo <= hi:
            raise ScenarioError(f"faults_per_cycle must be 0 <= lo <= hi, got {lo}..{hi}")
        lo, hi = self.ips_per_period
        if not 0 <= lo <= hi:
            raise ScenarioError(f"ips_per_period must be 0 <= lo <= hi, got {lo}..{hi}")
        if self.relay_pool < 0:
            raise ScenarioError(f"relay_pool must be >= 0, got {self.relay_pool}")
        if self.chaos_heartbeats < 0 or self.ip_size < 1 or self.periods < 1:
            raise ScenarioError("chaos_heartbeats, ip_size and periods must be positive")


# -- actions -------------------------------------------------------------------
@dataclass(frozen=True)
class Start:
    """(Re)start ``node`` with a fresh core whose clock is off by ``skew`` seconds."""

    node: int
    skew: float
    beyond: bool = False
    fresh_ips: bool = True


@dataclass(frozen=True)
class Kill:
    """Stop ``node``: a crash, or a graceful shutdown that releases its lease."""

    node: int
    graceful: bool


@dataclass(frozen=True)
class Freeze:
    """Stop ``node``'s process without killing it (SIGSTOP, a VM pause) until a Thaw.

    Its timers do not fire and datagrams to it wait in its socket buffer.
    """

    node: int


@dataclass(frozen=True)
class Thaw:
    """Let a frozen ``node`` run again (SIGCONT): it gets its buffered datagrams and timer."""

    node: int


@dataclass(frozen=True)
class Partition:
    """Split the nodes into groups that cannot talk to each other."""

    groups: tuple[tuple[int, ...], ...]


@dataclass(frozen=True)
class Block:
    """Asymmetric partition: drop ``src -> dst`` for each pair, not the reverse."""

    pairs: tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class Isolate:
    """Cut one node off from all others in both directions."""

    node: int


@dataclass(frozen=True)
class Degrade:
    """Apply a lossy/slow/duplicating/reordering profile to links (None: all links)."""

    profile: LinkProfile
    links: tuple[tuple[int, int], ...] | None


@dataclass(frozen=True)
class Heal:
    """Remove every partition and degradation."""


@dataclass(frozen=True)
class Remove:
    """Operator removes ``node`` from the cluster: it is stopped and must stay removed."""

    node: int


@dataclass(frozen=True)
class Rotate:
    """``node``'s tor changed its intro points (normal operation, not a fault)."""

    node: int


@dataclass(frozen=True)
class Inject:
    """The adversary injects one forged or replayed datagram (not a fault)."""


Action = (
    Start | Kill | Freeze | Thaw | Partition | Block | Isolate | Degrade | Heal | Remove | Rotate
    | Inject
)
FAULTS = (Start, Kill, Freeze, Thaw, Partition, Block, Isolate, Degrade, Heal, Remove)

# Reordering adds at most this much delay; the invariants' slack uses it.
REORDER_EXTRA = 0.5


def chaos_profile(rng: random.Random, hb: float) -> LinkProfile:
    """A random degraded link profile (lossy, slow, duplicating or reordering)."""
    return LinkProfile(
        loss=rng.choice((0.0, 0.1, 0.3, 0.6)),
        delay_min=0.002,
        delay_max=rng.choice((0.05, 0.2, min(1.0, hb / 2))),
        duplicate=rng.choice((0.0, 0.1, 0.3)),
        reorder=rng.choice((0.0, 0.2, 0.5)),
        reorder_extra=REORDER_EXTRA,
    )


def worst_delay(timing: Timing) -> float:
    """The longest any datagram can be in flight in any profile this module draws."""
    return max(0.05, min(1.0, timing.heartbeat_interval / 2)) + REORDER_EXTRA


def normal_skew(rng: random.Random, timing: Timing) -> float:
    """A clock offset within tolerance: pairwise differences stay below 0.6 x tolerance."""
    if rng.random() < 0.5:
        return 0.0
    return rng.uniform(-0.3, 0.3) * timing.datagram_max_age


def beyond_skew(rng: random.Random, timing: Timing) -> float:
    """A clock offset beyond tolerance against every in-tolerance node (>= 1.3 x tolerance)."""
    return rng.choice((-1.0, 1.0)) * rng.uniform(1.6, 3.0) * timing.datagram_max_age


@dataclass(frozen=True)
class Bounds:
    """Deadlines the invariants use, derived from the config (seconds)."""

    tick: float
    max_delay: float
    settle: float
    removal: float
    appearance: float
    stable_window: float

    @classmethod
    def from_timing(cls, timing: Timing, tick: float | None = None) -> Bounds:
        """Derive every deadline; see docs/simulation.md for the reasoning."""
        hb = timing.heartbeat_interval
        tick = hb if tick is None else tick
        delay = worst_delay(timing)
        # A publisher that renewed its lease just before it died (or was cut off)
        # is replaced once the lease plus grace has run out, or once it is seen
        # dead, whichever the core waits for; the new publisher's next heartbeat
        # (<= 1 interval + delay) tells everyone, and one more interval covers a
        # node that restarted and has to learn the mesh by gossip first.
        wait = max(timing.lease_duration + timing.lease_grace, timing.dead_threshold * hb)
        settle = wait + 2 * hb + delay + tick
        removal = timing.dead_threshold * hb + timing.removal_grace_period + tick
        appearance = 2 * hb + delay
        window = max(settle + appearance + tick, removal) + hb
        return cls(tick, delay, settle, removal, appearance, window)


def build_schedule(
    rng: random.Random, params: SimParams, timing: Timing, bounds: Bounds
) -> tuple[list[tuple[float, Action]], float]:
    """Draw the whole schedule of a run; returns (timed actions, end time)."""
    hb = timing.heartbeat_interval
    n = params.nodes
    out: list[tuple[float, Action]] = []
    alive: set[int] = set()
    dead: set[int] = set()
    removed: set[int] = set()

    # A node's clock belongs to its machine: a restart usually keeps it, and
    # sometimes comes back after the clock was stepped (NTP, a bad RTC...).
    clocks: dict[int, tuple[float, bool]] = {}

    def start(at: float, node: int) -> None:
        if node not in clocks or rng.random() < params.clock_step_probability:
            beyond = rng.random() < params.beyond_skew_probability
            skew = beyond_skew(rng, timing) if beyond else normal_skew(rng, timing)
            clocks[node] = (skew, beyond)
        skew, beyond = clocks[node]
        out.append((at, Start(node, skew, beyond, fresh_ips=rng.random() < 0.5)))
        alive.add(node)
        dead.discard(node)

    for i in range(n):
        start(rng.uniform(0.0, hb), i)
    # Without the warm-up window the first chaos window hits a cluster that is
    # still converging (cheaper per seed; the final window checks the outcome).
    t = hb + (bounds.stable_window if params.warmup_window else 0.0)
    for _ in range(params.cycles):
        chaos = params.chaos_heartbeats * hb
        times = sorted(
            rng.uniform(t, t + chaos) for _ in range(rng.randint(*params.faults_per_cycle))
        )
        for at in times:
            _draw_fault(rng, at, n, alive, dead, removed, hb, out, start, t + chaos)
        t += chaos
        out.append((t, Heal()))
        for node in sorted(dead):
            if rng.random() < 0.6:
                start(t, node)
        t += bounds.stable_window
    end = t
    for node in range(n):
        at = 0.0
        while True:
            rate = params.rotation_probability / hb
            at += rng.expovariate(rate) if rate > 0 else end
            if at >= end:
                break
            out.append((at, Rotate(node)))
    injections = int(params.injections_per_heartbeat * end / hb)
    out.extend((rng.uniform(hb, end), Inject()) for _ in range(injections))
    # Stable sort: actions drawn at the same instant keep their drawing order.
    out.sort(key=lambda item: item[0])
    return out, end


def _draw_fault(
    rng: random.Random,
    at: float,
    n: int,
    alive: set[int],
    dead: set[int],
    removed: set[int],
    hb: float,
    out: list[tuple[float, Action]],
    start: Callable[[float, int], None],
    chaos_end: float,
) -> None:
    """Append one random fault at ``at``, keeping the alive/dead bookkeeping right."""
    kinds = ["kill", "kill", "restart", "restart", "partition", "block", "isolate", "degrade"]
    if not removed and n > 3:
        kinds.append("remove")
    kind = rng.choice(kinds)
    live = sorted(alive)
    if kind == "restart" and not dead:
        kind = "kill"
    if kind in ("kill", "remove", "isolate", "freeze") and len(live) <= 1:
        kind = "degrade"
    if kind == "restart":
        start(at, rng.choice(sorted(dead)))
    elif kind == "kill":
        node = rng.choice(live)
        out.append((at, Kill(node, graceful=rng.random() < 0.3)))
        alive.discard(node)
        dead.add(node)
    elif kind == "freeze":
        # From a blip to longer than a lease; thawed by the end of the chaos window.
        node = rng.choice(live)
        out.append((at, Freeze(node)))
        out.append((min(at + rng.uniform(hb, 14 * hb), chaos_end), Thaw(node)))
    elif kind == "remove":
        node = rng.choice(live)
        out.append((at, Remove(node)))
        alive.discard(node)
        removed.add(node)
    elif kind == "isolate":
        out.append((at, Isolate(rng.choice(live))))
    elif kind == "partition":
        everyone = list(range(n))
        rng.shuffle(everyone)
        k = rng.randint(2, min(3, n))
        cuts = sorted(rng.sample(range(1, n), k - 1))
        groups = [everyone[a:b] for a, b in zip([0, *cuts], [*cuts, n], strict=True)]
        out.append((at, Partition(tuple(tuple(sorted(g)) for g in groups))))
    elif kind == "block":
        src = rng.sample(range(n), rng.randint(1, max(1, n // 2)))
        dst = [d for d in range(n) if d not in src]
        pairs = tuple((s, d) for s in sorted(src) for d in dst if rng.random() < 0.8)
        out.append((at, Block(pairs)))
    else:
        links = None
        if rng.random() < 0.5:
            links = tuple(
                (a, b) for a in range(n) for b in range(n) if a != b and rng.random() < 0.3
            )
        out.append((at, Degrade(chaos_profile(rng, hb), links)))
