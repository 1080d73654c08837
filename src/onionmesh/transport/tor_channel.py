"""Mesh frames over tor: each node's coordination onion, and one stream per peer.

The coordination onion is an ephemeral service (ADD_ONION with the node's saved
coordination key, so its address is stable) of its own: it is not the node's
Onionbalance instance service and never appears in the master descriptor. It uses
restricted discovery (client authorization, ClientAuthV3): only the x25519 keys of
roster members may decrypt its descriptor, so nobody else can even reach it. Its
virtual port maps to a unix socket in a private directory, so no local user can
inject frames past tor either.

Outbound, each peer gets one stream to its coordination onion through the node's
tor SOCKS port, opened at once (kept warm, so a fallback does not wait for a circuit)
and re-opened with exponential backoff and jitter when it breaks; each attempt uses
fresh SOCKS credentials, i.e. a fresh circuit (tor's IsolateSOCKSAuth). The first
frame says who we are (HELLO); every later frame is length-prefixed (frames.py).
Inbound frames are handed to ``on_frame(node_id, frame)`` only from HELLOs naming a
current peer. Mesh datagrams keep their own authentication (the mesh core checks
them); the channel only carries them.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import logging
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from onionmesh.aio import cancel_and_wait
from onionmesh.crypto.keys import Ed25519Identity
from onionmesh.errors import OnionmeshError
from onionmesh.tor.control import TorController
from onionmesh.tor.control_protocol import ControlError
from onionmesh.transport.frames import Frame, FrameError, FrameKind, StreamDecoder, stream_encode
from onionmesh.transport.onion_socket import serve_private_socket, withdraw_onion
from onionmesh.transport.socks import SocksFailure, socks_open
from onionmesh.wireguard.keys import decode_key, public_key_of

log = logging.getLogger(__name__)

COORD_PORT = 7444
HELLO_TIMEOUT = 30.0
QUEUE_LIMIT = 256  # frames waiting per peer; the oldest go first (heartbeats are periodic)
_attempts = itertools.count(1)


class TorChannelError(OnionmeshError):
    """The coordination onion cannot be set up (tor refused, bad key, socket path)."""


@dataclass(frozen=True)
class TorPeer:
    node_id: str
    onion: str  # service id: 56 base32 characters, no ".onion"
    client_key: str  # the peer's x25519 public key (base64, as WireGuard prints it)


def coordination_key(identity: Ed25519Identity) -> tuple[str, str]:
    """(ADD_ONION key argument, service id) for a coordination onion key."""
    blob = base64.b64encode(identity.expanded).decode("ascii")
    return f"ED25519-V3:{blob}", identity.onion_address.removesuffix(".onion")


def _service_id_of(onion_key: str) -> str:
    _, _, blob = onion_key.partition(":")
    try:
        identity = Ed25519Identity.from_expanded(base64.b64decode(blob, validate=True))
    except (ValueError, OnionmeshError):
        raise TorChannelError("the coordination onion key is not an ED25519-V3 key") from None
    return identity.onion_address.removesuffix(".onion")


def client_auth_public(public_b64: str) -> str:
    """x25519 public key, base64 (WireGuard form) -> base32 without padding (tor's form)."""
    raw = decode_key(public_b64, "client authorization key")
    return base64.b32encode(raw).decode("ascii").rstrip("=")


class _Outbound:
    def __init__(self, peer: TorPeer) -> None:
        self.peer = peer
        self.queue: asyncio.Queue[Frame] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None
        self.connected = False
        self.connects = 0
        self.failures = 0
        self.last_error: str | None = None


class TorChannel:
    def __init__(self, controller: TorController, socks: tuple[str, int] | str, node_id: str,
                 *, socket_dir: Path, onion_key: str | None,
                 client_private_b64: str, on_frame: Callable[[str, Frame], None],
                 stream_timeout: float = 60.0, backoff_cap: float = 30.0,
                 rng: random.Random | None = None) -> None:
        self._controller = controller
        self._socks = socks
        self.node_id = node_id
        self._socket_path = socket_dir / "coord.sock"
        self.onion_key = onion_key  # "ED25519-V3:<blob>"; made on first start when None
        self._client_private = client_private_b64
        self._on_frame = on_frame
        self._stream_timeout = stream_timeout
        self._backoff_cap = backoff_cap
        self._rng = rng or random.Random()
        self.service_id: str | None = None
        self._server: asyncio.base_events.Server | None = None
        self._peers: dict[str, TorPeer] = {}
        self._out: dict[str, _Outbound] = {}
        self._inbound: set[asyncio.Task[None]] = set()
        self._authorized: tuple[str, ...] = ()
        self.frames_in = 0
        self.frames_out = 0

    # ---- lifecycle ----
    async def start(self, peers: Mapping[str, TorPeer]) -> str:
        self._server = await serve_private_socket(self._socket_path, self._serve)
        self._peers = dict(peers)
        await self._publish()
        await self._authorize_clients()
        for peer in self._peers.values():
            self._outbound(peer)
        return self.service_id or ""

    async def _publish(self) -> None:
        # Our own key is always on the list: a node without peers yet still gets an
        # address (for its roster entry) without ever being reachable by anyone else.
        authorized = tuple(sorted({client_auth_public(p.client_key)
                                   for p in self._peers.values()}
                                  | {client_auth_public(public_key_of(self._client_private))}))
        if self.service_id is not None:
            if authorized == self._authorized:
                return
            with contextlib.suppress(ControlError):
                await self._controller.del_onion(self.service_id)
        elif self.onion_key is not None:
            # A detached service of ours may outlive a crash of this process in a tor
            # that kept running: remove it, or ADD_ONION fails with a collision.
            with contextlib.suppress(ControlError, OnionmeshError):
                await self._controller.del_onion(_service_id_of(self.onion_key))
        key = self.onion_key or "NEW:ED25519-V3"
        try:
            result = await self._controller.add_onion(
                key, [f"{COORD_PORT},unix:{self._socket_path}"], ["Detach", "V3Auth"],
                client_auth_v3=authorized)
        except ControlError as exc:
            raise TorChannelError(f"tor refused the coordination onion: {exc}") from None
        if self.onion_key is None and result.private_key:
            self.onion_key = result.private_key  # the caller persists it (0600)
        self.service_id = result.service_id
        self._authorized = authorized
        log.info("coordination onion %s.onion up, %d authorized peers", result.service_id,
                 len(authorized))

    async def _authorize_clients(self) -> None:
        for peer in self._peers.values():
            try:
                await self._controller.onion_client_auth_add(peer.onion, self._client_private)
            except ControlError as exc:
                log.warning("tor refused client authorization for %s's coordination onion: %s",
                            peer.node_id, exc)

    async def set_peers(self, peers: Mapping[str, TorPeer]) -> None:
        """The roster changed: re-publish the onion's client list, open/close streams."""
        old = self._peers
        self._peers = dict(peers)
        await self._publish()
        await self._authorize_clients()
        for node_id in set(old) - set(peers):
            out = self._out.pop(node_id, None)
            if out is not None:
                await cancel_and_wait(out.task)
            with contextlib.suppress(ControlError):
                await self._controller.onion_client_auth_remove(old[node_id].onion)
        for node_id, peer in peers.items():
            current = self._out.get(node_id)
            if current is not None and current.peer != peer:
                await cancel_and_wait(current.task)
                del self._out[node_id]
            self._outbound(peer)

    async def close(self) -> None:
        await cancel_and_wait(*(out.task for out in self._out.values()), *self._inbound)
        self._out.clear()
        await withdraw_onion(self._controller, self._server, self.service_id, self._socket_path)
        self._server, self.service_id = None, None

    # ---- outbound ----
    def _outbound(self, peer: TorPeer) -> _Outbound:
        out = self._out.get(peer.node_id)
        if out is None:
            out = self._out[peer.node_id] = _Outbound(peer)
            out.task = asyncio.create_task(self._writer(out), name=f"tor-stream-{peer.node_id}")
        return out

    def send(self, node_id: str, frame: Frame) -> bool:
        out = self._out.get(node_id)
        if out is None:
            return False
        if out.queue.qsize() >= QUEUE_LIMIT:
            out.queue.get_nowait()
        out.queue.put_nowait(frame)
        return True

    def stream_status(self) -> dict[str, dict[str, object]]:
        return {node_id: {"connected": out.connected, "connects": out.connects,
                          "failures": out.failures, "last_error": out.last_error}
                for node_id, out in sorted(self._out.items())}

    async def _writer(self, out: _Outbound) -> None:
        delay = 0.0
        while True:
            if delay:
                await asyncio.sleep(delay + self._rng.uniform(0, delay * 0.25))
            # Fresh credentials per attempt: tor builds a fresh circuit for it.
            user = f"onionmesh-{self.node_id}-{out.peer.node_id}-{next(_attempts)}"
            try:
                _, writer = await socks_open(self._socks, f"{out.peer.onion}.onion", COORD_PORT,
                                             username=user, timeout=self._stream_timeout)
            except SocksFailure as exc:
                out.failures += 1
                out.last_error = str(exc)
                log.info("tor stream to %s: %s", out.peer.node_id, exc)
                delay = min(self._backoff_cap, max(1.0, delay * 2))
                continue
            out.connected = True
            out.connects += 1
            delay = 0.0
            log.info("tor stream to %s open", out.peer.node_id)
            try:
                writer.write(stream_encode(Frame(FrameKind.HELLO, self.node_id.encode())))
                while True:
                    frame = await out.queue.get()
                    writer.write(stream_encode(frame))
                    async with asyncio.timeout(self._stream_timeout):
                        await writer.drain()
                    self.frames_out += 1
            except (OSError, TimeoutError, FrameError) as exc:
                out.last_error = f"stream broke: {exc or type(exc).__name__}"
                log.info("tor stream to %s broke: %s", out.peer.node_id, out.last_error)
                delay = 1.0
            finally:
                out.connected = False
                writer.close()

    # ---- inbound ----
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._inbound.add(task)
        decoder = StreamDecoder()
        peer: str | None = None
        try:
            async with asyncio.timeout(HELLO_TIMEOUT):
                while peer is None:
                    data = await reader.read(4096)
                    if not data:
                        return
                    frames = decoder.feed(data)
                    if frames:
                        first = frames[0]
                        if first.kind is not FrameKind.HELLO:
                            return
                        peer = first.payload.decode("utf-8", "replace")
                        if peer not in self._peers:
                            log.warning("tor stream from unknown node %r closed", peer[:64])
                            return
                        self._deliver(peer, frames[1:])
            while True:
                data = await reader.read(65536)
                if not data:
                    return
                self._deliver(peer, decoder.feed(data))
        except (FrameError, TimeoutError, OSError) as exc:
            log.info("tor stream from %s closed: %s", peer or "?", exc)
        except asyncio.CancelledError:
            # Only close() cancels us. Ending normally: Python 3.11's stream server
            # logs a cancelled handler task as an ERROR "Exception in callback".
            pass
        finally:
            writer.close()
            if task is not None:
                self._inbound.discard(task)

    def _deliver(self, peer: str, frames: list[Frame]) -> None:
        for frame in frames:
            if frame.kind is FrameKind.HELLO or peer not in self._peers:
                continue
            self.frames_in += 1
            try:
                self._on_frame(peer, frame)
            except Exception:  # a bug in the consumer must not kill the stream
                log.exception("handling a tor frame from %s failed", peer)
