"""The asyncio shell around the sans-IO MeshCore: timers, UDP in and out, events out.

Every input (a datagram, a timer, new local intro points) is fed with the
node clock's ``now``; after each one the driver sends what the core queued
and hands every event to ``on_event``. One task sleeps until ``get_timer()``
or until an input wakes it. ``shutdown`` makes the core release its lease and
sends that datagram before the socket closes, so a standby claims at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Protocol

from onionmesh.aio import drive_timers
from onionmesh.clock import Clock
from onionmesh.mesh.core import MeshCore
from onionmesh.mesh.events import Event
from onionmesh.mesh.identity import PeerSeed
from onionmesh.mesh.join import is_join_datagram
from onionmesh.mesh.join_relay import is_relay_datagram
from onionmesh.transport.udp import UdpTransport

log = logging.getLogger(__name__)

_MAX_SLEEP = 5.0  # re-check at least this often (wall-clock steps, a core without timers)


class MeshTransport(Protocol):
    """What the driver needs of a transport (UdpTransport, MultipathTransport)."""

    def send(self, data: bytes, address: str) -> bool: ...

    def close(self) -> Awaitable[None] | None: ...


TransportOpener = Callable[[str, Callable[[bytes, str], None]], Awaitable[MeshTransport]]


class MeshDriver:
    """Drives one MeshCore over one UdpTransport."""

    def __init__(self, core: MeshCore, clock: Clock, on_event: Callable[[Event], None]) -> None:
        self.core = core
        self.clock = clock
        self.on_event = on_event
        self.transport: MeshTransport | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.datagrams_in = 0
        # Join datagrams (mesh.join.MAGIC) go here, not to the core; the answers go back
        # to the sender. None: this node answers no joins (no authority key).
        self.join_handler: Callable[[bytes, str], Sequence[bytes]] | None = None
        # Join relaying between members (mesh.join_relay.RELAY_MAGIC): on the authority
        # node it answers relayed requests, on the others it takes the answers. What it
        # returns goes back to the sender. None: relay datagrams are dropped.
        self.relay_handler: Callable[[bytes, str], Sequence[bytes]] | None = None

    async def start(self, listen: str, open_transport: TransportOpener | None = None) -> None:
        """Open the transport (UDP, or e.g. WireGuard+tor via ``open_transport``) and go."""
        opener = open_transport or UdpTransport.open
        self.transport = await opener(listen, self._on_datagram)
        self.core.transport_up(self.clock.now())  # the listen window starts now
        self.flush()  # the core's Join, queued at construction: peer discovery at once
        self._task = asyncio.create_task(self._timer_loop(), name="mesh-timers")

    @property
    def task(self) -> asyncio.Task[None] | None:
        return self._task

    def _on_datagram(self, data: bytes, addr: str) -> None:
        self.datagrams_in += 1
        if is_join_datagram(data):
            if self.join_handler is not None and self.transport is not None:
                for reply in self.join_handler(data, addr):
                    self.transport.send(reply, addr)
                self.flush()  # an admitted node's entry is gossiped at once
            return
        if is_relay_datagram(data):
            if self.relay_handler is not None and self.transport is not None:
                for reply in self.relay_handler(data, addr):
                    self.transport.send(reply, addr)
                self.flush()
            return
        self.core.receive_datagram(data, addr, self.clock.now())
        self.flush()
        self._wake.set()

    def set_local_intro_points(self, sets: Mapping[int, Sequence[bytes]]) -> None:
        self.core.set_local_intro_points(sets, self.clock.now())
        self.flush()
        self._wake.set()

    def report_foreign_descriptor(self, revision: int, intro_count: int) -> None:
        """The publish core found a descriptor on the HSDirs that this cluster never made."""
        self.core.report_foreign_descriptor(revision, intro_count, self.clock.now())
        self.flush()
        self._wake.set()

    def add_peer(self, seed: PeerSeed) -> None:
        """A peer added by a config reload: greeted like a bootstrap peer."""
        self.core.add_peer(seed, self.clock.now())
        self.flush()
        self._wake.set()

    def flush(self) -> None:
        """Send queued datagrams, then dispatch queued events."""
        now = self.clock.now()
        if self.transport is not None:
            for data, address in self.core.datagrams_to_send(now):
                self.transport.send(data, address)
        while (event := self.core.next_event()) is not None:
            try:
                self.on_event(event)
            except Exception:  # an observer bug must not stop the mesh
                log.exception("handling mesh event %s failed", type(event).__name__)

    async def _timer_loop(self) -> None:
        await drive_timers(self.core.get_timer, self._handle_timer, self.clock.now, self._wake,
                           _MAX_SLEEP)

    def _handle_timer(self, now: float) -> None:
        self.core.handle_timer(now)
        self.flush()

    async def shutdown(self) -> None:
        """Leave the cluster: release the lease, send it, close the socket."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self.core.shutdown(self.clock.now())
        self.flush()
        if self.transport is not None:
            # Give the kernel a moment to push the release datagrams out before closing.
            await asyncio.sleep(0)
            closing = self.transport.close()
            if closing is not None:
                await closing
            self.transport = None
