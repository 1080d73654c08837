"""The tor process supervisor against a real, offline tor (DisableNetwork 1)."""

from __future__ import annotations

import shutil

import pytest

from onionmesh.testnet.ports import reserve_block
from onionmesh.tor.control import TorController
from onionmesh.tor.process import (
    TorProcess,
    TorProcessError,
    TorProcessTimeout,
    pid_alive,
    stop_pid,
    wait_control_port,
)

pytestmark = pytest.mark.tor


@pytest.fixture
def offline_tor(tmp_path):
    if shutil.which("tor") is None:
        pytest.fail("tor not found on PATH (apt-get install -y tor); never skipped")
    block = reserve_block(1)
    port = block.port(0)
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    torrc = tmp_path / "torrc"
    torrc.write_text(
        f"DataDirectory {data}\nDisableNetwork 1\nSocksPort 0\nControlPort 127.0.0.1:{port}\n"
        f"CookieAuthentication 1\nLog notice file {data}/notice.log\nShutdownWaitLength 0\n"
    )
    proc = TorProcess(
        "offline", torrc, defaults_torrc=tmp_path / "empty", log_path=data / "notice.log",
        control_port=port,
    )  # fmt: skip
    yield proc
    proc.stop()
    block.release()
    pid = proc.pid
    assert pid is None or not pid_alive(pid, proc.start_time)


async def control_version(port: int) -> str:
    controller = await TorController.connect(port=port, timeout=10)
    try:
        return (await controller.get_info("version"))["version"]
    finally:
        await controller.close()


async def test_sigkilled_tor_is_restarted_and_its_control_port_answers_again(offline_tor):
    offline_tor.start()
    await offline_tor.wait_control_ready(timeout=60)
    first_pid = offline_tor.pid
    killed = offline_tor.kill_for_test()
    assert killed == first_pid
    new_pid = offline_tor.wait_restarted(0, timeout=30)
    assert new_pid != first_pid
    assert offline_tor.restarts == 1
    assert not pid_alive(first_pid)
    # Bounded poll on the real condition: the restarted tor authenticates and answers.
    version = await wait_control_port(offline_tor.control_port, timeout=60, process=offline_tor)
    assert version.startswith("0.4")
    assert await control_version(offline_tor.control_port) == version


async def test_stop_ends_supervision_and_the_pid(offline_tor):
    offline_tor.start()
    await offline_tor.wait_control_ready(timeout=60)
    pid = offline_tor.pid
    offline_tor.stop()
    assert not pid_alive(pid)
    assert offline_tor.restarts == 0
    assert not offline_tor.is_running()
    with pytest.raises(TorProcessTimeout):
        offline_tor.wait_restarted(0, timeout=1.5)


async def test_tor_that_cannot_start_fails_fast_with_its_log(tmp_path):
    torrc = tmp_path / "torrc"
    torrc.write_text(
        f"DataDirectory {tmp_path}/d\nNoSuchOption 1\nLog notice file {tmp_path}/n.log\n"
    )
    proc = TorProcess("broken", torrc, defaults_torrc=tmp_path / "empty", supervise=False,
                      log_path=tmp_path / "n.log", control_port=1)  # fmt: skip
    proc.start()
    try:
        with pytest.raises(TorProcessError, match="exited"):
            await proc.wait_control_ready(timeout=60)
    finally:
        proc.stop()


def test_missing_binary_and_bad_pids_are_typed_errors(tmp_path):
    torrc = tmp_path / "torrc"
    torrc.write_text("SocksPort 0\n")
    proc = TorProcess("x", torrc, defaults_torrc=tmp_path / "e", tor_binary="no-such-tor-binary")
    with pytest.raises(TorProcessError, match="not found"):
        proc.start()
    with pytest.raises(TorProcessError):
        stop_pid(1, None)
    with pytest.raises(TorProcessError, match="does not exist"):
        TorProcess("y", tmp_path / "missing", defaults_torrc=tmp_path / "e").start()
