"""Reading a node's current introduction points from its tor.

A node's tor picks and rotates its own intro points and gives each of its two
descriptors (tor's "first" and "second", i.e. two time periods) its OWN set.
The master descriptor for time period P must carry each node's set for P and
no other (tor closes a descriptor's intro circuits when it drops that
descriptor at the SRV rotation; see docs/architecture.md, "Time periods"), so
the sets are kept by time period, identified from the descriptor's blinded
key (blind(node key, P)), and looked up only by exact period.

Two ways to get a node descriptor, both decoded and fully verified with our
own parser using the node's address:

- ``GETINFO hs/service/desc/id/<addr>`` on the node's own tor: tor's
  *current* descriptor only (it may first show one with 0 intro points);
- ``HSFETCH <addr>`` + the ``HS_DESC_CONTENT`` event, from any tor: the
  descriptor clients fetch right now (the other period's set half the time).

``NodeIntroSets`` is the pure bookkeeping: which set per period, and whether
an update is a rotation (different intro points) rather than a re-upload.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from onionmesh.crypto.address import decode_onion_address
from onionmesh.descriptor.intro import IntroPoint
from onionmesh.descriptor.parse import parse_descriptor
from onionmesh.errors import OnionmeshError
from onionmesh.tor.control_protocol import ControlReplyError, parse_hs_desc_event

if TYPE_CHECKING:
    from onionmesh.tor.control import TorController

log = logging.getLogger(__name__)


class IntroPointsError(OnionmeshError):
    """A node's intro points could not be read or decoded."""


@dataclass(frozen=True)
class IntroSet:
    """The intro points of one node descriptor (one time period)."""

    address: str  # node onion address, 56 chars, no ".onion"
    period_number: int
    blinded_key: bytes
    revision: int
    intro_points: tuple[IntroPoint, ...]
    source: str  # "own" (GETINFO on the node's tor) or "hsfetch"
    received_at: float

    @property
    def key(self) -> frozenset[bytes]:
        """Identity of the set: the intro points' auth keys (unique per intro point)."""
        return frozenset(ip.auth_key for ip in self.intro_points)


def _bare(address: str) -> str:
    addr = address.strip().lower().removesuffix(".onion")
    decode_onion_address(addr)  # AddressError (typed) for anything malformed
    return addr


def decode_intro_set(
    text: str,
    address: str,
    *,
    period_length: int,
    now: float,
    source: str,
    period_number: int | None = None,
) -> IntroSet:
    """Verify and decrypt a node descriptor and say which time period it serves.

    Without ``period_number`` the periods around ``now`` (current, next, previous)
    are accepted, which covers both of tor's descriptors.
    """
    addr = _bare(address)
    try:
        desc = parse_descriptor(
            text, addr, period_number=period_number, period_length=period_length, now=now
        )
    except OnionmeshError as exc:
        raise IntroPointsError(
            f"descriptor of {addr[:12]}… does not verify: {type(exc).__name__}: {exc}"
        ) from exc
    return IntroSet(
        address=addr,
        period_number=desc.period_number,
        blinded_key=desc.blinded_key,
        revision=desc.revision_counter,
        intro_points=tuple(desc.intro_points),
        source=source,
        received_at=now,
    )


class NodeIntroSets:
    """The intro-point sets of one node, one per time period (pure bookkeeping)."""

    def __init__(self, address: str):
        self.address = _bare(address)
        self._sets: dict[int, IntroSet] = {}

    def update(self, new: IntroSet) -> bool:
        """Record ``new``; True when it changes what the master should carry for its period.

        An older revision is ignored (HSDirs may still serve it); a newer one with the
        same intro points only refreshes the record and returns False.
        """
        if new.address != self.address:
            raise IntroPointsError(
                f"intro set of {new.address[:12]}… given to {self.address[:12]}…"
            )
        old = self._sets.get(new.period_number)
        if old is not None and new.revision < old.revision:
            return False
        self._sets[new.period_number] = new
        return old is None or old.key != new.key

    def for_period(self, period: int) -> IntroSet | None:
        return self._sets.get(period)

    def prune(self, keep: Iterable[int]) -> None:
        keep_set = set(keep)
        for period in list(self._sets):
            if period not in keep_set:
                del self._sets[period]

    def periods(self) -> list[int]:
        return sorted(self._sets)


async def read_own_descriptor(controller: TorController, address: str) -> str | None:
    """The node's current descriptor from its own tor, or None if tor has none yet."""
    addr = _bare(address)
    try:
        info = await controller.get_info(f"hs/service/desc/id/{addr}")
    except ControlReplyError as exc:
        if exc.status == 551:  # "Not found in cache": tor has not built it yet
            return None
        raise
    text = next(iter(info.values()), "")
    return text or None


async def enable_events(controller: TorController, *names: str) -> None:
    """Add ``names`` to the controller's SETEVENTS set without dropping other users' events."""
    await controller.add_events(*names)


