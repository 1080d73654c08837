"""Simulated time: a priority queue of actions ordered by (time, insertion order).

Ties are broken by insertion order, never by comparing payloads, so a run is
a pure function of its seed.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import Any


@dataclass(order=True, frozen=True)
class Scheduled:
    """One queued action; ``kind`` selects the handler, ``data`` is its argument."""

    at: float
    order: int
    kind: str = field(compare=False)
    data: Any = field(compare=False, default=None)


class EventQueue:
    """Min-heap of :class:`Scheduled` actions over simulated seconds."""

    def __init__(self) -> None:
        self._heap: list[Scheduled] = []
        self._counter = 0

    def schedule(self, at: float, kind: str, data: Any = None) -> Scheduled:
        """Queue ``kind`` to run at simulated time ``at``."""
        item = Scheduled(at, self._counter, kind, data)
        self._counter += 1
        heapq.heappush(self._heap, item)
        return item

    def peek_time(self) -> float | None:
        """Time of the next action, or None when the queue is empty."""
        return self._heap[0].at if self._heap else None

    def pop(self) -> Scheduled:
        """Remove and return the earliest action (IndexError-free: check ``len`` first)."""
        return heapq.heappop(self._heap)

    def __len__(self) -> int:
        return len(self._heap)
