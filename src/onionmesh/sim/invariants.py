"""The invariants a mesh of cores must keep, checked while the simulation runs.

Always (even during chaos):
- ``republish_rate``: a core never emits two PublishRequested events less than
  ``min_publish_interval`` apart;
- ``plan_over_cap`` / ``plan_foreign_ip``: a plan never holds more than
  ``max_intro_points`` per period, and every intro point in it really belongs
  to the node it is attributed to;
- ``plan_shared_relay``: a plan never holds two intro points on one relay in a
  period (a tor client would reach only the first);
- ``dead_not_removed``: a node nobody has heard from for
  ``dead_threshold * heartbeat_interval + removal_grace_period + tick`` is not
  in any publisher's plan (killed, and fully partitioned-away, nodes alike);
- ``removed_peer_in_plan``: an operator-removed node leaves every plan within
  a tick and never comes back;
- ``injected_*``: a forged or replayed datagram is rejected with a reason,
  emits nothing else, sends nothing, and leaves the state digest unchanged;
- ``skew_accepted``: a datagram between a node in clock tolerance and one
  beyond it is never accepted; ``false_skew_rejection``: one between two
  in-tolerance nodes is never rejected for its timestamp.

Once the network has been stable for ``Bounds.settle`` seconds:
- ``single_publisher`` / ``publisher_agreement``: exactly one publisher among
  the live in-tolerance nodes (none if none is eligible), and all agree on it;
- ``leadership_churn``: nobody becomes publisher or steps down;
- ``intro_points_missing`` / ``stale_intro_point``: every live node's current
  intro points are in the plan within ``Bounds.appearance`` of appearing
  (all of them when the cap allows, else at least a fair share; with shared
  relays, at most as many as it has relays no other intro point wants), and
  retired ones are gone; a peer the publisher declared flapping (PeerDamped) is
  given until the end of its hold instead;
- ``lease_stolen``: after that, until a fault other than a restart or kill of
  another node happens, the settled publisher keeps its role.

Settling is postponed past the hold-off of a publisher that yielded to a
foreign descriptor seen on the (modelled) HSDirs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from onionmesh.mesh.relay import relay_keys, relay_label
from onionmesh.mesh.vocabulary import RejectReason
from onionmesh.sim.coreapi import event_name
from onionmesh.sim.errors import InvariantViolation
from onionmesh.sim.scenario import Action, Freeze, Heal, Inject, Kill, Remove, Rotate, Start, Thaw
from onionmesh.sim.trace import describe

if TYPE_CHECKING:
    from onionmesh.sim.simulation import SimNode, Simulation

EPS = 1e-6


class InvariantChecker:
    """Watches one simulation and raises InvariantViolation on the first broken rule."""

    def __init__(self, sim: Simulation) -> None:
        self.sim = sim
        self.stable_since = 0.0
        self.last_heard: dict[int, float] = {}
        self.last_publish: dict[tuple[int, int], float] = {}
        self.ip_owner: dict[bytes, str] = {}
        self.removed_at: dict[str, float] = {}
        self.guard: int | None = None
        # (publisher index, incarnation, peer id) -> simulated time its flap hold ends
        self.damped_until: dict[tuple[int, int, str], float] = {}
        # Until when a publisher that yielded to a foreign descriptor may hold off.
        self.hold_off_until = float("-inf")
        self.settled_checks = 0
        self.appearance_checks = 0
        self.removal_checks = 0
        self.injections_checked = 0
        self.hsdir_checks = 0

    def fail(self, invariant: str, detail: str) -> NoReturn:
        """Raise the violation at the current simulated time."""
        raise InvariantViolation(invariant, self.sim.t, detail)

    @property
    def settled_at(self) -> float:
        """When the current stable window starts to be checked.

        A publisher that stepped down for a foreign descriptor holds off for
        two lease periods (the core's rule); the cluster may then need the
        usual takeover time after that.
        """
        b = self.sim.bounds
        return max(self.stable_since + b.settle, self.hold_off_until + b.settle)

    @property
    def settled(self) -> bool:
        """The network has been clean and fault-free for the settle time."""
        return self.sim.network.is_clean and self.sim.t >= self.settled_at - EPS

    # -- hooks ------------------------------------------------------------------
    def on_fault(self, action: Action) -> None:
        """Called before a fault is applied: restarts the stability clock."""
        if isinstance(action, Rotate | Inject):
            return
        self.stable_since = self.sim.t
        if isinstance(action, Remove):
            self.removed_at[self.sim.nodes[action.node].spec.node_id] = self.sim.t
        keeps_guard = isinstance(action, Heal) or (
            # A node that froze and woke must not unseat a healthy publisher either.
            isinstance(action, Start | Kill | Remove | Freeze | Thaw)
            and action.node != self.guard
        )
        if not keeps_guard:
            self.guard = None

    def on_event(self, node: SimNode, event: Any) -> None:
        """Every event a core emits."""
        name = event_name(event)
        t = self.sim.t
        if name == "PublishRequested":
            self.sim.stats.publishes += 1
            key = (node.index, node.incarnation)
            last = self.last_publish.get(key)
            limit = self.sim.timing.min_publish_interval
            if last is not None and t - last < limit - EPS:
                self.fail("republish_rate",
                          f"{node.spec.node_id} published {t - last:.3f}s after its previous "
                          f"publish (min_publish_interval={limit})")
            self.last_publish[key] = t
            self._check_plan(node, getattr(event, "plan", None))
        elif name == "ConflictDetected" and getattr(event, "resolution", "") == "step_down":
            self.hold_off_until = t + 2 * self.sim.timing.lease_duration
        elif name == "PeerDamped":
            # Flap damping is allowed to hold a bouncing peer's intro points back.
            hold = self.sim.to_sim(node, float(event.hold_until))
            self.damped_until[(node.index, node.incarnation, str(event.node_id))] = hold
        elif name in ("BecamePublisher", "SteppedDown") and node.in_main:
            if self.settled:
                self.fail("leadership_churn",
                          f"{node.spec.node_id}: {describe(event)} in a stable network")
            if self.guard is not None and (
                (name == "BecamePublisher" and node.index != self.guard)
                or (name == "SteppedDown" and node.index == self.guard)
            ):
                self.fail("lease_stolen",
                          f"{node.spec.node_id}: {describe(event)} while "
                          f"{self.sim.nodes[self.guard].spec.node_id} held a healthy lease")

    def on_delivery(self, dst: SimNode, src: SimNode, src_beyond: bool, accepted: bool,
                    rejected: Sequence[Any], waited: float = 0.0) -> None:
        """A genuine datagram reached ``dst``'s core (after ``waited`` s in a frozen node's
        socket buffer: old enough, it is rightly refused as stale)."""
        if accepted:
            self.last_heard[src.index] = self.sim.t
        if waited > 0 and not accepted:
            return
        if src_beyond == dst.beyond:
            if not accepted and not src_beyond:
                reasons = [getattr(ev, "reason", None) for ev in rejected]
                if RejectReason.STALE in reasons:
                    self.fail("false_skew_rejection",
                              f"{dst.spec.node_id} rejected {src.spec.node_id} ({reasons}) "
                              f"with clocks {dst.skew - src.skew:+.1f}s apart")
        elif accepted:
            self.fail("skew_accepted",
                      f"{dst.spec.node_id} (skew {dst.skew:+.1f}s) accepted a datagram from "
                      f"{src.spec.node_id} beyond the clock tolerance")

    def on_intro_points(self, node: SimNode) -> None:
        """A node's tor reported (new) intro points."""
        for ips in node.intro_sets.values():
            for ip in ips:
                self.ip_owner[ip] = node.spec.node_id

    def on_injected(self, node: SimNode, kind: str, events: Sequence[Any],
                    out: Sequence[Any], before: str, after: str) -> None:
        """An attacker's datagram was handed to ``node``'s core."""
        self.injections_checked += 1
        who = node.spec.node_id
        rejected = [ev for ev in events if event_name(ev) == "MessageRejected"]
        others = [ev for ev in events if event_name(ev) != "MessageRejected"]
        if others or not rejected:
            self.fail("injected_accepted",
                      f"{kind} datagram to {who} was not rejected; events: "
                      f"{[event_name(ev) for ev in events]}")
        if any(not str(getattr(ev, "reason", "")) for ev in rejected):
            self.fail("injected_accepted", f"{kind} datagram to {who} rejected without a reason")
        if out:
            self.fail("injected_caused_output", f"{kind} datagram made {who} send {len(out)}")
        if before != after:
            self.fail("injected_changed_state", f"{kind} datagram changed {who}'s state")

    # -- periodic -------------------------------------------------------------------
    def check(self) -> None:
        """The continuous checks, run every quarter heartbeat."""
        for node in self.sim.nodes:
            if node.core is not None and node.core.is_publisher:
                self._check_plan(node, node.core.publish_plan())
        if self.settled:
            self._check_settled()

    def hsdirs_due_at(self) -> float | None:
        """When the HSDirs must have converged (None: no HSDir model)."""
        publishing = self.sim.publishing
        if publishing is None:
            return None
        from onionmesh.sim.publishing import convergence_bound

        bound = convergence_bound(self.sim.timing.heartbeat_interval)
        return max(self.settled_at, publishing.last_stray + self.sim.bounds.settle) + bound

    def check_hsdirs(self) -> None:
        """``hsdir_divergence``: at the end of a run, once the mesh has been healed and
        nothing stray has uploaded for long enough, every HSDir serves one descriptor
        from the one publisher (sim/publishing.py)."""
        sim = self.sim
        publishing = sim.publishing
        if publishing is None or not self.settled:
            return
        due = self.hsdirs_due_at()
        if due is None or sim.t < due - EPS:
            return
        pubs = [n for n in sim.nodes if n.in_main and n.core is not None
                and n.core.is_publisher]
        if len(pubs) != 1:
            return  # single_publisher already judges this
        self.hsdir_checks += 1
        problem = publishing.check_converged(pubs[0])
        if problem is not None:
            self.fail("hsdir_divergence", problem)

    def _check_plan(self, node: SimNode, plan: Any) -> None:
        if plan is None:
            return
        sim = self.sim
        t = sim.t
        cap = sim.timing.max_intro_points
        for period, entries in plan.intro_points.items():
            if len(entries) > cap:
                self.fail("plan_over_cap", f"{node.spec.node_id} plans {len(entries)} intro "
                          f"points for period {period} (cap {cap})")
            relays: set[Any] = set()
            for _, ip in entries:
                keys = relay_keys(bytes(ip))
                if keys and keys & relays:
                    self.fail("plan_shared_relay", f"{node.spec.node_id} plans two intro points "
                              f"on relay {relay_label(bytes(ip))} for period {period}")
                relays |= keys or set()
            for node_id, ip in entries:
                owner = self.ip_owner.get(bytes(ip))
                if owner != node_id:
                    self.fail("plan_foreign_ip", f"{node.spec.node_id}'s plan attributes an intro "
                              f"point of {owner} to {node_id}")
                removed = self.removed_at.get(node_id)
                if removed is not None and t > removed + sim.bounds.tick + EPS:
                    self.fail("removed_peer_in_plan", f"{node.spec.node_id}'s plan still holds "
                              f"{node_id}, removed by the operator at t={removed:.3f}")
                if node_id == node.spec.node_id:
                    continue
                other = sim.by_id[node_id]
                heard = max(self.last_heard.get(other.index, 0.0), node.started_at)
                self.removal_checks += 1
                if t - heard > sim.bounds.removal + EPS:
                    self.fail("dead_not_removed",
                              f"{node.spec.node_id}'s plan holds {node_id}, last heard by anyone "
                              f"at t={heard:.3f} ({t - heard:.3f}s > {sim.bounds.removal:.3f}s)")

    def _check_settled(self) -> None:
        sim = self.sim
        self.settled_checks += 1
        main = [n for n in sim.nodes if n.in_main]
        pubs = [n for n in main if n.core is not None and n.core.is_publisher]
        eligible = [n for n in main if n.spec.eligible]
        if not eligible:
            if pubs:
                self.fail("single_publisher", f"{pubs[0].spec.node_id} publishes but is not "
                          "eligible")
            return
        if len(pubs) != 1:
            self.fail("single_publisher",
                      f"{len(pubs)} publishers among {len(main)} live nodes: "
                      f"{[n.spec.node_id for n in pubs]}")
        pub = pubs[0]
        for n in main:
            assert n.core is not None
            if n.core.publisher_id != pub.spec.node_id:
                self.fail("publisher_agreement",
                          f"{n.spec.node_id} thinks the publisher is {n.core.publisher_id!r}, "
                          f"it is {pub.spec.node_id}")
        self.guard = pub.index
        assert pub.core is not None
        self._check_appearance(pub, pub.core.publish_plan(), main)

    def _check_appearance(self, pub: SimNode, plan: Any, main: list[SimNode]) -> None:
        sim = self.sim
        t = sim.t
        expected = [n for n in main if n.intro_given == n.incarnation]
        if plan is None:
            if any(any(n.intro_sets.values()) for n in expected):
                self.fail("intro_points_missing", f"publisher {pub.spec.node_id} has no plan")
            return
        cap = sim.timing.max_intro_points
        expected_ids = {n.spec.node_id for n in expected}
        periods = {p for n in expected for p, ips in n.intro_sets.items() if ips}
        for period in sorted(periods):
            entries = plan.intro_points.get(period, ())
            in_plan = {nid for nid, _ in entries}
            foreign = sum(1 for nid, _ in entries if nid not in expected_ids)
            held: dict[str, int] = {}
            for nid, _ in entries:
                held[nid] = held.get(nid, 0) + 1
            # A node whose change is not due yet may still hold more (retired) slots.
            total = foreign + sum(
                max(len(n.intro_sets.get(period, ())), held.get(n.spec.node_id, 0))
                for n in expected
            )
            owners = in_plan | {n.spec.node_id for n in expected if n.intro_sets.get(period)}
            quota = cap // max(1, len(owners))
            for x in expected:
                damped = self.damped_until.get((pub.index, pub.incarnation, x.spec.node_id), 0.0)
                ref = max(x.sets_changed_at, self.settled_at, damped)
                if t < ref + sim.bounds.appearance - EPS:
                    continue
                self.appearance_checks += 1
                current = set(x.intro_sets.get(period, ()))
                mine = {bytes(ip) for nid, ip in entries if nid == x.spec.node_id}
                if mine - current:
                    self.fail("stale_intro_point",
                              f"{pub.spec.node_id}'s plan keeps {len(mine - current)} retired "
                              f"intro point(s) of {x.spec.node_id} for period {period}")
                need = len(current) if total <= cap else min(len(current), quota)
                need = min(need, _own_relays(current, x, expected, entries, period))
                if len(mine & current) < need:
                    self.fail("intro_points_missing",
                              f"{pub.spec.node_id}'s plan has {len(mine & current)} of "
                              f"{x.spec.node_id}'s {len(current)} intro points for period "
                              f"{period} (need {need}; {total} offered, cap {cap})")


def _own_relays(
    current: set[bytes], x: SimNode, expected: Sequence[SimNode], entries: Any, period: int
) -> int:
    """How many of ``x``'s intro points the plan can surely carry: one per relay that no
    other node's current point and no other plan entry also names (opaque points count
    as relays of their own)."""
    others: set[Any] = set()
    for n in expected:
        if n is not x:
            for ip in n.intro_sets.get(period, ()):
                others |= relay_keys(ip) or set()
    for nid, ip in entries:
        if nid != x.spec.node_id:
            others |= relay_keys(bytes(ip)) or set()
    free: set[Any] = set()
    count = 0
    for ip in current:
        keys = relay_keys(ip)
        if keys is None:
            count += 1
        elif not keys & others and not keys & free:
            free |= keys
            count += 1
    return count
