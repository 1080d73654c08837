"""The status socket: the CLI client reads what the daemon serves."""

import asyncio
import stat
from pathlib import Path

import pytest

from onionmesh.status_socket import StatusServer, StatusUnavailable, query_status


async def test_client_reads_the_snapshot(tmp_path: Path):
    path = tmp_path / "state" / "status.sock"
    server = StatusServer(path, lambda: {"node": "n1", "peers": {"n2": "alive"}})
    await server.start()
    try:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        document = await asyncio.to_thread(query_status, path)
        assert document == {"node": "n1", "peers": {"n2": "alive"}}
    finally:
        await server.close()
    assert not path.exists()


def test_no_daemon_is_a_clear_error(tmp_path: Path):
    with pytest.raises(StatusUnavailable, match="is `onionmesh run` running"):
        query_status(tmp_path / "missing.sock")


async def test_garbage_answer_is_a_clear_error(tmp_path: Path):
    path = tmp_path / "g.sock"

    async def garbage(reader, writer):
        writer.write(b"\x00not json")
        writer.close()

    server = await asyncio.start_unix_server(garbage, path=str(path))
    try:
        with pytest.raises(StatusUnavailable, match="not JSON"):
            await asyncio.to_thread(query_status, path)
    finally:
        server.close()
        await server.wait_closed()
