"""Health of the node's own service as its checks report it (pure, no I/O).

A node advertises intro points only while its service answers. The shell
(``onionmesh.node.service_probe``) runs one check of every ``HiddenServicePort``
target each ``interval`` and feeds the outcome here; this decides when the
service counts as down (``failures`` checks in a row failed) and when it counts
as back (``successes`` in a row passed), so one lost probe neither withdraws a
node nor does one lucky probe bring a flapping one back.

Before the first result the state is ``UNKNOWN`` and the node does not
advertise; the first passing check makes it ``HEALTHY`` at once (starting is
not a return from failure).

A result that disagrees with the state (a failure while healthy, a pass while
failing) is confirmed by re-checking after ``recheck`` seconds rather than a
whole ``interval`` (``next_check_delay``): every second a node keeps
advertising a dead backend, clients that land on it fail.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from onionmesh.config import HealthCheck


class Health(enum.StrEnum):
    UNKNOWN = "unknown"  # no check finished yet
    HEALTHY = "healthy"
    FAILING = "failing"


@dataclass(frozen=True)
class CheckPolicy:
    """The knobs of the check (``[health]`` in the node config)."""

    kind: HealthCheck = HealthCheck.TCP
    interval: float = 5.0  # seconds between checks
    timeout: float = 3.0  # seconds one probe may take
    failures: int = 2  # failed checks in a row before the node withdraws
    successes: int = 2  # passed checks in a row before it advertises again
    http_path: str = "/"
    http_status: int = 200
    recheck: float = 1.0  # seconds to the next check while a change is confirmed

    @property
    def recheck_delay(self) -> float:
        return min(self.recheck, self.interval)

    def _bound(self, in_a_row: int) -> float:
        # The change comes just after a check: the next one follows within `interval`
        # and may take `timeout`; each confirming check follows after `recheck_delay`.
        return self.interval + self.timeout + (in_a_row - 1) * (
            self.recheck_delay + self.timeout)

    def withdraw_bound(self) -> float:
        """Worst case from the service failing to the node deciding to withdraw."""
        return self._bound(self.failures)

    def return_bound(self) -> float:
        """Worst case from the service answering again to the node advertising again."""
        return self._bound(self.successes)


@dataclass(frozen=True)
class HealthChange:
    """A transition, with the check result that caused it."""

    old: Health
    new: Health
    detail: str
    at: float


class ServiceHealth:
    """Consecutive-result counting: ``record`` returns a HealthChange on a transition."""

    def __init__(self, policy: CheckPolicy) -> None:
        if policy.failures < 1 or policy.successes < 1:
            raise ValueError("failures and successes must be >= 1")
        self.policy = policy
        self.state = Health.HEALTHY if policy.kind is HealthCheck.NONE else Health.UNKNOWN
        self.streak = 0  # consecutive results agreeing with the last one (+ pass, - fail)
        self.last_detail = "not checked yet" if self.state is Health.UNKNOWN else "no check"
        self.last_at: float | None = None
        self.changed_at: float | None = None

    def next_check_delay(self) -> float:
        """Seconds from the end of one check to the start of the next: ``recheck`` while
        the last results disagree with the state (a change being confirmed), else
        ``interval``."""
        confirming = self.streak > 0 if self.state is Health.FAILING else self.streak < 0
        return self.policy.recheck_delay if confirming else self.policy.interval

    def record(self, ok: bool, detail: str, now: float) -> HealthChange | None:
        if ok:
            self.streak = self.streak + 1 if self.streak > 0 else 1
        else:
            self.streak = self.streak - 1 if self.streak < 0 else -1
        self.last_detail, self.last_at = detail, now
        new = self.state
        if self.state is Health.UNKNOWN:
            if ok:
                new = Health.HEALTHY
            elif -self.streak >= self.policy.failures:
                new = Health.FAILING
        elif self.state is Health.HEALTHY and -self.streak >= self.policy.failures:
            new = Health.FAILING
        elif self.state is Health.FAILING and self.streak >= self.policy.successes:
            new = Health.HEALTHY
        if new is self.state:
            return None
        change = HealthChange(self.state, new, detail, now)
        self.state, self.changed_at = new, now
        return change
