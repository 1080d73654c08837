"""When to rebuild or re-target the master descriptors (pure, sans-IO).

The publisher describes what it *wants* on the network for each time period
it must serve (the intro-point set and the responsible HSDirs, both derived
from live data) and what it last *built*; the policy answers what to do:

- a period with nothing built yet (start-up or time-period rotation): build;
- the intro-point set changed: build (new content, re-post everywhere);
- the descriptor is getting old (``refresh_after`` before tor's HSDirs drop it
  at ``descriptor-lifetime``): build (re-post everywhere so the lifetime restarts);
- an HSDir rejected our revision: build a newer revision of the same content
  and post it only where it is missing;
- only the HSDir set changed: no rebuild, post the current descriptor to the
  new HSDirs (``retarget``);
- (decided by ``PublishCore``, not here) a conflict, or a build of the other
  period that tor lets us check (``WITH_FETCHABLE``): build, re-post everywhere;
- a period no longer served: drop it.

Rebuilds of one period are at least ``min_interval`` apart: tor's revision
counter is time-based (seconds), so two builds in the same second would carry
the same revision and the second would be refused.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Mapping
from dataclasses import dataclass

from onionmesh.publish.errors import UploadPlanError


class Reason(enum.StrEnum):
    NEW_PERIOD = "new-period"
    INTRO_CHANGED = "intro-points-changed"
    REFRESH = "lifetime-refresh"
    REJECTED = "revision-rejected"
    CONFLICT = "conflict"  # a foreign descriptor on the HSDirs: supersede it everywhere
    # The fetchable period was rebuilt: the other one goes with it (see PublishCore._decide).
    WITH_FETCHABLE = "with-fetchable-period"
    HSDIRS_CHANGED = "hsdirs-changed"
    # The authorized clients changed (SIGHUP): same intro points, new auth-client entries.
    CLIENTS_CHANGED = "authorized-clients-changed"
    PERIOD_GONE = "period-rotated-out"


class Action(enum.StrEnum):
    BUILD = "build"
    RETARGET = "retarget"
    DROP = "drop"


@dataclass(frozen=True)
class Wanted:
    """What should be on the network for one time period."""

    period: int
    intro_key: frozenset[bytes]  # identities of the intro points (e.g. their auth keys)
    hsdirs: frozenset[str]


@dataclass(frozen=True)
class Built:
    """What was last built for one time period."""

    period: int
    intro_key: frozenset[bytes]
    hsdirs: frozenset[str]
    built_at: float


@dataclass(frozen=True)
class Decision:
    period: int
    action: Action
    reason: Reason

    @property
    def content_changed(self) -> bool:
        """Whether HSDirs holding the previous revision must get the new one too."""
        return self.reason is not Reason.REJECTED


@dataclass(frozen=True)
class RepublishPolicy:
    descriptor_lifetime: float = 180 * 60.0  # seconds; the value we write in descriptors
    refresh_after: float = 60 * 60.0  # rebuild this long after the last build
    min_interval: float = 1.0  # never two builds of one period within this many seconds

    def __post_init__(self) -> None:
        if not 0 < self.refresh_after < self.descriptor_lifetime:
            raise UploadPlanError(
                "refresh_after must be > 0 and below descriptor_lifetime, got "
                f"{self.refresh_after} and {self.descriptor_lifetime}"
            )
        if self.min_interval < 1.0:
            raise UploadPlanError(
                f"min_interval must be >= 1 s (revision counters are in seconds), "
                f"got {self.min_interval}"
            )

    def decide(
        self,
        wanted: Mapping[int, Wanted],
        built: Mapping[int, Built],
        now: float,
        rejected: Collection[int] = (),
    ) -> list[Decision]:
        """Decisions for ``now``, in period order; empty when nothing needs doing."""
        out: list[Decision] = []
        for period in sorted(set(wanted) | set(built)):
            want, have = wanted.get(period), built.get(period)
            if want is None:
                out.append(Decision(period, Action.DROP, Reason.PERIOD_GONE))
                continue
            if not want.intro_key:
                continue  # nothing to advertise: keep whatever is out there
            if have is None:
                out.append(Decision(period, Action.BUILD, Reason.NEW_PERIOD))
                continue
            reason = self._rebuild_reason(want, have, now, period in rejected)
            if reason is not None:
                if now - have.built_at >= self.min_interval:
                    out.append(Decision(period, Action.BUILD, reason))
            elif want.hsdirs != have.hsdirs:
                out.append(Decision(period, Action.RETARGET, Reason.HSDIRS_CHANGED))
        return out

    def next_check(self, wanted: Mapping[int, Wanted], built: Mapping[int, Built],
                   now: float, rejected: Collection[int] = ()) -> float | None:
        """When ``decide`` will next have something to say without new input (None: never)."""
        times = []
        for period, have in built.items():
            want = wanted.get(period)
            if want is not None and self._rebuild_reason(want, have, now, period in rejected):
                times.append(max(now, have.built_at + self.min_interval))
            else:
                times.append(have.built_at + self.refresh_after)
        return min(times) if times else None

    def _rebuild_reason(self, want: Wanted, have: Built, now: float,
                        rejected: bool) -> Reason | None:
        if want.intro_key != have.intro_key:
            return Reason.INTRO_CHANGED
        if now >= have.built_at + self.refresh_after:
            return Reason.REFRESH
        if rejected:
            return Reason.REJECTED
        return None
