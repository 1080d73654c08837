"""The real PublishCore in the simulator, against a model of the HSDirs.

Every node that the mesh core makes publisher gets a ``PublishCore`` (as the
daemon's ``PublisherControl`` does: started on ``PublishRequested``, dropped on
``SteppedDown`` or a crash). Its posts and fetches go to ``HsdirModel``: a few
HSDirs per time period, each keeping the descriptor with the highest revision
(tor's rule; a lower or equal one is answered ``UPLOAD_REJECTED``).

Faults, only inside chaos windows (drawn from the run's own HSDir RNG so the mesh
schedule of a seed is unchanged):

* an upload is lost (no answer: the core's upload timeout fires and retries);
* an HSDir loses its latest copy and serves the one before (a stale copy) until
  someone uploads again; only the fetchable period is hit, because only that
  period can be checked through tor (see ``onionmesh.publish.core``);
* a stray publisher outside the mesh (same master key, its own intro points and
  clock) uploads to every HSDir of both periods.

A conflict the core reports goes to the mesh core (``report_foreign_descriptor``),
exactly as in the daemon. The checked property (``InvariantChecker``): once the
mesh is healed and nothing stray uploads any more, every HSDir serves one
descriptor, from the one publisher, at its current revision.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cache
from hashlib import blake2b
from typing import TYPE_CHECKING, Any

from onionmesh.crypto.blinding import BlindedKey, blind_identity
from onionmesh.crypto.keys import Ed25519Identity
from onionmesh.hsdir.timeperiod import DescriptorPeriod
from onionmesh.publish.core import (
    Fetch,
    HasAuthKey,
    ObservedDescriptor,
    PeriodTarget,
    PublishCore,
    PublishEventKind,
    PublishTiming,
)
from onionmesh.publish.uploads import Post, RetryPolicy
from onionmesh.tor_limits import MAX_INTRO_POINTS

if TYPE_CHECKING:
    from onionmesh.sim.simulation import SimNode, Simulation

HSDIRS_PER_PERIOD = 3
HSDIR_POOL = 5  # the two periods share some HSDirs, as on the real ring
STRAY = "stray"
_MASTER = Ed25519Identity.from_seed(b"\x07" * 32)


@cache
def _blinded(period: int) -> BlindedKey:
    return blind_identity(_MASTER, period, 1440)


@dataclass(frozen=True)
class SimPoint:
    auth_key: bytes


def sim_point(ip: bytes) -> SimPoint:
    """An intro point of the mesh plan (opaque bytes) as the publish core sees it."""
    return SimPoint(blake2b(ip, digest_size=16).digest())


@dataclass(frozen=True)
class Stored:
    """One descriptor as an HSDir holds it."""

    revision: int
    origin: str  # "n03#2" (node id # incarnation) or STRAY
    keys: frozenset[bytes]


class SimSigner:
    """The descriptor "text" names who built which revision; nothing is signed."""

    def __init__(self, origin: str) -> None:
        self.origin = origin

    def build(self, target: PeriodTarget, revision: int, points: Sequence[HasAuthKey],
              now: float) -> str:
        return f"{self.origin} {target.number} {revision}"

    def forget_periods(self, keep: Iterable[int]) -> None:
        pass


@dataclass
class HsdirModel:
    """The HSDirs of both periods: per (period, HSDir) the stored copies, newest last."""

    periods: tuple[int, ...]
    hsdirs: dict[int, tuple[str, ...]]
    store: dict[tuple[int, str], list[Stored]] = field(default_factory=dict)
    uploads: int = 0
    stray_uploads: int = 0
    reverts: int = 0
    lost: int = 0

    @classmethod
    def create(cls, rng: random.Random, periods: Sequence[int]) -> HsdirModel:
        pool = [f"{i:02X}".ljust(40, "E") for i in range(HSDIR_POOL)]
        hsdirs = {p: tuple(sorted(rng.sample(pool, HSDIRS_PER_PERIOD))) for p in periods}
        return cls(tuple(periods), hsdirs)

    @property
    def fetchable(self) -> int:
        return self.periods[0]

    def latest(self, period: int, hsdir: str) -> Stored | None:
        copies = self.store.get((period, hsdir))
        return copies[-1] if copies else None

    def post(self, period: int, hsdir: str, stored: Stored) -> bool:
        """tor's HSDir rule: keep it only if its revision is higher."""
        self.uploads += 1
        current = self.latest(period, hsdir)
        if current is not None and stored.revision <= current.revision:
            return False
        self.store.setdefault((period, hsdir), []).append(stored)
        del self.store[(period, hsdir)][:-4]  # a short history is enough for stale copies
        return True

    def revert(self, period: int, hsdir: str) -> bool:
        copies = self.store.get((period, hsdir))
        if not copies or len(copies) < 2:
            return False
        copies.pop()
        self.reverts += 1
        return True

    def targets(self) -> dict[int, PeriodTarget]:
        out = {}
        for index, number in enumerate(self.periods):
            period = DescriptorPeriod(index == 0, number, 1440, b"\0" * 32, 0)
            out[number] = PeriodTarget(period, _blinded(number), self.hsdirs[number])
        return out


