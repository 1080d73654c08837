"""One check of the node's own service: every ``HiddenServicePort`` target, over I/O.

A target is what tor forwards a virtual port to (``[service] ports``):
``127.0.0.1:8080``, ``[::1]:80``, a bare port (tor's default host 127.0.0.1)
or ``unix:/path``. The TCP check connects; the HTTP check sends one
``GET <path>`` and compares the status code. The node is healthy only when
every target answers. Decisions (how many failures withdraw the node) live in
``onionmesh.node.service_health``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Sequence
from dataclasses import dataclass

from onionmesh.config import HealthCheck
from onionmesh.node.service_health import CheckPolicy

_MAX_STATUS_LINE = 1024


@dataclass(frozen=True)
class Target:
    """Where tor sends one virtual port."""

    host: str | None  # None for a unix socket
    port: int
    path: str | None = None  # unix socket path

    def __str__(self) -> str:
        if self.path is not None:
            return f"unix:{self.path}"
        return f"[{self.host}]:{self.port}" if self.host and ":" in self.host \
            else f"{self.host}:{self.port}"


def service_targets(port_mappings: Sequence[str]) -> list[Target]:
    """The distinct targets of ``[service] ports`` (``"VIRTPORT [TARGET]"``), in order."""
    targets: list[Target] = []
    for mapping in port_mappings:
        parts = mapping.split()
        target = parts[1] if len(parts) > 1 else parts[0]
        if target.startswith("unix:"):
            found = Target(None, 0, target.removeprefix("unix:").strip('"'))
        else:
            host, sep, port = target.rpartition(":")
            if not sep:
                host, port = "127.0.0.1", target
            found = Target(host.strip("[]"), int(port))
        if found not in targets:
            targets.append(found)
    return targets


async def _open(target: Target) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    if target.path is not None:
        return await asyncio.open_unix_connection(target.path)
    return await asyncio.open_connection(target.host, target.port)


async def probe_target(target: Target, policy: CheckPolicy) -> str | None:
    """None when ``target`` passes the check, else what went wrong (one line)."""
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(policy.timeout):
            reader, writer = await _open(target)
            if policy.kind is HealthCheck.HTTP:
                host = "localhost" if target.host is None else str(target)
                writer.write(
                    f"GET {policy.http_path} HTTP/1.1\r\nHost: {host}\r\n"
                    "User-Agent: onionmesh-health\r\nConnection: close\r\n\r\n".encode("ascii")
                )
                await writer.drain()
                line = await reader.readline()
                parts = line[:_MAX_STATUS_LINE].decode("latin-1").split()
                if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
                    return f"{target}: no HTTP status line"
                if int(parts[1]) != policy.http_status:
                    return f"{target}: HTTP {parts[1]}, expected {policy.http_status}"
    except TimeoutError:
        return f"{target}: no answer within {policy.timeout:g} s"
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else (str(exc) or type(exc).__name__)
        return f"{target}: {reason}"
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
    return None


async def check_service(targets: Sequence[Target], policy: CheckPolicy) -> tuple[bool, str]:
    """Probe every target at once; (all passed, a one-line summary)."""
    if policy.kind is HealthCheck.NONE or not targets:
        return True, "no check"
    problems = [p for p in await asyncio.gather(*(probe_target(t, policy) for t in targets))
                if p is not None]
    if problems:
        return False, "; ".join(problems)
    return True, f"{policy.kind.value} check of {', '.join(map(str, targets))} passed"
