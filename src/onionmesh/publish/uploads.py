"""Per-HSDir upload tracking for master descriptors (pure, sans-IO).

The tracker is told which descriptor (one per time period) must be on which
HSDirs, is fed tor's per-HSDir results (``HS_DESC UPLOADED`` / ``FAILED``) and
is polled with an explicit ``now``; it answers with the uploads to perform
("post descriptor D to HSDir F"). It never reads a clock, sleeps or does I/O,
and its jitter comes from an injected ``random.Random``, so a seed replays it.

Why the tracker keeps at most ONE upload in flight per HSDir: tor's
``HS_DESC UPLOADED`` event names the onion address and the HSDir but not the
blinded key, and with 8 of 10 HSDirs per descriptor the first and second
descriptor always share HSDirs. Serialising posts per HSDir makes every
result unambiguous at the price of one extra round trip (~0.2 s) on shared
HSDirs. ``HS_DESC FAILED`` does carry the blinded key and is matched on it.

``UPLOAD_REJECTED`` means the HSDir holds a revision at least as high as the
one posted. After an earlier attempt of the *same* revision (e.g. one that
timed out but did land) that is success; on a first attempt it means someone
stored a newer revision, so retrying the same bytes is pointless: the entry
becomes ``REJECTED`` and the shell must build a newer revision.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from onionmesh.publish.errors import UploadPlanError

#: tor's reason when an HSDir refuses a descriptor (revision not newer, or invalid).
UPLOAD_REJECTED = "UPLOAD_REJECTED"
#: Our own reason when no result arrived within ``RetryPolicy.upload_timeout``.
TIMEOUT = "TIMEOUT"


class UploadStatus(enum.StrEnum):
    """Where one (time period, HSDir) upload stands."""

    PENDING = "pending"  # waiting to be posted (first attempt or a scheduled retry)
    POSTED = "posted"  # HSPOST sent, result not yet known
    UPLOADED = "uploaded"  # the HSDir accepted it (or already held this revision)
    FAILED = "failed"  # gave up after the last retry
    REJECTED = "rejected"  # HSDir holds a newer revision: needs a newer descriptor


@dataclass(frozen=True)
class RetryPolicy:
    """Retry settings: exponential backoff with jitter, bounded by ``max_retries``."""

    max_retries: int = 3  # [resilience] hsdir_max_retries: retries after the first try
    base_delay: float = 2.0  # seconds before the first retry
    max_delay: float = 60.0  # cap of one backoff step
    jitter: float = 0.25  # each delay is scaled by uniform(1 - jitter, 1 + jitter)
    upload_timeout: float = 30.0  # no result after this long counts as a failure

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise UploadPlanError(f"max_retries must be >= 0, got {self.max_retries}")
        if self.base_delay <= 0 or self.max_delay < self.base_delay:
            raise UploadPlanError(
                f"need 0 < base_delay <= max_delay, got {self.base_delay} and {self.max_delay}"
            )
        if not 0 <= self.jitter < 1:
            raise UploadPlanError(f"jitter must be in [0, 1), got {self.jitter}")
        if self.upload_timeout <= 0:
            raise UploadPlanError(f"upload_timeout must be > 0, got {self.upload_timeout}")

    def backoff(self, failed_attempts: int, rng: random.Random) -> float:
        """Delay before the next attempt after ``failed_attempts`` consecutive failures."""
        step = min(self.max_delay, self.base_delay * 2.0 ** (failed_attempts - 1))
        return step * rng.uniform(1 - self.jitter, 1 + self.jitter)


@dataclass(frozen=True)
class Post:
    """Action: HSPOST ``descriptor`` to ``hsdir`` (40 hex uppercase) for ``period``."""

    period: int
    hsdir: str
    blinded_id: str
    revision: int
    attempt: int
    descriptor: str = field(repr=False)


@dataclass(frozen=True)
class UploadState:
    """Snapshot of one (period, HSDir) entry, for logs, status and tests."""

    period: int
    hsdir: str
    revision: int
    status: UploadStatus
    attempts: int
    next_attempt_at: float | None
    last_reason: str | None


@dataclass
class HsdirHealth:
    """Running health of one HSDir across every descriptor posted to it."""

    successes: int = 0
    failures: int = 0
    last_reason: str | None = None
    last_latency: float | None = None  # seconds from HSPOST to UPLOADED


@dataclass
class _Entry:
    hsdir: str
    revision: int
    status: UploadStatus = UploadStatus.PENDING
    attempts: int = 0  # attempts made for ``revision``
    next_attempt_at: float = 0.0
    last_reason: str | None = None


@dataclass
class _Slot:
    period: int
    blinded_id: str
    descriptor: str
    revision: int
    entries: dict[str, _Entry]
    texts: dict[str, str] = field(default_factory=dict)  # HSDir -> its own descriptor

    def text_for(self, hsdir: str) -> str:
        return self.texts.get(hsdir, self.descriptor)


@dataclass(frozen=True)
class _Inflight:
    period: int
    revision: int
    posted_at: float


def _check_hsdir(fingerprint: str) -> str:
    fpr = fingerprint.removeprefix("$").upper()
    if len(fpr) != 40 or any(c not in "0123456789ABCDEF" for c in fpr):
        raise UploadPlanError(f"HSDir fingerprint must be 40 hex characters, got {fingerprint!r}")
    return fpr


class UploadTracker:
    """Tracks every (time period, HSDir) upload of one master address's descriptors."""

    def __init__(self, policy: RetryPolicy | None = None, rng: random.Random | None = None):
        self.policy = policy or RetryPolicy()
        self._rng = rng or random.Random()
        self._slots: dict[int, _Slot] = {}
        self._inflight: dict[str, _Inflight] = {}
        self._timeouts: list[tuple[int, str]] = []
        self.health: dict[str, HsdirHealth] = {}

    # -- plan -------------------------------------------------------------------------------

    def set_descriptor(
        self,
        period: int,
        blinded_id: str,
        descriptor: str,
        revision: int,
        hsdirs: Iterable[str],
        now: float,
        *,
        content_changed: bool = True,
        per_hsdir: Mapping[str, str] | None = None,
    ) -> None:
        """Install a new revision of ``period``'s descriptor and the HSDirs that must hold it.

        With ``content_changed=False`` (a refresh of the same intro points, e.g. to get
        past a rejection) HSDirs that already accepted an earlier revision keep it and
        are not re-posted; everything else gets the new revision with fresh retries.
        ``per_hsdir``: HSDir -> its own text of this revision (more intro points than one
        descriptor carries: different descriptors on different HSDirs); every post and
        retry to that HSDir sends its text, the others ``descriptor``.
        """
        targets = [_check_hsdir(h) for h in hsdirs]
        old = self._slots.get(period)
        if old is not None and revision <= old.revision:
            raise UploadPlanError(
                f"revision for period {period} must increase: {revision} <= {old.revision}"
            )
        entries: dict[str, _Entry] = {}
        for fpr in targets:
            prev = old.entries.get(fpr) if old else None
            if prev is not None and not content_changed and prev.status is UploadStatus.UPLOADED:
                entries[fpr] = prev
            else:
                entries[fpr] = _Entry(hsdir=fpr, revision=revision, next_attempt_at=now)
        texts = {_check_hsdir(h): text for h, text in (per_hsdir or {}).items()}
        self._slots[period] = _Slot(period, blinded_id, descriptor, revision, entries, texts)

    def set_hsdirs(self, period: int, hsdirs: Iterable[str], now: float) -> None:
        """The responsible HSDirs of ``period`` changed: post the current revision to new ones.

        HSDirs that stay keep their state (no needless re-post); ones that left are forgotten.
        """
        slot = self._require(period)
        targets = [_check_hsdir(h) for h in hsdirs]
        slot.entries = {
            fpr: slot.entries.get(fpr)
            or _Entry(hsdir=fpr, revision=slot.revision, next_attempt_at=now)
            for fpr in targets
        }

    def drop_period(self, period: int) -> None:
        """Forget a time period that rotated out (in-flight posts still block their HSDir)."""
        self._slots.pop(period, None)

    def retry_failed(self, period: int, now: float) -> list[str]:
        """Give HSDirs that exhausted their retries a fresh set of attempts; returns them."""
        slot = self._require(period)
        revived = []
        for entry in slot.entries.values():
            if entry.status is UploadStatus.FAILED:
                entry.status, entry.attempts, entry.next_attempt_at = UploadStatus.PENDING, 0, now
                revived.append(entry.hsdir)
        return revived

    def repost(self, period: int, hsdir: str, now: float) -> None:
        """``hsdir`` was seen serving an older descriptor than ours: post the current one
        again. The attempt count is kept, so an UPLOAD_REJECTED answer (it did have it
        after all) counts as success."""
        entry = self._require(period).entries.get(_check_hsdir(hsdir))
        if entry is None or entry.status is UploadStatus.POSTED:
            return
        entry.status, entry.next_attempt_at = UploadStatus.PENDING, now
        entry.attempts = max(entry.attempts, 1)

    def mark_uploaded(self, period: int, hsdir: str) -> None:
        """``hsdir`` was seen serving our current revision (after a rejection)."""
        entry = self._require(period).entries.get(_check_hsdir(hsdir))
        if entry is not None and entry.status is not UploadStatus.POSTED:
            entry.status = UploadStatus.UPLOADED

    def mark_rejected(self, period: int, hsdir: str) -> None:
        """Take back a "rejected on retry = it landed" verdict that cannot be checked."""
        entry = self._require(period).entries.get(_check_hsdir(hsdir))
        if entry is not None and entry.status is UploadStatus.UPLOADED:
            entry.status = UploadStatus.REJECTED

    # -- results ----------------------------------------------------------------------------

    def on_uploaded(self, hsdir: str, now: float) -> int | None:
        """``HS_DESC UPLOADED`` from ``hsdir``; returns the period it settled, or None."""
        fpr = hsdir.removeprefix("$").upper()
        entry, inflight = self._resolve(fpr)
        if entry is None or inflight is None:
            return None
        entry.status, entry.last_reason = UploadStatus.UPLOADED, None
        health = self.health.setdefault(fpr, HsdirHealth())
        health.successes += 1
        health.last_latency = max(0.0, now - inflight.posted_at)
        return inflight.period

    def on_failed(self, hsdir: str, blinded_id: str | None, reason: str | None,
                  now: float) -> int | None:
        """``HS_DESC FAILED`` from ``hsdir`` for the descriptor ``blinded_id``.

        Returns the period whose entry changed, or None when the event is not ours.
        """
        fpr = hsdir.removeprefix("$").upper()
        flight = self._inflight.get(fpr)
        if flight is None:
            return None
        slot = self._slots.get(flight.period)
        if slot is None:
            self._resolve(fpr)  # its period rotated out: just free the HSDir
            return None
        if blinded_id is not None and slot.blinded_id != blinded_id:
            return None  # a late answer about another descriptor, not the post in flight
        entry, inflight = self._resolve(fpr)
        if entry is None or inflight is None:
            return None
        reason = reason or "UNKNOWN"
        health = self.health.setdefault(fpr, HsdirHealth())
        if reason == UPLOAD_REJECTED and entry.attempts > 1:
            # An earlier attempt of this same revision landed; the HSDir has it.
            entry.status, entry.last_reason = UploadStatus.UPLOADED, reason
            health.successes += 1
            return inflight.period
        health.failures += 1
        health.last_reason = reason
        entry.last_reason = reason
        if reason == UPLOAD_REJECTED:
            entry.status = UploadStatus.REJECTED
        else:
            self._schedule_retry(entry, now)
        return inflight.period

    # -- driving ----------------------------------------------------------------------------

    def poll(self, now: float) -> list[Post]:
        """Expire timed-out posts and return the posts that are due now (marking them posted)."""
        for fpr, flight in list(self._inflight.items()):
            if now - flight.posted_at >= self.policy.upload_timeout:
                entry, _ = self._resolve(fpr)
                self._timeouts.append((flight.period, fpr))
                health = self.health.setdefault(fpr, HsdirHealth())
                health.failures += 1
                health.last_reason = TIMEOUT
                if entry is not None:
                    entry.last_reason = TIMEOUT
                    self._schedule_retry(entry, now)
        posts: list[Post] = []
        for period in sorted(self._slots):
            slot = self._slots[period]
            for fpr in sorted(slot.entries):
                entry = slot.entries[fpr]
                if (
                    entry.status is not UploadStatus.PENDING
                    or entry.next_attempt_at > now
                    or fpr in self._inflight
                ):
                    continue
                entry.status = UploadStatus.POSTED
                entry.attempts += 1
                self._inflight[fpr] = _Inflight(period, entry.revision, now)
                posts.append(
                    Post(period, fpr, slot.blinded_id, entry.revision, entry.attempts,
                         slot.text_for(fpr))
                )
        return posts

    def drain_timeouts(self) -> list[tuple[int, str]]:
        """(period, HSDir) of the posts that timed out since the last call (for logging)."""
        out, self._timeouts = self._timeouts, []
        return out

    def next_wakeup(self) -> float | None:
        """Earliest time at which ``poll`` may have something new to do (None: nothing)."""
        times = [f.posted_at + self.policy.upload_timeout for f in self._inflight.values()]
        for slot in self._slots.values():
            times.extend(
                e.next_attempt_at
                for e in slot.entries.values()
                if e.status is UploadStatus.PENDING and e.hsdir not in self._inflight
            )
        return min(times) if times else None

    # -- queries ----------------------------------------------------------------------------

    def in_flight(self) -> frozenset[str]:
        """HSDirs with an HSPOST whose result has not arrived (nor timed out) yet."""
        return frozenset(self._inflight)

    def periods(self) -> list[int]:
        return sorted(self._slots)

    def revision(self, period: int) -> int | None:
        slot = self._slots.get(period)
        return slot.revision if slot else None

    def descriptor(self, period: int) -> str | None:
        """The text of the current revision for ``period`` (None if none is installed)."""
        slot = self._slots.get(period)
        return slot.descriptor if slot else None

    def descriptor_for(self, period: int, hsdir: str) -> str | None:
        """The text ``hsdir`` gets for ``period`` (its own when the period is split)."""
        slot = self._slots.get(period)
        return slot.text_for(_check_hsdir(hsdir)) if slot else None

    def hsdirs(self, period: int) -> frozenset[str]:
        slot = self._slots.get(period)
        return frozenset(slot.entries) if slot else frozenset()

    def states(self, period: int | None = None) -> list[UploadState]:
        if period is None:
            slots = list(self._slots.values())
        else:
            slot = self._slots.get(period)  # a planned period may have no descriptor yet
            slots = [] if slot is None else [slot]
        return [
            UploadState(
                s.period, e.hsdir, e.revision, e.status, e.attempts,
                e.next_attempt_at if e.status is UploadStatus.PENDING else None, e.last_reason,
            )
            for s in slots
            for e in s.entries.values()
        ]

    def with_status(self, period: int, status: UploadStatus) -> frozenset[str]:
        slot = self._slots.get(period)
        if slot is None:
            return frozenset()
        return frozenset(f for f, e in slot.entries.items() if e.status is status)

    def complete(self, period: int | None = None) -> bool:
        """Every HSDir (of ``period``, or of every period) accepted its descriptor."""
        slots = [self._slots.get(period)] if period is not None else list(self._slots.values())
        return bool(slots) and all(
            s is not None and all(e.status is UploadStatus.UPLOADED for e in s.entries.values())
            for s in slots
        )

    def settled(self) -> bool:
        """No upload is pending or in flight: every entry reached a final status."""
        return all(
            e.status not in (UploadStatus.PENDING, UploadStatus.POSTED)
            for s in self._slots.values()
            for e in s.entries.values()
        )

    # -- internals --------------------------------------------------------------------------

    def _require(self, period: int) -> _Slot:
        slot = self._slots.get(period)
        if slot is None:
            raise UploadPlanError(f"no descriptor installed for period {period}")
        return slot

    def _resolve(self, fpr: str) -> tuple[_Entry | None, _Inflight | None]:
        """Close the in-flight post to ``fpr``; return its entry if it is still current."""
        flight = self._inflight.pop(fpr, None)
        if flight is None:
            return None, None
        slot = self._slots.get(flight.period)
        entry = slot.entries.get(fpr) if slot else None
        if entry is None or entry.revision != flight.revision or (
            entry.status is not UploadStatus.POSTED
        ):
            # The plan moved on (new revision, HSDir left, period dropped): the result
            # is about bytes we no longer care about; the HSDir is simply free again.
            return None, flight
        return entry, flight

    def _schedule_retry(self, entry: _Entry, now: float) -> None:
        if entry.attempts > self.policy.max_retries:
            entry.status = UploadStatus.FAILED
            return
        entry.status = UploadStatus.PENDING
        entry.next_attempt_at = now + self.policy.backoff(entry.attempts, self._rng)
