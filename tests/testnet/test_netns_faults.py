"""HostLab's fault injection, measured with real UDP between namespace hosts (root)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest

from onionmesh.testnet.netns import HostLab, require_lab_tools

pytestmark = pytest.mark.netns
PORT = 9100

SERVER = (
    "import socket\n"
    "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
    f"s.bind(('0.0.0.0',{PORT}));print('ready',flush=True)\n"
    "while True:\n"
    "    d,a=s.recvfrom(100)\n"
    "    try: s.sendto(d,a)\n"
    "    except OSError: pass\n"  # an nft drop on output fails sendto with EPERM
)
CLIENT = """
import socket, sys, time
host, timeout, count, port = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(timeout)
rtts = []
for i in range(count):
    token = b"x%d" % i
    start = time.monotonic()
    try:
        s.sendto(token, (host, port))
        while s.recvfrom(100)[0] != token:
            pass
        rtts.append(time.monotonic() - start)
    except OSError:  # timed out, or the send was dropped on output (EPERM)
        pass
print(len(rtts), max(rtts) if rtts else -1)
"""


@pytest.fixture(scope="module")
def lab() -> Iterator[HostLab]:
    missing = require_lab_tools()
    if missing:
        pytest.fail(f"needs {', '.join(missing)}", pytrace=False)
    with HostLab(3, "ft") as made:
        for host in (1, 2, 3):
            proc = made.popen(host, [sys.executable, "-c", SERVER], stdout=subprocess.PIPE,
                              text=True)
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        yield made
    assert made.leftovers() == []


def echo(lab: HostLab, src: int, dst: int, count: int = 5,
         timeout: float = 1.0) -> tuple[int, float]:
    """Datagrams answered and the slowest round trip (s), from src's echo port to dst."""
    out = lab.run(src, [sys.executable, "-c", CLIENT, lab.ip(dst), str(timeout), str(count),
                        str(PORT)])
    answered, slowest = out.split()
    return int(answered), float(slowest)


def test_block_cut_loss_and_delay(lab: HostLab) -> None:
    assert echo(lab, 1, 2)[0] == 5 and echo(lab, 1, 3)[0] == 5

    lab.block_udp_port(2, PORT)
    assert echo(lab, 1, 2, 2, 0.5)[0] == 0 and echo(lab, 1, 3)[0] == 5
    lab.unblock_udp_port(2, PORT)
    assert echo(lab, 1, 2)[0] == 5

    lab.cut(1, 2)
    assert echo(lab, 1, 2, 2, 0.5)[0] == 0
    assert echo(lab, 1, 3)[0] == 5 and echo(lab, 2, 3)[0] == 5
    lab.heal(2, 1)
    assert echo(lab, 1, 2)[0] == 5

    lab.loss(2, 100, PORT)
    assert echo(lab, 1, 2, 2, 0.5)[0] == 0
    lab.clear_loss(2, PORT)
    assert echo(lab, 1, 2)[0] == 5

    lab.delay(2, PORT, 200)
    answered, slowest = echo(lab, 1, 2, 3, 2.0)
    assert answered == 3 and slowest >= 0.19
    lab.delay(2, PORT, 50, loss=100)
    assert echo(lab, 1, 2, 2, 0.5)[0] == 0
    lab.clear_delay(2, PORT)
    answered, slowest = echo(lab, 1, 2)
    assert answered == 5 and slowest < 0.19
