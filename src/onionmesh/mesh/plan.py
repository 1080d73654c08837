"""The publish plan: which intro points go into the master descriptors, and when to publish.

Selection, per time period (tor keeps a separate intro-point set per
descriptor, so the master's descriptor for a period takes each node's set
for that period):

* contributors are this node and every peer whose intro points membership
  says belong in the plan (alive, suspect, or dead within the removal grace,
  and not held back by flap damping);
* at most ``max_intro_points`` (20: tor clients reject more) per period,
  spread fairly: round robin over contributors in node-id order, taking each
  node's freshest intro point first (freshest = most recently first seen).
  If the cap cuts a round short, nodes earlier in node-id order get the
  extra slot; the order is deterministic so an unchanged input never
  changes the plan.

Scheduling (``PublishScheduler``): a publish is requested when the plan
changes, on takeover, on conflict and every ``refresh_interval``; at most one
``PublishRequested`` per ``min_publish_interval``. Requests inside the window
coalesce: when the window opens the *latest* plan is published once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass


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
    contributions: Sequence[Contribution], cap: int
) -> dict[int, tuple[tuple[str, bytes], ...]]:
    """Fair, freshest-first selection of at most ``cap`` intro points per period."""
    periods = sorted({p for c in contributions for p, v in c.sets.items() if v})
    result: dict[int, tuple[tuple[str, bytes], ...]] = {}
    ordered = sorted(contributions, key=lambda c: c.node_id)
    for period in periods:
        queues: list[tuple[str, list[bytes]]] = []
        for c in ordered:
            points = list(dict.fromkeys(c.sets.get(period, ())))  # dedupe, keep order
            # Freshest first; ties keep tor's order (sort is stable).
            points.sort(key=lambda ip, fs=c.first_seen: -fs.get(ip, 0.0))
            if points:
                queues.append((c.node_id, points))
        chosen: list[tuple[str, bytes]] = []
        depth = 0
        while len(chosen) < cap and any(depth < len(q) for _, q in queues):
            for node_id, q in queues:
                if depth < len(q) and len(chosen) < cap:
                    chosen.append((node_id, q[depth]))
            depth += 1
        result[period] = tuple(chosen)
    return result


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
