"""A process cluster for tests, benchmarks and the demo: ``n`` ``onionmesh run`` nodes on a
private Tor network (:class:`onionmesh.testnet.TorNetwork`), each a subprocess with its own
managed tor and a tiny web backend, coordinating over UDP on 127.0.0.1.

:class:`NodeCluster` writes the configs with the code behind ``onionmesh init`` /
``add-node`` / ``join``, starts and kills nodes by PID, and reads their status documents
through the status socket, as an operator's ``onionmesh status`` does.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from onionmesh.config import load_config
from onionmesh.node.testnet_options import network_tor_options
from onionmesh.status_document import StatusDocument, StatusDocumentError, read_status
from onionmesh.status_socket import StatusUnavailable
from onionmesh.testnet.backend import start_backend_process
from onionmesh.testnet.errors import ClusterError
from onionmesh.testnet.network import TorNetwork
from onionmesh.tor.process import log_tail, pid_alive, process_start_time, stop_pid
from onionmesh.tor.torrc import REND_LOG

Docs = dict[str, StatusDocument]  # status documents of the nodes that answer, by node id


@dataclass
class ClusterNode:
    """One ``onionmesh run`` node of a :class:`NodeCluster`: its files, backend and process."""

    node_id: str
    root: Path
    listen: str  # coordination address host:port (UDP)
    backend_port: int
    env: dict[str, str] = field(default_factory=dict)  # extra environment (e.g. a clock offset)
    proc: subprocess.Popen[bytes] | None = None
    start_time: int | None = None
    backend: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def config_path(self) -> Path:
        return self.root / "onionmesh.toml"

    @property
    def log_path(self) -> Path:
        return self.root / "node.log"

    @property
    def status_socket(self) -> Path:
        """Where ``onionmesh status`` connects (the daemon may move it to a short path)."""
        from onionmesh.node.keyfiles import status_socket_path

        return status_socket_path(load_config(self.config_path))

    def torrc_value(self, option: str) -> str | None:
        """An option of the torrc the daemon wrote for its managed tor (None if absent)."""
        with contextlib.suppress(OSError):
            for line in (self.root / "state" / "tor" / "torrc").read_text().splitlines():
                key, _, value = line.strip().partition(" ")
                if key == option:
                    return value.strip()
        return None

    @property
    def udp_port(self) -> int:
        return int(self.listen.rpartition(":")[2])

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        """Start ``onionmesh run`` for this node (logs appended to ``node.log``)."""
        if self.running():
            raise ClusterError(f"node {self.node_id} is already running (PID {self.pid})")
        self.starts += 1
        with open(self.log_path, "ab") as log_file:
            log_file.write(f"---- start #{self.starts} at {time.time():.3f}\n".encode())
            log_file.flush()
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "onionmesh.cli", "run", "-c", str(self.config_path)],
                stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file,
                env={**os.environ, **self.env}, start_new_session=True,
            )
        self.start_time = process_start_time(self.proc.pid)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to the node daemon (by its PID). SIGKILL takes its tor down with it
        at once, like a machine dying (on its own, a managed tor only notices its dead
        owner on its next periodic check)."""
        if self.proc is None or self.proc.poll() is not None:
            raise ClusterError(f"node {self.node_id} is not running")
        tor_pid = self.tor_pid()
        os.kill(self.proc.pid, sig)
        if sig == signal.SIGKILL and tor_pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(tor_pid, signal.SIGKILL)
        if sig in (signal.SIGKILL, signal.SIGTERM):
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(30.0)

    def tor_pid(self) -> int | None:
        """PID of this node's managed tor (from its PidFile), if it runs."""
        pid_file = self.torrc_value("PidFile")
        if pid_file is None:
            return None
        with contextlib.suppress(OSError, ValueError, IndexError):
            pid = int(Path(pid_file).read_text().split()[0])
            if pid_alive(pid) and _is_tor_of(pid, self.root):
                return pid
        return None

    def stop(self) -> None:
        """SIGTERM, a bounded wait, then SIGKILL; and the backend. By PID only."""
        if self.proc is not None and self.proc.poll() is None:
            stop_pid(self.proc.pid, self.start_time, timeout=20.0)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(5.0)
        self.stop_tor_leftover()

    def stop_tor_leftover(self) -> None:
        """A SIGKILLed daemon's tor exits by itself within seconds; make sure of it."""
        pid = self.tor_pid()
        if pid is not None:
            stop_pid(pid, process_start_time(pid), timeout=10.0)

    def stop_backend(self) -> None:
        if self.backend is not None and self.backend.poll() is None:
            stop_pid(self.backend.pid, None, timeout=5.0)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.backend.wait(5.0)

    def status(self, timeout: float = 5.0) -> StatusDocument | None:
        """The node's status document, or None when it does not answer."""
        try:
            return read_status(self.status_socket, timeout)
        except StatusUnavailable:
            return None
        except StatusDocumentError as exc:
            raise ClusterError(f"node {self.node_id}: {exc}") from None

    def log_tail(self, lines: int = 20) -> str:
        return log_tail(self.log_path, lines)


