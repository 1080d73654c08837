"""A node's join onion: where ``onionmesh join`` reaches it through tor.

An ephemeral onion service (ADD_ONION with the node's saved join onion key, so the
address a token names stays valid across restarts; ``Detach``, removed with
DEL_ONION on stop) of its own: not the coordination onion (whose streams carry
mesh frames between members only, behind client authorization) and not the
Onionbalance instance. Its virtual port maps to a unix socket in a 0700
directory. A stream carries length-prefixed frames (``frames.py``): the joiner
sends one JOIN frame holding its join request; the node answers with the JOIN
frames its ``answer`` returns (accept + roster chunks, or a refusal) and
closes. Nothing else is read: another frame kind, a second request, or nothing
within ``REQUEST_TIMEOUT`` closes the stream; at most ``MAX_STREAMS`` streams are
served at once. Whether to admit is not decided here (``JoinService`` on the
node holding the authority key; on the other members ``JoinRelayService`` passes
the request to it over the mesh: node/join_relay_service.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from onionmesh.aio import cancel_and_wait
from onionmesh.errors import OnionmeshError
from onionmesh.tor.control import TorController
from onionmesh.tor.control_protocol import ControlError
from onionmesh.transport.frames import Frame, FrameError, FrameKind, StreamDecoder, stream_encode
from onionmesh.transport.onion_socket import serve_private_socket, withdraw_onion

log = logging.getLogger(__name__)

JOIN_PORT = 7445
REQUEST_TIMEOUT = 30.0  # from a stream's start to its request
ANSWER_TIMEOUT = 60.0  # writing the answer (a slow or stalled reader)
MAX_STREAMS = 16

JoinAnswer = Callable[[bytes], Awaitable[Sequence[bytes]]]


class JoinOnionError(OnionmeshError):
    """The join onion cannot be set up (tor refused, bad key, socket path)."""


class JoinOnion:
    def __init__(self, controller: TorController, onion_key: str, socket_dir: Path,
                 answer: JoinAnswer) -> None:
        self._controller = controller
        self._onion_key = onion_key  # "ED25519-V3:<blob>"
        self._socket_path = socket_dir / "join.sock"
        self._answer = answer
        self._server: asyncio.base_events.Server | None = None
        self._streams: set[asyncio.Task[None]] = set()
        self.service_id: str | None = None
        self.answered = 0
        self.rejected = 0

    async def start(self, service_id: str) -> str:
        """Serve; ``service_id`` (56 base32) is the key's address, removed first in case a
        crashed run left it in a tor that kept running."""
        self._server = await serve_private_socket(self._socket_path, self._serve)
        with contextlib.suppress(ControlError, OnionmeshError):
            await self._controller.del_onion(service_id)
        try:
            result = await self._controller.add_onion(
                self._onion_key, [f"{JOIN_PORT},unix:{self._socket_path}"], ["Detach"])
        except ControlError as exc:
            await self.close()
            raise JoinOnionError(f"tor refused the join onion: {exc}") from None
        self.service_id = result.service_id
        log.info("join onion %s.onion up", result.service_id)
        return result.service_id

    async def close(self) -> None:
        await cancel_and_wait(*self._streams)
        await withdraw_onion(self._controller, self._server, self.service_id, self._socket_path)
        self._server, self.service_id = None, None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is None or len(self._streams) >= MAX_STREAMS:
            self.rejected += 1
            writer.close()
            return
        self._streams.add(task)
        try:
            request = await self._read_request(reader)
            if request is None:
                self.rejected += 1
                return
            replies = await self._answer(request)
            async with asyncio.timeout(ANSWER_TIMEOUT):
                for reply in replies:
                    writer.write(stream_encode(Frame(FrameKind.JOIN, reply)))
                await writer.drain()
            self.answered += 1
        except (OSError, TimeoutError, FrameError) as exc:
            log.info("join stream closed: %s", exc or type(exc).__name__)
        except asyncio.CancelledError:
            pass  # only close() cancels us; ending normally keeps 3.11's server quiet
        finally:
            writer.close()
            self._streams.discard(task)

    @staticmethod
    async def _read_request(reader: asyncio.StreamReader) -> bytes | None:
        decoder = StreamDecoder()
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                while True:
                    data = await reader.read(4096)
                    if not data:
                        return None
                    frames = decoder.feed(data)
                    if frames:
                        first = frames[0]
                        if first.kind is not FrameKind.JOIN or len(frames) > 1:
                            return None
                        return first.payload
        except (TimeoutError, FrameError):
            return None
