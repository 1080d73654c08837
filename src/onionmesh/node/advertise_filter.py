"""The shell around ``AdvertiseGate``: sits between the intro feed and the mesh core.

The intro feed (``onionmesh.node.intro_feed``) hands its sets to
``feed_sets``; this passes on to the mesh (``on_sets``) only what the gate
lets through, at once whenever that changes. Three loops feed the gate:

* the service check, every ``[health] interval``, or ``recheck_interval`` while a
  change is being confirmed (``service_probe``, paced by ``ServiceHealth``);
* tor liveness: the control connection's state (and its reconnect count),
  polled every ``LIVENESS_POLL`` s; on every (re)connect the intro circuits
  tor has are read from ``GETINFO circuit-status`` (subscribed to CIRC first,
  so nothing falls between the two);
* CIRC / CIRC_MINOR events of the service's intro circuits (docs/scenarios.md §2).

Gate events become log lines and, for withdrawing and returning, alerts.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence

from onionmesh.aio import cancel_and_wait
from onionmesh.node.advertise_gate import AdvertiseGate, GateEvent
from onionmesh.node.service_health import CheckPolicy
from onionmesh.node.service_probe import Target, check_service
from onionmesh.tor.control import TorController
from onionmesh.tor.control_connection import EventSubscription
from onionmesh.tor.control_protocol import ControlError
from onionmesh.tor.intro_circuits import (
    CircuitChange,
    IntroCircuit,
    parse_circuit_event,
    parse_circuit_line,
)
from onionmesh.tor.intro_points import enable_events

log = logging.getLogger(__name__)

LIVENESS_POLL = 0.5  # seconds between looks at the control connection's state
IntroSets = Mapping[int, Sequence[bytes]]


class AdvertiseFilter:
    """See the module docstring."""

    def __init__(
        self,
        controller: TorController,
        node_address: str,
        policy: CheckPolicy,
        targets: Sequence[Target],
        on_sets: Callable[[IntroSets], None],
        on_event: Callable[[GateEvent], None],
        *,
        suspend_service: Callable[[bool], Awaitable[None]] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.controller = controller
        self.node_address = node_address.removesuffix(".onion")
        self.policy = policy
        self.targets = list(targets)
        self.on_sets = on_sets
        self.on_event = on_event
        self.clock = clock
        self.gate = AdvertiseGate(policy, clock())
        self.last_sent: dict[int, tuple[bytes, ...]] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        # How to take the onion service out of tor and back (None: not possible, a tor
        # this daemon does not manage), and whether it is out now.
        self.suspend_service = suspend_service
        self.service_suspended = False

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        await enable_events(self.controller, "CIRC", "CIRC_MINOR")
        self._tasks = [
            asyncio.create_task(self._check_loop(), name="service-check"),
            asyncio.create_task(self._liveness_loop(), name="tor-liveness"),
        ]

    async def stop(self) -> None:
        await cancel_and_wait(*self._tasks)
        self._tasks = []

    # ------------------------------------------------------------------ inputs

    def feed_sets(self, sets: IntroSets) -> None:
        """The intro feed's callback."""
        self.gate.feed_sets(sets, self.clock())
        self._flush()

    def status(self) -> dict[str, object]:
        return self.gate.status(self.clock())

    # ------------------------------------------------------------------ loops

    async def _check_loop(self) -> None:
        while True:
            ok, detail = await check_service(self.targets, self.policy)
            self.gate.check_result(ok, detail, self.clock())
            self._flush()
            await self._apply_suspension()
            # the check's period, shorter while a failure or a return is confirmed
            await asyncio.sleep(self.gate.health.next_check_delay())

    async def _apply_suspension(self) -> None:
        """Keep the onion service out of tor exactly while the service check fails."""
        wanted = self.gate.service_failing
        if self.suspend_service is None or wanted == self.service_suspended:
            return
        try:
            await self.suspend_service(wanted)
        except (ControlError, OSError) as exc:  # tor refused, or the torrc is unreadable
            log.warning("could not %s the node's onion service in tor (tried again at the "
                        "next check): %s", "remove" if wanted else "restore", exc)
            return
        self.service_suspended = wanted
        if wanted:
            log.warning("onion service taken out of tor while the service check fails: "
                        "clients still holding an older master descriptor are refused at "
                        "this node's intro points and try another node's")
        else:
            log.info("onion service back in tor: it builds new intro points, advertised "
                     "once their circuits are established")

    async def _liveness_loop(self) -> None:
        # The controller reconnects by itself and keeps subscriptions across reconnects,
        # so a lost tor shows only as the connection state (or a new reconnect count).
        subscription = self.controller.subscribe("CIRC", "CIRC_MINOR")
        events = asyncio.create_task(self._circuit_events(subscription), name="intro-circuits")
        seen_reconnects = self.controller.reconnects
        try:
            while True:
                connected = self.controller.is_connected
                if self.gate.tor_up and (not connected
                                         or self.controller.reconnects != seen_reconnects):
                    self.gate.tor_lost("control connection lost", self.clock())
                    self._flush()
                if connected and not self.gate.tor_up:
                    seen_reconnects = self.controller.reconnects
                    # A restarted tor read its torrc: the service is in it again (the
                    # next check takes it out again while the service still fails).
                    self.service_suspended = False
                    await self._read_circuits()
                await asyncio.sleep(LIVENESS_POLL)  # polling period of the connection state
        finally:
            subscription.close()
            await cancel_and_wait(events)

    async def _read_circuits(self) -> None:
        """Tor answers (again): its established intro circuits, from circuit-status."""
        try:
            info = await self.controller.get_info("circuit-status")
        except ControlError as exc:
            log.warning("reading tor's circuits failed: %s", exc)
            return
        established: dict[str, bytes] = {}
        for line in next(iter(info.values()), "").splitlines():
            circuit = self._parse(line)
            if circuit is not None and circuit.change is CircuitChange.ESTABLISHED:
                established[circuit.circuit_id] = circuit.relay
        self.gate.tor_connected(established, self.clock())
        self._flush()

    async def _circuit_events(self, subscription: EventSubscription) -> None:
        async for event in subscription:
            try:
                circuit = parse_circuit_event(event)
            except ControlError as exc:
                log.debug("unreadable circuit event: %s", exc)
                continue
            if circuit is not None and circuit.service in (None, self.node_address) \
                    and self.gate.tor_up:
                self.gate.intro_circuit(circuit, self.clock())
                self._flush()

    def _parse(self, line: str) -> IntroCircuit | None:
        try:
            circuit = parse_circuit_line(line.strip())
        except ControlError:
            return None
        if circuit is None or circuit.service not in (None, self.node_address):
            return None
        return circuit

    # ------------------------------------------------------------------ output

    def _flush(self) -> None:
        while (event := self.gate.next_event()) is not None:
            try:
                self.on_event(event)
            except Exception:  # a logging/alert bug must not stop the filter
                log.exception("handling %s failed", event.kind)
        advertised = self.gate.advertised()
        if advertised != self.last_sent:
            self.last_sent = advertised
            self.on_sets(advertised)