def _is_tor_of(pid: int, root: Path) -> bool:
    """True if ``pid`` is a tor whose command line names a torrc under ``root``."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return any(str(root).encode() in part for part in cmdline)


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


#: Fast timings for tests and the fast benchmark profile (1 s heartbeats, short lease).
FAST_PROFILE: dict[str, dict[str, Any]] = {
    "coordination": {"heartbeat_interval": 1.0, "lease_duration": 4.0, "lease_grace": 1.0},
    "resilience": {"removal_grace_period": 5.0},
    "service": {"intro_poll_interval": 2.0},
    "publishing": {"min_publish_interval": 1.0},
}
#: Every node runs on a private test network whose clock is the machine's; the kernel's NTP
#: state in a container says nothing, so the NTP requirement is off (the consensus check stays).
TESTNET_SETTINGS: dict[str, dict[str, Any]] = {"resilience": {"require_ntp_sync": False}}


def _merged(*layers: dict[str, dict[str, Any]] | None) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for layer in layers:
        for section, keys in (layer or {}).items():
            out.setdefault(section, {}).update(keys)
    return out


class NodeCluster:
    """``n`` onionmesh nodes on a private Tor network, each an ``onionmesh run`` subprocess
    with its own managed tor, coordinating over UDP on 127.0.0.1.

    Configs come from the same code as ``onionmesh init`` (first node) and
    ``onionmesh add-node`` + ``onionmesh join --master-key`` (the others), so every node
    may publish. ``settings`` adds config keys (e.g. :data:`FAST_PROFILE`).
    """

    def __init__(self, network: TorNetwork, base_dir: Path, n_nodes: int = 3, *,
                 settings: dict[str, dict[str, Any]] | None = None,
                 node_settings: dict[str, dict[str, dict[str, Any]]] | None = None,
                 legacy: bool = False, standbys: Sequence[str] = ()) -> None:
        """``legacy``: nodes as made before the signed roster (for the upgrade test).
        ``standbys``: nodes that join without the master key, so their roster entry
        may not publish (``n1`` always has it)."""
        self.network = network
        self.legacy = legacy
        self.standbys = set(standbys)
        self.base_dir = Path(base_dir)
        self.n_nodes = n_nodes
        self.settings = _merged(TESTNET_SETTINGS, settings)
        self.node_settings = node_settings or {}
        self.nodes: dict[str, ClusterNode] = {}
        # Nodes outside the cluster (add_outsider): not in its roster, never in statuses().
        self.outsiders: dict[str, ClusterNode] = {}
        self.master_address = ""

    def create(self) -> None:
        """Write every node's config and keys, start every backend (nothing runs yet)."""
        from onionmesh.node.cluster_setup import (
            init_cluster,
            issue_token,
            join_cluster,
            local_exchange,
        )

        network_options = network_tor_options(self.network)
        self.base_dir.mkdir(parents=True, exist_ok=True)
        for i in range(1, self.n_nodes + 1):
            node_id = f"n{i}"
            node = ClusterNode(node_id, self.base_dir / node_id,
                               f"127.0.0.1:{_free_udp_port()}", _free_tcp_port())
            settings = _merged(self.settings, self.node_settings.get(node_id))
            ports = [f"80 127.0.0.1:{node.backend_port}"]
            # The service side of every introduction and rendezvous, for reading a GET
            # that failed after its INTRODUCE_ACK (tests keep these logs).
            tor_options = [*network_options,
                           f"Log [rend]info file {node.root / 'state' / 'tor' / REND_LOG}"]
            if i == 1:
                result = init_cluster(node.root, node_id=node_id, listen=node.listen,
                                      tor_options=tor_options, service_ports=ports,
                                      settings=settings)
                self.master_address = result.master_address
                first_key = result.files.master_key
            else:
                # add-node + join, the sponsor's answer computed here (n1 is not running).
                sponsor = load_config(self.nodes["n1"].config_path)
                publishes = node_id not in self.standbys
                join_cluster(issue_token(sponsor, may_publish=publishes), node.root,
                             node_id=node_id, listen=node.listen,
                             master_key=first_key if publishes else None,
                             tor_options=tor_options,
                             service_ports=ports, settings=settings,
                             exchange=local_exchange(sponsor))
            node.backend = start_backend_process(node_id, node.backend_port,
                                                 node.root / "backend.log")
            self.nodes[node_id] = node
        # Full mesh of configured peers: every node can find every other at once, even
        # when the inviter (n1) is the one that is down.
        self._add_all_peers()
        if self.legacy:
            self._make_legacy()

    def add_outsider(self, node_id: str,
                     settings: dict[str, dict[str, Any]] | None = None) -> ClusterNode:
        """A node outside the cluster with a copy of the master key: a one-node cluster of
        its own (``onionmesh init``), its master key then replaced by the cluster's, as a
        restored old node or a misconfigured copy would be. It knows no member and no
        member knows it. Created (backend running), not started; stopped by :meth:`stop`.
        """
        from onionmesh.node.cluster_setup import NodeFiles, init_cluster

        if node_id in self.nodes or node_id in self.outsiders:
            raise ClusterError(f"node id {node_id} is taken")
        node = ClusterNode(node_id, self.base_dir / node_id, f"127.0.0.1:{_free_udp_port()}",
                           _free_tcp_port())
        result = init_cluster(node.root, node_id=node_id, listen=node.listen,
                              tor_options=network_tor_options(self.network),
                              service_ports=[f"80 127.0.0.1:{node.backend_port}"],
                              settings=_merged(self.settings, settings))
        ours = NodeFiles(self.nodes["n1"].root).master_dir
        for source in ours.iterdir():  # secret key, public key, hostname
            target = result.files.master_dir / source.name
            target.write_bytes(source.read_bytes())
            target.chmod(source.stat().st_mode & 0o777)
        text = node.config_path.read_text().replace(result.master_address, self.master_address)
        node.config_path.write_text(text)
        if load_config(node.config_path).master.address != self.master_address:
            raise ClusterError(f"{node_id}'s config does not name the cluster's master address")
        node.backend = start_backend_process(node_id, node.backend_port,
                                             node.root / "backend.log")
        self.outsiders[node_id] = node
        return node

    def _make_legacy(self) -> None:
        """Turn the nodes into what `init`/`join` made before the signed roster: no roster,
        no authority key, no token bookkeeping, peer keys pinned in the config."""
        from onionmesh.node.keyfiles import load_node_key

        keys = {nid: load_node_key(load_config(n.config_path)).public_key.hex()
                for nid, n in self.nodes.items()}
        for nid, node in self.nodes.items():
            for name in ("roster", "authority_key", "state/join_tokens",
                         "state/join_tokens.lock"):
                (node.root / name).unlink(missing_ok=True)
            lines, skip = [], False
            for line in node.config_path.read_text().splitlines():
                if line.startswith("["):
                    skip = line == "[membership]"
                if skip:
                    continue
                lines.append(line)
                if line.startswith("peers = "):
                    pinned = ", ".join(f'{o} = "{keys[o]}"' for o in self.nodes if o != nid)
                    lines.append("peer_keys = { " + pinned + " }")
            node.config_path.write_text("\n".join(lines) + "\n")
            load_config(node.config_path)  # still valid

    def _add_all_peers(self) -> None:
        from onionmesh.node.keyfiles import load_node_key

        keys = {nid: load_node_key(load_config(n.config_path)).public_key.hex()
                for nid, n in self.nodes.items()}
        for nid, node in self.nodes.items():
            text = node.config_path.read_text()
            peers = [f"{o}@{self.nodes[o].listen}" for o in self.nodes if o != nid]
            peer_keys = ", ".join(f'{o} = "{keys[o]}"' for o in self.nodes if o != nid)
            lines = []
            for line in text.splitlines():
                if line.startswith("peers = "):
                    line = "peers = [" + ", ".join(f'"{p}"' for p in peers) + "]"
                elif line.startswith("peer_keys = "):
                    line = "peer_keys = { " + peer_keys + " }"
                lines.append(line)
            node.config_path.write_text("\n".join(lines) + "\n")
            load_config(node.config_path)  # still valid

    def start(self, node_ids: Sequence[str] | None = None) -> None:
        for node_id in node_ids or list(self.nodes):
            self.nodes[node_id].start()

    def stop(self) -> None:
        """Stop every node (outsiders too) and backend by PID (each node's tor stops with
        it)."""
        everyone = [*self.nodes.values(), *self.outsiders.values()]
        for node in everyone:
            with contextlib.suppress(Exception):
                node.stop()
        for node in everyone:
            with contextlib.suppress(Exception):
                node.stop_backend()

    def leftover_pids(self) -> list[int]:
        pids = []
        for node in [*self.nodes.values(), *self.outsiders.values()]:
            if node.proc is not None and node.proc.poll() is None:
                pids.append(node.proc.pid)
            if node.backend is not None and node.backend.poll() is None:
                pids.append(node.backend.pid)
        return pids

    def statuses(self) -> Docs:
        """Status documents of the nodes that answer, by node id."""
        out = {}
        for node_id, node in self.nodes.items():
            if node.running():
                doc = node.status()
                if doc is not None:
                    out[node_id] = doc
        return out

    def publishers(self, docs: Docs | None = None) -> set[str]:
        """Nodes that call themselves publisher right now."""
        docs = self.statuses() if docs is None else docs
        return {nid for nid, d in docs.items() if d.is_publisher}

    def check_dead(self) -> None:
        """A node that exited on its own is a failure worth its log tail."""
        for node in self.nodes.values():
            if node.proc is not None and node.proc.poll() is not None and node.starts and \
                    node.proc.returncode not in (0, -signal.SIGKILL, -signal.SIGTERM):
                raise ClusterError(f"node {node.node_id} exited with {node.proc.returncode}:\n"
                                f"{node.log_tail()}")

    async def wait_until(self, predicate: Callable[[Docs], bool],
                         timeout: float, what: str, poll: float = 0.5) -> Docs:
        """Poll the status documents until ``predicate(docs)`` (bounded); returns the docs."""
        deadline = time.monotonic() + timeout
        while True:
            self.check_dead()
            docs = await asyncio.to_thread(self.statuses)
            if predicate(docs):
                return docs
            if time.monotonic() >= deadline:
                raise ClusterError(f"{what}: not reached within {timeout:g} s; last status:\n"
                                + summarize(docs))
            await asyncio.sleep(poll)  # poll period between real checks


