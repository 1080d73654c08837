"""The transport half of the control client: one connection and event subscriptions.

``ControlConnection`` owns a stream pair and its single reader task: lines are
assembled into replies (control_protocol), 650 events are handed to a
callback, and every other reply completes the oldest waiting command (tor
answers in order). ``EventSubscription`` is the bounded per-subscriber queue
that the reader fills without ever blocking (drop-oldest, counted).
TorController in :mod:`onionmesh.tor.control` builds on both.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence

from onionmesh.tor.control_protocol import (
    MAX_LINE_CHARS,
    ControlArgumentError,
    ControlClosed,
    ControlError,
    ControlEvent,
    ControlProtocolError,
    ControlTimeout,
    Reply,
    ReplyAssembler,
    event_from_reply,
    is_event,
)

# Log under the public module's name so one logger covers the whole client.
log = logging.getLogger("onionmesh.tor.control")

_END = object()  # queue sentinel: the subscription is over


class EventSubscription(AsyncIterator[ControlEvent]):
    """An async iterator over events of some types (all types if none given).

    Registered when created (not at first iteration), so no event emitted
    after ``subscribe()`` returns is missed. Iteration ends when the
    controller is closed; it raises ControlClosed if the connection is lost
    and the controller does not reconnect. Use ``close()`` (or ``async with``)
    to unsubscribe.
    """

    def __init__(
        self,
        types: Sequence[str],
        maxsize: int,
        unsubscribe: Callable[[EventSubscription], None],
    ) -> None:
        if maxsize < 1:
            raise ControlArgumentError("subscription maxsize must be at least 1")
        self._unsubscribe = unsubscribe
        self.types = frozenset(types)
        self._queue: asyncio.Queue[object] = asyncio.Queue(maxsize)
        self.dropped = 0
        self._finished = False

    def wants(self, event_type: str) -> bool:
        """True if this subscription takes events of that type."""
        return not self.types or event_type in self.types

    def _push(self, item: object) -> None:
        # Called from the reader task: must never block, so drop the oldest.
        if self._queue.full():
            with contextlib.suppress(asyncio.QueueEmpty):
                self._queue.get_nowait()
            self.dropped += 1
            if self.dropped & (self.dropped - 1) == 0:
                log.warning(
                    "event subscriber %s is slow: dropped %d oldest event(s) so far",
                    ",".join(sorted(self.types)) or "*",
                    self.dropped,
                )
        self._queue.put_nowait(item)

    def _finish(self, error: ControlError | None) -> None:
        if not self._finished:
            self._finished = True
            self._push(error if error is not None else _END)

    def __aiter__(self) -> EventSubscription:
        return self

    async def __anext__(self) -> ControlEvent:
        item = await self._queue.get()
        if isinstance(item, ControlEvent):
            return item
        # Re-queue the terminator so repeated iteration keeps ending.
        self._queue.put_nowait(item)
        if isinstance(item, ControlError):
            raise item
        raise StopAsyncIteration

    def get_nowait(self) -> ControlEvent | None:
        """Return a queued event without waiting, or None."""
        try:
            item = self._queue.get_nowait()
        except asyncio.QueueEmpty:
            return None
        if isinstance(item, ControlEvent):
            return item
        self._queue.put_nowait(item)
        return None

    def close(self) -> None:
        """Unsubscribe; iteration ends once the queue is drained."""
        self._unsubscribe(self)
        self._finish(None)

    async def __aenter__(self) -> EventSubscription:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


class ControlConnection:
    """One authenticated-or-not transport with its reader task and FIFO of waiters."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        on_event: Callable[[ControlEvent], None],
        on_lost: Callable[[ControlConnection, ControlError], None],
        name: str,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._on_event = on_event
        self._on_lost = on_lost
        self.name = name
        self._pending: deque[asyncio.Future[Reply]] = deque()
        self._write_lock = asyncio.Lock()
        self.closed = False
        self.close_reason: ControlError | None = None
        self._task = asyncio.create_task(self._read_loop(), name=f"tor-control-reader {name}")

    async def send(self, payload: bytes, label: str, timeout: float) -> Reply:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Reply] = loop.create_future()
        written = False
        try:
            async with asyncio.timeout(timeout):
                async with self._write_lock:
                    if self.closed:
                        raise ControlClosed(f"{label}: control connection is closed "
                                            f"({self.close_reason})")
                    # Appending and writing under one lock keeps FIFO == wire order.
                    self._pending.append(fut)
                    written = True
                    log.debug("-> %s", label)
                    self._writer.write(payload)
                    await self._writer.drain()
                return await fut
        except TimeoutError:
            if written:
                self.abort(ControlClosed(f"connection dropped: {label} got no reply "
                                         f"within {timeout:g} s"))
            raise ControlTimeout(f"{label}: no reply within {timeout:g} s") from None
        except (ConnectionError, OSError) as exc:
            self.abort(ControlClosed(f"write failed: {exc.__class__.__name__}"))
            raise ControlClosed(f"{label}: control connection lost while sending") from None

    async def _read_loop(self) -> None:
        asm = ReplyAssembler()
        reason: ControlError
        try:
            while True:
                raw = await self._reader.readuntil(b"\n")
                line = raw[:-2] if raw.endswith(b"\r\n") else raw[:-1]
                reply = asm.feed(line.decode("utf-8", "replace"))
                if reply is None:
                    continue
                if is_event(reply):
                    self._deliver_event(reply)
                    continue
                if not self._pending:
                    raise ControlProtocolError(
                        f"reply {reply.status} {reply.text[:40]!r} arrived with no command waiting"
                    )
                fut = self._pending.popleft()
                if not fut.done():
                    fut.set_result(reply)
                log.debug("<- %d (%d line(s))", reply.status, len(reply.lines))
        except asyncio.IncompleteReadError:
            reason = ControlClosed("tor closed the control connection")
        except asyncio.LimitOverrunError:
            reason = ControlProtocolError(f"reply line longer than {MAX_LINE_CHARS} bytes")
        except ControlProtocolError as exc:
            reason = exc
        except (ConnectionError, OSError) as exc:
            reason = ControlClosed(f"control connection error: {exc.__class__.__name__}")
        except asyncio.CancelledError:
            self._fail(self.close_reason or ControlClosed("control connection closed"))
            raise
        except Exception as exc:  # a bug must not leave waiters hanging forever
            log.exception("control reader for %s failed", self.name)
            reason = ControlClosed(f"control reader failed: {exc.__class__.__name__}")
        self._fail(reason)

    def _deliver_event(self, reply: Reply) -> None:
        try:
            event = event_from_reply(reply)
        except ControlProtocolError as exc:
            log.warning("ignoring malformed event: %s", exc)
            return
        self._on_event(event)

    def _fail(self, reason: ControlError) -> None:
        if self.closed:
            return
        self.closed = True
        self.close_reason = reason
        if isinstance(reason, ControlProtocolError):
            log.warning("control connection %s: protocol error: %s", self.name, reason)
        else:
            log.info("control connection %s closed: %s", self.name, reason)
        first = True
        while self._pending:
            fut = self._pending.popleft()
            if not fut.done():
                # The oldest waiter's reply is the one that was malformed.
                exc: ControlError = (
                    reason
                    if first and isinstance(reason, ControlProtocolError)
                    else ControlClosed(f"connection lost before the reply: {reason}")
                )
                fut.set_exception(exc)
                fut.exception()  # mark retrieved: a cancelled caller must not warn
            first = False
        self._writer.close()
        self._on_lost(self, reason)

    def abort(self, reason: ControlError) -> None:
        """Close at once, failing every waiter with ControlClosed."""
        self._fail(reason)
        if not self._task.done() and self._task is not asyncio.current_task():
            self._task.cancel()

    async def aclose(self) -> None:
        self.abort(ControlClosed("closed by the client"))
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._task
        with contextlib.suppress(Exception):
            await self._writer.wait_closed()
