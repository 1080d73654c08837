"""``make demo``: one master onion address served by several nodes, on a private Tor network.

Run as ``python -m onionmesh.demo``. What it does, all on this machine (127.0.0.1 only):

1. starts a private Tor network (5 directory authorities, each also an HSDir);
2. starts ``--nodes`` node instances: a tor serving its own onion service, configured as an
   instance of the master address, in front of a tiny web page that answers with the node name;
3. publishes the master descriptor with onionmesh's publisher (from a separate "publisher" tor),
   built from the intro points the nodes' tors picked;
4. fetches ``http://<master>.onion/`` through a client tor several times (new circuits between
   fetches) and shows which node answered;
5. keeps running with a one-line live status until Ctrl-C (``--once``: exits after step 4),
   then stops every process it started, by PID.

Everything it starts lives under ``--dir`` (a fresh temporary directory by default).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import random
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
from onionmesh.crypto.keys import Ed25519Identity
from onionmesh.descriptor.intro import IntroPoint
from onionmesh.errors import OnionmeshError
from onionmesh.hsdir.timeperiod import period_length_minutes
from onionmesh.publish.publisher import Publisher, fetch_consensus, merge_intro_points
from onionmesh.status_socket import StatusUnavailable, query_status
from onionmesh.testnet import SocksError, TestnetError, TorClient, TorNetwork
from onionmesh.testnet.backend import start_backend_process
from onionmesh.testnet.nodes import ServiceInstance
from onionmesh.tor.control import TorController
from onionmesh.tor.intro_points import NodeIntroWatcher
from onionmesh.tor.process import log_tail, pid_alive, process_start_time, stop_pid

log = logging.getLogger(__name__)

N_AUTHORITIES = 5
PUBLISH_TIMEOUT = 180.0  # first publish: consensus fetch, intro points, 2 x HSDir uploads
INTRO_POINTS_TIMEOUT = 60.0  # node tors publish their own descriptor ~5 s after start
GET_TIMEOUT = 30.0
GET_RETRY_FOR = 60.0  # a fresh client may miss the first descriptor fetch (0xF0)
STATUS_INTERVAL = 2.0


class DemoError(OnionmeshError):
    """The demo could not bring its network up or reach the master address."""


class _Stop(Exception):
    """Raised from the SIGTERM handler so teardown runs like after Ctrl-C."""


@dataclass
class DemoCluster:
    """The running pieces: node instances, the publisher and its tor, the visiting client."""

    master: Ed25519Identity
    nodes: list[ServiceInstance]
    publisher_tor: TorClient
    client: TorClient
    publisher: Publisher
    watchers: list[NodeIntroWatcher]
    controllers: list[TorController] = field(default_factory=list)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    started_at: float = field(default_factory=time.time)

    @property
    def hostname(self) -> str:
        return self.master.onion_address

    def intro_source(self, period: int) -> list[IntroPoint]:
        """Each node's intro points for ``period``, merged fairly (at most 20)."""
        sets = [w.sets.best_for(period) for w in self.watchers]
        return merge_intro_points([s.intro_points for s in sets if s is not None])

    async def close(self) -> None:
        await self.publisher.stop()
        for task in self.tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for controller in self.controllers:
            with contextlib.suppress(Exception):
                await controller.close()

    def status_line(self, now: float | None = None) -> str:
        """One short line: publisher, HSDir uploads, intro points per node, descriptor age."""
        now = time.time() if now is None else now
        pub = self.publisher
        ok = sum(h.successes for h in pub.tracker.health.values())
        failed = sum(h.failures for h in pub.tracker.health.values())
        published: set[bytes] = set()
        for built in pub.built.values():
            published |= built.intro_key
        per_node = []
        for node, watcher in zip(self.nodes, self.watchers, strict=True):
            keys = {
                ip.auth_key
                for period in watcher.sets.periods()
                if (s := watcher.sets.for_period(period)) is not None
                for ip in s.intro_points
            }
            per_node.append(f"{node.name} {len(keys & published)}")
        ages = [now - b.built_at for b in pub.built.values()]
        age = f"{min(ages):.0f} s" if ages else "none yet"
        return (
            f"publisher {self.publisher_tor.name} | HSDir uploads {ok} ok, {failed} failed | "
            f"intro points in descriptor: {', '.join(per_node)} | descriptor age {age}"
        )