def summarize(docs: Docs) -> str:
    """One short line per node: role, publisher, peers by state, intro points, uploads."""
    lines = []
    for node_id, doc in sorted(docs.items()):
        cluster = doc.cluster
        states = ", ".join(f"{p}:{v.state}" for p, v in sorted(doc.peers.items()))
        ok = sum(1 for u in doc.uploads.values() if u.result == "uploaded")
        age = doc.descriptor_age
        lines.append(
            f"{node_id}: {doc.role or doc.node.state}, "
            f"publisher {(cluster.publisher if cluster else None) or '-'} "
            f"(term {cluster.term if cluster else None}), "
            f"peers [{states}], intro points {doc.intro_points}, "
            f"published {doc.plan.per_node if doc.plan else {}}, "
            f"HSDirs ok {ok}/{len(doc.uploads)}, "
            f"descriptor age {'-' if age is None else f'{age:.0f} s'}"
        )
    return "\n".join(lines) or "(no node answers)"


def cluster_ready(cluster: NodeCluster, docs: Docs) -> bool:
    """Every node answers, one publisher, its descriptor carries every node and was accepted."""
    pubs = cluster.publishers(docs)
    if set(docs) != set(cluster.nodes) or len(pubs) != 1:
        return False
    doc = docs[next(iter(pubs))]
    return doc.carried_nodes() == set(cluster.nodes) and doc.descriptor_age is not None
