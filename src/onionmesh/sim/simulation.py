"""The simulation engine: N cores, one simulated clock, one network, one RNG.

Every input a core gets (timer, datagram, intro-point change, operator
removal, shutdown) is followed by draining its events and datagrams; events go
to the trace and the invariant checker, datagrams into the network. Each node
sees its own clock (simulated time plus a per-incarnation skew); timers are
converted back to simulated time. Nothing here reads the wall clock or the
global ``random`` module.
"""

from __future__ import annotations

import base64
import hashlib
import random
from dataclasses import dataclass, field
from typing import Any

from onionmesh.descriptor.intro import (
    LS_ED25519_ID,
    LS_LEGACY_ID,
    LinkSpecifier,
    encode_link_specifiers,
)
from onionmesh.sim.adversary import KINDS, Adversary, Overheard
from onionmesh.sim.clock import EventQueue
from onionmesh.sim.coreapi import CoreFactory, CoreLike, NodeSpec, Timing, event_name, state_digest
from onionmesh.sim.errors import InvariantViolation
from onionmesh.sim.invariants import InvariantChecker
from onionmesh.sim.network import Network
from onionmesh.sim.publishing import SimPublishing, convergence_bound
from onionmesh.sim.scenario import (
    Action,
    Block,
    Bounds,
    Degrade,
    Freeze,
    Heal,
    Inject,
    Isolate,
    Kill,
    Partition,
    Remove,
    Rotate,
    SimParams,
    Start,
    Thaw,
    build_schedule,
)
from onionmesh.sim.trace import Trace, describe, payload_tag

# More timer firings than this at one instant for one node is a livelock.
MAX_TIMER_SPIN = 200


@dataclass
class SimNode:
    """One node slot: its identity and the current incarnation of its core."""

    index: int
    spec: NodeSpec
    core: CoreLike | None = None
    incarnation: int = 0
    skew: float = 0.0
    beyond: bool = False
    removed: bool = False
    started_at: float = 0.0
    timer_at: float | None = None
    timer_token: int = 0
    spin: int = 0
    spin_at: float = -1.0
    intro_sets: dict[int, list[bytes]] = field(default_factory=dict)
    sets_changed_at: float = 0.0
    intro_given: int = 0
    frozen: bool = False
    # Datagrams that reached a frozen node: (payload, source, source address, beyond, when)
    buffered: list[tuple[bytes, int, str, bool, float]] = field(default_factory=list)

    @property
    def alive(self) -> bool:
        """Whether a core is running in this slot."""
        return self.core is not None

    @property
    def in_main(self) -> bool:
        """Alive, running, in clock tolerance and not removed: part of the cluster proper."""
        return self.core is not None and not self.beyond and not self.removed and not self.frozen


@dataclass
class Stats:
    """Counters of a run (for reports and the benchmark)."""

    datagrams_sent: int = 0
    bytes_sent: int = 0
    delivered: int = 0
    accepted: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    injected: dict[str, int] = field(default_factory=dict)
    publishes: int = 0
    foreign_reports: int = 0
    events: int = 0
    faults: int = 0


def relay_intro_point(relay: int, body: bytes) -> bytes:
    """An opaque intro point whose ``introduction-point`` line names relay ``relay``."""
    specs = encode_link_specifiers((
        LinkSpecifier(LS_LEGACY_ID, hashlib.sha1(b"sim-rsa%d" % relay).digest()),
        LinkSpecifier(LS_ED25519_ID, hashlib.sha256(b"sim-ed%d" % relay).digest()),
    ))
    return b"introduction-point " + base64.b64encode(specs) + b"\n" + body


