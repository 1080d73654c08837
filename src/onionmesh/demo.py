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
import random
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from onionmesh.crypto.keys import Ed25519Identity
from onionmesh.descriptor.intro import IntroPoint
from onionmesh.errors import OnionmeshError
from onionmesh.hsdir.timeperiod import period_length_minutes
from onionmesh.publish.publisher import Publisher, fetch_consensus, merge_intro_points
from onionmesh.testnet import SocksError, TestnetError, TorClient, TorNetwork
from onionmesh.testnet.nodes import ServiceInstance
from onionmesh.tor.control import TorController
from onionmesh.tor.intro_points import NodeIntroWatcher

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
