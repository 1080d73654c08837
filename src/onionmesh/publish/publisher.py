"""The publisher shell: master descriptors for both periods, uploaded to every responsible HSDir.

It wires the pure parts together around one tor control connection:

- the consensus and microdescriptors from tor -> the hash ring (``onionmesh.hsdir``);
- per time period (tor's first and second descriptor): the intro points from an
  ``intro_source(period)`` callable, the responsible HSDirs, a revision counter;
- ``RepublishPolicy`` says when to build / re-target / drop;
- ``build_descriptor`` signs with the blinded master key;
- ``UploadTracker`` says which ``HSPOST SERVER=<hsdir> HSADDRESS=<master>`` to send
  and is fed tor's ``HS_DESC UPLOADED/FAILED`` events; every result is logged with
  the HSDir's running health.

All decisions are made by the pure modules; this class only does I/O and
waits (on tor events, the next retry, the next consensus poll, or a wake-up
from ``intro_points_changed()``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from onionmesh.aio import cancel_and_wait
from onionmesh.crypto.blinding import BlindedKey, blind_identity
from onionmesh.crypto.keys import Ed25519Identity
from onionmesh.descriptor.layers import b64_nopad
from onionmesh.errors import OnionmeshError
from onionmesh.hsdir.consensus import (
    Consensus,
    attach_ed25519_ids,
    parse_consensus,
    parse_microdescriptors,
)
from onionmesh.hsdir.hashring import responsible_hsdirs
from onionmesh.hsdir.timeperiod import DescriptorPeriod, descriptor_periods
from onionmesh.publish.errors import PublishTimeout
from onionmesh.publish.master import IntroSource, MasterDescriptorBuilder, revision_for
from onionmesh.publish.republish import Action, Built, Decision, RepublishPolicy, Wanted
from onionmesh.publish.uploads import Post, RetryPolicy, UploadStatus, UploadTracker
from onionmesh.tor.control_protocol import ControlError, parse_hs_desc_event
from onionmesh.tor.intro_points import enable_events
from onionmesh.tor_limits import MAX_INTRO_POINTS

if TYPE_CHECKING:
    from onionmesh.tor.control import EventSubscription, TorController

log = logging.getLogger(__name__)

__all__ = ["PeriodTarget", "Publisher", "fetch_consensus"]

async def fetch_consensus(controller: TorController) -> Consensus:
    """The microdesc consensus from tor, with ed25519 ids from ``md/all`` attached."""
    info = await controller.get_info("dir/status-vote/current/consensus-microdesc", "md/all")
    consensus = parse_consensus(info["dir/status-vote/current/consensus-microdesc"])
    # parse_microdescriptors restores md/all's lost final newline (Onionbalance's bug).
    return attach_ed25519_ids(consensus, parse_microdescriptors(info["md/all"]))


@dataclass(frozen=True)
class PeriodTarget:
    """Where one of the two descriptors goes."""

    period: DescriptorPeriod
    blinded: BlindedKey
    hsdirs: tuple[str, ...]  # fingerprints, 40 hex uppercase

    @property
    def blinded_id(self) -> str:
        """The blinded key as tor writes it in HS_DESC events (base64, no padding)."""
        return b64_nopad(self.blinded.public_key)


class Publisher:
    """Publishes the master descriptors of ``master`` through ``controller``'s tor."""

    def __init__(
        self,
        controller: TorController,
        master: Ed25519Identity,
        intro_source: IntroSource,
        *,
        retry: RetryPolicy | None = None,
        policy: RepublishPolicy | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.time,
        consensus_poll: float = 10.0,
        failed_cooldown: float = 300.0,
    ) -> None:
        self.controller = controller
        self.master = master
        self.address = master.onion_address.removesuffix(".onion")
        self.intro_source = intro_source
        self.policy = policy or RepublishPolicy()
        self.tracker = UploadTracker(retry, rng)
        self.clock = clock
        self.consensus_poll = consensus_poll
        self.failed_cooldown = failed_cooldown  # retry HSDirs that exhausted their retries
        self._revived_at: dict[int, float] = {}
        self.consensus: Consensus | None = None
        self.targets: dict[int, PeriodTarget] = {}
        self.built: dict[int, Built] = {}
        self.builder = MasterDescriptorBuilder(
            master, lifetime_minutes=int(self.policy.descriptor_lifetime // 60)
        )
        self.builds = 0  # descriptors built so far (for status and tests)
        self._next_consensus = 0.0
        self._wake = asyncio.Event()
        self._progress = asyncio.Condition()
        self._tasks: list[asyncio.Task[None]] = []
        self._blinded_cache: dict[int, BlindedKey] = {}
        self._events: EventSubscription | None = None

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Subscribe to HS_DESC, load the consensus and start the publish loop."""
        await enable_events(self.controller, "HS_DESC")
        self._events = self.controller.subscribe("HS_DESC")
        await self.refresh_consensus()
        self._tasks = [
            asyncio.create_task(self._event_loop(), name="publisher-events"),
            asyncio.create_task(self._run(), name="publisher-loop"),
        ]

    async def stop(self) -> None:
        await cancel_and_wait(*self._tasks)
        self._tasks = []
        if self._events is not None:
            self._events.close()
            self._events = None

    async def __aenter__(self) -> Publisher:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def intro_points_changed(self) -> None:
        """Tell the publisher the intro source has news; it re-plans at once."""
        self._wake.set()

    # -- waiting ------------------------------------------------------------------------------

    def published(self) -> bool:
        """Both current descriptors accepted by every responsible HSDir."""
        return bool(self.targets) and all(
            self.tracker.complete(p) for p in self.targets
        ) and set(self.tracker.periods()) >= set(self.targets)

    async def wait_published(self, timeout: float, *, min_builds: int = 0) -> None:
        """Wait until every responsible HSDir accepted both descriptors (and ``min_builds``
        descriptors were built in total, to wait for a republish)."""
        try:
            async with asyncio.timeout(timeout), self._progress:
                await self._progress.wait_for(
                    lambda: self.builds >= min_builds and self.published()
                )
        except TimeoutError:
            raise PublishTimeout(
                f"descriptors not accepted by all HSDirs within {timeout:g} s: "
                + self.describe()
            ) from None

    def upload_counts(self) -> dict[int, dict[str, int]]:
        """Per planned period: how many of its HSDirs are in each upload status."""
        result: dict[int, dict[str, int]] = {}
        for period in sorted(self.targets):
            counts: dict[str, int] = {}
            for state in self.tracker.states(period):
                counts[state.status.value] = counts.get(state.status.value, 0) + 1
            result[period] = counts
        return result

    def describe(self) -> str:
        """One line per period: HSDir counts by status."""
        parts = [f"period {period}: {counts}" for period, counts in self.upload_counts().items()]
        return "; ".join(parts) or "no periods planned"

    # -- consensus ----------------------------------------------------------------------------

    async def refresh_consensus(self) -> None:
        """Fetch the consensus and microdescriptors from tor and recompute the HSDirs."""
        self.consensus = await fetch_consensus(self.controller)
        self._next_consensus = self.clock() + self.consensus_poll
        self._plan_targets(self.clock())

    def _plan_targets(self, now: float) -> None:
        assert self.consensus is not None
        targets: dict[int, PeriodTarget] = {}
        for period in descriptor_periods(self.consensus, now):
            number = period.period_number
            blinded = self._blinded_cache.get(number)
            if blinded is None:
                blinded = blind_identity(self.master, number, period.period_length)
                self._blinded_cache[number] = blinded
            relays = responsible_hsdirs(
                blinded.public_key, number, period.period_length, period.srv, self.consensus
            )
            targets[number] = PeriodTarget(period, blinded, tuple(r.fingerprint for r in relays))
        self.targets = targets
        self.builder.forget_periods(targets)
        for number in list(self._blinded_cache):
            if number not in targets:
                del self._blinded_cache[number]

    # -- the loop -----------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            try:
                await self.step()
            except asyncio.CancelledError:
                raise
            except (ControlError, OnionmeshError) as exc:
                # tor restarting, a stale consensus, a bad intro point: log and carry on.
                log.warning("publisher step failed: %s: %s", type(exc).__name__, exc)
                self._next_consensus = min(self._next_consensus, self.clock() + 2.0)
                await asyncio.sleep(1.0)  # back off before the next attempt
                continue
            except Exception:
                # A bug must not silently stop publishing: log it loudly and keep going.
                log.exception("publisher step crashed")
                await asyncio.sleep(1.0)  # back off before the next attempt
                continue
            await self._sleep_until_due()

    async def step(self) -> None:
        """One pass: refresh the consensus if due, decide, build, post what is due."""
        now = self.clock()
        if now >= self._next_consensus:
            await self.refresh_consensus()
        wanted = self._wanted()
        rejected = {p for p in self.targets if self.tracker.with_status(p, UploadStatus.REJECTED)}
        for decision in self.policy.decide(wanted, self.built, now, rejected):
            self._apply(decision, wanted, now)
        self._revive_failed(now)
        posts = self.tracker.poll(self.clock())
        for period, hsdir in self.tracker.drain_timeouts():
            health = self.tracker.health[hsdir]
            log.warning("HSDir %s did not answer for period %d within %.0f s (health: %d ok, "
                        "%d failed)", hsdir, period, self.tracker.policy.upload_timeout,
                        health.successes, health.failures)
        for post in posts:
            await self._post(post)
        await self._notify()

    def _revive_failed(self, now: float) -> None:
        """Give HSDirs that exhausted their retries another round every ``failed_cooldown``."""
        for period in self.tracker.periods():
            last = self._revived_at.setdefault(period, now)
            if now - last >= self.failed_cooldown:
                self._revived_at[period] = now
                revived = self.tracker.retry_failed(period, now)
                if revived:
                    log.info("period %d: retrying %d HSDir(s) that had failed: %s",
                             period, len(revived), ", ".join(revived))
        for period in list(self._revived_at):
            if period not in self.tracker.periods():
                del self._revived_at[period]

    def _wanted(self) -> dict[int, Wanted]:
        wanted = {}
        for number, target in self.targets.items():
            points = list(self.intro_source(number))[:MAX_INTRO_POINTS]
            wanted[number] = Wanted(
                number, frozenset(p.auth_key for p in points), frozenset(target.hsdirs)
            )
        return wanted

    def _apply(self, decision: Decision, wanted: dict[int, Wanted], now: float) -> None:
        number = decision.period
        if decision.action is Action.DROP:
            log.info("period %d rotated out: no longer publishing its descriptor", number)
            self.built.pop(number, None)
            self.tracker.drop_period(number)
            return
        target = self.targets[number]
        want = wanted[number]
        if decision.action is Action.RETARGET:
            log.info("period %d: responsible HSDirs changed (%d now)", number, len(want.hsdirs))
            self.tracker.set_hsdirs(number, target.hsdirs, now)
            self.built[number] = Built(number, want.intro_key, want.hsdirs,
                                       self.built[number].built_at)
            return
        points = list(self.intro_source(number))[:MAX_INTRO_POINTS]
        revision = revision_for(target.blinded, target.period.srv_start, now,
                                self.tracker.revision(number))
        text = self.builder.build(number, target.period.period_length, revision, points,
                                  now=now, blinded=target.blinded)
        self.tracker.set_descriptor(number, target.blinded_id, text, revision, target.hsdirs,
                                    now, content_changed=decision.content_changed)
        self.built[number] = Built(number, frozenset(p.auth_key for p in points),
                                   want.hsdirs, now)
        self.builds += 1
        log.info(
            "period %d (%s descriptor): built revision %d with %d intro points (%s), "
            "%d bytes, for %d HSDirs",
            number, "first" if target.period.is_first else "second", revision, len(points),
            decision.reason.value, len(text), len(target.hsdirs),
        )

    async def _post(self, post: Post) -> None:
        try:
            await self.controller.hs_post(post.descriptor, server=post.hsdir,
                                          hs_address=self.address)
        except ControlError as exc:
            log.warning("HSPOST to %s for period %d refused by tor: %s",
                        post.hsdir, post.period, exc)
            self.tracker.on_failed(post.hsdir, post.blinded_id, "POST_REFUSED", self.clock())
            return
        log.debug("HSPOST period %d revision %d to %s (attempt %d)",
                  post.period, post.revision, post.hsdir, post.attempt)

    async def _sleep_until_due(self) -> None:
        now = self.clock()
        times = [self._next_consensus]
        next_upload = self.tracker.next_wakeup()
        if next_upload is not None:
            times.append(next_upload)
        times.extend(t + self.failed_cooldown for t in self._revived_at.values())
        next_check = self.policy.next_check(self._wanted(), self.built, now)
        if next_check is not None:
            times.append(next_check)
        delay = max(0.0, min(times) - now)
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self._wake.wait()

    async def _event_loop(self) -> None:
        assert self._events is not None
        async for event in self._events:
            try:
                parsed = parse_hs_desc_event(event)
            except ControlError as exc:
                log.warning("ignoring malformed HS_DESC event: %s", exc)
                continue
            if parsed.address != self.address or parsed.hsdir is None:
                continue
            now = self.clock()
            if parsed.action == "UPLOADED":
                period = self.tracker.on_uploaded(parsed.hsdir, now)
                if period is not None:
                    health = self.tracker.health[parsed.hsdir]
                    log.info(
                        "HSDir %s accepted period %d in %.2f s (health: %d ok, %d failed)",
                        parsed.hsdir, period, health.last_latency or 0.0,
                        health.successes, health.failures,
                    )
            elif parsed.action == "FAILED":
                period = self.tracker.on_failed(parsed.hsdir, parsed.descriptor_id,
                                                parsed.reason, now)
                if period is not None:
                    health = self.tracker.health.get(parsed.hsdir)
                    state = next((s for s in self.tracker.states(period)
                                  if s.hsdir == parsed.hsdir), None)
                    log.warning(
                        "HSDir %s failed period %d: %s -> %s (health: %d ok, %d failed)",
                        parsed.hsdir, period, parsed.reason,
                        state.status.value if state else "gone",
                        health.successes if health else 0, health.failures if health else 0,
                    )
            else:
                continue
            self._wake.set()
            await self._notify()

    async def _notify(self) -> None:
        async with self._progress:
            self._progress.notify_all()

