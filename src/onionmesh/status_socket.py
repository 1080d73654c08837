"""The local status socket behind ``onionmesh status``.

A unix socket (mode 0600, in the node's state directory) answers one JSON
document per connection. It is local-only on purpose: the cluster view names
the node addresses, which stay private to the cluster.

A client sends one request line (a JSON object, ``{"command": "status"}`` by
default; a client that sends nothing gets the status too) and reads one JSON
answer. Other commands are the daemon's (``commands``), e.g. handing it signed
roster statements made by ``onionmesh remove-node``.

Bounded, so a stuck or hostile local client cannot tie the daemon up: at most
``max_connections`` at once (more are closed at once), the request must arrive
within ``timeout`` seconds and fit ``MAX_REQUEST_BYTES``, and an answer the
client does not read within ``timeout`` seconds is abandoned.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from onionmesh.errors import OnionmeshError

MAX_REQUEST_BYTES = 256 * 1024
Command = Callable[[dict[str, Any]], Awaitable[Mapping[str, Any]]]


class StatusUnavailable(OnionmeshError):
    """No daemon answers on the status socket, or it answered garbage."""


class StatusServer:
    """Serves ``snapshot()`` as JSON to every connection."""

    def __init__(self, path: Path, snapshot: Callable[[], Mapping[str, Any]], *,
                 commands: Mapping[str, Command] | None = None, max_connections: int = 16,
                 timeout: float = 5.0) -> None:
        self.path = path
        self.snapshot = snapshot
        self.commands = dict(commands or {})
        self.max_connections = max_connections
        self.timeout = timeout
        self.active = 0
        self.refused = 0  # connections closed at once: too many open
        self.timeouts = 0  # requests not sent, or answers not read, in time
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # a stale socket from a crashed run
        old_umask = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(
                self._serve, path=str(self.path), limit=MAX_REQUEST_BYTES + 1)
        finally:
            os.umask(old_umask)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.active >= self.max_connections:
            self.refused += 1
            writer.close()
            return
        self.active += 1
        try:
            answer = await asyncio.wait_for(self._answer(reader), self.timeout)
            writer.write(json.dumps(answer, default=str, sort_keys=True).encode() + b"\n")
            await asyncio.wait_for(writer.drain(), self.timeout)
        except TimeoutError:
            self.timeouts += 1
        except (ConnectionError, OSError, ValueError):
            pass
        finally:
            self.active -= 1
            if writer.transport.get_write_buffer_size():
                writer.transport.abort()  # an unread answer is dropped, not kept
            else:
                writer.close()
            with contextlib.suppress(ConnectionError, OSError, TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), self.timeout)

    async def _answer(self, reader: asyncio.StreamReader) -> Mapping[str, Any]:
        line = await reader.readline()  # b"" at EOF: a client that sends nothing
        if len(line) > MAX_REQUEST_BYTES:
            return {"error": "request too large"}
        try:
            request = json.loads(line) if line.strip() else {}
        except ValueError:
            return {"error": "request is not JSON"}
        if not isinstance(request, dict):
            return {"error": "request is not a JSON object"}
        name = request.get("command", "status")
        if name == "status":
            return self.snapshot()
        command = self.commands.get(name) if isinstance(name, str) else None
        if command is None:
            return {"error": f"unknown command {str(name)[:40]!r}"}
        return await command(request)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def query_status(path: Path, timeout: float = 5.0) -> dict[str, Any]:
    """Blocking client for the CLI: connect, read the JSON document."""
    return send_request(path, {"command": "status"}, timeout)


def send_request(path: Path, request: Mapping[str, Any], timeout: float = 5.0) -> dict[str, Any]:
    """Blocking client: send one request line, read the JSON answer."""
    chunks = []
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(path))
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                sock.sendall(json.dumps(request).encode() + b"\n")  # answer may be there
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