class Simulation:
    """One deterministic run of a mesh of cores."""

    def __init__(self, factory: CoreFactory, params: SimParams, seed: int,
                 tick: float | None = None) -> None:
        self.factory = factory
        self.params = params
        self.seed = seed
        self.rng = random.Random(seed)
        self.timing = Timing.from_config(factory.config)
        self.bounds = Bounds.from_timing(self.timing, tick)
        self.t = 0.0
        self.queue = EventQueue()
        self.network = Network(self.rng)
        self.trace = Trace(keep=params.keep_trace)
        self.adversary = Adversary(self.rng)
        self.stats = Stats()
        self.cluster_secret = self.rng.randbytes(32)
        self.nodes = [self._make_node(i) for i in range(params.nodes)]
        prepare = getattr(factory, "prepare", None)
        if callable(prepare):  # e.g. the real core's factory signs the cluster's roster
            prepare([n.spec for n in self.nodes], self.cluster_secret)
        self.by_address = {n.spec.address: n for n in self.nodes}
        self.by_id = {n.spec.node_id: n for n in self.nodes}
        self.period_base = 19000 + self.rng.randrange(1000)
        # Node clocks read Unix time (a core may rely on timestamps being positive).
        self.epoch = float(1_700_000_000 + self.rng.randrange(100_000_000))
        self.removed_ids: list[str] = []
        self.checker = InvariantChecker(self)
        self.schedule, self.end = build_schedule(self.rng, params, self.timing, self.bounds)
        self._rogues: list[CoreLike] = []
        self.publishing: SimPublishing | None = None
        if params.hsdir:
            chaos = params.chaos_heartbeats * self.timing.heartbeat_interval
            windows = [(max(0.0, at - chaos), at) for at, action in self.schedule
                       if isinstance(action, Heal)]
            self.publishing = SimPublishing(self, windows)
            # Room after the last heal for the HSDirs to converge (checked at the end).
            hb = self.timing.heartbeat_interval
            needed = self.bounds.settle + convergence_bound(hb) + hb
            self.end += max(0.0, needed - self.bounds.stable_window)

    def _make_node(self, i: int) -> SimNode:
        node_id = f"n{i:02d}"
        spec = NodeSpec(
            node_id=node_id,
            signing_seed=self.rng.randbytes(32),
            priority=self.rng.choice((50, 100, 100, 150)),
            eligible=self.rng.random() < 0.8 or i == 0,
            address=f"{node_id}.sim:7946",
        )
        return SimNode(i, spec)

    # -- running --------------------------------------------------------------
    def run(self) -> Simulation:
        """Run the whole schedule; raises InvariantViolation on the first broken rule."""
        self.begin()
        self.run_until(self.end)
        self.t = self.end
        # A late conflict hold-off or stray upload: give the HSDirs their time to
        # converge (bounded) so the end-of-run check can judge them.
        due = self.checker.hsdirs_due_at()
        if due is not None and self.end < due <= self.end + 4 * self.bounds.stable_window:
            self.run_until(due)
            self.t = self.end = due
        self.checker.check()
        self.checker.check_hsdirs()
        return self

    def begin(self) -> None:
        """Queue the schedule and the periodic invariant checks (once per run)."""
        for at, action in self.schedule:
            self.queue.schedule(at, "action", action)
        step = self.timing.heartbeat_interval / 4
        at = step
        while at < self.end:
            self.queue.schedule(at, "check")
            at += step

    def run_until(self, until: float) -> None:
        """Process every queued step up to simulated time ``until`` (inclusive)."""
        while len(self.queue) and self.queue.peek_time() <= until:  # type: ignore[operator]
            item = self.queue.pop()
            self.t = item.at
            if item.kind == "timer":
                self._fire_timer(*item.data)
            elif item.kind == "deliver":
                self._deliver(*item.data)
            elif item.kind == "intro":
                self._give_intro_points(*item.data)
            elif item.kind == "hsdir":
                if self.publishing is not None:
                    self.publishing.step(item.data)
            elif item.kind == "action":
                self._act(item.data)
            else:
                self.checker.check()
        self.t = max(self.t, until)

    def local_now(self, node: SimNode) -> float:
        """What the node's own (skewed) clock reads now."""
        return self.epoch + self.t + node.skew

    def to_sim(self, node: SimNode, local: float) -> float:
        """Convert a time on ``node``'s clock to simulated time."""
        return local - node.skew - self.epoch

    # -- core I/O ---------------------------------------------------------------
    def _drain_events(self, node: SimNode) -> list[Any]:
        core = node.core
        assert core is not None
        events = []
        while (ev := core.next_event()) is not None:
            events.append(ev)
            self.stats.events += 1
            self.trace.add(self.t, "event", node.spec.node_id, describe(ev))
        return events

    def pump_node(self, node: SimNode) -> None:
        """Drain a core after an input from outside the engine (the publish model)."""
        self._pump(node)

    def _pump(self, node: SimNode, events: list[Any] | None = None) -> list[Any]:
        """Drain a core's events and datagrams after an input; reschedule its timer."""
        core = node.core
        assert core is not None
        if events is None:
            events = self._drain_events(node)
        for ev in events:
            self.checker.on_event(node, ev)
        for payload, addr in core.datagrams_to_send(self.local_now(node)):
            self._send(node, payload, addr)
        timer = core.get_timer()
        if timer != node.timer_at:
            node.timer_at = timer
            node.timer_token += 1
            if timer is not None:
                at = max(self.t, self.to_sim(node, timer))
                self.queue.schedule(at, "timer", (node.index, node.incarnation, node.timer_token))
        # The real publish core: started on PublishRequested, dropped on SteppedDown. A
        # node beyond clock tolerance is not modelled as uploading (docs/simulation.md).
        if self.publishing is not None:
            self.publishing.on_events(node, events)
        return events

    def _fire_timer(self, index: int, incarnation: int, token: int) -> None:
        node = self.nodes[index]
        if node.core is None or node.incarnation != incarnation or node.timer_token != token:
            return
        if node.frozen:
            return  # a stopped process runs no timers; Thaw fires it
        if node.spin_at == self.t:
            node.spin += 1
            if node.spin > MAX_TIMER_SPIN:
                raise InvariantViolation(
                    "timer_livelock", self.t,
                    f"{node.spec.node_id} asked for its timer {node.spin} times at one instant",
                )
        else:
            node.spin_at, node.spin = self.t, 0
        timer = node.timer_at if node.timer_at is not None else self.local_now(node)
        node.timer_at = None  # force a reschedule even if the core returns the same value
        node.core.handle_timer(max(self.local_now(node), timer))
        self._pump(node)

    def _send(self, node: SimNode, payload: bytes, addr: str) -> None:
        self.stats.datagrams_sent += 1
        self.stats.bytes_sent += len(payload)
        dst = self.by_address.get(addr)
        self.trace.add(self.t, "send", node.spec.node_id, f"{payload_tag(payload)} -> {addr}")
        if dst is None or dst is node:
            return
        for delay in self.network.delays(node.index, dst.index):
            self.queue.schedule(
                self.t + delay,
                "deliver",
                (dst.index, payload, node.index, node.spec.address, node.beyond),
            )

    def _deliver(
        self, dst_index: int, payload: bytes, src_index: int, src_addr: str, src_beyond: bool,
        sent_at: float | None = None,
    ) -> None:
        dst = self.nodes[dst_index]
        if dst.core is None:
            return
        if dst.frozen:
            dst.buffered.append((payload, src_index, src_addr, src_beyond, self.t))
            return
        self.stats.delivered += 1
        dst.core.receive_datagram(payload, src_addr, self.local_now(dst))
        events = self._drain_events(dst)
        rejected = [ev for ev in events if event_name(ev) == "MessageRejected"]
        for ev in rejected:
            reason = str(getattr(ev, "reason", "?"))
            self.stats.rejected[reason] = self.stats.rejected.get(reason, 0) + 1
        accepted = not rejected
        self.trace.add(self.t, "deliver", dst.spec.node_id,
                       f"{payload_tag(payload)} from {src_addr} accepted={accepted}")
        if accepted:
            self.stats.accepted += 1
        # Liveness bookkeeping first: the events may be checked against it.
        waited = 0.0 if sent_at is None else self.t - sent_at
        self.checker.on_delivery(dst, self.nodes[src_index], src_beyond, accepted, rejected,
                                 waited)
        self._pump(dst, events)
        if accepted:
            self.adversary.overhear(Overheard(dst.index, dst.incarnation, payload, src_addr))

    def _give_intro_points(self, index: int, incarnation: int) -> None:
        node = self.nodes[index]
        if node.core is None or node.incarnation != incarnation:
            return
        if node.frozen:
            return  # the shell is stopped too; Thaw passes the node's sets on
        node.sets_changed_at = self.t
        node.intro_given = node.incarnation
        self.checker.on_intro_points(node)
        node.core.set_local_intro_points(
            {p: list(ips) for p, ips in node.intro_sets.items()}, self.local_now(node)
        )
        self.trace.add(self.t, "intro", node.spec.node_id,
                       ",".join(f"{p}:{len(v)}" for p, v in sorted(node.intro_sets.items())))
        self._pump(node)

    def _new_ip(self) -> bytes:
        body = self.rng.randbytes(self.params.ip_size)
        if not self.params.relay_pool:
            return body
        return relay_intro_point(self.rng.randrange(self.params.relay_pool), body)

    def _fresh_sets(self) -> dict[int, list[bytes]]:
        lo, hi = self.params.ips_per_period
        return {
            self.period_base + k: [self._new_ip() for _ in range(self.rng.randint(lo, hi))]
            for k in range(self.params.periods)
        }

    # -- actions ------------------------------------------------------------------
    def _act(self, action: Action) -> None:
        self.trace.add(self.t, "action", "-", repr(action))
        if isinstance(action, Rotate):
            self._rotate(action.node)
            return
        if isinstance(action, Inject):
            self._inject()
            return
        self.stats.faults += 1
        self.checker.on_fault(action)
        if isinstance(action, Start):
            self._start(action)
        elif isinstance(action, Kill):
            self._kill(self.nodes[action.node], action.graceful)
        elif isinstance(action, Remove):
            self._remove(self.nodes[action.node])
        elif isinstance(action, Freeze):
            node = self.nodes[action.node]
            node.frozen = node.core is not None
        elif isinstance(action, Thaw):
            self._thaw(self.nodes[action.node])
        elif isinstance(action, Partition):
            self.network.partition([list(g) for g in action.groups])
        elif isinstance(action, Block):
            for src, dst in action.pairs:
                self.network.block(src, dst)
        elif isinstance(action, Isolate):
            self.network.isolate(action.node, range(len(self.nodes)))
        elif isinstance(action, Degrade):
            self.network.degrade(action.profile, action.links)
        elif isinstance(action, Heal):
            self.network.heal()

    def _start(self, action: Start) -> None:
        node = self.nodes[action.node]
        if node.core is not None or node.removed:
            return
        node.incarnation += 1
        node.skew = action.skew
        node.beyond = action.beyond
        node.started_at = self.t
        node.timer_at = None
        if action.fresh_ips or not node.intro_sets:
            node.intro_sets = self._fresh_sets()
        bootstrap = self._bootstrap_for(node)
        node.core = self.factory.make_core(
            node.spec, self.cluster_secret, bootstrap, self.local_now(node)
        )
        for node_id in self.removed_ids:
            node.core.remove_peer(node_id, self.local_now(node))
        self._pump(node)
        # The node's tor reports its intro points a little after the daemon starts.
        delay = self.rng.uniform(0.0, self.timing.heartbeat_interval / 2)
        self.queue.schedule(self.t + delay, "intro", (node.index, node.incarnation))

    def _thaw(self, node: SimNode) -> None:
        """SIGCONT: buffered datagrams first (they wait in the socket), then the timer."""
        if not node.frozen:
            return
        node.frozen = False
        buffered, node.buffered = node.buffered, []
        for payload, src_index, src_addr, beyond, arrived in buffered:
            self._deliver(node.index, payload, src_index, src_addr, beyond, arrived)
        if node.core is None:
            return
        # The shell re-reads its tor's intro points and the overdue timer fires.
        self._give_intro_points(node.index, node.incarnation)
        if node.core is not None:
            node.timer_at = None
            node.core.handle_timer(self.local_now(node))
            self._pump(node)

    def _bootstrap_for(self, node: SimNode) -> list[NodeSpec]:
        """Up to two live peers (as an operator would configure) plus maybe a random one.

        Gossip has to find everybody else. Live in-tolerance peers are
        preferred because a node whose only known peers are all down or
        clock-skewed cannot join by design, which is not what these runs test.
        """
        others = [n for n in self.nodes if n is not node and not n.removed]
        if not others:
            return []
        live = [n for n in others if n.in_main]
        picks = self.rng.sample(live, min(2, len(live))) if live else [self.rng.choice(others)]
        if self.rng.random() < 0.3:
            extra = self.rng.choice(others)
            if extra not in picks:
                picks.append(extra)
        return [n.spec for n in picks]

    def _kill(self, node: SimNode, graceful: bool) -> None:
        node.frozen, node.buffered = False, []
        if node.core is None:
            return
        if graceful:
            node.core.shutdown(self.local_now(node))
            self._pump(node)
        node.core = None
        node.timer_at = None
        node.timer_token += 1
        if self.publishing is not None:
            self.publishing.drop(node)

    def _remove(self, node: SimNode) -> None:
        self._kill(node, graceful=False)
        node.removed = True
        self.removed_ids.append(node.spec.node_id)
        for other in self.nodes:
            if other.core is not None:
                other.core.remove_peer(node.spec.node_id, self.local_now(other))
                self._pump(other)

    def _rotate(self, index: int) -> None:
        node = self.nodes[index]
        if node.core is None or not node.intro_sets:
            return
        period = self.rng.choice(sorted(node.intro_sets))
        ips = node.intro_sets[period]
        lo, hi = self.params.ips_per_period
        choice = self.rng.random()
        if ips and choice < 0.6:
            ips[self.rng.randrange(len(ips))] = self._new_ip()
        elif choice < 0.8 and len(ips) < max(hi, 1):
            ips.append(self._new_ip())
        elif ips and len(ips) > lo:
            ips.pop(self.rng.randrange(len(ips)))
        else:
            node.intro_sets[period] = [self._new_ip() for _ in range(len(ips) or 1)]
        self._give_intro_points(node.index, node.incarnation)

    # -- adversary ------------------------------------------------------------------
    def _inject(self) -> None:
        live = [n for n in self.nodes if n.core is not None and not n.frozen]
        if not live:
            return
        kind = self.rng.choice(KINDS)
        src_addr = Adversary.ADDRESS
        if kind == "rogue":
            item = self._rogue_datagram()
            if item is None:
                return
            payload, target = item
        else:
            heard = self.adversary.pick_replay({n.index: n.incarnation for n in live})
            if heard is None:
                return
            target = self.nodes[heard.dst]
            payload = heard.payload
            src_addr = heard.src_addr
            if kind == "replay_spoofed":
                src_addr = self.rng.choice(self.nodes).spec.address
            elif kind != "replay":
                payload = self.adversary.mutate(kind, payload)
        self._deliver_injected(target, payload, src_addr, kind)

    def _rogue_datagram(self) -> tuple[bytes, SimNode] | None:
        """A well-formed datagram from a core without the cluster secret."""
        if not self._rogues:
            wrong_secret = self.rng.randbytes(32)
            victim = self.rng.choice(self.nodes).spec
            specs = [
                NodeSpec("rogue", self.rng.randbytes(32), 1000, True, "rogue.sim:7946"),
                # Claims a real node's id and address but has neither its key nor the secret.
                NodeSpec(victim.node_id, self.rng.randbytes(32), 1000, True, victim.address),
            ]
            self._rogues = [
                self.factory.make_core(
                    s, wrong_secret, [n.spec for n in self.nodes if n.spec.node_id != s.node_id],
                    self.epoch + self.t,
                )
                for s in specs
            ]
        rogue = self.rng.choice(self._rogues)
        rogue.handle_timer(self.epoch + self.t)
        while rogue.next_event() is not None:
            pass
        candidates = [
            (p, self.by_address[a]) for p, a in rogue.datagrams_to_send(self.epoch + self.t)
            if a in self.by_address and self.by_address[a].core is not None
        ]
        return self.rng.choice(candidates) if candidates else None

    def _deliver_injected(self, node: SimNode, payload: bytes, src_addr: str, kind: str) -> None:
        core = node.core
        assert core is not None
        self.stats.injected[kind] = self.stats.injected.get(kind, 0) + 1
        # Bring the core up to date first so only the injected datagram can change it.
        timer = core.get_timer()
        if timer is not None and timer <= self.local_now(node):
            core.handle_timer(self.local_now(node))
            self._pump(node)
        before = state_digest(core)
        core.receive_datagram(payload, src_addr, self.local_now(node))
        events = self._drain_events(node)
        out = core.datagrams_to_send(self.local_now(node))
        after = state_digest(core)
        self.trace.add(self.t, "inject", node.spec.node_id,
                       f"{kind} {payload_tag(payload)} from {src_addr}")
        self.checker.on_injected(node, kind, events, out, before, after)
        self._pump(node)
