"""WireGuardManager against real wireguard-go in network namespaces (root; never skipped).

Three hosts on a bridge; each host's manager runs `ip`/`wg`/wireguard-go inside its
namespace through ``ip netns exec`` (what the daemon does when it runs there itself).
"""

from __future__ import annotations

import ipaddress
import os
import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest

from onionmesh.testnet.netns import HostLab, require_lab_tools
from onionmesh.wireguard.keys import WireGuardKeyPair
from onionmesh.wireguard.manager import Backend, WireGuardManager
from onionmesh.wireguard.names import uapi_socket
from onionmesh.wireguard.spec import InterfaceSpec, PeerSpec
from tests.eventually import aeventually

pytestmark = pytest.mark.netns
PORT = 51820


def tunnel_ip(host: int) -> ipaddress.IPv4Address:
    return ipaddress.IPv4Address(f"10.232.0.{host}")


@pytest.fixture(scope="module")
def lab() -> Iterator[HostLab]:
    missing = require_lab_tools()
    if missing:
        pytest.fail(f"namespace tests need {', '.join(missing)} "
                    "(scripts/install-system-deps.sh)", pytrace=False)
    with HostLab(3, "wg") as made:
        yield made
    assert made.leftovers() == []


class Mesh:
    def __init__(self, lab: HostLab) -> None:
        self.lab = lab
        self.keys = {h: WireGuardKeyPair.generate() for h in (1, 2, 3)}
        self.names = {h: lab.iface(h) for h in (1, 2, 3)}
        self.managers = {h: WireGuardManager(self.spec(h), self.keys[h].private_key,
                                             command_prefix=lab.prefix_for(h))
                         for h in (1, 2, 3)}

    def spec(self, host: int, others: tuple[int, ...] | None = None) -> InterfaceSpec:
        others = tuple(h for h in (1, 2, 3) if h != host) if others is None else others
        peers = tuple(PeerSpec(f"n{h}", self.keys[h].public_key, f"{self.lab.ip(h)}:{PORT}",
                               tunnel_ip(h)) for h in others)
        address = ipaddress.ip_interface(f"{tunnel_ip(host)}/24")
        return InterfaceSpec(self.names[host], PORT, address, self.keys[host].public_key, 1,
                             peers)


async def handshaken(manager: WireGuardManager, node: str) -> bool:
    report = await manager.repair()
    health = {peer.node_id: peer for peer in report.peers}
    return health[node].handshake_age is not None and health[node].handshake_age < 60


def udp_echo(lab: HostLab, src: int, dst: int) -> bytes:
    """One datagram over the tunnel from src to dst and back (a real exchange, bounded)."""
    server = lab.popen(dst, [sys.executable, "-c", (
        "import socket,sys\n"
        "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
        f"s.bind(('{tunnel_ip(dst)}',9000));s.settimeout(10);print('ready',flush=True)\n"
        "d,a=s.recvfrom(100);s.sendto(d[::-1],a)\n")],
        stdout=subprocess.PIPE, text=True)
    assert server.stdout is not None and server.stdout.readline().strip() == "ready"
    out = lab.run(src, [sys.executable, "-c", (
        "import socket\n"
        "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);s.settimeout(10)\n"
        f"s.sendto(b'hello',('{tunnel_ip(dst)}',9000));print(s.recvfrom(100)[0].decode())\n")])
    server.wait(10)
    return out.strip().encode()


