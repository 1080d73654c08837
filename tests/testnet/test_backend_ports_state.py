"""Backend HTTP server, port-block reservation and the state file (no tor needed)."""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import sys

import pytest

from onionmesh.cli import main
from onionmesh.testnet.backend import start_backend_process
from onionmesh.testnet.errors import PortAllocationError, StateFileError
from onionmesh.testnet.ports import port_is_free, reserve_block
from onionmesh.testnet.state import load_state, running_pids, stop_from_state
from onionmesh.tor.process import pid_alive, process_start_time


def free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as sock:
        return sock.getsockname()[1]


def test_backend_answers_with_its_name_and_stops_by_pid(tmp_path):
    port = free_port()
    proc = start_backend_process("node7", port, tmp_path / "backend.log")
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/any/path")
        response = conn.getresponse()
        assert response.status == 200
        assert response.read() == b"node7\n"
        assert response.getheader("X-Onionmesh-Node") == "node7"
        conn.close()
    finally:
        proc.terminate()
        assert proc.wait(10) == 0  # SIGTERM handled as a clean exit


def test_port_blocks_are_free_and_exclusive():
    first = reserve_block(60)
    try:
        assert all(port_is_free(first.port(i)) for i in range(60))
        # The same block cannot be claimed twice while the first claim is held.
        with pytest.raises(PortAllocationError):
            reserve_block(60, base=first.base)
        second = reserve_block(60)
        assert second.base != first.base
        second.release()
    finally:
        first.release()


def test_busy_base_port_is_refused():
    block = reserve_block(10)
    base = block.base
    block.release()
    with (
        socket.create_server(("127.0.0.1", base + 3)),
        pytest.raises(PortAllocationError, match=str(base)),
    ):
        reserve_block(10, base=base)
    with pytest.raises(PortAllocationError):
        reserve_block(10, base=80)


def test_take_skips_ports_in_use():
    block = reserve_block(5)
    try:
        with socket.create_server(("127.0.0.1", block.port(5))):
            assert block.take(5) == block.port(6)
        assert block.take(5) == block.port(7)  # never hands out the same port twice
    finally:
        block.release()


def write_state(path, nodes):
    path.write_text(json.dumps({"base_dir": str(path.parent), "nodes": nodes}))
    return path


def test_stop_from_state_kills_recorded_pids_only_with_matching_start_time(tmp_path):
    victim = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    try:
        start = process_start_time(victim.pid)
        state = write_state(
            tmp_path / "testnet.json",
            [
                {"name": "victim", "pid": victim.pid, "start_time": start},
                # Recorded start time differs: a recycled PID must never be signalled.
                {"name": "other", "pid": bystander.pid, "start_time": 1},
            ],
        )
        assert running_pids(load_state(state)) == [victim.pid]
        stopped = stop_from_state(state, timeout=5)
        assert stopped == [f"victim (pid {victim.pid})"]
        assert victim.wait(5) is not None
        assert not pid_alive(victim.pid, start)
        assert bystander.poll() is None
    finally:
        for proc in (victim, bystander):
            proc.kill()
            proc.wait()


@pytest.mark.parametrize(
    "content",
    [b"not json", b"\xff\xfe", b"[]", b'{"nodes": [1]}', b'{"nodes": [{"name": "a", "pid": "1"}]}'],
)
def test_malformed_state_files_are_typed_errors(tmp_path, content):
    path = tmp_path / "testnet.json"
    path.write_bytes(content)
    with pytest.raises(StateFileError):
        load_state(path)


def test_cli_status_and_down_without_a_network_fail_cleanly(tmp_path, capsys):
    assert main(["testnet", "status", "--dir", str(tmp_path)]) == 1
    assert "no testnet state file" in capsys.readouterr().err
    assert main(["testnet", "down", "--dir", str(tmp_path)]) == 1
