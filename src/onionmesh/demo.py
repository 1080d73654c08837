"""``make demo``: a 3-node onionmesh cluster serving one onion address, on a private Tor network.

Run as ``python -m onionmesh.demo``. Everything runs on this machine (127.0.0.1 only):

1. a private Tor network (10 directory authorities, each also an HSDir);
2. three nodes, each an ``onionmesh run`` process with its own tor and a tiny web page that
   answers with the node's name; their configs come from the code behind ``onionmesh init``
   (first node), ``onionmesh add-node`` and ``onionmesh join --master-key`` (the others);
3. the nodes find each other over UDP, elect a publisher, and the publisher uploads the master
   descriptor carrying every node's introduction points;
4. ``onionmesh status`` of the publisher, then GETs of ``http://<master>.onion/`` through a
   client tor, showing which node answered;
5. a live status line until Ctrl-C: kill a node (its PID is printed) and watch the cluster
   heal: its intro points leave the descriptor, a standby takes over if it was the publisher,
   and the demo restarts it after a while so it comes back. ``--once`` exits after step 4.

Every process is stopped by PID at the end. The module also holds the process-cluster
harness (:class:`NodeCluster`) that the cluster tests and ``bench/failover.py`` use.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from onionmesh.config import load_config
from onionmesh.errors import OnionmeshError
from onionmesh.status_socket import StatusUnavailable, query_status
from onionmesh.testnet import SocksError, TorClient, TorNetwork
from onionmesh.testnet.backend import start_backend_process
from onionmesh.tor.process import log_tail, pid_alive, process_start_time, stop_pid

log = logging.getLogger(__name__)

# 10 relays, not the minimal 5: a tor client maps an opened intro circuit to the FIRST intro
# point in the descriptor on that relay (hs_client.c, setup_intro_circ_auth_key), so when
# several nodes' intro points share a relay only the first-listed node is ever reached. With
# 5 relays and 3 nodes x 3 intro points that hides a whole node about every other run.
N_AUTHORITIES = 10
GET_TIMEOUT = 30.0
GET_RETRY_FOR = 60.0  # a fresh client may miss the first descriptor fetch (0xF0)
STATUS_INTERVAL = 2.0
RESTART_AFTER = 45.0  # the demo brings a killed node back after this long


class DemoError(OnionmeshError):
    """The demo (or the cluster harness) could not bring a cluster up or reach it."""


class _Stop(Exception):
    """Raised from the SIGTERM handler so teardown runs like after Ctrl-C."""


# ============================================================================ process cluster


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
            raise DemoError(f"node {self.node_id} is already running (PID {self.pid})")
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
            raise DemoError(f"node {self.node_id} is not running")
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

    def status(self, timeout: float = 5.0) -> dict[str, Any] | None:
        """The node's status document, or None when it does not answer."""
        try:
            return query_status(self.status_socket, timeout)
        except StatusUnavailable:
            return None

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