async def test_three_hosts_converge_repair_and_clean_up(lab: HostLab) -> None:
    mesh = Mesh(lab)
    try:
        for manager in mesh.managers.values():
            report = await manager.repair()
            assert report.problems == (), report.problems
            assert "create interface" in report.applied
            # This kernel has no WireGuard module: the wg-quick choice lands on wireguard-go.
            assert manager.backend is Backend.USERSPACE
            again = await manager.repair()
            assert again.applied == () and again.problems == ()
        for host, manager in mesh.managers.items():
            for other in (1, 2, 3):
                if other != host:
                    await aeventually(lambda m=manager, o=other: handshaken(m, f"n{o}"),
                                      timeout=10, what=f"handshake {host}->{other}")
        assert udp_echo(lab, 1, 2) == b"olleh"
        assert udp_echo(lab, 3, 1) == b"olleh"
        report = await mesh.managers[1].repair()
        assert all(peer.rx_bytes > 0 and peer.tx_bytes > 0 for peer in report.peers)

        # wireguard-go killed: the next repair restarts it and the tunnel comes back.
        one = mesh.managers[1]
        old_pid = one.userspace_pid
        assert old_pid is not None
        os.kill(old_pid, signal.SIGKILL)
        await aeventually(lambda: not one.userspace_running, timeout=5, what="wireguard-go to die")
        report = await one.repair()
        assert "create interface" in report.applied and report.problems == ()
        assert one.userspace_pid not in (None, old_pid)
        assert udp_echo(lab, 2, 1) == b"olleh"

        # The link deleted under us: recreated.
        lab.run(2, ["ip", "link", "del", "dev", mesh.names[2]])
        report = await mesh.managers[2].repair()
        assert "create interface" in report.applied and report.problems == ()
        assert udp_echo(lab, 1, 2) == b"olleh"

        # A peer removed by hand, an address removed, the link down: all put back.
        lab.run(3, ["wg", "set", mesh.names[3], "peer", mesh.keys[1].public_key, "remove"])
        lab.run(3, ["ip", "link", "set", "down", "dev", mesh.names[3]])
        report = await mesh.managers[3].repair()
        assert {"set peer n1 endpoint 10.231.0.1:51820", "set link up"} <= set(report.applied)
        assert udp_echo(lab, 3, 1) == b"olleh"

        # The roster drops n3: its peer leaves host 1's interface.
        one.update_spec(mesh.spec(1, (2,)))
        report = await one.repair()
        assert report.applied == (f"remove peer {mesh.keys[3].public_key}",)
        dump = lab.run(1, ["wg", "show", mesh.names[1], "dump"])
        assert mesh.keys[3].public_key not in dump
        assert mesh.keys[1].private_key not in str(report)
    finally:
        for manager in mesh.managers.values():
            await manager.close()
    for host, name in mesh.names.items():
        assert not uapi_socket(name).exists()
        assert name not in lab.run(host, ["ip", "link"])


async def test_name_taken_in_another_namespace_is_reported(lab: HostLab) -> None:
    mesh = Mesh(lab)
    first = mesh.managers[1]
    try:
        assert (await first.repair()).problems == ()
        # Host 2 asked for host 1's name: the UAPI socket path is machine-wide.
        clash = WireGuardManager(mesh.spec(1), mesh.keys[2].private_key,
                                 command_prefix=lab.prefix_for(2))
        report = await clash.repair()
        assert report.applied == ()
        assert "in use by another network namespace" in report.problems[0]
        assert first.userspace_running
    finally:
        await first.close()


async def test_missing_wireguard_go_is_a_clear_problem(lab: HostLab) -> None:
    mesh = Mesh(lab)
    manager = WireGuardManager(mesh.spec(1), mesh.keys[1].private_key,
                               command_prefix=lab.prefix_for(1),
                               wireguard_go="/nonexistent/wireguard-go")
    report = await manager.repair()
    assert report.applied == ()
    problem = report.problems[0]
    assert problem.startswith("create interface: ")
    assert "/nonexistent/wireguard-go" in problem
    assert "not found" in problem or "No such file" in problem
    bad_wg = WireGuardManager(mesh.spec(1), mesh.keys[1].private_key,
                              command_prefix=lab.prefix_for(1), wg="/nonexistent/wg")
    report = await bad_wg.repair()
    await bad_wg.close()
    assert any("/nonexistent/wg" in problem for problem in report.problems)
