"""This node's own intro points, from its tor into the mesh core.

Two readers of the node's descriptors (``NodeIntroWatcher``):

* *own*: ``GETINFO hs/service/desc/id/<node>`` on the node's tor, read every
  ``[service] intro_poll_interval`` seconds and at once whenever tor reports
  an upload of the node's descriptor (``HS_DESC UPLOAD``/``UPLOADED``): that
  is when tor has rotated its intro points, so the cluster hears about a
  rotation within one control-port round trip (docs/scenarios.md §2);
* *fetched*: ``HSFETCH`` of the node address. tor fetches the descriptor of
  the fetching tor's *current time period* (from its consensus), which is
  the node's second descriptor in the first half of a period and its first
  (= the GETINFO one) in the second half. It runs every ``FETCH_INTERVAL``,
  at once when the consensus enters a new time period (the node's new set
  must reach the master within seconds: clients refetch then), and at once,
  from that HSDir (``SERVER=``), when tor reports that an HSDir accepted a
  new upload of that period's descriptor, so the answer is tor's newest one.
  A fetched descriptor of a managed tor counts only after this run's tor has
  uploaded one with that blinded key: until then HSDirs may serve an earlier
  tor's descriptor, whose intro points died with it.

Per time period of the master's two descriptors the node shares its set for
exactly that period and nothing else (``onionmesh.publish.period_sets``): the
second descriptor's set of the second half of a period cannot be read before
that period starts, so until then the node shares nothing for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence

from onionmesh.aio import cancel_and_wait
from onionmesh.crypto.address import decode_onion_address
from onionmesh.crypto.blinding import blind_public_key
from onionmesh.descriptor.layers import b64_nopad
from onionmesh.errors import OnionmeshError
from onionmesh.hsdir.consensus import Consensus
from onionmesh.hsdir.timeperiod import descriptor_periods, fetch_period, period_length_minutes
from onionmesh.node.publishing import encode_intro_point
from onionmesh.tor.control import TorController
from onionmesh.tor.control_protocol import ControlError, HsDescEvent, parse_hs_desc_event
from onionmesh.tor.hs_desc_feed import HsDescFeed
from onionmesh.tor.intro_points import IntroSet, NodeIntroWatcher, enable_events
from onionmesh.tor.upload_events import UploadMatcher
from onionmesh.tor_limits import MAX_INTRO_POINTS

log = logging.getLogger(__name__)

FETCH_INTERVAL = 30.0  # seconds between HSFETCHes of the node's own address

IntroSets = Mapping[int, Sequence[bytes]]


class IntroFeed:
    """Keeps the core's local intro points equal to what the node's tor advertises."""

    def __init__(
        self,
        controller: TorController,
        node_address: str,
        on_sets: Callable[[IntroSets], None],
        *,
        poll_interval: float = 5.0,
        clock: Callable[[], float] = time.time,
        uploaded: dict[str, float] | None = None,
        hs_desc: HsDescFeed | None = None,
    ) -> None:
        self.controller = controller
        self.node_address = node_address.removesuffix(".onion")
        self.on_sets = on_sets
        self.poll_interval = poll_interval
        self.period_length = 1440
        self.periods: tuple[int, ...] = ()
        self.fetch_period: int | None = None  # the period HSFETCH brings (tor's current)
        self._fetch_key = ""  # its blinded key, base64 as in HS_DESC events
        self.own = NodeIntroWatcher(
            self.node_address, period_length=lambda: self.period_length, own=controller,
            clock=clock,
        )
        self.fetched = NodeIntroWatcher(
            self.node_address, period_length=lambda: self.period_length, fetcher=controller,
            fetch_timeout=20.0, clock=clock,
        )
        self._wake = asyncio.Event()
        self._fetch_now = asyncio.Event()
        self._fetch_from: set[str] = set()  # HSDirs that just accepted tor's new upload
        self._matcher = UploadMatcher(self.node_address)
        self._tasks: list[asyncio.Task[None]] = []
        self.last_shared: dict[int, tuple[bytes, ...]] = {}
        # blinded key (base64, as in HS_DESC) -> when this run's tor first uploaded it;
        # None: no filter (an existing tor that did not restart with us)
        self.uploaded = uploaded
        self.hs_desc = hs_desc  # the node's shared HS_DESC feed (else a subscription of our own)
        self._remove_listener: Callable[[], None] | None = None

    def note_consensus(self, consensus: Consensus) -> None:
        """New consensus: period length and the master's two descriptor periods."""
        try:
            self.period_length = period_length_minutes(consensus)
            # Periods follow from the consensus alone; its own time keeps a skewed local
            # clock from moving them.
            periods = descriptor_periods(consensus, float(consensus.valid_after) + 1)
            current, _ = fetch_period(consensus, float(consensus.valid_after) + 1)
        except OnionmeshError as exc:
            log.warning("cannot place descriptor periods from tor's consensus: %s", exc)
            return
        numbers = tuple(p.period_number for p in periods)
        if numbers != self.periods:
            self.periods = numbers
            keep = {*numbers, current}
            self.own.sets.prune(keep)
            self.fetched.sets.prune(keep)
            self._wake.set()
        if current != self.fetch_period:
            # A new time period: clients refetch the master descriptor now, and HSFETCH
            # now brings the node's descriptor for it. Fetch at once, not in 30 s.
            self.fetch_period = current
            self._fetch_key = self._blinded_b64(current)
            self._fetch_now.set()

    @property
    def fetch_blinded_key(self) -> str:
        """The blinded key (base64, as in HS_DESC) of the period HSFETCH brings."""
        return self._fetch_key

    @property
    def fetch_pending(self) -> bool:
        """Whether a fetch is due now (new period, or an HSDir took a new upload)."""
        return self._fetch_now.is_set()

    def begin_fetch(self) -> list[str]:
        """Take the pending fetch request: the HSDirs that just took tor's new upload."""
        self._fetch_now.clear()
        servers, self._fetch_from = sorted(self._fetch_from), set()
        return servers

    def _blinded_b64(self, period: int) -> str:
        key = decode_onion_address(self.node_address)
        return b64_nopad(blind_public_key(key, period, self.period_length))

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._own_loop(), name="intro-own"),
            asyncio.create_task(self._fetch_loop(), name="intro-fetch"),
        ]
        if self.hs_desc is not None:
            self._remove_listener = self.hs_desc.listen(self._on_hs_desc)
        else:
            await enable_events(self.controller, "HS_DESC")
            self._tasks.append(asyncio.create_task(self._event_loop(), name="intro-events"))

    async def stop(self) -> None:
        if self._remove_listener is not None:
            self._remove_listener()
            self._remove_listener = None
        await cancel_and_wait(*self._tasks)
        self._tasks = []

    def _on_hs_desc(self, parsed: HsDescEvent) -> None:
        """One HS_DESC event of this node's tor (from the shared feed or our own loop)."""
        if parsed.address != self.node_address:
            return
        if parsed.action in ("UPLOAD", "UPLOADED"):
            self._wake.set()  # tor's current descriptor may have changed: GETINFO
        done = self._matcher.observe(parsed)
        if done is not None and done.blinded_key == self._fetch_key:
            # tor's newest descriptor of the fetchable period is on that HSDir.
            self._fetch_from.add(done.hsdir)
            self._fetch_now.set()

    def current_sets(self) -> dict[int, tuple[bytes, ...]]:
        """Per master period: the node's set for exactly that period, if known and not empty.

        Own (GETINFO) and fetched sets of one period come from the same tor; the
        higher revision is tor's newer descriptor.
        """
        periods = self.periods or tuple(
            sorted(set(self.own.sets.periods()) | set(self.fetched.sets.periods()))
        )
        result: dict[int, tuple[bytes, ...]] = {}
        for period in periods:
            candidates = [
                c for c in (self.own.sets.for_period(period),
                            self._fresh(self.fetched.sets.for_period(period)))
                if c is not None and c.intro_points
            ]
            if candidates:
                chosen = max(candidates, key=lambda c: (c.revision, c.received_at))
                points = chosen.intro_points[:MAX_INTRO_POINTS]
                result[period] = tuple(encode_intro_point(ip) for ip in points)
        return result

    def missing_periods(self) -> list[int]:
        """Master periods this node shares nothing for (its set is not known yet)."""
        sets = self.current_sets()
        return [p for p in self.periods if p not in sets]

    def _fresh(self, fetched: IntroSet | None) -> IntroSet | None:
        """A fetched set counts only once this run's tor has uploaded that descriptor.

        Until then the HSDirs may still serve a descriptor of an earlier tor of this
        node (a restart), whose intro points are gone.
        """
        if fetched is None or self.uploaded is None:
            return fetched
        uploaded_at = self.uploaded.get(b64_nopad(fetched.blinded_key))
        if uploaded_at is None or fetched.received_at < uploaded_at:
            return None
        return fetched

    def share(self) -> None:
        """Hand the current sets to ``on_sets`` if they changed since the last time."""
        sets = self.current_sets()
        if sets != self.last_shared:
            self.last_shared = sets
            self.on_sets(sets)

    async def _own_loop(self) -> None:
        while True:
            try:
                await self.own.poll_once()
            except (OnionmeshError, ControlError, OSError) as exc:
                log.warning("reading this node's descriptor from tor failed: %s", exc)
            self.share()
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.poll_interval):
                    await self._wake.wait()

    async def _fetch_loop(self) -> None:
        while True:
            servers = self.begin_fetch()
            try:
                if await self.fetched.poll_once(servers):
                    self.share()
            except (OnionmeshError, ControlError, OSError) as exc:
                log.debug("HSFETCH of this node's address failed: %s", exc)
            if self._fetch_from:
                continue  # another HSDir accepted a new upload meanwhile
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(FETCH_INTERVAL):  # polling period
                    await self._fetch_now.wait()

    async def _event_loop(self) -> None:
        while True:
            async for event in self.controller.subscribe("HS_DESC"):
                try:
                    parsed = parse_hs_desc_event(event)
                except ControlError:
                    continue
                self._on_hs_desc(parsed)
            await asyncio.sleep(1.0)  # the subscription ended (tor reconnecting): resubscribe
