"""``onionmesh testnet up|status|down`` end to end, as separate processes (own small network)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time

import pytest

from onionmesh.testnet import SocksError, http_get_via_socks
from onionmesh.tor.control import TorController
from onionmesh.tor.process import pid_alive

pytestmark = [pytest.mark.tor, pytest.mark.slow]


def cli(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "onionmesh.cli", "testnet", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


async def _newnym(control_port: int) -> None:
    controller = await TorController.connect(port=control_port)
    try:
        await controller.signal("NEWNYM")
    finally:
        await controller.close()


def get_with_retries(client: dict, host: str, within: float) -> str:
    """GET through the CLI-started client; NEWNYM between failed attempts (docs/testnet.md §6)."""
    deadline = time.monotonic() + within
    while True:
        try:
            return http_get_via_socks(client["socks_port"], host, "/", 30).text
        except SocksError:
            if time.monotonic() > deadline:
                raise
        asyncio.run(_newnym(client["control_port"]))
        time.sleep(10)  # tor honours at most one NEWNYM per 10 s (rate limit, not readiness)


def test_up_status_get_down_leaves_no_process(tmp_path):
    net_dir = tmp_path / "net"
    pids: list[tuple[int, int | None]] = []
    try:
        up = cli(
            "up", "--dir", str(net_dir), "--authorities", "4", "--clients", "1",
            "--services", "1", timeout=400,
        )  # fmt: skip
        assert up.returncode == 0, up.stderr[-3000:]
        state = json.loads((net_dir / "testnet.json").read_text())
        for node in state["nodes"]:
            pids.append((node["pid"], node["start_time"]))
            if node.get("backend_pid"):
                pids.append((node["backend_pid"], node["backend_start_time"]))
        roles = sorted(node["role"] for node in state["nodes"])
        assert roles == ["authority"] * 4 + ["client", "service"]
        assert len(pids) == 7
        assert all(pid_alive(pid, start) for pid, start in pids)  # outlived `up`

        status = cli("status", "--dir", str(net_dir), timeout=30)
        assert status.returncode == 0
        assert status.stdout.count(" running ") == 6

        client = next(n for n in state["nodes"] if n["role"] == "client")
        service = next(n for n in state["nodes"] if n["role"] == "service")
        body = get_with_retries(client, f"{service['onion_address']}.onion", 120)
        assert body == "service0\n"

        down = cli("down", "--dir", str(net_dir), timeout=120)
        assert down.returncode == 0, down.stderr
        assert "stopped 7 process(es)" in down.stdout
        assert not [pid for pid, start in pids if pid_alive(pid, start)]
        after = cli("status", "--dir", str(net_dir), timeout=30)
        assert " running " not in after.stdout and after.stdout.count(" stopped ") == 6
    finally:
        # Whatever happened above, nothing this test started may survive it.
        if (net_dir / "testnet.json").exists():
            cli("down", "--dir", str(net_dir), timeout=120)
