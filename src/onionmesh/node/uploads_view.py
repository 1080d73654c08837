"""Per-HSDir results of the master descriptor uploads, for status, metrics and alerts.

The Publisher tracks uploads for its own retry logic; this view listens to the
same ``HS_DESC`` events independently so ``onionmesh status`` shows the last
result per HSDir even across publisher restarts, and so a streak of failures
at one HSDir raises one alert (not one per failure). Uploads tor never answered
(the Publisher's own timeout) are failures here too (``note_timeout``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from onionmesh.publish.core import FETCH_FAILURE_REASONS
from onionmesh.publish.uploads import TIMEOUT
from onionmesh.tor.control_protocol import HsDescEvent

STREAK_ALERT = 3  # consecutive failures at one HSDir before an alert


@dataclass
class HsdirResult:
    hsdir: str
    result: str  # "uploaded" | "failed"
    at: float
    reason: str | None
    descriptor_id: str | None
    failures_in_a_row: int = 0

    def to_json(self, now: float) -> dict[str, object]:
        return {
            "result": self.result, "at": self.at, "age": round(max(0.0, now - self.at), 1),
            "reason": self.reason, "blinded_key": self.descriptor_id,
            "failures_in_a_row": self.failures_in_a_row,
        }


class UploadsView:
    """Folds HS_DESC UPLOADED/FAILED events of the master address into per-HSDir state."""

    def __init__(self, master_address: str,
                 on_streak: Callable[[str, int, str | None], None] | None = None) -> None:
        self.master_address = master_address.removesuffix(".onion")
        self.on_streak = on_streak
        self.hsdirs: dict[str, HsdirResult] = {}
        self.last_accepted_at: float | None = None

    def observe(self, event: HsDescEvent, now: float) -> HsdirResult | None:
        if event.address != self.master_address or event.hsdir is None:
            return None
        if event.action not in ("UPLOADED", "FAILED"):
            return None
        if event.action == "FAILED" and event.reason in FETCH_FAILURE_REASONS:
            return None  # a conflict-check HSFETCH that found nothing, not an upload
        if event.action == "UPLOADED":
            entry = HsdirResult(event.hsdir, "uploaded", now, None, event.descriptor_id)
            self.last_accepted_at = now
            self.hsdirs[event.hsdir] = entry
            return entry
        return self._failed(event.hsdir, event.reason, event.descriptor_id, now)

    def note_timeout(self, hsdir: str, now: float) -> HsdirResult:
        """An upload to ``hsdir`` got no answer within the Publisher's upload timeout."""
        previous = self.hsdirs.get(hsdir)
        return self._failed(hsdir, TIMEOUT, previous.descriptor_id if previous else None, now)

    def _failed(self, hsdir: str, reason: str | None, descriptor_id: str | None,
                now: float) -> HsdirResult:
        previous = self.hsdirs.get(hsdir)
        streak = (previous.failures_in_a_row if previous else 0) + 1
        entry = HsdirResult(hsdir, "failed", now, reason, descriptor_id, streak)
        if streak == STREAK_ALERT and self.on_streak is not None:
            self.on_streak(hsdir, streak, reason)
        self.hsdirs[hsdir] = entry
        return entry

    def descriptor_age(self, now: float) -> float | None:
        if self.last_accepted_at is None:
            return None
        return max(0.0, now - self.last_accepted_at)

    def to_json(self, now: float) -> dict[str, dict[str, object]]:
        return {fpr: entry.to_json(now) for fpr, entry in sorted(self.hsdirs.items())}
