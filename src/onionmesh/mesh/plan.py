"""The publish plan: which intro points go into the master descriptors, and when to publish.

Selection, per time period (tor keeps a separate intro-point set per
descriptor, so the master's descriptor for a period takes each node's set
for that period):

* contributors are this node and every peer whose intro points membership
  says belong in the plan (alive, suspect, or dead within the removal grace,
  and not held back by flap damping);
* at most ``max_intro_points`` (20: tor clients reject more) per period,
  spread fairly: max-min over contributors (``select_fair``: rounds of one
  more point per node, each node's freshest first; freshest = most recently
  first seen). Who gets the extra slot when the cap cuts a round short is
  decided by a hash of (node id, its relays), so no node id always loses; the
  result is deterministic, so an unchanged input never changes the plan;
* at most one intro point per relay (``onionmesh.mesh.relay``): a tor client
  reaches only the first intro point of a descriptor on a given relay. Nodes
  whose intro points share relays are matched to relays (augmenting paths), so
  a node is left out only when no assignment of relays can serve it.
* more than fits (``offered``): when the contributors hold more intro points
  for a period than one descriptor may carry, the plan also keeps the whole
  pool (max-min fair up to ``max_intro_points * MAX_SPLIT``, relays not yet
  deduplicated). The publisher splits it into several descriptors for
  different HSDirs (``onionmesh.publish.spread``), so every node is in one;
  one intro point per relay then holds per descriptor.

Scheduling (``PublishScheduler``): a publish is requested when the plan
changes, on takeover, on conflict and every ``refresh_interval``; at most one
``PublishRequested`` per ``min_publish_interval``. Requests inside the window
coalesce: when the window opens the *latest* plan is published once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field

from onionmesh.descriptor.intro import LS_LEGACY_ID
from onionmesh.mesh.relay import RelayKey, relay_keys
from onionmesh.mesh.vocabulary import PublishTrigger
from onionmesh.tor_limits import MAX_SPLIT


@dataclass(frozen=True)
class Contribution:
    """One node's intro points as the plan sees them."""

    node_id: str
    sets: Mapping[int, Sequence[bytes]]
    first_seen: Mapping[bytes, float]


@dataclass(frozen=True)
class PublishPlan:
    """What the publisher shell should put into the master descriptors."""

    term: int
    generation: int  # increases every time the plan changes
    intro_points: Mapping[int, tuple[tuple[str, bytes], ...]]  # period -> ((node_id, ip), ...)
    previous_count: int  # ``count`` of the previously published plan
    # period -> the whole fair pool, only for periods whose contributors hold more
    # intro points than one descriptor carries (``intro_points`` is then one fair
    # descriptor's worth; the publisher splits this pool over several descriptors)
    offered: Mapping[int, tuple[tuple[str, bytes], ...]] = field(default_factory=dict)

    @property
    def count(self) -> int:
        """Intro points in the larger of the period descriptors (what clients see)."""
        return max((len(v) for v in self.intro_points.values()), default=0)

    @property
    def message(self) -> str:
        pool = max((len(v) for v in self.offered.values()), default=0)
        split = f"; {pool} offered, split over several descriptors" if pool else ""
        return (
            f"Publishing updated descriptor with {self.count} intro points "
            f"(was {self.previous_count}){split}"
        )


def select_intro_points(
    contributions: Sequence[Contribution],
    cap: int,
    relay_of: Callable[[bytes], frozenset[RelayKey] | None] = relay_keys,
) -> dict[int, tuple[tuple[str, bytes], ...]]:
    """Fair, freshest-first selection of at most ``cap`` intro points per period,
    never two on one relay (``relay_of`` names an intro point's relay identities)."""
    periods = sorted({p for c in contributions for p, v in c.sets.items() if v})
    ordered = sorted(contributions, key=lambda c: c.node_id)
    return {
        period: select_fair(
            [(c.node_id, _freshest_first(c, period)) for c in ordered], cap, relay_of
        )
        for period in periods
    }


def select_offered(
    contributions: Sequence[Contribution], cap: int
) -> dict[int, tuple[tuple[str, bytes], ...]]:
    """Per period whose contributors hold more than ``cap`` distinct intro points: a max-min
    fair pool of at most ``cap * MAX_SPLIT`` of them (relays are deduplicated later, per
    descriptor, by the publisher's split)."""
    periods = sorted({p for c in contributions for p, v in c.sets.items() if v})
    ordered = sorted(contributions, key=lambda c: c.node_id)
    out: dict[int, tuple[tuple[str, bytes], ...]] = {}
    for period in periods:
        queues = [(c.node_id, _freshest_first(c, period)) for c in ordered]
        if sum(len(q) for _, q in queues) > cap:
            out[period] = select_fair(queues, cap * MAX_SPLIT, _no_relay)
    return out


def _no_relay(ip: bytes) -> frozenset[RelayKey] | None:
    del ip
    return None


def _freshest_first(c: Contribution, period: int) -> list[bytes]:
    points = list(dict.fromkeys(c.sets.get(period, ())))  # dedupe, keep order
    # Freshest first; ties keep tor's order (sort is stable).
    points.sort(key=lambda ip: -c.first_seen.get(ip, 0.0))
    return points


