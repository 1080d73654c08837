"""PublishCore: the sans-IO state machine behind the master descriptors' uploads.

Shaped like ``onionmesh.mesh.core.MeshCore`` (and aioquic / h11): the shell feeds
inputs with its own ``now`` and drains outputs; the core never reads a clock, a
socket or the global random module.

Inputs
  ``set_targets`` / ``set_consensus``   which time periods, blinded keys, HSDirs
  ``set_intro_points``                  the intro points per period (the mesh plan)
  ``on_uploaded`` / ``on_upload_failed`` / ``on_post_refused``   tor's HS_DESC results
  ``on_fetched`` / ``on_fetch_failed``  what an HSDir served for an HSFETCH
  ``set_role``                          PUBLISHER (uploads + checks) or STANDBY (checks)
  ``handle_timer``                      time passes
Outputs
  ``next_action()``  a ``Post`` (HSPOST descriptor to one HSDir) or ``Fetch`` (HSFETCH
                     the master address from one HSDir), in order
  ``next_event()``   a ``PublishEvent`` (kind is a ``PublishEventKind``) with a log line
  ``get_timer()``    when ``handle_timer`` must next be called (None: only on input)

Decisions that live here (and nowhere in the shells):

* which periods are published and to which HSDirs (``plan_targets`` from the
  consensus), and what is dropped when a period rotates out;
* when to build (``RepublishPolicy``: new period, new intro points, refresh before the
  lifetime ends every ``refresh_interval``, a forced rebuild after a conflict) and
  which revision (tor's time-based counter, forced above every revision seen);
* per HSDir: retries with backoff, the upload timeout, and reviving HSDirs that gave
  up every ``revive_interval`` (``UploadTracker``);
* conflict detection: every ``check_interval`` (``standby_check_interval`` when not
  publishing) one responsible HSDir of the *fetchable* period is asked for the master
  descriptor, rotating through them; what it serves is classified (``Verdict``) as our
  current upload, an older or stale one (re-post ours there), or FOREIGN (a revision
  >= ours that we never uploaded, or intro points we never published): a CONFLICT
  event with what was found, every period is rebuilt above the foreign revision and
  re-posted to every HSDir, so exactly one descriptor ends up on each;
* ``UPLOAD_REJECTED`` (the HSDir holds a revision >= ours) on a first attempt triggers a
  fetch of that HSDir and a classification instead of a blind higher revision;
* more intro points than one descriptor carries (``MAX_INTRO_POINTS``): one revision is
  built as ``k`` different descriptors (``onionmesh.publish.spread``: ``k`` a divisor of
  the fetch set's size, each descriptor valid, fair and one intro point per relay, every
  node in at least one), each responsible HSDir is assigned one of them (the HSDirs
  clients fetch from, round robin, then the store-only ones) and gets that one in every
  post and retry; a fetched copy of any of the ``k`` is ours. A change of the HSDirs
  rebuilds a split period (the assignment follows the HSDirs).

Why only one period can be checked: tor's ``HSFETCH`` always asks for the blinded key
of the tor client's *current* time period (``fetch_period``), whatever SERVER= says.
The other descriptor (the next period's, or the previous one's between a new time
period and the new SRV) cannot be fetched through tor's control port. It is covered
indirectly: a foreign descriptor in the fetchable period rebuilds and re-posts both,
every build of the fetchable period rebuilds the other one too (ours silently replaces
the only copy a check could have seen), and once tor's clock moves into the next period
that descriptor becomes the fetchable one. A rejection of the unfetchable period falls
back to a newer revision, as before.
"""

from __future__ import annotations

import enum
import random
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from onionmesh.crypto.blinding import BlindedKey, blind_identity
from onionmesh.crypto.keys import Ed25519Identity
from onionmesh.descriptor.intro import LS_ED25519_ID, LS_LEGACY_ID
from onionmesh.descriptor.layers import b64_nopad
from onionmesh.hsdir.consensus import Consensus
from onionmesh.hsdir.hashring import responsible_hsdirs
from onionmesh.hsdir.timeperiod import DescriptorPeriod, descriptor_periods, fetch_period
from onionmesh.mesh.relay import RelayKey
from onionmesh.publish.errors import UploadPlanError
from onionmesh.publish.master import revision_for
from onionmesh.publish.republish import Action, Built, Decision, Reason, RepublishPolicy, Wanted
from onionmesh.publish.spread import assign_hsdirs, descriptor_count, split_descriptors
from onionmesh.publish.uploads import (
    UPLOAD_REJECTED,
    Post,
    RetryPolicy,
    UploadStatus,
    UploadTracker,
)
from onionmesh.tor_limits import MAX_INTRO_POINTS

__all__ = [
    "DescriptorSigner", "Fetch", "ObservedDescriptor", "PeriodTarget", "PublishCore",
    "PublishEvent", "PublishEventKind", "PublishTiming", "Role", "Verdict", "plan_targets",
    "tor_revision",
]


class HasAuthKey(Protocol):
    """An intro point as the core sees it: identified by its auth key."""

    @property
    def auth_key(self) -> bytes: ...


class DescriptorSigner(Protocol):
    """Builds and signs one descriptor (``MasterDescriptorBuilder`` in the daemon)."""

    def build(self, target: PeriodTarget, revision: int, points: Sequence[HasAuthKey],
              now: float) -> str: ...

    def forget_periods(self, keep: Iterable[int]) -> None: ...


