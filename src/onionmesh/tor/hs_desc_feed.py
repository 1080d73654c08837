"""One HS_DESC subscription per tor, parsed once, handed to every consumer.

A node has several readers of tor's onion-service descriptor events: the
publisher (upload results, conflict-check fetches), the uploads view
(status, metrics), the intro feed (its own tor uploaded a new descriptor) and
the managed tor's upload log. Each used to subscribe and parse on its own.
``HsDescFeed`` subscribes once to ``HS_DESC`` and ``HS_DESC_CONTENT``, parses
each event once (a malformed one is logged once and dropped) and calls every
listener synchronously, in registration order. A listener that raises is
logged and does not stop the others. When the control connection is lost the
subscription ends; the feed resubscribes once tor is back.

Usage::

    feed = HsDescFeed(controller)
    await feed.start()
    remove = feed.listen(on_event)             # HsDescEvent
    remove_content = feed.listen_content(on_content)   # HsDescContent
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from onionmesh.aio import cancel_and_wait
from onionmesh.tor.control_protocol import (
    ControlError,
    ControlProtocolError,
    HsDescEvent,
    parse_hs_desc_event,
)
from onionmesh.tor.intro_points import enable_events

if TYPE_CHECKING:
    from onionmesh.tor.control import ControlEvent, EventSubscription, TorController

log = logging.getLogger(__name__)

_RESUBSCRIBE = 1.0  # seconds between attempts to resubscribe after a lost connection


@dataclass(frozen=True)
class HsDescContent:
    """An ``HS_DESC_CONTENT`` event: what an HSDir served for an HSFETCH."""

    address: str  # onion address without ".onion"
    descriptor_id: str  # the blinded key (base64) for v3
    hsdir: str | None  # 40 hex uppercase, None when tor says UNKNOWN
    text: str = field(repr=False)  # empty when the fetch failed


def parse_hs_desc_content(event: ControlEvent) -> HsDescContent:
    """``HS_DESC_CONTENT <address> <descriptor id> <hsdir>`` plus the descriptor block."""
    fields = event.text.split(" ")
    if len(fields) < 3:
        raise ControlProtocolError(f"HS_DESC_CONTENT has fewer than 3 fields: {event.text[:80]!r}")
    address, descriptor_id, hsdir_raw = fields[:3]
    hsdir = None
    if hsdir_raw != "UNKNOWN":
        fpr = hsdir_raw.removeprefix("$").split("~")[0].split("=")[0].upper()
        if len(fpr) != 40 or any(c not in "0123456789ABCDEF" for c in fpr):
            raise ControlProtocolError(
                f"HS_DESC_CONTENT HsDir is not a LongName: {hsdir_raw[:60]!r}")
        hsdir = fpr
    return HsDescContent(address, descriptor_id, hsdir, event.data or "")


EventListener = Callable[[HsDescEvent], None]
ContentListener = Callable[[HsDescContent], None]


class HsDescFeed:
    """Fans one tor's HS_DESC / HS_DESC_CONTENT events out to listeners."""

    def __init__(self, controller: TorController) -> None:
        self.controller = controller
        self._listeners: list[EventListener] = []
        self._content: list[ContentListener] = []
        self._task: asyncio.Task[None] | None = None
        self._subscription: EventSubscription | None = None
        self.malformed = 0

    async def start(self) -> None:
        """Subscribe (before SETEVENTS, so nothing is missed) and start dispatching."""
        if self._task is not None:
            return
        self._subscription = self.controller.subscribe("HS_DESC", "HS_DESC_CONTENT")
        await enable_events(self.controller, "HS_DESC", "HS_DESC_CONTENT")
        self._task = asyncio.create_task(self._run(), name="hs-desc-feed")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None
        if self._subscription is not None:
            self._subscription.close()
            self._subscription = None

    def listen(self, callback: EventListener) -> Callable[[], None]:
        """Call ``callback`` with every parsed HS_DESC event; returns the remover."""
        self._listeners.append(callback)
        return lambda: self._remove(self._listeners, callback)

    def listen_content(self, callback: ContentListener) -> Callable[[], None]:
        """Call ``callback`` with every HS_DESC_CONTENT event; returns the remover."""
        self._content.append(callback)
        return lambda: self._remove(self._content, callback)

    @staticmethod
    def _remove(listeners: list[Any], callback: object) -> None:
        if callback in listeners:
            listeners.remove(callback)

    def dispatch(self, event: ControlEvent) -> None:
        """Parse one event and hand it to the listeners (public for fakes in tests)."""
        try:
            if event.type == "HS_DESC_CONTENT":
                content = parse_hs_desc_content(event)
                targets: list[Any] = self._content
                item: object = content
            else:
                item = parse_hs_desc_event(event)
                targets = self._listeners
        except ControlError as exc:
            self.malformed += 1
            log.warning("ignoring a malformed %s event: %s", event.type, exc)
            return
        for callback in list(targets):
            try:
                callback(item)
            except Exception:  # one consumer's bug must not starve the others
                log.exception("an HS_DESC listener failed")

    async def _run(self) -> None:
        while True:
            subscription = self._subscription
            if subscription is not None:
                async for event in subscription:
                    self.dispatch(event)
            await asyncio.sleep(_RESUBSCRIBE)  # the connection was lost: resubscribe
            try:
                self._subscription = self.controller.subscribe("HS_DESC", "HS_DESC_CONTENT")
                await enable_events(self.controller, "HS_DESC", "HS_DESC_CONTENT")
            except ControlError as exc:
                log.debug("resubscribing to HS_DESC failed: %s", exc)