def sim_timing(hb: float) -> tuple[PublishTiming, RetryPolicy]:
    """Publish timers scaled to the heartbeat, like the mesh profiles."""
    timing = PublishTiming(refresh_interval=600 * hb, descriptor_lifetime=2160 * hb,
                           revive_interval=4 * hb, check_interval=hb,
                           standby_check_interval=4 * hb, fetch_timeout=hb)
    retry = RetryPolicy(max_retries=2, base_delay=0.2 * hb, max_delay=0.5 * hb, jitter=0.2,
                        upload_timeout=hb)
    return timing, retry


def convergence_bound(hb: float) -> float:
    """How long after the last stray upload / fault every HSDir holds the publisher's copy.

    One rotation of checks over the fetchable period's HSDirs (a stale copy is seen and
    re-posted), a fetch timeout and a full retry chain with its timeouts, plus a
    build interval.
    """
    timing, retry = sim_timing(hb)
    checks = (HSDIRS_PER_PERIOD + 1) * timing.check_interval + timing.fetch_timeout
    uploads = (retry.max_retries + 1) * (retry.upload_timeout + retry.max_delay * 1.2)
    return checks + uploads + hb


@dataclass
class PublishSlot:
    """The publish core of one node incarnation."""

    core: PublishCore
    origin: str
    timer_at: float | None = None
    token: int = 0
    owners: dict[bytes, str] = field(default_factory=dict)  # intro key -> node id
    pools: dict[int, set[str]] = field(default_factory=dict)  # period -> nodes offered