async def start_cluster(network: TorNetwork, n_nodes: int, say: Callable[[str], None]
                        ) -> DemoCluster:
    """Start the node instances, the publisher tor and the client; publish the master."""
    master = Ed25519Identity.generate()
    say(f"Master address: {master.onion_address}")
    nodes = []
    for i in range(1, n_nodes + 1):
        node = await network.aadd_onion_service(f"node{i}", ob_master=master.onion_address)
        nodes.append(node)
        say(f"  node{i} up: tor PID {node.pid}, its own address {node.onion_address[:16]}…")
    publisher_tor = await network.aadd_client("publisher")
    client = await network.aadd_client("visitor")
    say(f"  publisher tor PID {publisher_tor.pid}, visitor (client) tor PID {client.pid}")

    pub_ctl = await TorController.connect(port=publisher_tor.control_port)
    controllers = [pub_ctl]
    try:
        node_ctls = []
        for node in nodes:
            node_ctls.append(await TorController.connect(port=node.control_port))
            controllers.append(node_ctls[-1])
        length = period_length_minutes(await fetch_consensus(pub_ctl))
        publisher = Publisher(pub_ctl, master, lambda period: [], rng=random.Random())
        watchers = [
            NodeIntroWatcher(n.onion_address, period_length=lambda: length, own=ctl,
                             fetcher=pub_ctl, on_change=publisher.intro_points_changed)
            for n, ctl in zip(nodes, node_ctls, strict=True)
        ]
    except BaseException:
        for controller in controllers:
            with contextlib.suppress(Exception):
                await controller.close()
        raise
    cluster = DemoCluster(master, nodes, publisher_tor, client, publisher, watchers, controllers)
    publisher.intro_source = cluster.intro_source
    try:
        await _wait_intro_points(watchers)
        for watcher in watchers:
            cluster.tasks.append(asyncio.create_task(watcher.run(5.0)))
        say("Publishing the master descriptor (both time periods, every responsible HSDir)…")
        started = time.monotonic()
        await publisher.start()
        await publisher.wait_published(PUBLISH_TIMEOUT)
        say(f"  published in {time.monotonic() - started:.1f} s: {cluster.status_line()}")
    except BaseException:
        await cluster.close()
        raise
    return cluster


async def _wait_intro_points(watchers: list[NodeIntroWatcher]) -> None:
    """Bounded poll until every node's tor shows a descriptor with intro points."""
    deadline = time.monotonic() + INTRO_POINTS_TIMEOUT
    while True:
        for watcher in watchers:
            with contextlib.suppress(OnionmeshError, OSError):
                await watcher.poll_once()
        missing = [w.sets.address[:12] for w in watchers if w.sets.best_for(0) is None]
        if not missing:
            return
        if time.monotonic() >= deadline:
            raise DemoError(f"nodes {missing} showed no intro points in {INTRO_POINTS_TIMEOUT} s")
        await asyncio.sleep(1.0)  # poll period between real checks


async def visit(cluster: DemoCluster, min_gets: int, say: Callable[[str], None]) -> set[str]:
    """GET the master at least ``min_gets`` times (NEWNYM between) and until every node
    answered or 4 fetches per node were made; returns the node names that answered."""
    names = {n.name for n in cluster.nodes}
    seen: set[str] = set()
    max_gets = max(min_gets, 4 * len(names))
    say(f"Fetching http://{cluster.hostname}/ through the visitor tor "
        "(new circuits between fetches; tor allows that once per 10 s):")
    for i in range(1, max_gets + 1):
        started = time.monotonic()
        try:
            response = await cluster.client.ahttp_get(
                cluster.hostname, "/", timeout=GET_TIMEOUT, retry_for=GET_RETRY_FOR)
        except SocksError as exc:
            say(f"  GET {i}: failed: {exc}")
        else:
            name = response.headers.get("x-onionmesh-node", response.text.strip())
            seen.add(name)
            say(f"  GET {i}: HTTP {response.status}, answered by {name} "
                f"({time.monotonic() - started:.1f} s)")
        if i >= min_gets and seen >= names:
            break
        await cluster.client.anewnym()
    say(f"Nodes that answered: {', '.join(sorted(seen)) or 'none'} "
        f"(of {', '.join(sorted(names))})")
    return seen