@dataclass(frozen=True)
class PeriodTarget:
    """Where one of the two descriptors goes."""

    period: DescriptorPeriod
    blinded: BlindedKey
    hsdirs: tuple[str, ...]  # fingerprints, 40 hex uppercase
    # the HSDirs tor clients fetch from (hsdir_spread_fetch per replica, tor's order; a
    # subset of ``hsdirs``); empty: take every HSDir as fetchable
    fetch_hsdirs: tuple[str, ...] = ()

    @property
    def fetchable_hsdirs(self) -> tuple[str, ...]:
        return tuple(h for h in self.fetch_hsdirs if h in self.hsdirs) or self.hsdirs

    @property
    def number(self) -> int:
        return self.period.period_number

    @property
    def blinded_id(self) -> str:
        """The blinded key as tor writes it in HS_DESC events (base64, no padding)."""
        return b64_nopad(self.blinded.public_key)


def plan_targets(master_public: Ed25519Identity, consensus: Consensus, now: float,
                 cache: dict[int, BlindedKey] | None = None) -> dict[int, PeriodTarget]:
    """Both descriptor periods of ``consensus`` with their responsible HSDirs (pure).

    ``cache`` keeps blinded keys between calls (blinding is the costly part); periods
    no longer planned are dropped from it.
    """
    cache = {} if cache is None else cache
    targets: dict[int, PeriodTarget] = {}
    for period in descriptor_periods(consensus, now):
        number = period.period_number
        blinded = cache.get(number)
        if blinded is None:
            blinded = cache[number] = blind_identity(master_public, number, period.period_length)
        relays = responsible_hsdirs(blinded.public_key, number, period.period_length,
                                    period.srv, consensus)
        fetch = responsible_hsdirs(blinded.public_key, number, period.period_length,
                                   period.srv, consensus, for_fetch=True)
        targets[number] = PeriodTarget(period, blinded, tuple(r.fingerprint for r in relays),
                                       tuple(r.fingerprint for r in fetch))
    for number in [n for n in cache if n not in targets]:
        del cache[number]
    return targets


#: HS_DESC FAILED reasons that only a fetch gets (control-spec, "HS_DESC").
FETCH_FAILURE_REASONS = frozenset(
    {"NOT_FOUND", "QUERY_REJECTED", "QUERY_NO_HSDIR", "QUERY_RATE_LIMITED", "BAD_DESC"}
)


class Role(enum.StrEnum):
    PUBLISHER = "publisher"  # uploads and checks at check_interval
    STANDBY = "standby"  # only checks, at standby_check_interval


class Verdict(enum.StrEnum):
    """What a fetched master descriptor is, from this core's point of view."""

    OWN_CURRENT = "own-current"  # the revision we last posted for that period
    OWN_OLDER = "own-older"  # one we posted before, or a lower revision: ours is on its way
    FOREIGN = "foreign"  # a revision >= ours we never uploaded, or intro points we never had


class PublishEventKind(enum.StrEnum):
    BUILT = "built"
    RETARGETED = "retargeted"
    PERIOD_DROPPED = "period-dropped"
    UPLOADED = "uploaded"
    UPLOAD_FAILED = "upload-failed"
    UPLOAD_TIMEOUT = "upload-timeout"
    HSDIR_GAVE_UP = "hsdir-gave-up"
    HSDIRS_REVIVED = "hsdirs-revived"
    FETCHED = "fetched"
    FETCH_FAILED = "fetch-failed"
    CONFLICT = "conflict"
    FAILURE_STREAK = "failure-streak"
    SIGNING_FAILURES = "signing-failures"  # passes in a row that could not sign (clock...)
    POSTS_DROPPED = "posts-dropped"  # became standby with uploads decided but not yet sent


@dataclass(frozen=True)
class Fetch:
    """Action: HSFETCH the master address from ``hsdir`` (only ``period`` is fetchable)."""

    period: int
    hsdir: str
    reason: str  # "check" (rotating sample) or "rejected" (after UPLOAD_REJECTED)


@dataclass(frozen=True)
class ObservedDescriptor:
    """A fetched master descriptor, verified and decrypted by the shell."""

    period: int
    revision: int
    intro_keys: frozenset[bytes]


@dataclass(frozen=True)
class ForeignDescriptor:
    """What a CONFLICT found: a descriptor of our address we never uploaded."""

    period: int
    revision: int
    intro_count: int
    hsdirs: tuple[str, ...]  # every HSDir seen serving it so far
    our_revision: int | None
    our_intro_count: int


@dataclass(frozen=True)
class PublishEvent:
    kind: PublishEventKind
    message: str
    period: int | None = None
    hsdir: str | None = None
    verdict: Verdict | None = None
    foreign: ForeignDescriptor | None = None
    streak: int = 0
    descriptors: int = 0  # BUILT: how many different descriptors the revision has


@dataclass(frozen=True)
class PublishTiming:
    """The core's timers (seconds)."""

    refresh_interval: float = 3600.0  # rebuild an unchanged descriptor this often
    descriptor_lifetime: float = 180 * 60.0  # what the descriptors say
    revive_interval: float = 300.0  # give HSDirs that exhausted their retries a new round
    check_interval: float = 30.0  # publisher: one HSFETCH conflict check this often
    standby_check_interval: float = 120.0  # standby with the master key: checks this often
    fetch_timeout: float = 30.0  # no answer to an HSFETCH after this long: failed
    failure_streak: int = 3  # consecutive failures (incl. timeouts) at one HSDir: an event

    def __post_init__(self) -> None:
        for name in ("revive_interval", "check_interval", "standby_check_interval",
                     "fetch_timeout"):
            if getattr(self, name) <= 0:
                raise UploadPlanError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.failure_streak < 1:
            raise UploadPlanError(f"failure_streak must be >= 1, got {self.failure_streak}")