def network_tor_options(network: TorNetwork) -> list[str]:
    """``[tor] extra_torrc`` lines putting a node tor on ``network``: its DirAuthority lines
    (as the harness wrote them into every torrc) and ``TestingTorNetwork 1``."""
    torrc = network.authorities[0].data_dir / "torrc"
    lines = [ln.strip() for ln in torrc.read_text().splitlines() if ln.startswith("DirAuthority ")]
    if not lines:
        raise DemoError(f"{torrc} has no DirAuthority lines")
    return ["TestingTorNetwork 1", *lines]


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
                 node_settings: dict[str, dict[str, dict[str, Any]]] | None = None) -> None:
        self.network = network
        self.base_dir = Path(base_dir)
        self.n_nodes = n_nodes
        self.settings = _merged(TESTNET_SETTINGS, settings)
        self.node_settings = node_settings or {}
        self.nodes: dict[str, ClusterNode] = {}
        self.master_address = ""

    def create(self) -> None:
        """Write every node's config and keys, start every backend (nothing runs yet)."""
        from onionmesh.node.cluster_setup import init_cluster, join_cluster, make_token

        tor_options = network_tor_options(self.network)
        self.base_dir.mkdir(parents=True, exist_ok=True)
        for i in range(1, self.n_nodes + 1):
            node_id = f"n{i}"
            node = ClusterNode(node_id, self.base_dir / node_id,
                               f"127.0.0.1:{_free_udp_port()}", _free_tcp_port())
            settings = _merged(self.settings, self.node_settings.get(node_id))
            ports = [f"80 127.0.0.1:{node.backend_port}"]
            if i == 1:
                result = init_cluster(node.root, node_id=node_id, listen=node.listen,
                                      tor_options=tor_options, service_ports=ports,
                                      settings=settings)
                self.master_address = result.master_address
                first_key = result.files.master_key
            else:
                token = make_token(load_config(self.nodes["n1"].config_path))
                join_cluster(token, node.root, node_id=node_id, listen=node.listen,
                             master_key=first_key, tor_options=tor_options,
                             service_ports=ports, settings=settings)
            node.backend = start_backend_process(node_id, node.backend_port,
                                                 node.root / "backend.log")
            self.nodes[node_id] = node
        # Full mesh of configured peers: every node can find every other at once, even
        # when the inviter (n1) is the one that is down.
        self._add_all_peers()

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
        """Stop every node and backend by PID (each node's tor stops with it)."""
        for node in self.nodes.values():
            with contextlib.suppress(Exception):
                node.stop()
        for node in self.nodes.values():
            with contextlib.suppress(Exception):
                node.stop_backend()

    def leftover_pids(self) -> list[int]:
        pids = []
        for node in self.nodes.values():
            if node.proc is not None and node.proc.poll() is None:
                pids.append(node.proc.pid)
            if node.backend is not None and node.backend.poll() is None:
                pids.append(node.backend.pid)
        return pids

    def statuses(self) -> dict[str, dict[str, Any]]:
        """Status documents of the nodes that answer, by node id."""
        out = {}
        for node_id, node in self.nodes.items():
            if node.running():
                doc = node.status()
                if doc is not None:
                    out[node_id] = doc
        return out

    def publishers(self, docs: dict[str, dict[str, Any]] | None = None) -> set[str]:
        """Nodes that call themselves publisher right now."""
        docs = self.statuses() if docs is None else docs
        return {nid for nid, d in docs.items() if d.get("cluster", {}).get("role") == "publisher"}

    def check_dead(self) -> None:
        """A node that exited on its own is a failure worth its log tail."""
        for node in self.nodes.values():
            if node.proc is not None and node.proc.poll() is not None and node.starts and \
                    node.proc.returncode not in (0, -signal.SIGKILL, -signal.SIGTERM):
                raise DemoError(f"node {node.node_id} exited with {node.proc.returncode}:\n"
                                f"{node.log_tail()}")

    async def wait_until(self, predicate: Callable[[dict[str, dict[str, Any]]], bool],
                         timeout: float, what: str, poll: float = 0.5) -> dict[str, Any]:
        """Poll the status documents until ``predicate(docs)`` (bounded); returns the docs."""
        deadline = time.monotonic() + timeout
        while True:
            self.check_dead()
            docs = await asyncio.to_thread(self.statuses)
            if predicate(docs):
                return docs
            if time.monotonic() >= deadline:
                raise DemoError(f"{what}: not reached within {timeout:g} s; last status:\n"
                                + summarize(docs))
            await asyncio.sleep(poll)  # poll period between real checks


