"""wireguard-go never outlives the node that started it (real wireguard-go in a namespace).

* The owner SIGKILLed (no cleanup of its own can run): its wireguard-go gets SIGTERM
  from the kernel (``PR_SET_PDEATHSIG``) and removes its link and UAPI socket.
* A wireguard-go left running anyway (started without that, e.g. by an older
  onionmesh): the next start deletes its link, which makes it exit, and runs its own.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import select
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from onionmesh.testnet.netns import HostLab, require_lab_tools
from onionmesh.wireguard.keys import WireGuardKeyPair
from onionmesh.wireguard.manager import Backend, WireGuardManager
from onionmesh.wireguard.names import uapi_socket
from onionmesh.wireguard.spec import InterfaceSpec
from tests.eventually import eventually

pytestmark = pytest.mark.netns
# wireguard-go exits within milliseconds of SIGTERM or of losing its link; the bound
# only absorbs a loaded machine.
EXIT_BOUND = 15.0

_OWNER = textwrap.dedent("""
    import asyncio, ipaddress, sys
    from onionmesh.wireguard.manager import WireGuardManager
    from onionmesh.wireguard.spec import InterfaceSpec

    async def main():
        name, public, private = sys.argv[1:4]
        spec = InterfaceSpec(name, 51820, ipaddress.ip_interface("10.233.0.1/24"), public, 1)
        manager = WireGuardManager(spec, private)
        report = await manager.repair()
        print("PID", manager.userspace_pid, report.problems, flush=True)
        await asyncio.sleep(600)  # until the test kills us

    asyncio.run(main())
""")


@pytest.fixture
def lab() -> Iterator[HostLab]:
    missing = require_lab_tools()
    if missing:
        pytest.fail(f"namespace tests need {', '.join(missing)} "
                    "(scripts/install-system-deps.sh)", pytrace=False)
    with HostLab(1, "wgl") as made:
        yield made
    assert made.leftovers() == []


def _gone(pid: int) -> bool:
    """Exited (a zombie waiting for its new parent to reap it counts as exited)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


def _links(lab: HostLab) -> str:
    return lab.run(1, ["ip", "-o", "link"])


def test_wireguard_go_dies_with_its_sigkilled_owner(lab: HostLab) -> None:
    name, keys = lab.iface(1), WireGuardKeyPair.generate()
    owner = lab.popen(1, [sys.executable, "-c", _OWNER, name, keys.public_key,
                          keys.private_key], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                      text=True)
    assert owner.stdout is not None
    ready, _, _ = select.select([owner.stdout], [], [], 60)
    line = owner.stdout.readline() if ready else ""
    assert line.startswith("PID "), f"owner did not start: {line!r} " + (
        owner.stderr.read()[-2000:] if owner.poll() is not None and owner.stderr else "")
    assert line.rstrip().endswith("()"), line  # no repair problems
    wg_pid = int(line.split()[1])
    assert not _gone(wg_pid) and uapi_socket(name).exists() and name in _links(lab)

    owner.kill()  # SIGKILL: the owner runs no cleanup at all
    owner.wait(10)
    eventually(lambda: _gone(wg_pid), timeout=EXIT_BOUND,
               what=f"wireguard-go (pid {wg_pid}) to exit after its owner was SIGKILLed")
    # It went the clean way (SIGTERM): link and UAPI socket removed, nothing to take over.
    eventually(lambda: not uapi_socket(name).exists() and name not in _links(lab),
               timeout=EXIT_BOUND, what="the link and UAPI socket to be removed",
               context=lambda: _links(lab))


async def test_a_left_over_wireguard_go_is_replaced_at_the_next_start(
        lab: HostLab, caplog: pytest.LogCaptureFixture) -> None:
    name, keys = lab.iface(1), WireGuardKeyPair.generate()
    # What a daemon killed before it could set the death signal (or an older version)
    # leaves: a wireguard-go that is nobody's child to watch.
    stale = lab.popen(1, ["wireguard-go", "-f", name], stdin=subprocess.DEVNULL,
                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                      env=dict(os.environ, WG_PROCESS_FOREGROUND="1"))
    eventually(lambda: uapi_socket(name).exists() and name in _links(lab), timeout=EXIT_BOUND,
               what="the stand-in left-over wireguard-go to be up")
    spec = InterfaceSpec(name, 51820, ipaddress.ip_interface("10.233.0.1/24"),
                         keys.public_key, 1)
    manager = WireGuardManager(spec, keys.private_key, command_prefix=lab.prefix_for(1))
    try:
        with caplog.at_level(logging.WARNING, logger="onionmesh.wireguard.manager"):
            report = await manager.repair()
        assert report.problems == (), report.problems
        assert "create interface" in report.applied
        assert "left by a wireguard-go that outlived its daemon" in caplog.text
        assert stale.wait(EXIT_BOUND) is not None  # its link deleted: it exited
        assert manager.backend is Backend.USERSPACE and manager.userspace_running
        assert manager.userspace_pid != stale.pid
        dump = lab.run(1, ["wg", "show", name, "dump"])
        assert dump.split("\t")[1] == keys.public_key  # ours now, with our key
        again = await manager.repair()
        assert again.applied == () and again.problems == ()
    finally:
        await manager.close()
    assert not uapi_socket(name).exists() and name not in _links(lab)