@dataclass
class _Uploaded:
    """Everything we built for one period: revision -> each descriptor's intro keys
    (one set, or ``k`` when the period is split), and which HSDir got which."""

    revisions: dict[int, tuple[frozenset[bytes], ...]] = field(default_factory=dict)
    assigned: dict[int, dict[str, int]] = field(default_factory=dict)

    @property
    def latest(self) -> int | None:
        return max(self.revisions) if self.revisions else None


@dataclass
class _FetchInFlight:
    fetch: Fetch
    sent_at: float


RevisionSource = Callable[[PeriodTarget, float, "int | None"], int]


def point_relay_keys(point: HasAuthKey) -> frozenset[RelayKey] | None:
    """The relay identities of an intro point that carries link specifiers (tor's
    ``IntroPoint``); None for anything else (then it is a relay of its own)."""
    specs = getattr(point, "link_specifiers", None)
    if not specs:
        return None
    keys = frozenset((spec.type, spec.data) for spec in specs
                     if spec.type in (LS_LEGACY_ID, LS_ED25519_ID))
    return keys or None


def tor_revision(target: PeriodTarget, now: float, last: int | None) -> int:
    """tor's time-based revision counter for ``target`` at ``now``, above ``last``."""
    return revision_for(target.blinded, target.period.srv_start, now, last)


