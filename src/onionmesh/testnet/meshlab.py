"""N mesh nodes on test hosts: namespaces + wireguard-go + one tor each + ``meshnode``.

Each host is a network namespace on the lab's bridge (``HostLab``). Its node process
(``onionmesh.testnet.meshnode``) runs inside the namespace; its tor is a client of the
private Tor network in the root namespace, reached over unix sockets (control and
SOCKS), which every namespace sees, so every address stays on loopback or inside
namespaces the lab made. Faults come from ``HostLab`` (block the WireGuard port, cut a
link, loss) and from signals to the node's PID.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from onionmesh.crypto.keys import Ed25519Identity
from onionmesh.testnet.netns import HostLab, stop_processes
from onionmesh.testnet.network import TorNetwork
from onionmesh.testnet.nodes import TorClient, run_coroutine
from onionmesh.tor.control import TorController
from onionmesh.transport.tor_channel import coordination_key
from onionmesh.wireguard.keys import WireGuardKeyPair

WG_PORT = 51820
MESH_PORT = 7443
TUNNEL = "10.232.0.{}"


@dataclass
class MeshHost:
    index: int
    node_id: str
    tor: TorClient
    sockets: Path
    cfg_path: Path
    status_path: Path
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None


async def unix_ports(tor: TorClient, directory: Path) -> None:
    controller = await TorController.connect(port=tor.control_port, timeout=30.0)
    try:
        await controller.set_conf({
            "SocksPort": [f"127.0.0.1:{tor.socks_port} ExtendedErrors",
                          f"unix:{directory / 'socks.sock'} ExtendedErrors"],
            "ControlPort": [f"127.0.0.1:{tor.control_port}",
                            f"unix:{directory / 'control.sock'}"],
        })
    finally:
        await controller.close()


class MeshLab:
    def __init__(self, tornet: TorNetwork, n_hosts: int = 3, *, mesh: dict[str, Any],
                 fallback_enabled: bool = True, tag: str = "ml") -> None:
        self.tornet = tornet
        self.n = n_hosts
        self.mesh = mesh
        self.fallback_enabled = fallback_enabled
        self.lab = HostLab(n_hosts, tag)
        # Unix socket paths must stay short (108 bytes): a short private directory.
        self.root = Path(tempfile.mkdtemp(prefix=f"om{tag}"))
        self.hosts: dict[int, MeshHost] = {}
        self._tag = tag

    def start(self, timeout: float = 120.0) -> MeshLab:
        try:
            self.lab.up()
            self._make_hosts()
            for index in self.hosts:
                self.start_node(index)
            self.wait_until(lambda: all(
                self.status(i) is not None for i in self.hosts), timeout, "nodes started")
        except BaseException:
            self.stop()
            raise
        return self

    def _make_hosts(self) -> None:
        secret = secrets.token_bytes(32)
        keys = {i: WireGuardKeyPair.generate() for i in range(1, self.n + 1)}
        seeds = {i: secrets.token_bytes(32) for i in keys}
        onions = {i: Ed25519Identity.generate() for i in keys}
        from onionmesh.mesh.identity import NodeIdentity

        pub = {i: NodeIdentity(f"n{i}", seeds[i]).public_key for i in keys}
        for i in keys:
            sockets = self.root / f"h{i}"
            sockets.mkdir(mode=0o700)
            tor = self.tornet.add_client(f"{self.lab.prefix}h{i}")  # unique per lab
            run_coroutine(unix_ports(tor, sockets), timeout=60)
            host = MeshHost(i, f"n{i}", tor, sockets, sockets / "node.json",
                            sockets / "status.json", sockets / "node.log")
            onion_key, _ = coordination_key(onions[i])
            cfg = {
                "node_id": host.node_id, "seed_hex": seeds[i].hex(), "priority": 100 + i,
                "cluster_secret_hex": secret.hex(),
                "listen": f"{TUNNEL.format(i)}:{MESH_PORT}",
                "mesh": self.mesh, "fallback_enabled": self.fallback_enabled,
                "wireguard": {
                    "interface": self.lab.iface(i), "listen_port": WG_PORT,
                    "address": f"{TUNNEL.format(i)}/24", "private_key": keys[i].private_key,
                    "public_key": keys[i].public_key, "keepalive": 1,
                },
                "tor": {"control_socket": str(sockets / "control.sock"),
                        "socks_socket": str(sockets / "socks.sock"),
                        "socket_dir": str(sockets / "coord"), "onion_key": onion_key},
                "peers": [{
                    "node_id": f"n{j}", "address": f"{TUNNEL.format(j)}:{MESH_PORT}",
                    "public_key_hex": pub[j].hex(), "wg_public_key": keys[j].public_key,
                    "endpoint": f"{self.lab.ip(j)}:{WG_PORT}", "tunnel_ip": TUNNEL.format(j),
                    "onion": coordination_key(onions[j])[1], "client_key": keys[j].public_key,
                } for j in keys if j != i],
                "status_path": str(sockets / "status.json"),
            }
            fd = os.open(host.cfg_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                json.dump(cfg, handle)
            self.hosts[i] = host

    def start_node(self, index: int) -> None:
        host = self.hosts[index]
        with contextlib.suppress(FileNotFoundError):
            host.status_path.unlink()
        log = open(host.log_path, "ab")  # noqa: SIM115 (handed to the child)
        host.proc = self.lab.popen(index, [sys.executable, "-m", "onionmesh.testnet.meshnode",
                                           str(host.cfg_path)], stdout=log, stderr=log)
        log.close()

    def restart_node(self, index: int, *, clock_offset: float | None = None) -> None:
        """SIGTERM the node (a clean stop), optionally change its clock offset (the
        ONIONMESH_CLOCK_OFFSET-style hook of the test clock) and start it again."""
        host = self.hosts[index]
        if host.proc is not None and host.proc.poll() is None:
            host.proc.terminate()
            host.proc.wait(30)
        if clock_offset is not None:
            cfg = json.loads(host.cfg_path.read_text())
            cfg["clock_offset"] = clock_offset
            host.cfg_path.write_text(json.dumps(cfg))
        self.start_node(index)

    def status(self, index: int) -> dict[str, Any] | None:
        try:
            return json.loads(self.hosts[index].status_path.read_text())
        except (FileNotFoundError, ValueError):
            return None

    def path(self, index: int, peer: int) -> str | None:
        status = self.status(index)
        if status is None:
            return None
        return status["paths"]["peers"].get(f"n{peer}", {}).get("path")

    def events(self, kind: str) -> list[tuple[int, dict[str, Any]]]:
        found = []
        for i in self.hosts:
            status = self.status(i) or {}
            found += [(i, e) for e in status.get("events", []) if e["kind"] == kind]
        return found

    def wait_until(self, check: Callable[[], object], timeout: float, what: str,
                   interval: float = 0.1) -> float:
        start = time.monotonic()
        while True:
            if check():
                return time.monotonic() - start
            if time.monotonic() - start > timeout:
                logs = "\n".join(f"--- {h.node_id}\n" + _tail(h.log_path)
                                 for h in self.hosts.values())
                raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{logs}")
            time.sleep(interval)

    def kill(self, index: int, sig: int = signal.SIGKILL) -> None:
        proc = self.hosts[index].proc
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, sig)

    def stop(self) -> None:
        stop_processes((host.proc for host in self.hosts.values()), grace=15)
        self.lab.down()
        for host in self.hosts.values():
            host.tor.stop()
        shutil.rmtree(self.root, ignore_errors=True)


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"
