"""The status socket: the CLI client reads what the daemon serves."""

import asyncio
import stat
from pathlib import Path

import pytest

from onionmesh.status_socket import StatusServer, StatusUnavailable, query_status
from tests.eventually import aeventually


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
        await reader.readline()  # the request
        writer.write(b"\x00not json")
        writer.close()

    server = await asyncio.start_unix_server(garbage, path=str(path))
    try:
        with pytest.raises(StatusUnavailable, match="not JSON"):
            await asyncio.to_thread(query_status, path)
    finally:
        server.close()
        await server.wait_closed()


async def _connect(path: Path) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_unix_connection(str(path))


async def test_connections_are_capped_and_silent_clients_time_out(tmp_path: Path):
    path = tmp_path / "status.sock"
    server = StatusServer(path, lambda: {"node": "n1"}, max_connections=4, timeout=0.5)
    await server.start()
    held = [await _connect(path) for _ in range(4)]  # connect, send nothing, keep open
    try:
        await asyncio.sleep(0.05)
        reader, writer = await _connect(path)
        assert await asyncio.wait_for(reader.read(), 2.0) == b""  # closed at once, no answer
        writer.close()
        assert server.refused >= 1
        # The silent ones are dropped after the timeout; then the slots are free again.
        for held_reader, _ in held:
            assert await asyncio.wait_for(held_reader.read(), 3.0) == b""
        assert server.timeouts == 4
        assert await asyncio.to_thread(query_status, path) == {"node": "n1"}
    finally:
        for _, held_writer in held:
            held_writer.close()
        await server.close()


async def test_an_unread_answer_is_abandoned_after_the_write_timeout(tmp_path: Path):
    path = tmp_path / "status.sock"
    big = {"filler": "x" * 8_000_000}  # far more than the socket buffers hold
    server = StatusServer(path, lambda: big, timeout=0.5)
    await server.start()
    try:
        _reader, writer = await _connect(path)
        writer.write(b'{"command": "status"}\n')
        await writer.drain()
        # Never read: the server must give up, not hold 8 MB and a task forever.
        await aeventually(lambda: server.timeouts, timeout=4, interval=0.1,
                          what="the server gives up on the unread answer")
        assert server.timeouts == 1 and server.active == 0
        writer.close()
    finally:
        await server.close()


async def test_requests_are_checked(tmp_path: Path):
    from onionmesh.status_socket import send_request

    path = tmp_path / "status.sock"

    async def echo(request):
        return {"echo": request.get("value")}

    server = StatusServer(path, lambda: {"node": "n1"}, commands={"echo": echo})
    await server.start()
    try:
        assert await asyncio.to_thread(send_request, path, {"command": "echo", "value": 3}) == {
            "echo": 3}
        answer = await asyncio.to_thread(send_request, path, {"command": "shutdown"})
        assert answer == {"error": "unknown command 'shutdown'"}
        reader, writer = await _connect(path)
        writer.write(b"[1, 2]\n")
        assert b"not a JSON object" in await asyncio.wait_for(reader.read(), 2.0)
        writer.close()
    finally:
        await server.close()
