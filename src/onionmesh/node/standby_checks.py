"""Conflict checks on a standby: a node with the master key that is not publishing.

A stray publisher (a restored old node with the master key, outside the mesh) must
be noticed even when the cluster's publisher is not checking, e.g. right after a
takeover. While this node is a standby it runs a ``Publisher`` in the STANDBY role:
it never builds or uploads, and asks one responsible HSDir every
``standby_check_interval`` (120 s by default, a quarter of the publisher's rate)
for the master descriptor. What it cannot explain with the intro points the mesh
told it about (its own and every peer's) is a CONFLICT, handed to the daemon like
the publisher's (log line, mesh core, ``conflict`` alert).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any

from onionmesh.aio import cancel_and_wait
from onionmesh.clock import Clock
from onionmesh.crypto.keys import Ed25519Identity
from onionmesh.descriptor.intro import IntroPoint
from onionmesh.errors import OnionmeshError
from onionmesh.node.publishing import decode_intro_point
from onionmesh.publish.core import PublishEvent, PublishTiming, Role
from onionmesh.publish.publisher import Publisher
from onionmesh.tor.control import TorController
from onionmesh.tor.control_protocol import ControlError
from onionmesh.tor.hs_desc_feed import HsDescFeed

log = logging.getLogger(__name__)

_START_RETRY = 5.0  # seconds between attempts while tor is unavailable
_CACHE_LIMIT = 1000  # decoded intro points kept (the mesh's are far fewer)


class StandbyChecks:
    """Runs the standby's conflict checks between ``start()`` and ``stop()``."""

    def __init__(self, controller: TorController, master: Ed25519Identity, clock: Clock,
                 known: Callable[[], Mapping[int, Sequence[bytes]]], *,
                 timing: PublishTiming, hs_desc: HsDescFeed | None,
                 on_event: Callable[[PublishEvent], None]) -> None:
        self.controller = controller
        self.master = master
        self.clock = clock
        self.known = known
        self.timing = timing
        self.hs_desc = hs_desc
        self.on_event = on_event
        self.publisher: Publisher | None = None
        self._task: asyncio.Task[None] | None = None
        self._decoded: dict[bytes, IntroPoint | None] = {}

    @property
    def active(self) -> bool:
        return self._task is not None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="standby-checks")

    def stop(self) -> Coroutine[Any, Any, None]:
        """Forget the checks at once; returns the coroutine that ends them."""
        task, self._task = self._task, None
        publisher, self.publisher = self.publisher, None
        return self._end(task, publisher)

    @staticmethod
    async def _end(task: asyncio.Task[None] | None, publisher: Publisher | None) -> None:
        await cancel_and_wait(task)
        if publisher is not None:
            await publisher.stop()

    async def _run(self) -> None:
        while True:
            publisher = Publisher(self.controller, self.master, self._intro_source,
                                  clock=self.clock.now, timing=self.timing,
                                  feed=self.hs_desc, role=Role.STANDBY,
                                  on_event=self.on_event)
            try:
                try:
                    await publisher.start()
                except (ControlError, OnionmeshError, OSError) as exc:
                    log.warning("standby conflict checks could not start: %s", exc)
                    await publisher.stop()
                    await asyncio.sleep(_START_RETRY)  # retry period while tor is unavailable
                    continue
                self.publisher = publisher
                log.info("standby: checking the HSDirs for foreign master descriptors every "
                         "%.0f s", self.timing.standby_check_interval)
                await asyncio.Event().wait()  # runs until stop() cancels this task
            finally:
                await publisher.stop()

    def _intro_source(self, period: int) -> list[IntroPoint]:
        """Every intro point the mesh knows for ``period`` (decoded once each)."""
        if len(self._decoded) > _CACHE_LIMIT:
            self._decoded.clear()
        points = []
        for data in self.known().get(period, ()):
            if data not in self._decoded:
                try:
                    self._decoded[data] = decode_intro_point(data)
                except OnionmeshError:
                    self._decoded[data] = None
            point = self._decoded[data]
            if point is not None:
                points.append(point)
        return points