class PublishCore:
    """Decides every upload and conflict check of one master address (see module doc)."""

    def __init__(
        self,
        signer: DescriptorSigner,
        *,
        timing: PublishTiming | None = None,
        retry: RetryPolicy | None = None,
        rng: random.Random | None = None,
        role: Role = Role.PUBLISHER,
        min_build_interval: float = 1.0,
        revision: RevisionSource = tor_revision,
        relay_of: Callable[[HasAuthKey], frozenset[RelayKey] | None] | None = None,
    ) -> None:
        self.signer = signer
        self._revision = revision
        relay_of = relay_of or point_relay_keys
        self.timing = timing or PublishTiming()
        self.policy = RepublishPolicy(
            descriptor_lifetime=self.timing.descriptor_lifetime,
            refresh_after=self.timing.refresh_interval,
            min_interval=min_build_interval,
        )
        self.tracker = UploadTracker(retry, rng)
        self.role = role
        self.targets: dict[int, PeriodTarget] = {}
        self.fetchable: int | None = None  # the period HSFETCH can check
        self.built: dict[int, Built] = {}
        self.builds = 0
        self.conflicts = 0
        self.fetches = 0
        self._points: dict[int, list[HasAuthKey]] = {}
        self._uploaded: dict[int, _Uploaded] = {}
        self._revision_floor: dict[int, int] = {}  # a foreign revision we must beat
        # Unfetchable period rejected again and again: jump the revision by 1, 2, 4, ...
        # so an unseen higher revision (a stray with its clock ahead) is passed in a
        # logarithmic number of rounds instead of one +1 rebuild per rejection.
        self._reject_jump: dict[int, int] = {}
        # periods to rebuild as soon as min_build_interval allows, and why
        self._forced: dict[int, Reason] = {}
        self._recent_sets: deque[frozenset[bytes]] = deque(maxlen=8)
        self._now = 0.0
        self._revived_at: dict[int, float] = {}
        self._next_check: float | None = None
        self._check_cursor = 0
        self._pass_failures = 0
        self._suspect_since: float | None = None  # standby: first unexplained descriptor
        self._fetch: _FetchInFlight | None = None
        self._pending_fetches: deque[Fetch] = deque()
        self._foreign_seen: dict[tuple[int, int], set[str]] = {}
        self._streaks: dict[str, int] = {}
        self._actions: deque[Post | Fetch] = deque()
        self._events: deque[PublishEvent] = deque()
        self._blinded_cache: dict[int, BlindedKey] = {}
        self._owners: dict[int, list[str]] = {}  # period -> node id of each of _points
        self._relay_of = relay_of
        self.descriptor_counts: dict[int, int] = {}  # period -> descriptors last built
        self._split_cache: dict[int, tuple[object, list[list[HasAuthKey]]]] = {}

    # -- outputs --------------------------------------------------------------------------

    def next_action(self) -> Post | Fetch | None:
        return self._actions.popleft() if self._actions else None

    def next_event(self) -> PublishEvent | None:
        return self._events.popleft() if self._events else None

    def get_timer(self) -> float | None:
        """When ``handle_timer`` has something to do without new input."""
        times: list[float] = []
        if self.role is Role.PUBLISHER:
            wakeup = self.tracker.next_wakeup()
            if wakeup is not None:
                times.append(wakeup)
            times.extend(t + self.timing.revive_interval for t in self._revived_at.values())
            check = self.policy.next_check(self._wanted(), self.built, self._now)
            if check is not None:
                times.append(check)
            times.extend(b.built_at + self.policy.min_interval for p, b in
                         self.built.items() if p in self._forced)
        if self._next_check is not None and self.fetchable is not None:
            times.append(self._next_check)
        if self._fetch is not None:
            times.append(self._fetch.sent_at + self.timing.fetch_timeout)
        return min(times) if times else None

    # -- queries --------------------------------------------------------------------------

    def published(self) -> bool:
        """Both current descriptors accepted by every responsible HSDir."""
        return bool(self.targets) and set(self.tracker.periods()) >= set(self.targets) and all(
            self.tracker.complete(p) for p in self.targets
        )

    def upload_counts(self) -> dict[int, dict[str, int]]:
        """Per planned period: how many of its HSDirs are in each upload status."""
        result: dict[int, dict[str, int]] = {}
        for period in sorted(self.targets):
            counts: dict[str, int] = {}
            for state in self.tracker.states(period):
                counts[state.status.value] = counts.get(state.status.value, 0) + 1
            result[period] = counts
        return result

    def classify(self, observed: ObservedDescriptor) -> Verdict:
        """Is ``observed`` ours (current / older) or foreign? Pure; see ``Verdict``."""
        mine = self._uploaded.get(observed.period)
        if self.role is Role.STANDBY or mine is None or mine.latest is None:
            # Nothing uploaded by us: judge by the intro points the mesh gave us.
            known = self.known_intro_keys()
            if known and not observed.intro_keys <= known:
                return Verdict.FOREIGN
            return Verdict.OWN_OLDER
        sets = mine.revisions.get(observed.revision)
        if sets is not None:
            # Split: any of the revision's descriptors is ours (whichever HSDir holds it).
            ours = observed.intro_keys in sets
            if observed.revision == mine.latest:
                return Verdict.OWN_CURRENT if ours else Verdict.FOREIGN
            return Verdict.OWN_OLDER if ours else Verdict.FOREIGN
        if observed.revision < mine.latest:
            return Verdict.OWN_OLDER  # stale (e.g. the previous publisher's): ours replaces it
        return Verdict.FOREIGN

    def intro_keys_of(self, period: int, revision: int) -> frozenset[bytes] | None:
        """The intro points of a revision we built, over all its descriptors (None: not
        one of ours)."""
        mine = self._uploaded.get(period)
        sets = None if mine is None else mine.revisions.get(revision)
        return None if sets is None else frozenset().union(*sets)

    def intro_keys_at(self, period: int, revision: int, hsdir: str) -> frozenset[bytes] | None:
        """The intro points of the descriptor of ``revision`` that ``hsdir`` was given."""
        mine = self._uploaded.get(period)
        sets = None if mine is None else mine.revisions.get(revision)
        if mine is None or sets is None:
            return None
        index = mine.assigned.get(revision, {}).get(hsdir.removeprefix("$").upper(), 0)
        return sets[index] if index < len(sets) else None

    def descriptors_of(self, period: int, revision: int) -> tuple[frozenset[bytes], ...]:
        """Each descriptor's intro points of a revision we built (empty: not ours)."""
        mine = self._uploaded.get(period)
        return () if mine is None else mine.revisions.get(revision, ())

    def known_intro_keys(self) -> frozenset[bytes]:
        """Intro points the cluster published lately (current and recent sets)."""
        keys: set[bytes] = set()
        for points in self._points.values():
            keys.update(p.auth_key for p in points)
        for recent in self._recent_sets:
            keys.update(recent)
        return frozenset(keys)

    # -- inputs ---------------------------------------------------------------------------

    def set_role(self, role: Role, now: float) -> None:
        """PUBLISHER uploads and checks; STANDBY only checks (at the slower rate)."""
        if role is self.role:
            return
        self.role = role
        if role is Role.STANDBY:
            # Uploads not sent yet: queued posts, and tracker entries still waiting (one
            # post in flight per HSDir) whose revision is the one just built.
            waiting = [(s.period, s.revision) for s in self.tracker.states()
                       if s.status is UploadStatus.PENDING]
            for period in self.tracker.periods():
                self.tracker.drop_period(period)
            self.built.clear()
            self._uploaded.clear()
            self._revived_at.clear()
            self._forced.clear()
            self._revision_floor.clear()
            self._reject_jump.clear()
            self.descriptor_counts.clear()
            # Posts decided but not yet handed to the shell go too: a conflict rebuild made
            # the moment a foreign descriptor was found must not be uploaded when the mesh
            # then says "step down" (the other publisher sees more intro points); sending
            # it would overwrite the winner's descriptor on every HSDir.
            waiting += [(a.period, a.revision) for a in self._actions if isinstance(a, Post)]
            if waiting:
                self._actions = deque(a for a in self._actions if not isinstance(a, Post))
                revisions = sorted(set(waiting))
                self._emit(PublishEventKind.POSTS_DROPPED,
                           f"no longer publishing: {len(waiting)} upload(s) not sent "
                           f"({', '.join(f'period {p} revision {r}' for p, r in revisions)})")
        self._next_check = now
        self.handle_timer(now)

    def set_consensus(self, master_public: Ed25519Identity, consensus: Consensus,
                      now: float) -> None:
        """Periods and HSDirs from a new consensus (blinding cached per period)."""
        targets = plan_targets(master_public, consensus, now, self._blinded_cache)
        self.set_targets(targets, now, fetchable=fetch_period(consensus, now)[0])

    def set_targets(self, targets: Mapping[int, PeriodTarget], now: float, *,
                    fetchable: int | None = None) -> None:
        """The periods to publish and their HSDirs; ``fetchable``: the period HSFETCH gets."""
        self.targets = dict(targets)
        self.fetchable = fetchable if fetchable in self.targets else None
        self.signer.forget_periods(self.targets)
        for period in [p for p in self._uploaded if p not in self.targets]:
            del self._uploaded[period]
        if self._next_check is None:
            self._next_check = now
        self.handle_timer(now)

    def set_intro_points(self, points: Mapping[int, Sequence[HasAuthKey]], now: float,
                         owners: Mapping[int, Sequence[str]] | None = None) -> None:
        """The intro points per period, and optionally the node each belongs to
        (``owners[p][i]`` owns ``points[p][i]``). Up to ``MAX_INTRO_POINTS`` go into one
        descriptor; more are split over several (every owner in one; without owners each
        point counts as a node of its own). All count as known to the conflict checks."""
        old = self.known_intro_keys()
        self._points = {p: list(v) for p, v in points.items()}
        self._owners = {}
        for period, pts in self._points.items():
            names = list((owners or {}).get(period, ()))
            if len(names) != len(pts):
                names = [f"#{i}" for i in range(len(pts))]
            self._owners[period] = names
        if old and old != self.known_intro_keys():
            self._recent_sets.append(old)
        self.handle_timer(now)

    def clients_changed(self, now: float) -> None:
        """The signer's authorized clients changed: rebuild every built period as soon as
        ``min_build_interval`` allows, for every HSDir (the intro points are the same, the
        descriptor's auth-client entries are not)."""
        for period in self.built:
            self._force(period, Reason.CLIENTS_CHANGED)
        self.handle_timer(now)

    def on_pass_failed(self, reason: str, now: float) -> None:
        """The shell's pass failed before the core could act (e.g. the clock guard refused
        to sign, tor unreachable); ``failure_streak`` in a row is an event (alert)."""
        self._pass_failures += 1
        if self._pass_failures == self.timing.failure_streak:
            self._emit(PublishEventKind.SIGNING_FAILURES,
                       f"Descriptors not signed or published: {self._pass_failures} publish "
                       f"passes failed in a row (last: {reason})")
        del now

    def on_pass_succeeded(self) -> None:
        """A pass went through: the failure count starts again."""
        if self._pass_failures >= self.timing.failure_streak:
            self._emit(PublishEventKind.SIGNING_FAILURES,
                       f"Publish passes work again after {self._pass_failures} failures")
        self._pass_failures = 0

    def on_uploaded(self, hsdir: str, now: float) -> None:
        """``HS_DESC UPLOADED`` for our address from ``hsdir``."""
        period = self.tracker.on_uploaded(hsdir, now)
        if period is None:
            return
        fpr = hsdir.removeprefix("$").upper()
        self._streaks.pop(fpr, None)
        self._reject_jump.pop(period, None)
        health = self.tracker.health[fpr]
        self._emit(PublishEventKind.UPLOADED,
                   f"HSDir {fpr} accepted period {period} in {health.last_latency or 0.0:.2f} s "
                   f"(health: {health.successes} ok, {health.failures} failed)",
                   period=period, hsdir=fpr)
        self.handle_timer(now)

    def on_upload_failed(self, hsdir: str, blinded_id: str | None, reason: str | None,
                         now: float) -> None:
        """``HS_DESC FAILED`` for our address (an upload, not a fetch)."""
        fpr = hsdir.removeprefix("$").upper()
        period = self.tracker.on_failed(fpr, blinded_id, reason, now)
        if period is None:
            return
        state = next((s for s in self.tracker.states(period) if s.hsdir == fpr), None)
        status = state.status if state else None
        health = self.tracker.health.get(fpr)
        self._emit(PublishEventKind.UPLOAD_FAILED,
                   f"HSDir {fpr} failed period {period}: {reason} -> "
                   f"{status.value if status else 'gone'} (health: "
                   f"{health.successes if health else 0} ok, "
                   f"{health.failures if health else 0} failed)",
                   period=period, hsdir=fpr)
        if status is UploadStatus.UPLOADED:
            # "Rejected" on a retry is taken as: an earlier attempt landed. Another
            # publisher's descriptor with the same revision would look the same, so
            # where we can, look.
            self._streaks.pop(fpr, None)
            if period == self.fetchable:
                self._pending_fetches.append(Fetch(period, fpr, "rejected"))
            else:
                # Cannot look: never assume, supersede (one more upload at worst).
                self.tracker.mark_rejected(period, fpr)
                self._on_rejected(period, fpr, now)
        else:
            self._count_failure(fpr, reason or "UNKNOWN")
        if status is UploadStatus.REJECTED and reason == UPLOAD_REJECTED:
            self._on_rejected(period, fpr, now)
        self.handle_timer(now)

    def on_hs_desc_failed(self, hsdir: str, blinded_id: str | None, reason: str | None,
                          now: float) -> None:
        """``HS_DESC FAILED`` for our address: the answer to a fetch or to an upload.

        tor's event does not say which, but the reasons differ: uploads fail with
        UPLOAD_REJECTED (or our own reasons), fetches with NOT_FOUND / QUERY_* / BAD_DESC.
        tor may report fetch failures from HSDirs we did not ask (seen on the test
        network); those are never taken for upload failures.
        """
        fpr = hsdir.removeprefix("$").upper()
        if (reason or "") in FETCH_FAILURE_REASONS:
            self.on_fetch_failed(fpr, reason, now)  # ignored unless it is our fetch
        else:
            self.on_upload_failed(fpr, blinded_id, reason, now)

    def on_post_refused(self, post: Post, error: str, now: float) -> None:
        """tor refused the HSPOST command itself (e.g. unknown SERVER)."""
        del error  # the shell logs tor's words; the tracker keeps a stable reason
        self.on_upload_failed(post.hsdir, post.blinded_id, "POST_REFUSED", now)

    def on_fetched(self, hsdir: str, observed: ObservedDescriptor | None, now: float,
                   problem: str | None = None) -> None:
        """What ``hsdir`` served for our HSFETCH (None + ``problem``: it did not verify)."""
        fetch = self._close_fetch(hsdir)
        if fetch is None:
            return
        self.fetches += 1
        if observed is None:
            self._emit(PublishEventKind.FETCH_FAILED,
                       f"HSDir {fetch.hsdir} served a master descriptor for period "
                       f"{fetch.period} that does not verify: {problem}",
                       period=fetch.period, hsdir=fetch.hsdir)
            self.handle_timer(now)
            return
        verdict = self.classify(observed)
        self._emit(PublishEventKind.FETCHED,
                   f"HSDir {fetch.hsdir} serves period {observed.period} revision "
                   f"{observed.revision} with {len(observed.intro_keys)} intro points: "
                   f"{verdict.value} ({fetch.reason})",
                   period=observed.period, hsdir=fetch.hsdir, verdict=verdict)
        if verdict is Verdict.FOREIGN and self.role is Role.STANDBY and (
            self._suspect_since is None or now - self._suspect_since < self.timing.check_interval
        ):
            # A standby judges by the intro points gossip told it about, which may lag the
            # publisher's by a heartbeat: look again (another HSDir) before crying wolf.
            if self._suspect_since is None:
                self._suspect_since = now
            soon = now + self.timing.check_interval
            self._next_check = soon if self._next_check is None else min(self._next_check, soon)
        elif verdict is Verdict.FOREIGN:
            self._suspect_since = None
            self._on_foreign(fetch.hsdir, observed, now)
        elif self.role is Role.PUBLISHER and observed.period in self.tracker.periods():
            self._settle_checked(observed.period, fetch.hsdir, verdict, now)
        if verdict is not Verdict.FOREIGN:
            self._suspect_since = None
        self.handle_timer(now)

    def on_fetch_failed(self, hsdir: str, reason: str | None, now: float) -> None:
        """``HS_DESC FAILED`` for our HSFETCH from ``hsdir`` (NOT_FOUND, ...)."""
        fetch = self._close_fetch(hsdir)
        if fetch is None:
            return
        self.fetches += 1
        self._emit(PublishEventKind.FETCH_FAILED,
                   f"HSFETCH of the master descriptor from HSDir {fetch.hsdir} failed: "
                   f"{reason or 'no reason'}", period=fetch.period, hsdir=fetch.hsdir)
        if (self.role is Role.PUBLISHER and fetch.reason == "rejected"
                and fetch.period in self.tracker.periods()):
            self._bump_revision(fetch.period)  # cannot see what is there
            self._force(fetch.period, Reason.REJECTED)
        self.handle_timer(now)

    def handle_timer(self, now: float) -> None:
        """Do everything that is due at ``now``."""
        self._now = now
        if self._fetch is not None and now >= self._fetch.sent_at + self.timing.fetch_timeout:
            self.on_fetch_failed(self._fetch.fetch.hsdir, "TIMEOUT", now)
        if self.role is Role.PUBLISHER and self.targets:
            self._decide(now)
            self._revive_failed(now)
            for post in self.tracker.poll(now):
                self._actions.append(post)
            for period, hsdir in self.tracker.drain_timeouts():
                health = self.tracker.health[hsdir]
                self._emit(PublishEventKind.UPLOAD_TIMEOUT,
                           f"HSDir {hsdir} did not answer for period {period} within "
                           f"{self.tracker.policy.upload_timeout:.0f} s (health: "
                           f"{health.successes} ok, {health.failures} failed)",
                           period=period, hsdir=hsdir)
                self._count_failure(hsdir, "TIMEOUT")
                self._give_up_event(period, hsdir)
        self._schedule_check(now)
        self._send_fetch(now)

    # -- building -------------------------------------------------------------------------

    def _wanted(self) -> dict[int, Wanted]:
        return {
            number: Wanted(number, frozenset(p.auth_key for p in self._points.get(number, [])),
                           frozenset(target.hsdirs))
            for number, target in self.targets.items()
        }

    def _published(self, period: int) -> list[HasAuthKey]:
        """Every intro point the period's descriptors carry (over all of them)."""
        return [p for d in self._split(period) for p in d]

    def _split(self, period: int) -> list[list[HasAuthKey]]:
        """The period's descriptors' contents: one when the points fit, else ``k``
        (``spread``: fair, one per relay, each at most ``MAX_INTRO_POINTS``)."""
        pts = self._points.get(period, [])
        if len(pts) <= MAX_INTRO_POINTS:
            return [pts]
        target = self.targets.get(period)
        fetchable = len(target.fetchable_hsdirs) if target is not None else 1
        count = descriptor_count(len(pts), fetchable, MAX_INTRO_POINTS)
        key = (count, tuple(p.auth_key for p in pts), tuple(self._owners.get(period, ())))
        cached = self._split_cache.get(period)
        if cached is not None and cached[0] == key:
            return cached[1]
        by_key = {p.auth_key: p for p in pts}
        relays = {p.auth_key: self._relay_of(p) for p in pts}
        per_node: dict[str, list[bytes]] = {}
        for owner, point in zip(self._owners.get(period, []), pts, strict=False):
            per_node.setdefault(owner, []).append(point.auth_key)
        split = split_descriptors(per_node, count, MAX_INTRO_POINTS, relays.__getitem__)
        out = [[by_key[k] for _, k in entries] for entries in split if entries]
        self._split_cache[period] = (key, out)
        return out

    def _decide(self, now: float) -> None:
        wanted = self._wanted()
        rejected = {p for p, why in self._forced.items() if why is Reason.REJECTED}
        decisions = self.policy.decide(wanted, self.built, now, rejected)
        for index, decision in enumerate(decisions):
            if (decision.action is Action.BUILD
                    and self._forced.get(decision.period) is Reason.CONFLICT):
                decisions[index] = Decision(decision.period, Action.BUILD, Reason.CONFLICT)
        decided = {d.period for d in decisions}
        if any(d.action is Action.BUILD and d.period == self.fetchable for d in decisions):
            # Our new revision silently replaces whatever the fetchable period's HSDirs
            # held, and that copy is the only sign we can see of a foreign publisher
            # (a healed partition's loser, a stray) that also uploaded the unfetchable
            # period. Once it is gone nothing would ever replace the other period's
            # foreign copy, so rebuild that one too, above it, everywhere.
            for period in self.built:
                if period != self.fetchable and period in wanted and wanted[period].intro_key:
                    self._force(period, Reason.WITH_FETCHABLE)
        for period, why in sorted(self._forced.items()):
            have = self.built.get(period)
            if (period not in decided
                    and why in (Reason.CONFLICT, Reason.WITH_FETCHABLE, Reason.CLIENTS_CHANGED)
                    and period in wanted
                    and wanted[period].intro_key and have is not None
                    and now - have.built_at >= self.policy.min_interval):
                decisions.append(Decision(period, Action.BUILD, why))
        for decision in decisions:
            self._apply(decision, wanted.get(decision.period), now)

    def _apply(self, decision: Decision, want: Wanted | None, now: float) -> None:
        number = decision.period
        if decision.action is Action.DROP:
            self.built.pop(number, None)
            self.tracker.drop_period(number)
            self._revived_at.pop(number, None)
            self._forced.pop(number, None)
            self._revision_floor.pop(number, None)
            self._reject_jump.pop(number, None)
            self.descriptor_counts.pop(number, None)
            self._split_cache.pop(number, None)
            self._emit(PublishEventKind.PERIOD_DROPPED,
                       f"period {number} rotated out: no longer publishing its descriptor",
                       period=number)
            return
        assert want is not None
        target = self.targets[number]
        if decision.action is Action.RETARGET and self.descriptor_counts.get(number, 1) > 1:
            # Split: which HSDir gets which descriptor follows the HSDirs, so rebuild.
            decision = Decision(number, Action.BUILD, decision.reason)
        if decision.action is Action.RETARGET:
            self.tracker.set_hsdirs(number, target.hsdirs, now)
            self.built[number] = Built(number, want.intro_key, want.hsdirs,
                                       self.built[number].built_at)
            self._emit(PublishEventKind.RETARGETED,
                       f"period {number}: responsible HSDirs changed ({len(want.hsdirs)} now)",
                       period=number)
            return
        descriptors = self._split(number)
        points = [p for d in descriptors for p in d]
        last = self.tracker.revision(number)
        floor = self._revision_floor.get(number)
        if floor is not None:
            last = floor if last is None else max(last, floor)
        revision = self._revision(target, now, last)
        texts = [self.signer.build(target, revision, d, now) for d in descriptors]
        sets = tuple(frozenset(p.auth_key for p in d) for d in descriptors)
        mine = self._uploaded.setdefault(number, _Uploaded())
        mine.revisions[revision] = sets
        per_hsdir: dict[str, str] | None = None
        if len(texts) > 1:
            assigned = assign_hsdirs(target.fetchable_hsdirs, target.hsdirs, len(texts))
            mine.assigned[revision] = assigned
            per_hsdir = {h: texts[i] for h, i in assigned.items()}
        content_changed = decision.content_changed
        previous = self.tracker.revision(number)
        if not content_changed and previous is not None and not self._same_layout(
                number, previous, revision):
            content_changed = True  # an HSDir may keep only its own unchanged content
        self.tracker.set_descriptor(number, target.blinded_id, texts[0], revision,
                                    target.hsdirs, now, content_changed=content_changed,
                                    per_hsdir=per_hsdir)
        self.built[number] = Built(number, want.intro_key, want.hsdirs, now)
        self._forced.pop(number, None)
        self._revived_at.setdefault(number, now)
        self.builds += 1
        self.descriptor_counts[number] = len(texts)
        split = (f" in {len(texts)} descriptors of "
                 f"{'/'.join(str(len(d)) for d in descriptors)} for different HSDirs"
                 if len(texts) > 1 else "")
        self._emit(PublishEventKind.BUILT,
                   f"period {number} ({'first' if target.period.is_first else 'second'} "
                   f"descriptor): built revision {revision} with {len(points)} intro points"
                   f"{split} ({decision.reason.value}), {max(len(t) for t in texts)} bytes, "
                   f"for {len(target.hsdirs)} HSDirs", period=number,
                   descriptors=len(texts))

    def _same_layout(self, period: int, old: int, new: int) -> bool:
        """Whether every HSDir gets the same intro points in ``new`` as in ``old``."""
        return all(self.intro_keys_at(period, old, h) == self.intro_keys_at(period, new, h)
                   for h in self.targets[period].hsdirs)

    def _revive_failed(self, now: float) -> None:
        for period in self.tracker.periods():
            last = self._revived_at.setdefault(period, now)
            if now - last >= self.timing.revive_interval:
                self._revived_at[period] = now
                revived = self.tracker.retry_failed(period, now)
                if revived:
                    self._emit(PublishEventKind.HSDIRS_REVIVED,
                               f"period {period}: retrying {len(revived)} HSDir(s) that had "
                               f"failed: {', '.join(revived)}", period=period)
        for period in [p for p in self._revived_at if p not in self.tracker.periods()]:
            del self._revived_at[period]

    def _force(self, period: int, why: Reason) -> None:
        if self._forced.get(period) is not Reason.CONFLICT:  # a conflict re-posts everywhere
            self._forced[period] = why

    # -- conflicts ------------------------------------------------------------------------

    def _on_rejected(self, period: int, hsdir: str, now: float) -> None:
        if period == self.fetchable:
            self._pending_fetches.append(Fetch(period, hsdir, "rejected"))
            return
        # Unfetchable: a newer revision is all we can do, as before.
        self._bump_revision(period)
        self._force(period, Reason.REJECTED)

    def _bump_revision(self, period: int) -> None:
        jump = self._reject_jump.get(period, 1)
        self._reject_jump[period] = jump * 2
        current = self.tracker.revision(period) or 0
        self._revision_floor[period] = max(self._revision_floor.get(period, 0),
                                           current + jump - 1)

    def _on_foreign(self, hsdir: str, observed: ObservedDescriptor, now: float) -> None:
        key = (observed.period, observed.revision)
        seen = self._foreign_seen.setdefault(key, set())
        seen.add(hsdir)
        mine = self._uploaded.get(observed.period)
        ours = mine.latest if mine else None
        ours_count = len(self._published(observed.period))
        self.conflicts += 1
        foreign = ForeignDescriptor(observed.period, observed.revision,
                                    len(observed.intro_keys), tuple(sorted(seen)), ours,
                                    ours_count)
        self._emit(PublishEventKind.CONFLICT,
                   f"Conflict: HSDir {hsdir} serves a foreign master descriptor for period "
                   f"{observed.period}: revision {observed.revision} with "
                   f"{len(observed.intro_keys)} intro points (ours: revision "
                   f"{ours if ours is not None else 'none'} with {ours_count}); "
                   f"seen on {len(seen)} HSDir(s): {', '.join(sorted(seen))}",
                   period=observed.period, hsdir=hsdir, verdict=Verdict.FOREIGN,
                   foreign=foreign)
        if self.role is not Role.PUBLISHER:
            return
        self._revision_floor[observed.period] = max(
            observed.revision, self._revision_floor.get(observed.period, 0))
        for period in self.targets:
            self._force(period, Reason.CONFLICT)  # both descriptors: a stray uploads both
        # Check the next HSDir soon: how far the foreign copy spread, and that ours lands.
        soon = now + self.timing.check_interval / 4
        self._next_check = soon if self._next_check is None else min(self._next_check, soon)

    def _settle_checked(self, period: int, hsdir: str, verdict: Verdict, now: float) -> None:
        """A check found ours (current or older) on ``hsdir``: make the tracker agree."""
        states = {s.hsdir: s for s in self.tracker.states(period)}
        state = states.get(hsdir)
        if state is None:
            return
        if verdict is Verdict.OWN_OLDER and state.status in (UploadStatus.UPLOADED,
                                                             UploadStatus.REJECTED):
            # It lost (or never kept) our current revision: post it again.
            self.tracker.repost(period, hsdir, now)
        elif verdict is Verdict.OWN_CURRENT and state.status is UploadStatus.REJECTED:
            self.tracker.mark_uploaded(period, hsdir)

    def _schedule_check(self, now: float) -> None:
        if self.fetchable is None or self._next_check is None:
            return
        if now < self._next_check:
            return
        interval = (self.timing.check_interval if self.role is Role.PUBLISHER
                    else self.timing.standby_check_interval)
        self._next_check = now + interval
        hsdirs = self.targets[self.fetchable].hsdirs
        if not hsdirs:
            return
        hsdir = hsdirs[self._check_cursor % len(hsdirs)]
        self._check_cursor += 1
        self._pending_fetches.append(Fetch(self.fetchable, hsdir, "check"))

    def _send_fetch(self, now: float) -> None:
        # One HSFETCH at a time: tor's HS_DESC_CONTENT names the HSDir, but keeping one
        # in flight bounds the rate and keeps every answer unambiguous.
        while self._fetch is None and self._pending_fetches:
            fetch = self._pending_fetches.popleft()
            if fetch.period != self.fetchable:
                continue
            self._fetch = _FetchInFlight(fetch, now)
            self._actions.append(fetch)

    def _close_fetch(self, hsdir: str) -> Fetch | None:
        fpr = hsdir.removeprefix("$").upper()
        if self._fetch is None or self._fetch.fetch.hsdir != fpr:
            return None
        fetch, self._fetch = self._fetch.fetch, None
        return fetch

    # -- failures -------------------------------------------------------------------------

    def _count_failure(self, hsdir: str, reason: str) -> None:
        streak = self._streaks.get(hsdir, 0) + 1
        self._streaks[hsdir] = streak
        if streak == self.timing.failure_streak:
            self._emit(PublishEventKind.FAILURE_STREAK,
                       f"HSDir {hsdir} failed {streak} uploads in a row (last: {reason})",
                       hsdir=hsdir, streak=streak)

    def _give_up_event(self, period: int, hsdir: str) -> None:
        if hsdir in self.tracker.with_status(period, UploadStatus.FAILED):
            self._emit(PublishEventKind.HSDIR_GAVE_UP,
                       f"HSDir {hsdir} gave up for period {period} after "
                       f"{self.tracker.policy.max_retries + 1} attempts; retried in "
                       f"{self.timing.revive_interval:.0f} s", period=period, hsdir=hsdir)

    def _emit(self, kind: PublishEventKind, message: str, **fields: object) -> None:
        self._events.append(PublishEvent(kind, message, **fields))  # type: ignore[arg-type]

