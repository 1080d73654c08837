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

Every process is stopped by PID at the end. The cluster itself is
:class:`onionmesh.testnet.node_cluster.NodeCluster`, the harness the cluster tests and
``bench/failover.py`` share.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from onionmesh.errors import OnionmeshError
from onionmesh.testnet import SocksError, TorClient, TorNetwork
from onionmesh.testnet.node_cluster import FAST_PROFILE, Docs, NodeCluster, cluster_ready

log = logging.getLogger(__name__)

# 10 relays, not the minimal 5: a tor client maps an opened intro circuit to the FIRST intro
# point in the descriptor on that relay (hs_client.c, setup_intro_circ_auth_key), so when
# several nodes' intro points share a relay only the first-listed node is ever reached. With
# 5 relays and 3 nodes x 3 intro points that hides a whole node about every other run.
N_AUTHORITIES = 10
GET_TIMEOUT = 30.0
GET_RETRY_FOR = 60.0  # a fresh client may miss the first descriptor fetch (0xF0)
VISIT_EVERY = 2.0  # seconds between the demo's GETs
STATUS_INTERVAL = 2.0
RESTART_AFTER = 45.0  # the demo brings a killed node back after this long


class _Stop(Exception):
    """Raised from the SIGTERM handler so teardown runs like after Ctrl-C."""


def _cli(*args: str) -> str:
    """Run the onionmesh CLI (as an operator would) and return what it printed."""
    result = subprocess.run([sys.executable, "-m", "onionmesh.cli", *args], capture_output=True,
                            text=True, timeout=30, check=False)
    return (result.stdout + result.stderr).rstrip()


def _indent(text: str, prefix: str = "    ") -> str:
    return "\n".join(prefix + line for line in text.splitlines())


async def visit(client: TorClient, master: str, names: set[str], min_gets: int,
                say: Callable[[str], None]) -> set[str]:
    """GET the master at least ``min_gets`` times, as a browser does (fresh circuits, the
    descriptor cache kept), until every node answered or 6 fetches per node were made;
    returns the node names that answered."""
    seen: set[str] = set()
    say(f"Fetching http://{master}/ through a client tor (new circuits for each fetch, "
        "keeping tor's descriptor cache, as a browser does):")
    for i in range(1, max(min_gets, 6 * len(names)) + 1):
        started = time.monotonic()
        try:
            if i == 1:
                # The visitor's very first fetch may race the first upload (0xF0); only
                # then it retries with NEWNYM, which empties a cache that is empty anyway.
                response = await client.ahttp_get(master, "/", timeout=GET_TIMEOUT,
                                                  retry_for=GET_RETRY_FOR)
            else:
                response = await client.abrowser_get(master, "/", timeout=GET_TIMEOUT)
        except SocksError as exc:
            say(f"  GET {i}: failed: {exc}")
        else:
            name = response.headers.get("x-onionmesh-node", response.text.strip())
            seen.add(name)
            say(f"  GET {i}: HTTP {response.status}, answered by {name} "
                f"({time.monotonic() - started:.1f} s)")
        if i >= min_gets and seen >= names:
            break
        await asyncio.sleep(max(0.0, started + VISIT_EVERY - time.monotonic()))  # pacing
    say(f"Nodes that answered: {', '.join(sorted(seen)) or 'none'} "
        f"(of {', '.join(sorted(names))})")
    return seen


def status_line(cluster: NodeCluster, docs: Docs) -> str:
    """Short live view: each node's role, what the descriptor carries, its age."""
    parts = []
    for node_id, node in cluster.nodes.items():
        doc = docs.get(node_id)
        if not node.running():
            parts.append(f"{node_id} DOWN")
        elif doc is None or doc.role is None:
            parts.append(f"{node_id} starting")
        else:
            parts.append(f"{node_id} {doc.role}")
    pubs = cluster.publishers(docs)
    line = " | ".join(parts)
    if len(pubs) == 1:
        doc = docs[next(iter(pubs))]
        per_node = doc.plan.per_node if doc.plan is not None else {}
        uploads = doc.uploads.values()
        ok = sum(1 for u in uploads if u.result == "uploaded")
        age = doc.descriptor_age
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

    def update(self, docs: Docs) -> None:
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
                cluster = docs[pub].cluster
                term = cluster.term if cluster is not None else "?"
                self.say(f"{stamp} publisher is now {pub} (term {term})")
                self.publisher = pub
            carried = tuple(sorted(docs[pub].carried_nodes()))
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
            doc = docs.get(node_id)
            role = (doc.role if doc is not None else None) or "?"
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
    except OnionmeshError as exc:  # TestnetError and ClusterError included
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