async def fetch_descriptor(
    controller: TorController, address: str, *, timeout: float = 30.0,
    servers: Iterable[str] = (),
) -> str:
    """HSFETCH ``address`` and return the descriptor text from HS_DESC_CONTENT.

    Raises IntroPointsError when every asked HSDir answers with a failure
    (e.g. NOT_FOUND) or nothing arrives within ``timeout``.
    """
    addr = _bare(address)
    server_list = list(servers)
    await enable_events(controller, "HS_DESC", "HS_DESC_CONTENT")
    # Subscribe before HSFETCH so an answer racing the 250 OK cannot be missed.
    sub = controller.subscribe("HS_DESC", "HS_DESC_CONTENT")
    failures: list[str] = []
    try:
        await controller.hs_fetch(addr, server_list)
        async with asyncio.timeout(timeout):
            async for event in sub:
                if event.type == "HS_DESC_CONTENT":
                    fields = event.text.split(" ")
                    if fields and fields[0] == addr and event.data:
                        return event.data
                    continue
                desc_event = parse_hs_desc_event(event)
                if desc_event.address == addr and desc_event.action == "FAILED":
                    failures.append(desc_event.reason or "no reason")
                    if len(failures) >= max(1, len(server_list)):
                        raise IntroPointsError(
                            f"HSFETCH of {addr[:12]}… failed: {', '.join(failures)}"
                        )
    except TimeoutError:
        raise IntroPointsError(
            f"no descriptor for {addr[:12]}… within {timeout:g} s"
        ) from None
    finally:
        sub.close()
    raise IntroPointsError(f"control connection closed while fetching {addr[:12]}…")


async def read_intro_sets(
    controller: TorController,
    address: str,
    *,
    period_length: int,
    own: bool = True,
    fetch: bool = True,
    timeout: float = 30.0,
    clock=time.time,
) -> list[IntroSet]:
    """Every intro set of ``address`` readable now (own descriptor and/or HSFETCH).

    Sources that have nothing (no descriptor yet, NOT_FOUND) are skipped; the list
    may be empty. Descriptors that do not verify raise IntroPointsError.
    """
    found: list[IntroSet] = []
    texts: list[tuple[str, str]] = []
    if own:
        text = await read_own_descriptor(controller, address)
        if text:
            texts.append(("own", text))
    if fetch:
        with contextlib.suppress(IntroPointsError):
            texts.append(("hsfetch", await fetch_descriptor(controller, address,
                                                            timeout=timeout)))
    for source, text in texts:
        found.append(
            decode_intro_set(text, address, period_length=period_length, now=clock(),
                             source=source)
        )
    return found


class NodeIntroWatcher:
    """Keeps one node's ``NodeIntroSets`` current by polling its tor; reports rotations.

    ``own`` reads the node's own descriptor (needs the node's tor); ``fetcher`` is a
    controller (any tor) used for HSFETCH of the node address, which over time also
    yields the node's other descriptor. ``on_change`` is called when a set changed.
    """

    def __init__(
        self,
        address: str,
        *,
        period_length: Callable[[], int],
        own: TorController | None = None,
        fetcher: TorController | None = None,
        on_change: Callable[[], None] | None = None,
        fetch_timeout: float = 20.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if own is None and fetcher is None:
            raise IntroPointsError("a watcher needs the node's tor or a tor to HSFETCH with")
        self.sets = NodeIntroSets(address)
        self._period_length = period_length
        self._own = own
        self._fetcher = fetcher
        self.on_change = on_change  # called after a poll that changed the sets
        self._fetch_timeout = fetch_timeout
        self._clock = clock
        self.errors = 0

    async def poll_once(self, servers: Iterable[str] = ()) -> bool:
        """Read every source once (HSFETCH from ``servers`` if given, else from any
        responsible HSDir); True when the node's intro points changed."""
        changed = False
        length = self._period_length()
        texts: list[tuple[str, str]] = []
        if self._own is not None:
            text = await read_own_descriptor(self._own, self.sets.address)
            if text:
                texts.append(("own", text))
        if self._fetcher is not None:
            try:
                texts.append(("hsfetch", await fetch_descriptor(
                    self._fetcher, self.sets.address, timeout=self._fetch_timeout,
                    servers=servers)))
            except IntroPointsError as exc:
                self.errors += 1
                log.debug("HSFETCH of node %s…: %s", self.sets.address[:12], exc)
        for source, text in texts:
            new = decode_intro_set(text, self.sets.address, period_length=length,
                                   now=self._clock(), source=source)
            if self.sets.update(new):
                changed = True
                log.info("node %s…: period %d now has %d intro points (from %s, rev %d)",
                         self.sets.address[:12], new.period_number, len(new.intro_points),
                         source, new.revision)
        if changed and self.on_change is not None:
            self.on_change()
        return changed

    async def run(self, interval: float = 5.0) -> None:
        """Poll forever (until cancelled); errors are logged and the loop carries on."""
        while True:
            try:
                await self.poll_once()
            except (OnionmeshError, OSError) as exc:
                self.errors += 1
                log.warning("reading intro points of %s… failed: %s", self.sets.address[:12], exc)
            await asyncio.sleep(interval)  # polling period, not a readiness wait
