"""The publish plan: which intro points go into the master descriptors, and when to publish.

Selection, per time period (tor keeps a separate intro-point set per
descriptor, so the master's descriptor for a period takes each node's set
for that period):

* contributors are this node and every peer whose intro points membership
  says belong in the plan (alive, suspect, or dead within the removal grace,
  and not held back by flap damping);
* at most ``max_intro_points`` (20: tor clients reject more) per period,
  spread fairly: max-min over contributors, each turn going to the node with
  the fewest points chosen so far (node-id order between equals), which takes
  its freshest intro point (freshest = most recently first seen). If the cap
  cuts a round short, nodes earlier in node-id order get the extra slot; the
  order is deterministic so an unchanged input never changes the plan;
* at most one intro point per relay (``onionmesh.mesh.relay``): a tor client
  reaches only the first intro point of a descriptor on a given relay. A node
  takes its freshest point on a relay no other node still wants before a
  contested one; a relay contested by equally served nodes goes to the node
  that wins a hash of (relay, node id), so no node id always loses.

Scheduling (``PublishScheduler``): a publish is requested when the plan
changes, on takeover, on conflict and every ``refresh_interval``; at most one
``PublishRequested`` per ``min_publish_interval``. Requests inside the window
coalesce: when the window opens the *latest* plan is published once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass

from onionmesh.mesh.relay import RelayKey, relay_keys


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

    @property
    def count(self) -> int:
        """Intro points in the larger of the period descriptors (what clients see)."""
        return max((len(v) for v in self.intro_points.values()), default=0)

    @property
    def message(self) -> str:
        return (
            f"Publishing updated descriptor with {self.count} intro points "
            f"(was {self.previous_count})"
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
    """Max-min fair choice of at most ``cap`` of the queued (node, intro points), each
    node taking from the front of its queue, never two on one relay. Between nodes
    with as many points chosen, one ``served_before`` less (other descriptors) goes
    first and wins a contested relay."""
    before = served_before or {}

    def keys(ip: bytes) -> frozenset[Hashable]:
        found = relay_of(ip)
        return frozenset(found) if found else frozenset({("point", ip)})

    candidates = {node: [(ip, keys(ip)) for ip in q] for node, q in queues if q}
    count = dict.fromkeys(candidates, 0)
    used: set[Hashable] = set()
    chosen: list[tuple[str, bytes]] = []
    while len(chosen) < cap:
        for node in candidates:
            candidates[node] = [(ip, k) for ip, k in candidates[node] if not k & used]
        open_nodes = [node for node, c in candidates.items() if c]
        if not open_nodes:
            break
        fewest = min((count[n], before.get(n, 0)) for n in open_nodes)
        node = next(n for n in open_nodes if (count[n], before.get(n, 0)) == fewest)
        wanted_by_others = {
            k for other in open_nodes if other != node for _, ks in candidates[other] for k in ks
        }
        free = [(ip, k) for ip, k in candidates[node] if not k & wanted_by_others]
        ip, k = free[0] if free else candidates[node][0]
        if not free:
            # Contested relay: among the equally served nodes that want it, a hash of
            # (relay, node) decides, so the same node id does not lose every contest.
            rivals = [
                n for n in open_nodes
                if (count[n], before.get(n, 0)) == fewest
                and any(ks & k for _, ks in candidates[n])
            ]
            winner = min(rivals, key=lambda n: _contest_rank(k, n))
            if winner != node:
                node = winner
                ip, k = next((p, ks) for p, ks in candidates[node] if ks & k)
        chosen.append((node, ip))
        count[node] += 1
        used |= k
    return tuple(chosen)


def _contest_rank(relay: frozenset[Hashable], node_id: str) -> bytes:
    h = hashlib.blake2b(digest_size=8, person=b"onionmesh-relay")
    h.update(repr(sorted(relay, key=repr)).encode())
    h.update(node_id.encode())
    return h.digest()


class PublishScheduler:
    """Rate limiting and coalescing of publish requests."""

    def __init__(self, min_interval: float, refresh_interval: float) -> None:
        self.min_interval = min_interval
        self.refresh_interval = refresh_interval
        self.last_publish_at: float | None = None
        self.pending_reason: str | None = None

    def request(self, reason: str) -> None:
        """Ask for a publish; the first reason in a window is the one reported."""
        if self.pending_reason is None:
            self.pending_reason = reason

    def reset(self) -> None:
        """Forget pending work (we stopped being publisher); keep the rate limit."""
        self.pending_reason = None

    def window_opens_at(self) -> float:
        if self.last_publish_at is None:
            return float("-inf")
        return self.last_publish_at + self.min_interval

    def due(self, now: float) -> str | None:
        """The reason to publish now, or None (no request, or the window is closed)."""
        if (
            self.pending_reason is None
            and self.last_publish_at is not None
            and now >= self.last_publish_at + self.refresh_interval
        ):
            self.pending_reason = "periodic refresh"
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