def summarize(docs: dict[str, dict[str, Any]]) -> str:
    """One short line per node: role, publisher, peers by state, intro points, uploads."""
    lines = []
    for node_id, doc in sorted(docs.items()):
        cluster = doc.get("cluster") or {}
        peers = doc.get("peers") or {}
        states = ", ".join(f"{p}:{v.get('state')}" for p, v in sorted(peers.items()))
        plan = doc.get("plan") or {}
        uploads = doc.get("uploads") or {}
        ok = sum(1 for u in uploads.values() if u.get("result") == "uploaded")
        age = doc.get("descriptor_age")
        lines.append(
            f"{node_id}: {cluster.get('role', doc.get('node', {}).get('state'))}, "
            f"publisher {cluster.get('publisher') or '-'} (term {cluster.get('term')}), "
            f"peers [{states}], intro points {doc.get('intro_points', {})}, "
            f"published {plan.get('per_node', {})}, HSDirs ok {ok}/{len(uploads)}, "
            f"descriptor age {'-' if age is None else f'{age:.0f} s'}"
        )
    return "\n".join(lines) or "(no node answers)"




# ============================================================================ the demo


def _cli(*args: str) -> str:
    """Run the onionmesh CLI (as an operator would) and return what it printed."""
    result = subprocess.run([sys.executable, "-m", "onionmesh.cli", *args], capture_output=True,
                            text=True, timeout=30, check=False)
    return (result.stdout + result.stderr).rstrip()


def _indent(text: str, prefix: str = "    ") -> str:
    return "\n".join(prefix + line for line in text.splitlines())


async def visit(client: TorClient, master: str, names: set[str], min_gets: int,
                say: Callable[[str], None]) -> set[str]:
    """GET the master at least ``min_gets`` times (NEWNYM between) and until every node
    answered or 6 fetches per node were made; returns the node names that answered."""
    seen: set[str] = set()
    say(f"Fetching http://{master}/ through a client tor (new circuits before each "
        "fetch; tor allows that once per 10 s):")
    for i in range(1, max(min_gets, 6 * len(names)) + 1):
        started = time.monotonic()
        try:
            response = await client.ahttp_get(master, "/", timeout=GET_TIMEOUT,
                                              retry_for=GET_RETRY_FOR)
        except SocksError as exc:
            say(f"  GET {i}: failed: {exc}")
        else:
            name = response.headers.get("x-onionmesh-node", response.text.strip())
            seen.add(name)
            say(f"  GET {i}: HTTP {response.status}, answered by {name} "
                f"({time.monotonic() - started:.1f} s)")
        if i >= min_gets and seen >= names:
            break
        await client.anewnym()
    say(f"Nodes that answered: {', '.join(sorted(seen)) or 'none'} "
        f"(of {', '.join(sorted(names))})")
    return seen


def status_line(cluster: NodeCluster, docs: dict[str, dict[str, Any]]) -> str:
    """Short live view: each node's role, what the descriptor carries, its age."""
    parts = []
    for node_id, node in cluster.nodes.items():
        doc = docs.get(node_id)
        if not node.running():
            parts.append(f"{node_id} DOWN")
        elif doc is None or doc.get("cluster") is None:
            parts.append(f"{node_id} starting")
        else:
            parts.append(f"{node_id} {doc['cluster']['role']}")
    pubs = cluster.publishers(docs)
    line = " | ".join(parts)
    if len(pubs) == 1:
        doc = docs[next(iter(pubs))]
        per_node = (doc.get("plan") or {}).get("per_node", {})
        uploads = (doc.get("uploads") or {}).values()
        ok = sum(1 for u in uploads if u["result"] == "uploaded")
        age = doc.get("descriptor_age")
        carried = ", ".join(f"{k} {v}" for k, v in sorted(per_node.items())) or "nothing"
        line += (f" || descriptor intro points: {carried} | HSDirs ok {ok}/{len(uploads)} | "
                 f"age {'-' if age is None else f'{age:.0f} s'}")
    elif len(pubs) > 1:
        line += f" || {len(pubs)} publishers (resolving)"
    else:
        line += " || no publisher yet"
    return line