def select_fair(
    queues: Sequence[tuple[str, list[bytes]]],
    cap: int,
    relay_of: Callable[[bytes], frozenset[RelayKey] | None],
    served_before: Mapping[str, int] | None = None,
) -> tuple[tuple[str, bytes], ...]:
    """Max-min fair choice of at most ``cap`` of the queued (node, intro points, freshest
    first), never two on one relay.

    Rounds: in round ``r`` every node that holds ``r - 1`` points tries to get one more,
    taking its freshest point on a free relay, or else an augmenting path (a node holding
    one of its relays moves to another free relay of its own; bipartite matching), so a
    node goes without only when no reassignment can serve it. Within a round, nodes
    ``served_before`` less (other descriptors) go first, then a hash of (node id, its
    relays): when the cap cuts a round short or relays are too few for everyone, no
    node id is always the one left out.
    """
    before = served_before or {}
    prefs: dict[str, list[tuple[Hashable, bytes]]] = {}
    for node, queue in queues:
        best: dict[Hashable, bytes] = {}
        for ip in queue:
            best.setdefault(_relay_id(ip, relay_of), ip)  # the node's freshest on each relay
        if best:
            prefs[node] = list(best.items())
    holder: dict[Hashable, tuple[str, bytes]] = {}

    def augment(node: str, visited: set[Hashable]) -> bool:
        for relay, ip in prefs[node]:
            if relay not in holder and relay not in visited:
                holder[relay] = (node, ip)
                return True
        for relay, ip in prefs[node]:
            held = holder.get(relay)
            if relay in visited or held is None or held[0] == node:
                continue
            visited.add(relay)
            if augment(held[0], visited):
                holder[relay] = (node, ip)
                return True
        return False

    order = sorted(prefs, key=lambda n: (before.get(n, 0), _node_rank(n, prefs[n])))
    count = dict.fromkeys(prefs, 0)
    total, round_no = 0, 0
    while total < cap:
        round_no += 1
        progress = False
        for node in order:
            if total >= cap:
                break
            if count[node] < round_no and count[node] < len(prefs[node]) \
                    and augment(node, set()):
                count[node] += 1
                total += 1
                progress = True
        if not progress:
            break
    # Output: each node's points freshest first, interleaved in node-id order.
    mine: dict[str, list[bytes]] = {}
    for node in sorted(prefs):
        rank = {ip: i for i, (_, ip) in enumerate(prefs[node])}
        mine[node] = sorted((ip for n, ip in holder.values() if n == node), key=rank.__getitem__)
    out: list[tuple[str, bytes]] = []
    for depth in range(max((len(v) for v in mine.values()), default=0)):
        out.extend((node, points[depth]) for node, points in mine.items() if depth < len(points))
    return tuple(out)


def _relay_id(ip: bytes, relay_of: Callable[[bytes], frozenset[RelayKey] | None]) -> Hashable:
    """One hashable name per relay: its legacy RSA id (tor's clients match on it), else its
    ed25519 id; an intro point without link specifiers is a relay of its own."""
    found = relay_of(ip)
    if not found:
        return ("point", ip)
    legacy = sorted(k for k in found if k[0] == LS_LEGACY_ID)
    return (legacy or sorted(found))[0]


def _node_rank(node_id: str, relays: Sequence[tuple[Hashable, bytes]]) -> bytes:
    h = hashlib.blake2b(digest_size=8, person=b"onionmesh-relay")
    h.update(node_id.encode() + b"\0")
    for relay in sorted(repr(r) for r, _ in relays):
        h.update(relay.encode())
    return h.digest()


class PublishScheduler:
    """Rate limiting and coalescing of publish requests."""

    def __init__(self, min_interval: float, refresh_interval: float) -> None:
        self.min_interval = min_interval
        self.refresh_interval = refresh_interval
        self.last_publish_at: float | None = None
        self.pending_reason: tuple[PublishTrigger, str] | None = None  # (trigger, detail)

    def request(self, trigger: PublishTrigger, detail: str = "") -> None:
        """Ask for a publish; the first reason in a window is the one reported."""
        if self.pending_reason is None:
            self.pending_reason = (trigger, detail)

    def reset(self) -> None:
        """Forget pending work (we stopped being publisher); keep the rate limit."""
        self.pending_reason = None

    def window_opens_at(self) -> float:
        if self.last_publish_at is None:
            return float("-inf")
        return self.last_publish_at + self.min_interval

    def due(self, now: float) -> tuple[PublishTrigger, str] | None:
        """The reason to publish now, or None (no request, or the window is closed)."""
        if (
            self.pending_reason is None
            and self.last_publish_at is not None
            and now >= self.last_publish_at + self.refresh_interval
        ):
            self.pending_reason = (PublishTrigger.PERIODIC_REFRESH, "")
        if self.pending_reason is None or now < self.window_opens_at():
            return None
        return self.pending_reason

    def published(self, now: float) -> None:
        self.last_publish_at = now
        self.pending_reason = None

    def next_deadline(self) -> float | None:
        if self.pending_reason is not None:
            return self.window_opens_at()
        if self.last_publish_at is not None:
            return self.last_publish_at + self.refresh_interval
        return None
