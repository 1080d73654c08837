"""The local status socket behind ``onionmesh status``.

A unix socket (mode 0600, in the node's state directory) answers one JSON
document per connection. It is local-only on purpose: the cluster view names
the node addresses, which stay private to the cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from onionmesh.errors import OnionmeshError


class StatusUnavailable(OnionmeshError):
    """No daemon answers on the status socket, or it answered garbage."""


class StatusServer:
    """Serves ``snapshot()`` as JSON to every connection."""

    def __init__(self, path: Path, snapshot: Callable[[], Mapping[str, Any]]) -> None:
        self.path = path
        self.snapshot = snapshot
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # a stale socket from a crashed run
        old_umask = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(self._serve, path=str(self.path))
        finally:
            os.umask(old_umask)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            body = json.dumps(self.snapshot(), default=str, sort_keys=True).encode()
            writer.write(body + b"\n")
            await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def query_status(path: Path, timeout: float = 5.0) -> dict[str, Any]:
    """Blocking client for the CLI: connect, read the JSON document."""
    chunks = []
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(path))
            while chunk := sock.recv(65536):
                chunks.append(chunk)
    except FileNotFoundError:
        raise StatusUnavailable(
            f"no status socket at {path}: is `onionmesh run` running?"
        ) from None
    except OSError as exc:
        raise StatusUnavailable(f"status socket {path}: {exc.strerror or exc}") from None
    try:
        document = json.loads(b"".join(chunks))
    except ValueError:
        raise StatusUnavailable(
            f"status socket {path} answered something that is not JSON"
        ) from None
    if not isinstance(document, dict):
        raise StatusUnavailable(f"status socket {path} answered a JSON {type(document).__name__}")
    return document