class HealWatcher:
    """Turns status changes into one-line events, and restarts killed nodes after a while."""

    def __init__(self, cluster: NodeCluster, say: Callable[[str], None], restart: bool) -> None:
        self.cluster = cluster
        self.say = say
        self.restart = restart
        self.down_since: dict[str, float] = {}
        self.publisher: str | None = None
        self.carried: tuple[str, ...] = ()

    def update(self, docs: dict[str, dict[str, Any]]) -> None:
        stamp = time.strftime("%H:%M:%S")
        for node_id, node in self.cluster.nodes.items():
            if not node.running() and node_id not in self.down_since:
                self.down_since[node_id] = time.monotonic()
                code = node.proc.returncode if node.proc is not None else None
                later = f"; the demo restarts it in {RESTART_AFTER:.0f} s" if self.restart else ""
                self.say(f"{stamp} {node_id} is down (exit {code}){later}")
            elif node_id in self.down_since and node.running():
                del self.down_since[node_id]
        pubs = self.cluster.publishers(docs)
        if len(pubs) == 1:
            pub = next(iter(pubs))
            if pub != self.publisher:
                term = docs[pub]["cluster"]["term"]
                self.say(f"{stamp} publisher is now {pub} (term {term})")
                self.publisher = pub
            carried = tuple(sorted(k for k, v in ((docs[pub].get("plan") or {})
                                                  .get("per_node", {})).items() if v))
            if carried != self.carried:
                self.say(f"{stamp} the descriptor now carries intro points of "
                         f"{', '.join(carried) or 'no node'}")
                self.carried = carried
        if self.restart:
            for node_id, since in list(self.down_since.items()):
                if time.monotonic() - since >= RESTART_AFTER:
                    self.cluster.nodes[node_id].stop_tor_leftover()  # a lone `kill -9 <daemon>`
                    self.cluster.nodes[node_id].start()
                    del self.down_since[node_id]
                    self.say(f"{stamp} restarted {node_id} "
                             f"(PID {self.cluster.nodes[node_id].pid})")


async def live_status(cluster: NodeCluster, say: Callable[[str], None], restart: bool) -> None:
    """Events as they happen plus a refreshed status line, until cancelled."""
    tty = sys.stdout.isatty()
    watcher = HealWatcher(cluster, lambda s: say(("\r\x1b[K" if tty else "") + s), restart)
    last_plain = 0.0
    while True:
        docs = await asyncio.to_thread(cluster.statuses)
        watcher.update(docs)
        line = status_line(cluster, docs)
        if tty:
            sys.stdout.write("\r\x1b[K" + line[: os.get_terminal_size().columns - 1])
            sys.stdout.flush()
        elif time.monotonic() - last_plain >= 30.0:
            say(line)  # a log file gets one line every 30 s, not a flood
            last_plain = time.monotonic()
        await asyncio.sleep(STATUS_INTERVAL)  # display refresh period


async def run_demo(network: TorNetwork, base_dir: Path, args: argparse.Namespace,
                   say: Callable[[str], None]) -> int:
    settings = None if args.default_timings else FAST_PROFILE
    cluster = NodeCluster(network, base_dir / "cluster", args.nodes, settings=settings)
    try:
        cluster.create()
        n1 = cluster.nodes["n1"]
        say(f"Cluster of {args.nodes} nodes for master address {cluster.master_address}")
        say(f"  configs: {n1.config_path} (like `onionmesh init`), the others like "
            "`onionmesh add-node` + `onionmesh join --master-key`")
        if settings:
            say("  fast demo timings: 1 s heartbeats, 4 s lease (defaults: 5 s, 15 s)")
        cluster.start()
        for node_id, node in cluster.nodes.items():
            say(f"  {node_id}: onionmesh run PID {node.pid}, coordination udp {node.listen}")
        say("Waiting for the nodes to bootstrap their tors, elect a publisher and publish…")
        started = time.monotonic()
        docs = await cluster.wait_until(lambda d: cluster_ready(cluster, d), 240.0,
                                        "cluster published")
        pub = next(iter(cluster.publishers(docs)))
        say(f"  published after {time.monotonic() - started:.0f} s. "
            f"`onionmesh status -c {cluster.nodes[pub].config_path}`:")
        say(_indent(await asyncio.to_thread(
            _cli, "status", "-c", str(cluster.nodes[pub].config_path))))
        client = await network.aadd_client("visitor")
        seen = await visit(client, cluster.master_address, set(cluster.nodes), args.gets, say)
        if args.once:
            return 0 if seen == set(cluster.nodes) else 1
        say("")
        say("Now kill a node and watch the cluster heal, for example:")
        for node_id, node in cluster.nodes.items():
            role = docs.get(node_id, {}).get("cluster", {}).get("role", "?")
            say(f"  kill -9 {node.pid}    # {node_id} ({role})")
        say(f"Status of any node: {sys.executable} -m onionmesh.cli status -c "
            f"{n1.config_path}   (Ctrl-C stops the demo)")
        await live_status(cluster, say, restart=not args.no_restart)
        return 0
    finally:
        cluster.stop()
        leftovers = cluster.leftover_pids()
        if leftovers:
            say(f"  cluster processes still running, please check: PIDs {leftovers}")