class SimPublishing:
    """Runs PublishCores for the simulation's publishers against one HsdirModel."""

    def __init__(self, sim: Simulation, chaos_windows: list[tuple[float, float]]) -> None:
        self.sim = sim
        self.rng = random.Random(f"hsdir/{sim.seed}")
        self.model = HsdirModel.create(self.rng, [sim.period_base + k for k in range(2)])
        self.targets = self.model.targets()
        self.windows = chaos_windows
        hb = sim.timing.heartbeat_interval
        self.timing, self.retry = sim_timing(hb)
        self.slots: dict[int, PublishSlot] = {}
        self.loss = self.rng.choice((0.0, 0.1, 0.3))
        self.stale = self.rng.choice((0.0, 0.2))
        self.last_stray = float("-inf")
        self.conflicts = 0
        self.coverage_checks = 0  # converged checks of a split period (> 20 nodes)
        self._schedule_faults(hb)

    # -- faults ---------------------------------------------------------------------------

    def in_chaos(self, t: float) -> bool:
        return any(a <= t < b for a, b in self.windows)

    def _schedule_faults(self, hb: float) -> None:
        for start, end in self.windows:
            for _ in range(self.rng.randint(0, 2)):
                self.sim.queue.schedule(self.rng.uniform(start, end), "hsdir", ("revert",))
            if self.rng.random() < 0.3:
                # A stray publisher: a few uploads, then it is gone before the heal.
                for _ in range(self.rng.randint(1, 3)):
                    self.sim.queue.schedule(self.rng.uniform(start, end), "hsdir", ("stray",))

    def fault(self, kind: str, skew: float | None = None) -> None:
        """Apply one HSDir fault now (``skew``: the stray's clock offset, else drawn)."""
        sim = self.sim
        if kind == "revert":
            period = self.model.fetchable
            hsdir = self.rng.choice(self.model.hsdirs[period])
            if self.model.revert(period, hsdir):
                sim.trace.add(sim.t, "hsdir", "-", f"{hsdir[:4]} reverted period {period}")
        elif kind == "stray":
            skew = self.rng.uniform(-60.0, 120.0) if skew is None else skew
            keys = frozenset(self.rng.randbytes(16) for _ in range(self.rng.randint(1, 6)))
            revision = int((sim.epoch + sim.t + skew) * 1000)
            for period in self.model.periods:
                for hsdir in self.model.hsdirs[period]:
                    self.model.post(period, hsdir, Stored(revision, STRAY, keys))
            self.model.stray_uploads += 1
            self.last_stray = sim.t
            sim.trace.add(sim.t, "hsdir", "-", f"stray upload revision {revision} "
                          f"({len(keys)} intro points)")

    # -- the cores ------------------------------------------------------------------------

    def on_events(self, node: SimNode, events: Sequence[Any]) -> None:
        """The mesh core's events: start, feed or stop this node's publish core."""
        for ev in events:
            name = type(ev).__name__
            if name == "PublishRequested" and not node.beyond:
                self._publish(node, ev.plan)
            elif name == "SteppedDown":
                self.drop(node)

    def drop(self, node: SimNode) -> None:
        slot = self.slots.pop(node.index, None)
        if slot is not None:
            slot.token += 1

    def _publish(self, node: SimNode, plan: Any) -> None:
        slot = self.slots.get(node.index)
        origin = f"{node.spec.node_id}#{node.incarnation}"
        now = self.sim.local_now(node)
        if slot is None or slot.origin != origin:
            signer = SimSigner(origin)
            core = PublishCore(signer, timing=self.timing, retry=self.retry,
                               rng=random.Random(f"{self.sim.seed}/{origin}"),
                               revision=lambda t, now, last: max(
                                   int(now * 1000), (last or 0) + 1))
            slot = self.slots[node.index] = PublishSlot(core, origin)
            core.set_targets(self.targets, now, fetchable=self.model.fetchable)
        # More than one descriptor carries: the plan's whole pool, split by the core.
        offered = getattr(plan, "offered", None) or {}  # a core without splits has none
        pools = {p: offered.get(p) or entries for p, entries in plan.intro_points.items()}
        points = {p: [sim_point(ip) for _, ip in entries] for p, entries in pools.items()}
        owners = {p: [node_id for node_id, _ in entries] for p, entries in pools.items()}
        slot.core.set_intro_points(points, now, owners)
        slot.owners = {sim_point(ip).auth_key: node_id
                       for entries in pools.values() for node_id, ip in entries}
        slot.pools = {p: {node_id for node_id, _ in entries} for p, entries in pools.items()}
        self.pump(node)

    def pump(self, node: SimNode) -> None:
        """Carry out the core's actions, hand its conflicts to the mesh, re-arm its timer."""
        slot = self.slots.get(node.index)
        sim = self.sim
        if slot is None or node.core is None:
            return
        core = slot.core
        conflicts = []
        while (ev := core.next_event()) is not None:
            sim.trace.add(sim.t, "publish", node.spec.node_id, ev.message)
            if ev.kind is PublishEventKind.CONFLICT and ev.foreign is not None:
                conflicts.append(ev.foreign)
        # As in the daemon, the mesh decides on a conflict before the core's queued actions
        # go out: a step-down drops this slot, and with it the rebuild the core queued on
        # finding the foreign descriptor (the loser must not overwrite the winner).
        for foreign in conflicts:
            self.conflicts += 1
            sim.stats.foreign_reports += 1
            node.core.report_foreign_descriptor(foreign.revision, foreign.intro_count,
                                                sim.local_now(node))
            sim.pump_node(node)
            if self.slots.get(node.index) is not slot or node.core is None:
                return
        while (action := core.next_action()) is not None:
            latency = self.rng.uniform(0.02, 0.3)
            if isinstance(action, Post):
                sim.queue.schedule(sim.t + latency, "hsdir",
                                   ("post", node.index, slot.origin, action))
            else:
                sim.queue.schedule(sim.t + latency, "hsdir",
                                   ("fetch", node.index, slot.origin, action))
        timer = core.get_timer()
        if timer != slot.timer_at:
            slot.timer_at = timer
            slot.token += 1
            if timer is not None:
                at = max(sim.t, sim.to_sim(node, timer))
                sim.queue.schedule(at, "hsdir", ("timer", node.index, slot.origin, slot.token))

    def _slot(self, index: int, origin: str) -> tuple[SimNode, PublishSlot] | None:
        node = self.sim.nodes[index]
        slot = self.slots.get(index)
        if slot is None or slot.origin != origin or node.core is None:
            return None
        return node, slot

    def step(self, data: tuple[Any, ...]) -> None:
        """One queued HSDir item: a fault, an answer to a post or fetch, a core timer."""
        kind = data[0]
        if kind in ("revert", "stray"):
            self.fault(kind)
            return
        found = self._slot(data[1], data[2])
        if found is None:
            return
        node, slot = found
        if node.frozen:
            # A stopped process: tor keeps its answers and timers fire late, after SIGCONT.
            self.sim.queue.schedule(self.sim.t + self.sim.timing.heartbeat_interval / 4,
                                    "hsdir", data)
            return
        now = self.sim.local_now(node)
        if kind == "timer":
            if data[3] != slot.token:
                return
            slot.timer_at = None
            slot.core.handle_timer(now)
        elif kind == "post":
            self._answer_post(slot, data[3], now)
        elif kind == "fetch":
            self._answer_fetch(slot, data[3], now)
        self.pump(node)

    def _answer_post(self, slot: PublishSlot, post: Post, now: float) -> None:
        if self.in_chaos(self.sim.t) and self.rng.random() < self.loss:
            self.model.lost += 1
            return  # no answer at all: the core's upload timeout handles it
        keys = slot.core.intro_keys_at(post.period, post.revision, post.hsdir) or frozenset()
        stored = Stored(post.revision, slot.origin, keys)
        if self.model.post(post.period, post.hsdir, stored):
            slot.core.on_uploaded(post.hsdir, now)
        else:
            slot.core.on_hs_desc_failed(post.hsdir, post.blinded_id, "UPLOAD_REJECTED", now)

    def _answer_fetch(self, slot: PublishSlot, fetch: Fetch, now: float) -> None:
        copies = self.model.store.get((fetch.period, fetch.hsdir)) or []
        if not copies:
            slot.core.on_hs_desc_failed(fetch.hsdir, None, "NOT_FOUND", now)
            return
        stored = copies[-1]
        if len(copies) > 1 and self.in_chaos(self.sim.t) and self.rng.random() < self.stale:
            stored = copies[-2]  # a lagging replica answers with its older copy
        slot.core.on_fetched(fetch.hsdir, ObservedDescriptor(fetch.period, stored.revision,
                                                             stored.keys), now)

    # -- the invariant --------------------------------------------------------------------

    def check_converged(self, publisher: SimNode) -> str | None:
        """None when every HSDir serves the publisher's current descriptor, else why not."""
        slot = self.slots.get(publisher.index)
        if slot is None:
            return f"{publisher.spec.node_id} publishes but has no publish core"
        tracker = slot.core.tracker
        for period in self.model.periods:
            revision = tracker.revision(period)
            if revision is None:
                continue  # nothing to advertise for this period (no intro points)
            # A rebuild still in flight (an intro-point rotation) may leave older
            # revisions of the same publisher for a moment. A rebuild past a rejection
            # goes only where it was missing, so complete means: the same intro points
            # everywhere (maybe under two revisions), not one revision.
            exact = tracker.complete(period)
            served: set[str] = set()
            for hsdir in self.model.hsdirs[period]:
                keys = slot.core.intro_keys_at(period, revision, hsdir)
                stored = self.model.latest(period, hsdir)
                if stored is not None:
                    served |= {slot.owners.get(k, "?") for k in stored.keys}
                if stored is not None and stored.origin != slot.origin and (
                    stored.keys in slot.core.descriptors_of(period, stored.revision)
                ):
                    # Two publishers of one cluster built the same revision from the
                    # same plan (both superseding one foreign revision): to a client
                    # that is the publisher's own descriptor.
                    continue
                if stored is None or stored.origin != slot.origin or (
                    exact and stored.keys != keys
                ):
                    held = "nothing" if stored is None else (
                        f"{stored.origin} revision {stored.revision}")
                    return (f"HSDir {hsdir[:4]} period {period} serves {held}, not "
                            f"{slot.origin} revision {revision}")
            # More intro points than one descriptor carries: every node the publisher
            # offered is in the descriptor some HSDir serves.
            pool = slot.pools.get(period, set())
            room = slot.core.descriptor_counts.get(period, 1) * MAX_INTRO_POINTS
            missing = pool - served if len(pool) <= room else set()
            self.coverage_checks += bool(exact and room > MAX_INTRO_POINTS)
            if exact and missing:
                return (f"period {period}: no HSDir serves a descriptor with "
                        f"{', '.join(sorted(missing))} ({len(slot.pools[period])} nodes offered)")
        return None
