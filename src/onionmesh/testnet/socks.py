"""A small SOCKS5 client and HTTP/1.0 GET, for fetching onion services through a test client.

Written here rather than pulling in a SOCKS library because only one narrow path is needed:
CONNECT by domain name (ATYP 3) so tor itself resolves the ``.onion`` name, no authentication,
and the reply code surfaced as a typed :class:`SocksError` (with ExtendedErrors, 0xF0 means
"descriptor not found", 0xF2/0xF3 introduction/rendezvous failure). Blocking sockets with a
deadline; async callers use :func:`http_get_via_socks_async`.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from dataclasses import dataclass, field

from onionmesh.testnet.errors import SocksError, TestnetError

MAX_BODY = 4 * 1024 * 1024


@dataclass(frozen=True)
class HttpResponse:
    """Status, headers (lower-case names) and body of an HTTP response."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


class _Deadline:
    def __init__(self, timeout: float) -> None:
        self.end = time.monotonic() + timeout
        self.timeout = timeout

    def remaining(self) -> float:
        left = self.end - time.monotonic()
        if left <= 0:
            raise SocksError(f"SOCKS/HTTP exchange exceeded {self.timeout:.0f} s")
        return left


def _recv_exact(sock: socket.socket, n: int, deadline: _Deadline) -> bytes:
    data = b""
    while len(data) < n:
        sock.settimeout(deadline.remaining())
        try:
            chunk = sock.recv(n - len(data))
        except TimeoutError as exc:
            raise SocksError(f"timed out after {deadline.timeout:.0f} s reading from tor") from exc
        if not chunk:
            raise SocksError("tor closed the SOCKS connection early")
        data += chunk
    return data


def socks5_connect(
    socks_port: int, host: str, port: int, *, timeout: float, socks_host: str = "127.0.0.1",
    isolation: str | None = None,
) -> socket.socket:
    """Open a stream to ``host:port`` through tor's SOCKS5 port; tor resolves ``host``.

    ``isolation``: SOCKS username/password credentials (RFC 1929) that tor's default
    ``IsolateSOCKSAuth`` turns into a circuit of their own, as Tor Browser does per
    site; tor keeps its descriptor cache (unlike NEWNYM).
    """
    encoded = host.encode("idna") if host.isascii() else b""
    if not encoded or len(encoded) > 255:
        raise TestnetError(f"invalid host name for SOCKS5: {host!r}")
    if not 0 < port < 65536:
        raise TestnetError(f"invalid destination port {port!r}")
    deadline = _Deadline(timeout)
    try:
        sock = socket.create_connection((socks_host, socks_port), timeout=deadline.remaining())
    except OSError as exc:
        raise SocksError(f"cannot connect to SOCKS port {socks_host}:{socks_port}: {exc}") from exc
    try:
        sock.settimeout(deadline.remaining())
        if isolation is None:
            sock.sendall(b"\x05\x01\x00")  # version 5, one method: no authentication
        else:
            sock.sendall(b"\x05\x01\x02")  # version 5, one method: username/password
        version, method = _recv_exact(sock, 2, deadline)
        if version != 5 or method != (0 if isolation is None else 2):
            raise SocksError(f"SOCKS server refused our method (version {version}, "
                             f"method {method})")
        if isolation is not None:
            user = isolation.encode()[:255]
            sock.sendall(b"\x01" + bytes([len(user)]) + user + b"\x01x")
            if _recv_exact(sock, 2, deadline)[1] != 0:
                raise SocksError("SOCKS server refused the isolation credentials")
        request = b"\x05\x01\x00\x03" + bytes([len(encoded)]) + encoded + struct.pack(">H", port)
        sock.sendall(request)
        head = _recv_exact(sock, 4, deadline)
        if head[0] != 5:
            raise SocksError(f"bad SOCKS reply version {head[0]}")
        code = head[1]
        if code != 0:
            meaning = SocksError.MEANINGS.get(code, "unknown error")
            raise SocksError(f"SOCKS5 reply 0x{code:02X} ({meaning}) for {host}:{port}", code)
        atyp = head[3]
        if atyp == 1:
            _recv_exact(sock, 4 + 2, deadline)
        elif atyp == 4:
            _recv_exact(sock, 16 + 2, deadline)
        elif atyp == 3:
            length = _recv_exact(sock, 1, deadline)[0]
            _recv_exact(sock, length + 2, deadline)
        else:
            raise SocksError(f"bad SOCKS reply address type {atyp}")
        return sock
    except BaseException:
        sock.close()
        raise


def parse_http_response(raw: bytes) -> HttpResponse:
    """Parse a complete HTTP/1.x response read until the server closed the connection."""
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep:
        raise TestnetError("HTTP response has no end of headers")
    lines = head.decode("iso-8859-1").split("\r\n")
    status_parts = lines[0].split(" ", 2)
    if len(status_parts) < 2 or not status_parts[0].startswith("HTTP/"):
        raise TestnetError(f"bad HTTP status line {lines[0][:80]!r}")
    try:
        status = int(status_parts[1])
    except ValueError as exc:
        raise TestnetError(f"bad HTTP status code in {lines[0][:80]!r}") from exc
    headers = {}
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if colon:
            headers[name.strip().lower()] = value.strip()
    return HttpResponse(status=status, headers=headers, body=body)


def http_get_via_socks(
    socks_port: int, onion_host: str, path: str = "/", timeout: float = 30.0, *, port: int = 80,
    isolation: str | None = None,
) -> HttpResponse:
    """HTTP/1.0 GET ``http://onion_host:port/path`` through tor; raises :class:`SocksError`."""
    if not path.startswith("/") or any(c in path for c in "\r\n "):
        raise TestnetError(f"invalid HTTP path {path!r}")
    deadline = _Deadline(timeout)
    sock = socks5_connect(socks_port, onion_host, port, timeout=deadline.remaining(),
                          isolation=isolation)
    with sock:
        request = f"GET {path} HTTP/1.0\r\nHost: {onion_host}\r\nConnection: close\r\n\r\n"
        sock.settimeout(deadline.remaining())
        sock.sendall(request.encode("ascii"))
        chunks = []
        total = 0
        while True:
            sock.settimeout(deadline.remaining())
            try:
                chunk = sock.recv(65536)
            except TimeoutError as exc:
                raise SocksError(f"HTTP response timed out after {timeout:.0f} s") from exc
            if not chunk:
                break
            total += len(chunk)
            if total > MAX_BODY:
                raise TestnetError(f"HTTP response larger than {MAX_BODY} bytes")
            chunks.append(chunk)
    return parse_http_response(b"".join(chunks))


async def http_get_via_socks_async(
    socks_port: int, onion_host: str, path: str = "/", timeout: float = 30.0, *, port: int = 80
) -> HttpResponse:
    """:func:`http_get_via_socks` in a worker thread, for async tests."""
    return await asyncio.to_thread(
        http_get_via_socks, socks_port, onion_host, path, timeout, port=port
    )