def cluster_ready(cluster: NodeCluster, docs: dict[str, dict[str, Any]]) -> bool:
    """Every node answers, one publisher, its descriptor carries every node and was accepted."""
    pubs = cluster.publishers(docs)
    if set(docs) != set(cluster.nodes) or len(pubs) != 1:
        return False
    doc = docs[next(iter(pubs))]
    carried = {k for k, v in ((doc.get("plan") or {}).get("per_node", {})).items() if v}
    return carried == set(cluster.nodes) and doc.get("descriptor_age") is not None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m onionmesh.demo",
        description="A self-healing onionmesh cluster on a private Tor network.")
    parser.add_argument("--nodes", type=int, default=3, choices=range(2, 6), metavar="N",
                        help="cluster nodes to start (2-5, default 3)")
    parser.add_argument("--gets", type=int, default=6, metavar="N",
                        help="fetch the master address at least N times (default 6)")
    parser.add_argument("--once", action="store_true",
                        help="exit after the fetches (status 1 if a node never answered)")
    parser.add_argument("--default-timings", action="store_true",
                        help="use the default heartbeat/lease timings instead of fast ones")
    parser.add_argument("--no-restart", action="store_true",
                        help="do not restart killed nodes")
    parser.add_argument("--dir", type=Path, default=None,
                        help="working directory (default: a new temporary directory)")
    parser.add_argument("-v", "--verbose", action="store_true", help="show onionmesh's log")
    return parser


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    raise _Stop(signal.Signals(signum).name)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    def say(text: str) -> None:
        print(text, flush=True)

    # Short default path: each node's tor control socket must fit in a unix socket path.
    base_dir = (args.dir or Path(tempfile.mkdtemp(prefix="omdemo-"))).absolute()
    signal.signal(signal.SIGTERM, _raise_stop)
    network = TorNetwork(base_dir / "tornet", N_AUTHORITIES)
    say(f"Starting a private Tor network: {N_AUTHORITIES} directory authorities on 127.0.0.1 "
        f"(files in {base_dir})…")
    code = 1
    try:
        network.start()
        say(f"  network ready in {network.phase1_seconds or 0:.0f} s")
        code = asyncio.run(run_demo(network, base_dir, args, say))
    except (KeyboardInterrupt, _Stop):
        code = 0
        say("")
    except OnionmeshError as exc:  # TestnetError and DemoError included
        say(f"demo failed: {type(exc).__name__}: {exc}")
        code = 1
    finally:
        say("Stopping every process the demo started (by PID)…")
        network.stop()
        leftovers = network.leftover_pids()
        if leftovers:
            say(f"  still running, please check: PIDs {leftovers}")
            code = code or 1
        else:
            say("  all stopped.")
    return code


if __name__ == "__main__":
    sys.exit(main())