async def live_status(cluster: DemoCluster, write: Callable[[str], None], tty: bool) -> None:
    """Print the status line every few seconds until cancelled (in place on a terminal)."""
    last_plain = 0.0
    while True:
        line = cluster.status_line()
        if tty:
            write("\r\x1b[K" + line)
        elif time.monotonic() - last_plain >= 30.0:
            write(line + "\n")  # a log file gets one line every 30 s, not a flood
            last_plain = time.monotonic()
        await asyncio.sleep(STATUS_INTERVAL)  # display refresh period


async def run_demo(network: TorNetwork, args: argparse.Namespace,
                   say: Callable[[str], None]) -> int:
    cluster = await start_cluster(network, args.nodes, say)
    try:
        seen = await visit(cluster, args.gets, say)
        if args.once:
            return 0 if seen >= {n.name for n in cluster.nodes} else 1
        say("Live status (Ctrl-C stops everything):")
        tty = sys.stdout.isatty()
        await live_status(cluster, lambda s: (sys.stdout.write(s), sys.stdout.flush()), tty)
        return 0
    finally:
        await cluster.close()


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
        return self.root / "state" / "status.sock"

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
        """Send ``sig`` to the node daemon (by its PID); its managed tor follows it
        (``__OwningControllerProcess``)."""
        if self.proc is None or self.proc.poll() is not None:
            raise DemoError(f"node {self.node_id} is not running")
        os.kill(self.proc.pid, sig)
        if sig in (signal.SIGKILL, signal.SIGTERM):
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(30.0)

    def stop(self) -> None:
        """SIGTERM, a bounded wait, then SIGKILL; and the backend. By PID only."""
        if self.proc is not None and self.proc.poll() is None:
            stop_pid(self.proc.pid, self.start_time, timeout=20.0)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(5.0)
        self.stop_tor_leftover()

    def stop_tor_leftover(self) -> None:
        """A SIGKILLed daemon's tor exits by itself within seconds; make sure of it."""
        pid_file = self.root / "state" / "tor" / "tor.pid"
        with contextlib.suppress(OSError, ValueError):
            pid = int(pid_file.read_text().split()[0])
            if pid_alive(pid) and _is_tor_of(pid, self.root):
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m onionmesh.demo",
        description="One onion address served by several nodes on a private Tor network.")
    parser.add_argument("--nodes", type=int, default=3, choices=range(2, 6), metavar="N",
                        help="node instances to start (2-5, default 3)")
    parser.add_argument("--gets", type=int, default=6, metavar="N",
                        help="fetch the master address at least N times (default 6)")
    parser.add_argument("--once", action="store_true",
                        help="exit after the fetches (status 1 if a node never answered)")
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

    base_dir = args.dir or Path(tempfile.mkdtemp(prefix="onionmesh-demo-"))
    signal.signal(signal.SIGTERM, _raise_stop)
    network = TorNetwork(base_dir / "tornet", N_AUTHORITIES)
    say(f"Starting a private Tor network: {N_AUTHORITIES} directory authorities on 127.0.0.1 "
        f"(files in {base_dir})…")
    code = 1
    try:
        network.start()
        say(f"  network ready in {network.phase1_seconds or 0:.0f} s")
        code = asyncio.run(run_demo(network, args, say))
    except (KeyboardInterrupt, _Stop):
        code = 0
        say("")
    except (OnionmeshError, TestnetError) as exc:
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
