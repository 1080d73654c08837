"""Carrying the join exchange over UDP, for ``onionmesh join`` (the joiner's side).

The exchange itself is the pure ``mesh.join.Joiner``; this only moves its bytes:
send the request to the sponsor's coordination address, feed every datagram
that comes back from that address, resend the same request every
``resend_interval`` seconds until the answer is complete or ``timeout`` passes.
Another carrier (the tor channel) drives the same ``Joiner`` the same way.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import time

from onionmesh.mesh.join import MAX_JOIN_DATAGRAM, Joiner, JoinError, JoinResult
from onionmesh.node.errors import NodeError


class JoinFailed(NodeError):
    """The exchange did not complete: refused, or no answer in time."""


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    ipaddress.ip_address(host)  # an IP literal: no DNS
    return host, int(port)


def join_over_udp(joiner: Joiner, sponsor_address: str, *, timeout: float = 30.0,
                  resend_interval: float = 1.0) -> JoinResult:
    """Run the exchange with the sponsor at ``sponsor_address`` (``IP:port``)."""
    host, port = _split(sponsor_address)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    deadline = time.monotonic() + timeout
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.connect((host, port))  # only datagrams from the sponsor's address arrive
        next_send = 0.0
        while True:
            now = time.monotonic()
            if now >= deadline:
                raise JoinFailed(f"no complete answer from the sponsor at {sponsor_address} "
                                 f"within {timeout:g} s (is its `onionmesh run` running?)")
            if now >= next_send:
                # e.g. ECONNREFUSED from an earlier datagram: try again at the next resend
                with contextlib.suppress(OSError):
                    sock.send(joiner.request())
                next_send = now + resend_interval
            sock.settimeout(max(0.01, min(next_send, deadline) - now))
            try:
                data = sock.recv(MAX_JOIN_DATAGRAM + 1)
            except (TimeoutError, ConnectionRefusedError):
                continue
            try:
                result = joiner.receive(data, time.time())
            except JoinError as exc:
                if exc.reason == "refused":
                    raise JoinFailed(
                        "the sponsor refused the join (the token is unknown, used or expired, "
                        "or the node id is taken)"
                    ) from None
                raise JoinFailed(f"the sponsor's answer is not valid ({exc.reason})") from None
            if result is not None:
                return result
