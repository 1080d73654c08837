"""The unix socket behind an ephemeral onion service: made private, served, and torn
down with its onion. The coordination onion (``tor_channel.py``) and the join onion
(``join_onion.py``) both serve this way: tor connects to the socket, so nothing listens
on a TCP port, and only this user can reach it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

from onionmesh.errors import OnionmeshError
from onionmesh.tor.control import TorController
from onionmesh.tor.control_protocol import ControlError

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def serve_private_socket(path: Path, handler: Handler) -> asyncio.Server:
    """Serve ``handler`` on ``path`` in a 0700 directory (a stale socket is replaced)."""
    directory = path.parent
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    return await asyncio.start_unix_server(handler, path=str(path))


async def withdraw_onion(controller: TorController, server: asyncio.Server | None,
                         service_id: str | None, path: Path) -> None:
    """Stop serving, remove the onion from tor (if tor still answers) and the socket."""
    if server is not None:
        server.close()
    if service_id is not None:
        with contextlib.suppress(ControlError, OnionmeshError):
            await controller.del_onion(service_id)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
