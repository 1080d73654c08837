"""The mesh's transport when WireGuard is on: WireGuard first, tor as the fallback.

Same interface as ``UdpTransport`` for the mesh driver (``send(data, address)``, and
``on_datagram(data, address)`` for what arrives), so the mesh core never knows which
path carried a datagram: peers keep their WireGuard mesh address (tunnel IP and port)
in the core whichever way their datagrams travel. Decisions are the sans-IO
``PathSelector``'s; this shell only moves frames:

* over WireGuard: one UDP socket bound to this node's tunnel address (frames.py);
  a datagram's source tunnel IP names the peer (WireGuard's allowed-ips bind it to the
  peer's key, so it cannot be forged from outside the tunnel);
* over tor: ``TorChannel`` (one stream per peer to its coordination onion).

Path changes are logged in the selector's words and handed to ``on_path_event`` (the
daemon turns them into alerts). On a switch to tor the last mesh datagram sent to
that peer is sent again over tor at once, and on the return to WireGuard over WireGuard
(see paths.py). With a ``WireGuardManager``
the interface is repaired every ``repair_interval`` seconds and the peers' handshake
ages feed the selector.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from onionmesh.aio import cancel_and_wait, drive_timers
from onionmesh.transport.frames import Frame, FrameError, FrameKind, decode_frame
from onionmesh.transport.paths import (
    FellBackToTor,
    Path,
    PathEvent,
    PathSelector,
    SendAck,
    SendProbe,
    WireGuardRestored,
)
from onionmesh.transport.tor_channel import TorChannel, TorPeer
from onionmesh.transport.udp import UdpTransport, split_address
from onionmesh.wireguard.manager import RepairReport, WireGuardManager

log = logging.getLogger(__name__)

_MAX_SLEEP = 1.0


@dataclass(frozen=True)
class LinkPeer:
    node_id: str
    address: str  # "tunnel-ip:port": the peer's mesh address over WireGuard
    tor: TorPeer | None = None


class MultipathTransport:
    def __init__(self, udp: UdpTransport, selector: PathSelector,
                 on_datagram: Callable[[bytes, str], None], *,
                 channel: TorChannel | None = None, wireguard: WireGuardManager | None = None,
                 clock: Callable[[], float] = time.time,
                 on_path_event: Callable[[PathEvent], None] | None = None,
                 repair_interval: float = 10.0) -> None:
        self.udp = udp
        self.selector = selector
        self.channel = channel
        self.wireguard = wireguard
        self._on_datagram = on_datagram
        self._clock = clock
        self._on_path_event = on_path_event
        self._repair_interval = repair_interval
        self._peers: dict[str, LinkPeer] = {}
        self._by_ip: dict[str, str] = {}
        self._by_address: dict[str, str] = {}
        self._last_mesh: dict[str, bytes] = {}
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.last_repair: RepairReport | None = None
        self.local_address = udp.local_address
        self.sent = {Path.WIREGUARD: 0, Path.TOR: 0}
        self.received = {Path.WIREGUARD: 0, Path.TOR: 0}
        self.dropped = 0

    @classmethod
    async def open(cls, listen: str, on_datagram: Callable[[bytes, str], None],
                   selector: PathSelector, **kwargs: object) -> MultipathTransport:
        holder: list[MultipathTransport] = []
        udp = await UdpTransport.open(listen, lambda data, addr: holder[0]._on_udp(data, addr))
        transport = cls(udp, selector, on_datagram, **kwargs)  # type: ignore[arg-type]
        holder.append(transport)
        return transport

    def start(self) -> None:
        self._tasks.append(asyncio.create_task(self._timer_loop(), name="paths-timers"))
        if self.wireguard is not None:
            self._tasks.append(asyncio.create_task(self._repair_loop(), name="wireguard-repair"))

    async def set_peers(self, peers: Sequence[LinkPeer]) -> None:
        self._peers = {peer.node_id: peer for peer in peers}
        self._by_address = {peer.address: peer.node_id for peer in peers}
        self._by_ip = {split_address(peer.address)[0]: peer.node_id for peer in peers}
        self.selector.set_peers(self._peers, self._clock())
        if self.channel is not None:
            await self.channel.set_peers({p.node_id: p.tor for p in peers if p.tor is not None})
        self._wake.set()

    # ---- out ----
    def send(self, data: bytes, address: str) -> bool:
        node_id = self._by_address.get(address)
        if node_id is None:
            with contextlib.suppress(ValueError):
                node_id = self._by_ip.get(split_address(address)[0])
        try:
            frame = Frame(FrameKind.MESH, data)
            if node_id is None:  # not a roster peer (a bootstrap address): WireGuard only
                return self._send_wg(frame, address)
            self._last_mesh[node_id] = data
            return self._send_frame(node_id, frame, self.selector.path_for(node_id))
        except FrameError as exc:
            self.dropped += 1
            log.warning("not sending a mesh datagram to %s: %s", address, exc)
            return False

    def _send_frame(self, node_id: str, frame: Frame, path: Path) -> bool:
        if path is Path.TOR:
            if self.channel is None or not self.channel.send(node_id, frame):
                self.dropped += 1
                return False
            self.sent[Path.TOR] += 1
            return True
        return self._send_wg(frame, self._peers[node_id].address)

    def _send_wg(self, frame: Frame, address: str) -> bool:
        ok = self.udp.send(frame.encode(), address)
        if ok:
            self.sent[Path.WIREGUARD] += 1
        return ok

    # ---- in ----
    def _on_udp(self, data: bytes, addr: str) -> None:
        try:
            frame = decode_frame(data)
            host = split_address(addr)[0]
        except (FrameError, ValueError):
            self.dropped += 1
            return
        node_id = self._by_ip.get(host)
        if node_id is not None:
            # On tor, the peer's tunnel delivering again prompts a re-probe at once
            # (paths.py); sent before the core answers this datagram.
            self.selector.wireguard_heard(node_id, self._clock())
            self._drain()
        if frame.kind is FrameKind.MESH:
            self.received[Path.WIREGUARD] += 1
            self._on_datagram(frame.payload, addr)
        elif node_id is not None:
            self._on_control(node_id, frame, Path.WIREGUARD)

    def on_tor_frame(self, node_id: str, frame: Frame) -> None:
        """TorChannel's ``on_frame``: mesh datagrams reach the core under the peer's
        WireGuard address, so the core's view of the peer does not depend on the path."""
        peer = self._peers.get(node_id)
        if peer is None:
            return
        if frame.kind is FrameKind.MESH:
            self.received[Path.TOR] += 1
            self._on_datagram(frame.payload, peer.address)
        else:
            self._on_control(node_id, frame, Path.TOR)

    def _on_control(self, node_id: str, frame: Frame, path: Path) -> None:
        if frame.kind is FrameKind.PROBE:
            self.selector.probe_received(node_id, frame.payload, path)
        elif frame.kind is FrameKind.ACK:
            self.selector.ack_received(node_id, frame.payload, path, self._clock())
        self._drain()

    # ---- selector plumbing ----
    def _drain(self) -> None:
        for action in self.selector.actions():
            kind = FrameKind.PROBE if isinstance(action, SendProbe) else FrameKind.ACK
            assert isinstance(action, SendProbe | SendAck)
            if action.node_id in self._peers:
                self._send_frame(action.node_id, Frame(kind, action.nonce), action.path)
        for event in self.selector.events():
            log.warning("%s", event.message)
            last = self._last_mesh.get(event.node_id)
            if isinstance(event, FellBackToTor) and last is not None \
                    and self.channel is not None:
                self.channel.send(event.node_id, Frame(FrameKind.MESH, last))
            elif isinstance(event, WireGuardRestored) and last is not None \
                    and event.node_id in self._peers:
                # What we last sent went over tor, which may not have delivered (a
                # restarted peer's re-created onion): again over the tunnel that does.
                self._send_wg(Frame(FrameKind.MESH, last), self._peers[event.node_id].address)
            if self._on_path_event is not None:
                try:
                    self._on_path_event(event)
                except Exception:
                    log.exception("path event handler failed")
        self._wake.set()

    async def _timer_loop(self) -> None:
        await drive_timers(self.selector.get_timer, self._handle_timer, self._clock, self._wake,
                           _MAX_SLEEP)

    def _handle_timer(self, now: float) -> None:
        self.selector.handle_timer(now)
        self._drain()

    async def _repair_loop(self) -> None:
        assert self.wireguard is not None
        while True:
            report = await self.wireguard.repair()  # handshake times are real unix time
            self.last_repair = report
            for health in report.peers:
                self.selector.handshake_seen(health.node_id, health.handshake_age, health.stale)
            await asyncio.sleep(self._repair_interval)

    # ---- status ----
    def status(self) -> dict[str, object]:
        now = self._clock()
        peers = self.selector.status(now)
        streams = self.channel.stream_status() if self.channel is not None else {}
        for node_id, view in peers.items():
            view["tor_stream"] = streams.get(node_id)
        report = self.last_repair
        return {
            "peers": peers,
            "wireguard": None if report is None else {
                "interface": self.wireguard.spec.name if self.wireguard else None,
                "backend": self.wireguard.backend.value
                if self.wireguard and self.wireguard.backend else None,
                "problems": list(report.problems),
            },
            "sent": {path.value: n for path, n in self.sent.items()},
            "received": {path.value: n for path, n in self.received.items()},
        }

    async def close(self) -> None:
        await cancel_and_wait(*self._tasks)
        self._tasks = []
        self.udp.close()
