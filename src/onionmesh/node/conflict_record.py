"""What this node's conflict checks found on the HSDirs, for ``onionmesh status``.

The publish core's CONFLICT events (publisher and standby checks alike) are logged and
alerted as they happen; this keeps the count and the last finding so an operator (or a
test) can read from the status document that the HSDirs held a descriptor of the master
address the cluster never made, which revision, how many intro points and where.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from onionmesh.publish.core import PublishEvent


@dataclass
class ConflictRecord:
    """Count and last finding of the foreign master descriptors this node has seen."""

    count: int = 0
    last_at: float | None = None  # node clock (unix time) of the last finding
    message: str | None = None  # the log line / alert summary of the last finding
    period: int | None = None
    revision: int | None = None
    intro_points: int | None = None
    hsdirs: tuple[str, ...] = ()
    our_revision: int | None = None
    our_intro_points: int | None = None
    _hsdirs_seen: set[str] = field(default_factory=set)

    def record(self, event: PublishEvent, now: float) -> None:
        """A CONFLICT event of the publish core (others are ignored)."""
        foreign = event.foreign
        if foreign is None:
            return
        self.count += 1
        self.last_at = now
        self.message = event.message
        self.period = foreign.period
        self.revision = foreign.revision
        self.intro_points = foreign.intro_count
        self.hsdirs = foreign.hsdirs
        self.our_revision = foreign.our_revision
        self.our_intro_points = foreign.our_intro_count
        if len(self._hsdirs_seen) < 1000:  # HSDirs are few; bounded anyway
            self._hsdirs_seen.update(foreign.hsdirs)

    def to_json(self, now: float) -> dict[str, Any] | None:
        """The status document's ``conflicts`` section (None: nothing seen yet)."""
        if self.count == 0 or self.last_at is None:
            return None
        return {
            "count": self.count,
            "last_at": self.last_at,
            "last_age": round(now - self.last_at, 1),
            "message": self.message,
            "period": self.period,
            "revision": self.revision,
            "intro_points": self.intro_points,
            "hsdirs": list(self.hsdirs),
            "all_hsdirs": sorted(self._hsdirs_seen),
            "our_revision": self.our_revision,
            "our_intro_points": self.our_intro_points,
        }


def foreign_instance(event: PublishEvent) -> str:
    """Which foreign descriptor a CONFLICT is about (period and revision): another one is
    a new alert, not a repeat the alert sink holds back (``Alert.instance``)."""
    foreign = event.foreign
    return "" if foreign is None else f"period {foreign.period} revision {foreign.revision}"
