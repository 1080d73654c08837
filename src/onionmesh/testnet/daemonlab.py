"""N ``onionmesh run`` daemons on test hosts: namespaces + wireguard-go + one tor each.

Like ``MeshLab`` (same ``HostLab`` hosts, faults and tor clients), but each host runs
the real daemon, set up with the code behind ``onionmesh init`` / ``add-node`` /
``join`` (so every node's WireGuard key and coordination onion are in the signed
roster), with ``[wireguard] enabled``. The daemon runs inside its namespace; its tor
is a client of the private Tor network in the root namespace, used as an existing tor
(``[tor] managed = false``) over unix sockets (control, SOCKS), which every namespace
sees, so every address stays on loopback or inside namespaces the lab made. That tor
also holds the node's own onion service (its HiddenServiceDir set over the control
port); the service's backend runs in the root namespace, so the node's own service
check is off (``[health] check = "none"``). Status comes from each node's status
socket, as ``onionmesh status`` reads it.

``DaemonLab(tornet, 4, nodes=3)`` makes a fourth host with no node: a new machine.
``add_host(4)`` gives it its tor; the test makes its node as an operator does
(``onionmesh add-node`` on n1, ``onionmesh join`` in host 4's namespace, see ``cli``),
then ``adopt_node(4)`` points the joined config at the lab's tor and serves the node's
own service, and ``start_node(4)`` runs it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from onionmesh.config import load_config
from onionmesh.status_document import StatusDocument, StatusDocumentError, read_status
from onionmesh.status_socket import StatusUnavailable
from onionmesh.testnet.backend import start_backend_process
from onionmesh.testnet.meshlab import MESH_PORT, TUNNEL, WG_PORT, unix_ports
from onionmesh.testnet.netns import HostLab, stop_processes
from onionmesh.testnet.network import TorNetwork
from onionmesh.testnet.nodes import TorClient, run_coroutine
from onionmesh.tor.control import TorController
from onionmesh.tor.torrc import write_ob_config

# One line: config strings may hold no newline.
_ALERT_SCRIPT = ("import sys; f = open(sys.argv[1], 'a'); "
                 "f.write(sys.stdin.read().strip() + chr(10)); f.close()")


def _free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class DaemonHost:
    index: int
    node_id: str
    tor: TorClient
    sockets: Path  # short private directory: tor's unix sockets, the HiddenServiceDir
    root: Path  # the node's directory (config, keys, state)
    backend_port: int
    backend: subprocess.Popen[bytes] | None = None
    proc: subprocess.Popen[bytes] | None = None
    status_socket: Path = field(default_factory=Path)

    @property
    def config_path(self) -> Path:
        return self.root / "onionmesh.toml"

    @property
    def log_path(self) -> Path:
        return self.root / "node.log"


async def _serve_node_service(tor: TorClient, hs_dir: Path, backend_port: int) -> None:
    controller = await TorController.connect(port=tor.control_port, timeout=30.0)
    try:
        await controller.set_conf({
            "HiddenServiceDir": str(hs_dir),
            "HiddenServicePort": f"80 127.0.0.1:{backend_port}",
            "HiddenServiceOnionbalanceInstance": "1",
        })
    finally:
        await controller.close()


class DaemonLab:
    def __init__(self, tornet: TorNetwork, n_hosts: int = 3, *, nodes: int | None = None,
                 settings: dict[str, dict[str, Any]] | None = None, tag: str = "dl") -> None:
        """``nodes``: how many of the hosts get a node at ``start`` (hosts 1..nodes;
        default all); the others are empty machines for ``add_host``."""
        self.tornet = tornet
        self.n = n_hosts if nodes is None else nodes
        if not 1 <= self.n <= n_hosts:
            raise ValueError(f"nodes must be 1-{n_hosts}, not {nodes}")
        self.settings = settings or {}
        self.lab = HostLab(n_hosts, tag)
        self.root = Path(tempfile.mkdtemp(prefix=f"om{tag}"))
        self.hosts: dict[int, DaemonHost] = {}
        self.master_address = ""

    def start(self, timeout: float = 240.0) -> DaemonLab:
        try:
            self.lab.up()
            self._make_hosts()
            for index in self.hosts:
                self.start_node(index)
            self.wait_until(lambda: all(self.status(i) is not None and
                                        self.status(i).cluster is not None  # type: ignore[union-attr]
                                        for i in self.hosts), timeout, "daemons running")
        except BaseException:
            self.stop()
            raise
        return self

    def _settings(self, i: int, sockets: Path) -> dict[str, dict[str, Any]]:
        others = [j for j in range(1, self.n + 1) if j != i]
        settings = self._host_settings(i, sockets)
        settings["coordination"] = {"peers": [f"n{j}@{TUNNEL.format(j)}:{MESH_PORT}"
                                              for j in others]}
        settings["wireguard"].update({
            "enabled": True, "address": f"{TUNNEL.format(i)}/24", "listen_port": WG_PORT,
            # Signed into the node's roster entry by init/join: the WireGuard peers
            # come from the roster, no [wireguard] peers lines.
            "endpoint": f"{self.lab.ip(i)}:{WG_PORT}",
        })
        for section, keys in self.settings.items():
            settings.setdefault(section, {}).update(keys)
        return settings

    def _host_settings(self, i: int, sockets: Path) -> dict[str, dict[str, Any]]:
        """What the lab's host ``i`` needs in any node's config there: its tor (unix
        sockets), its service key directory, a machine-wide unique WireGuard interface
        name, no own service check, the alert file, no NTP daemon."""
        return {
            "tor": {"managed": False, "control_socket": str(sockets / "control.sock"),
                    "socks_socket": str(sockets / "socks.sock")},
            "service": {"key_dir": str(sockets / "hs")},
            "wireguard": {"interface": self.lab.iface(i)},
            "health": {"check": "none"},
            # Every alert appended to <node dir>/alerts.jsonl (the alert hook's JSON).
            "alerts": {"command": [sys.executable, "-c", _ALERT_SCRIPT,
                                   str(self.root / f"n{i}" / "alerts.jsonl")]},
            "resilience": {"require_ntp_sync": False},
        }

    def _make_hosts(self) -> None:
        from onionmesh.node.cluster_setup import (
            init_cluster,
            issue_token,
            join_cluster,
            local_exchange,
        )

        first_key: Path | None = None
        for i in range(1, self.n + 1):
            node_id = f"n{i}"
            host = self._new_host(i)
            self.hosts[i] = host  # from now on ``stop`` stops its tor
            sockets = host.sockets
            listen = f"{TUNNEL.format(i)}:{MESH_PORT}"
            ports = [f"80 127.0.0.1:{host.backend_port}"]
            settings = self._settings(i, sockets)
            if i == 1:
                result = init_cluster(host.root, node_id=node_id, listen=listen,
                                      service_ports=ports, settings=settings)
                self.master_address = result.master_address
                first_key = result.files.master_key
            else:
                sponsor = load_config(self.hosts[1].config_path)
                join_cluster(issue_token(sponsor), host.root, node_id=node_id, listen=listen,
                             master_key=first_key, service_ports=ports, settings=settings,
                             exchange=local_exchange(sponsor))
            self._serve_node(host)

    def _new_host(self, i: int) -> DaemonHost:
        sockets = self.root / f"h{i}"
        sockets.mkdir(mode=0o700)
        tor = self.tornet.add_client(f"{self.lab.prefix}h{i}")  # unique per lab
        try:
            run_coroutine(unix_ports(tor, sockets), timeout=60)
        except BaseException:
            tor.stop()
            raise
        return DaemonHost(i, f"n{i}", tor, sockets, self.root / f"n{i}", _free_tcp_port())

    def _serve_node(self, host: DaemonHost) -> None:
        from onionmesh.crypto.keys import save_hidden_service_dir
        from onionmesh.node.keyfiles import load_node_key, status_socket_path

        config = load_config(host.config_path)
        host.status_socket = status_socket_path(config)
        # The node's own service lives in this host's tor, under the node key.
        save_hidden_service_dir(load_node_key(config), host.sockets / "hs")
        write_ob_config(host.sockets / "hs", self.master_address)  # OnionbalanceInstance
        run_coroutine(_serve_node_service(host.tor, host.sockets / "hs", host.backend_port),
                      timeout=60)
        host.backend = start_backend_process(host.node_id, host.backend_port,
                                             host.root / "backend.log")

    def add_host(self, index: int) -> DaemonHost:
        """Host ``index`` (beyond ``nodes``), a machine with no node yet: its tor, up and
        reachable from its namespace at ``<sockets>/socks.sock`` (and control.sock); its
        node directory ``root`` is for ``onionmesh join --dir``."""
        if not self.n < index <= self.lab.n_hosts or index in self.hosts:
            raise ValueError(f"host {index} is not an empty host of this lab")
        host = self._new_host(index)
        self.hosts[index] = host
        return host

    def adopt_node(self, index: int) -> None:
        """Host ``index``'s node, made by ``onionmesh join --dir <its root>``: put the
        lab's host settings into its config (its tor over unix sockets, the interface
        name, the alert file) and serve its own onion service; then ``start_node``."""
        host = self.hosts[index]
        for section, keys in self._host_settings(index, host.sockets).items():
            self.update_config(index, section, **keys)
        for section, keys in self.settings.items():
            self.update_config(index, section, **keys)
        self._serve_node(host)

    def cli(self, index: int, *args: str, stdin: str = "",
            timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """``onionmesh ARGS`` run in host ``index``'s namespace, as its operator would."""
        return subprocess.run(
            [*self.lab.prefix_for(index), sys.executable, "-m", "onionmesh.cli", *args],
            input=stdin, capture_output=True, text=True, timeout=timeout, check=False)

    def start_node(self, index: int, *, env: dict[str, str] | None = None) -> None:
        """Start node ``index``'s daemon; ``env`` adds variables (the test clock hook)."""
        host = self.hosts[index]
        log = open(host.log_path, "ab")  # noqa: SIM115 (handed to the child)
        host.proc = self.lab.popen(
            index, [sys.executable, "-m", "onionmesh.cli", "run", "-c", str(host.config_path)],
            stdout=log, stderr=log, stdin=subprocess.DEVNULL,
            env=None if env is None else {**os.environ, **env})
        log.close()

    def kill_node(self, index: int) -> None:
        """SIGKILL node ``index``'s daemon (by its PID) and reap it; its tor runs on."""
        proc = self.hosts[index].proc
        assert proc is not None and proc.poll() is None, f"n{index} is not running"
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    def stop_node(self, index: int) -> int | None:
        """SIGTERM node ``index``'s daemon (a clean stop: it says Leave); its exit code."""
        proc = self.hosts[index].proc
        stop_processes([proc], grace=30)
        return None if proc is None else proc.returncode

    def update_config(self, index: int, section: str, **keys: Any) -> None:
        """Set ``keys`` in node ``index``'s ``[section]`` (read at its next start)."""
        import tomllib

        from onionmesh.node.cluster_setup import render_config

        path = self.hosts[index].config_path
        sections = tomllib.loads(path.read_text())
        sections.setdefault(section, {}).update(keys)
        path.write_text(render_config(sections))

    def status(self, index: int) -> StatusDocument | None:
        try:
            return read_status(self.hosts[index].status_socket, timeout=5.0)
        except (StatusUnavailable, StatusDocumentError, OSError):
            return None

    def path(self, index: int, peer: int) -> str | None:
        status = self.status(index)
        if status is None or status.coordination is None:
            return None
        view = status.coordination.peers.get(f"n{peer}")
        return None if view is None else view.path.value

    def alerts(self, index: int) -> list[dict[str, Any]]:
        """The alerts node ``index`` delivered to its ``[alerts] command`` so far."""
        try:
            lines = (self.hosts[index].root / "alerts.jsonl").read_text().splitlines()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in lines if line.strip()]

    def log_text(self, index: int) -> str:
        try:
            return self.hosts[index].log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_until(self, check: Callable[[], object], timeout: float, what: str,
                   interval: float = 0.5) -> float:
        start = time.monotonic()
        while True:
            if check():
                return time.monotonic() - start
            if time.monotonic() - start > timeout:
                logs = "\n".join(f"--- {h.node_id}\n" + "\n".join(
                    self.log_text(i).splitlines()[-30:]) for i, h in self.hosts.items())
                raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{logs}")
            time.sleep(interval)  # poll period of a bounded wait

    def stop(self, keep_logs_in: Path | None = None) -> None:
        """Stop everything the lab started (by PID), remove its namespaces and tables;
        ``keep_logs_in``: first copy the nodes' logs and alerts there."""
        stop_processes((host.proc for host in self.hosts.values()), grace=30)
        stop_processes((host.backend for host in self.hosts.values()), grace=10)
        self.lab.down()
        for host in self.hosts.values():
            host.tor.stop()
        if keep_logs_in is not None:
            for kept in [*self.root.rglob("*.log"), *self.root.rglob("alerts.jsonl")]:
                target = keep_logs_in / kept.relative_to(self.root)
                target.parent.mkdir(parents=True, exist_ok=True)
                with contextlib.suppress(OSError):
                    shutil.copyfile(kept, target)
        shutil.rmtree(self.root, ignore_errors=True)
