"""UDP transport for mesh datagrams.

The mesh core speaks in opaque ``"host:port"`` address strings; this shell
turns them into socket addresses and back. It binds one socket and sends from
it, so a peer sees our listen port as the source and can answer to it. Sending
never raises into the caller: an unreachable peer is the core's business
(missed heartbeats), not an exception.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Callable

from onionmesh.errors import OnionmeshError

log = logging.getLogger(__name__)

MAX_DATAGRAM = 65507


class TransportError(OnionmeshError):
    """A transport address is malformed or the socket cannot be opened."""


def split_address(address: str) -> tuple[str, int]:
    """``"10.0.0.1:7443"`` or ``"[fd00::1]:7443"`` -> (host, port); names are refused."""
    host, sep, port_text = address.rpartition(":")
    if not sep or not host or not port_text.isdigit() or not 0 <= int(port_text) < 65536:
        raise TransportError(f"transport address must be host:port, got {address!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        ipaddress.ip_address(host)
    except ValueError:
        # A name would be resolved by sendto() itself: blocking DNS in the event loop, for
        # an address any member can gossip. Peers are IP literals (config check says so).
        raise TransportError(f"transport address must be an IP address, got {address!r}") \
            from None
    return host, int(port_text)


def join_address(host: str, port: int) -> str:
    try:
        if ipaddress.ip_address(host).version == 6:
            return f"[{host}]:{port}"
    except ValueError:
        pass
    return f"{host}:{port}"


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, on_datagram: Callable[[bytes, str], None]) -> None:
        self.on_datagram = on_datagram

    def datagram_received(self, data: bytes, addr: tuple[str, int] | tuple) -> None:  # type: ignore[override]
        self.on_datagram(data, join_address(addr[0], addr[1]))

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable and the like: the peer is down; heartbeats will tell.
        log.debug("udp error: %s", exc)


class UdpTransport:
    """One bound UDP socket; ``send`` is fire-and-forget."""

    def __init__(self, transport: asyncio.DatagramTransport, local_address: str) -> None:
        self._transport = transport
        self.local_address = local_address
        self.sent = 0
        self.send_errors = 0

    @classmethod
    async def open(cls, listen: str, on_datagram: Callable[[bytes, str], None]) -> UdpTransport:
        host, port = split_address(listen)
        loop = asyncio.get_running_loop()
        try:
            transport, _ = await loop.create_datagram_endpoint(
                lambda: _Protocol(on_datagram), local_addr=(host, port)
            )
        except OSError as exc:
            raise TransportError(f"cannot listen on udp {listen}: {exc.strerror}") from None
        sockname = transport.get_extra_info("sockname")
        return cls(transport, join_address(sockname[0], sockname[1]))

    def send(self, data: bytes, address: str) -> bool:
        if len(data) > MAX_DATAGRAM:
            self.send_errors += 1
            log.warning("not sending a %d-byte datagram to %s: over the UDP limit", len(data),
                        address)
            return False
        try:
            host, port = split_address(address)
            self._transport.sendto(data, (host, port))
        except (OSError, TransportError) as exc:
            self.send_errors += 1
            log.debug("udp send to %s failed: %s", address, exc)
            return False
        self.sent += 1
        return True

    def close(self) -> None:
        self._transport.close()
