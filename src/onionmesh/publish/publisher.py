"""The publisher shell: drives one ``PublishCore`` over one tor control connection.

Every decision (periods, HSDirs, builds, retries, revivals, refreshes, conflict
checks) is the core's (``onionmesh.publish.core``). This shell only does I/O:

- reads the consensus and microdescriptors from tor every ``consensus_poll`` seconds
  and hands them to the core (``set_consensus``);
- reads the intro points from ``intro_source(period)`` before every pass;
- sends what the core asks for: ``HSPOST SERVER=<hsdir> HSADDRESS=<master>`` and
  ``HSFETCH <master> SERVER=<hsdir>``;
- feeds tor's HS_DESC results (from the node's shared ``HsDescFeed``) and the fetched
  descriptors, verified and decrypted with the master public key, back to the core;
- logs the core's events and hands them to ``on_event`` (the daemon: alerts, conflicts).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from onionmesh.aio import cancel_and_wait, wait_for_wake
from onionmesh.crypto.blinding import BlindedKey
from onionmesh.crypto.keys import Ed25519Identity
from onionmesh.descriptor.parse import parse_descriptor
from onionmesh.errors import OnionmeshError
from onionmesh.hsdir.consensus import (
    Consensus,
    attach_ed25519_ids,
    parse_consensus,
    parse_microdescriptors,
)
from onionmesh.hsdir.timeperiod import fetch_period
from onionmesh.publish.core import (
    Fetch,
    HasAuthKey,
    ObservedDescriptor,
    PeriodTarget,
    PublishCore,
    PublishEvent,
    PublishEventKind,
    PublishTiming,
    Role,
    Verdict,
    plan_targets,
)
from onionmesh.publish.errors import PublishTimeout
from onionmesh.publish.master import IntroSource, MasterDescriptorBuilder
from onionmesh.publish.uploads import Post, RetryPolicy, UploadTracker
from onionmesh.tor.control_protocol import ControlError, HsDescEvent
from onionmesh.tor.hs_desc_feed import HsDescContent, HsDescFeed

if TYPE_CHECKING:
    from collections.abc import Sequence

    from onionmesh.tor.control import TorController

log = logging.getLogger(__name__)

__all__ = ["PeriodTarget", "Publisher", "fetch_consensus"]

_WARN = {PublishEventKind.UPLOAD_FAILED, PublishEventKind.UPLOAD_TIMEOUT,
         PublishEventKind.HSDIR_GAVE_UP, PublishEventKind.FETCH_FAILED,
         PublishEventKind.CONFLICT, PublishEventKind.FAILURE_STREAK,
         PublishEventKind.SIGNING_FAILURES}


async def fetch_consensus(controller: TorController) -> Consensus:
    """The microdesc consensus from tor, with ed25519 ids from ``md/all`` attached."""
    info = await controller.get_info("dir/status-vote/current/consensus-microdesc", "md/all")
    consensus = parse_consensus(info["dir/status-vote/current/consensus-microdesc"])
    # parse_microdescriptors restores md/all's lost final newline (Onionbalance's bug).
    return attach_ed25519_ids(consensus, parse_microdescriptors(info["md/all"]))


class MasterSigner:
    """The core's ``DescriptorSigner``: tor-compatible master descriptors."""

    def __init__(self, master: Ed25519Identity, lifetime: float) -> None:
        self.builder = MasterDescriptorBuilder(master, lifetime_minutes=int(lifetime // 60))

    def build(self, target: PeriodTarget, revision: int, points: Sequence[HasAuthKey],
              now: float) -> str:
        return self.builder.build(target.number, target.period.period_length, revision,
                                  points, now=now, blinded=target.blinded)  # type: ignore[arg-type]

    def forget_periods(self, keep: object) -> None:
        self.builder.forget_periods(keep)  # type: ignore[arg-type]


def observe_descriptor(text: str, address: str, period: int, period_length: int,
                       now: float, client_secret_key: bytes | None = None) -> ObservedDescriptor:
    """Verify and decrypt a fetched master descriptor (DescriptorError if it does not).

    ``client_secret_key``: the cluster's own client key (``observer_secret_key``), which
    its descriptors authorize when discovery is restricted (client authorization); an
    unrestricted descriptor reads the same with it."""
    desc = parse_descriptor(text, address, period_number=period, period_length=period_length,
                            now=now, client_secret_key=client_secret_key)
    return ObservedDescriptor(desc.period_number, desc.revision_counter,
                              frozenset(ip.auth_key for ip in desc.intro_points))


class Publisher:
    """Publishes the master descriptors of ``master`` through ``controller``'s tor."""

    def __init__(
        self,
        controller: TorController,
        master: Ed25519Identity,
        intro_source: IntroSource,
        *,
        retry: RetryPolicy | None = None,
        timing: PublishTiming | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.time,
        consensus_poll: float = 10.0,
        feed: HsDescFeed | None = None,
        role: Role = Role.PUBLISHER,
        on_event: Callable[[PublishEvent], None] | None = None,
        owner_source: Callable[[int], Sequence[str]] | None = None,
    ) -> None:
        self.controller = controller
        self.owner_source = owner_source  # node id of each intro point (splits > 20)
        self.master = master
        self.address = master.onion_address.removesuffix(".onion")
        self.intro_source = intro_source
        self.clock = clock
        self.consensus_poll = consensus_poll
        self.on_event = on_event
        timing = timing or PublishTiming()
        self.core = PublishCore(MasterSigner(master, timing.descriptor_lifetime),
                                timing=timing, retry=retry, rng=rng, role=role)
        self.consensus: Consensus | None = None
        self._feed = feed
        self._own_feed = feed is None
        self._removers: list[Callable[[], None]] = []
        self._blinded: dict[int, BlindedKey] = {}  # blinded keys per period (costly to derive)
        self._next_consensus = 0.0
        self._wake = asyncio.Event()
        self._progress = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None

    # -- the core's state, for status and tests ----------------------------------------------

    @property
    def targets(self) -> dict[int, PeriodTarget]:
        return self.core.targets

    @property
    def tracker(self) -> UploadTracker:
        return self.core.tracker

    @property
    def builder(self) -> MasterDescriptorBuilder:
        """The descriptor builder (client authorization keys are set on it)."""
        signer = self.core.signer
        assert isinstance(signer, MasterSigner)
        return signer.builder

    @property
    def builds(self) -> int:
        return self.core.builds

    def published(self) -> bool:
        """Both current descriptors accepted by every responsible HSDir."""
        return self.core.published()

    def upload_counts(self) -> dict[int, dict[str, int]]:
        return self.core.upload_counts()

    def describe(self) -> str:
        """One line per period: HSDir counts by status."""
        parts = [f"period {period}: {counts}" for period, counts in self.upload_counts().items()]
        return "; ".join(parts) or "no periods planned"

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Listen to HS_DESC, load the consensus and start the publish loop."""
        if self._feed is None:
            self._feed = HsDescFeed(self.controller)
            await self._feed.start()
        self._removers = [self._feed.listen(self._on_hs_desc),
                          self._feed.listen_content(self._on_content)]
        await self.refresh_consensus()
        self._task = asyncio.create_task(self._run(), name="publisher-loop")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None
        for remove in self._removers:
            remove()
        self._removers = []
        if self._own_feed and self._feed is not None:
            await self._feed.stop()
            self._feed = None

    async def __aenter__(self) -> Publisher:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def intro_points_changed(self) -> None:
        """Tell the publisher the intro source has news; it re-plans at once."""
        self._wake.set()

    def set_client_auth_keys(self, keys: Sequence[bytes]) -> None:
        """New authorized clients (empty: none): every descriptor is rebuilt with them and
        re-uploaded at once (the core's ``clients_changed``)."""
        self.builder.set_client_auth_keys(keys)
        self.core.clients_changed(self.clock())
        self._wake.set()

    def set_role(self, role: Role) -> None:
        """Publisher (uploads and checks) or standby (checks only, at the slower rate)."""
        self.core.set_role(role, self.clock())
        self._log_events()  # e.g. posts it will no longer send, while this shell still logs
        self._wake.set()

    # -- waiting ------------------------------------------------------------------------------

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

    # -- consensus ----------------------------------------------------------------------------

    def targets_from(self, consensus: Consensus, now: float) -> dict[int, PeriodTarget]:
        """Both periods' targets for ``consensus`` at ``now`` (a subclass may add HSDirs)."""
        return plan_targets(self.master, consensus, now, self._blinded)

    async def refresh_consensus(self) -> None:
        """Fetch the consensus and microdescriptors from tor and hand them to the core."""
        consensus = await fetch_consensus(self.controller)
        now = self.clock()
        self.consensus = consensus
        self._next_consensus = now + self.consensus_poll
        self.core.set_targets(self.targets_from(consensus, now), now,
                              fetchable=fetch_period(consensus, now)[0])

    # -- the loop -----------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            try:
                await self.step()
            except asyncio.CancelledError:
                raise
            except (ControlError, OnionmeshError) as exc:
                # tor restarting, a stale consensus, a bad intro point, a refused clock:
                # log, count (an alert after a streak) and carry on.
                log.warning("publisher step failed: %s: %s", type(exc).__name__, exc)
                self.core.on_pass_failed(f"{type(exc).__name__}: {exc}", self.clock())
                self._log_events()
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
        """One pass: refresh the consensus if due, feed the intro points, do what is due."""
        now = self.clock()
        if now >= self._next_consensus:
            await self.refresh_consensus()
        points = {n: list(self.intro_source(n)) for n in self.core.targets}
        owners = (None if self.owner_source is None
                  else {n: list(self.owner_source(n)) for n in self.core.targets})
        self.core.set_intro_points(points, self.clock(), owners)
        self.core.handle_timer(self.clock())
        self.core.on_pass_succeeded()
        await self._flush()

    async def _flush(self) -> None:
        self._log_events()
        while (action := self.core.next_action()) is not None:
            if isinstance(action, Post):
                await self._post(action)
            else:
                await self._fetch(action)
            self._log_events()
        async with self._progress:
            self._progress.notify_all()

    def _log_events(self) -> None:
        while (event := self.core.next_event()) is not None:
            level = logging.WARNING if event.kind in _WARN else logging.INFO
            if event.kind is PublishEventKind.FETCHED and event.verdict is Verdict.OWN_CURRENT:
                level = logging.DEBUG  # the routine outcome of a check, every 30 s
            log.log(level, "%s", event.message)
            if self.on_event is not None:
                try:
                    self.on_event(event)
                except Exception:  # an observer bug must not stop publishing
                    log.exception("handling publish event %s failed", event.kind.value)

    async def _post(self, post: Post) -> None:
        try:
            await self.controller.hs_post(post.descriptor, server=post.hsdir,
                                          hs_address=self.address)
        except ControlError as exc:
            log.warning("HSPOST to %s for period %d refused by tor: %s",
                        post.hsdir, post.period, exc)
            self.core.on_post_refused(post, str(exc), self.clock())
            return
        log.debug("HSPOST period %d revision %d to %s (attempt %d)",
                  post.period, post.revision, post.hsdir, post.attempt)

    async def _fetch(self, fetch: Fetch) -> None:
        try:
            await self.controller.hs_fetch(self.address, [fetch.hsdir])
        except ControlError as exc:
            self.core.on_fetch_failed(fetch.hsdir, f"HSFETCH refused by tor: {exc}",
                                      self.clock())
            return
        log.debug("HSFETCH period %d from %s (%s)", fetch.period, fetch.hsdir, fetch.reason)

    async def _sleep_until_due(self) -> None:
        now = self.clock()
        times = [self._next_consensus]
        timer = self.core.get_timer()
        if timer is not None:
            times.append(timer)
        await wait_for_wake(self._wake, min(times) - now)

    # -- tor's answers ------------------------------------------------------------------------

    def _on_hs_desc(self, event: HsDescEvent) -> None:
        if event.address != self.address or event.hsdir is None:
            return
        now = self.clock()
        if event.action == "UPLOADED":
            self.core.on_uploaded(event.hsdir, now)
        elif event.action == "FAILED":
            self.core.on_hs_desc_failed(event.hsdir, event.descriptor_id, event.reason, now)
        else:
            return
        self._wake.set()

    def _on_content(self, content: HsDescContent) -> None:
        if content.address != self.address or content.hsdir is None or not content.text:
            return
        period = self.core.fetchable
        target = self.core.targets.get(period) if period is not None else None
        now = self.clock()
        if target is None:
            return
        try:
            observed = observe_descriptor(content.text, self.address, target.number,
                                          target.period.period_length, now,
                                          self.builder.reader_secret_key)
        except OnionmeshError as exc:
            self.core.on_fetched(content.hsdir, None, now,
                                 problem=f"{type(exc).__name__}: {exc}")
        else:
            self.core.on_fetched(content.hsdir, observed, now)
        self._wake.set()
