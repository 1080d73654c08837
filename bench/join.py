"""Benchmark: a node joining through tor, from `onionmesh join` to its intro points on
every responsible HSDir (issue 12's benchmark), on a private Tor network.

A running 3-node cluster (``onionmesh run`` each, its own managed tor; n1 holds the
authority key and serves its join onion). Per round, as an operator types it:
``onionmesh add-node`` on n1, then (clock starts) ``onionmesh join --tor-socks`` through a
separate tor client (the exchange only through tor, to n1's join onion), then
``onionmesh run`` for the new node. Measured from the start of ``join``:

* join: ``join`` returned (admitted, roster and keys written);
* peers: every running node lists the new node in its peers (the roster change reached
  it: gossip of the sponsor's new entry; not yet that it heard the node);
* plan: the publisher's plan carries the new node's intro points;
* HSDirs: every HSDir that serves the master descriptor (the responsible ones for the
  time period clients use: HSFETCH SERVER= each, as bench/failover.py probes) serves
  one that holds an intro point of the new node (verified by our decoder).

The new node's ``onionmesh run`` starts as soon as ``join`` returns, so "HSDirs" includes
its tor's bootstrap and its own descriptor. Default timings unless ``--profile fast``.

    .venv/bin/python bench/join.py [--rounds 2] [--profile default|fast]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from failover import HsdirProbe, node_keys

from onionmesh.hsdir.timeperiod import period_length_minutes
from onionmesh.node.testnet_options import network_tor_options
from onionmesh.publish.publisher import fetch_consensus
from onionmesh.testnet import TorClient, TorNetwork
from onionmesh.testnet.backend import start_backend_process
from onionmesh.testnet.node_cluster import FAST_PROFILE, ClusterNode, NodeCluster, cluster_ready
from onionmesh.tor.control import TorController

N_AUTHORITIES = 10
PROBE_INTERVAL = 2.0
JOIN_TIMEOUT = 600.0  # the CLI's own schedule gives up sooner (8 attempts, 120 s each)


def _free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _cli(stdin: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "onionmesh.cli", *args], input=stdin,
                          capture_output=True, text=True, timeout=JOIN_TIMEOUT, check=False)


async def one_join(cluster: NodeCluster, network: TorNetwork, joiner_tor: TorClient,
                   probe: HsdirProbe, node_id: str, cap: float) -> dict[str, Any]:
    n1 = cluster.nodes["n1"]
    issued = await asyncio.to_thread(_cli, "", "add-node", "-c", str(n1.config_path))
    if issued.returncode != 0:
        raise RuntimeError(f"add-node failed: {issued.stderr[-1000:]}")
    node = ClusterNode(node_id, cluster.base_dir / node_id,
                       f"127.0.0.1:{_free_port(socket.SOCK_DGRAM)}",
                       _free_port(socket.SOCK_STREAM))
    args = ["join", "--dir", str(node.root), "--node-id", node_id, "--listen", node.listen,
            "--no-ntp-check", "--tor-socks", f"127.0.0.1:{joiner_tor.socks_port}",
            "--master-key", str(n1.root / "master" / "hs_ed25519_secret_key"),
            "--service-port", f"80 127.0.0.1:{node.backend_port}"]
    for line in network_tor_options(network):
        args += ["--tor-option", line]
    # The responsible HSDirs: those serving the master now (HSFETCH each).
    before = sum(1 for held in (await probe.snapshot(cluster.master_address)).values()
                 if held is not None)
    started = time.monotonic()
    joined = await asyncio.to_thread(_cli, issued.stdout.strip(), *args)
    t_join = time.monotonic() - started
    if joined.returncode != 0:
        raise RuntimeError(f"join failed after {t_join:.1f} s: {joined.stderr[-1500:]}")
    attempts = joined.stderr.count(" through tor to ")
    node.backend = start_backend_process(node_id, node.backend_port, node.root / "backend.log")
    cluster.nodes[node_id] = node
    node.start()
    everyone = set(cluster.nodes)
    docs = await cluster.wait_until(
        lambda d: set(d) == everyone and all(node_id in doc.peers
                                             for nid, doc in d.items() if nid != node_id),
        cap, f"{node_id} a peer of every node")
    t_peers = time.monotonic() - started
    docs = await cluster.wait_until(lambda d: cluster_ready(cluster, d), cap,
                                    f"{node_id} in the publisher's plan")
    t_plan = time.monotonic() - started
    while True:
        keys = await node_keys(probe, cluster, docs, node_id)
        snap = await probe.snapshot(cluster.master_address)
        serving = {h: held for h, held in snap.items() if held is not None}
        if keys and len(serving) >= max(before, 1) and all(held & keys
                                                            for held in serving.values()):
            break
        if time.monotonic() - started > cap:
            raise RuntimeError(f"{node_id}'s intro points not on every HSDir within {cap:g} s"
                               f" ({sum(1 for h in serving.values() if h & keys)}"
                               f"/{len(serving)} serve them)")
        await asyncio.sleep(PROBE_INTERVAL)  # probe period
        docs = await asyncio.to_thread(cluster.statuses)
    t_hsdirs = time.monotonic() - started
    print(f"  {node_id}: join {t_join:.1f} s ({attempts} attempt(s)), peers {t_peers:.1f} s, "
          f"plan {t_plan:.1f} s, on all {len(serving)} HSDirs {t_hsdirs:.1f} s", flush=True)
    return {"node": node_id, "join": t_join, "attempts": attempts, "peers": t_peers,
            "plan": t_plan, "hsdirs": t_hsdirs, "n_hsdirs": len(serving)}


async def run(args: argparse.Namespace, network: TorNetwork, base: Path) -> list[dict[str, Any]]:
    probe_client = await network.aadd_client("probe")
    joiner_tor = await network.aadd_client("joiner")
    controller = await TorController.connect(port=probe_client.control_port)
    length = period_length_minutes(await fetch_consensus(controller))
    probe = HsdirProbe(controller, network.hsdir_fingerprints(), length)
    settings = FAST_PROFILE if args.profile == "fast" else None
    cluster = NodeCluster(network, base / "cluster", 3, settings=settings)
    rows = []
    try:
        cluster.create()
        cluster.start()
        await cluster.wait_until(lambda d: cluster_ready(cluster, d), 400.0, "cluster ready")
        print(f"cluster ready ({args.profile} timings)", flush=True)
        for i in range(args.rounds):
            rows.append(await one_join(cluster, network, joiner_tor, probe, f"n{4 + i}",
                                       args.cap))
    finally:
        cluster.stop()
        await controller.close()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2, help="nodes joined one after another")
    parser.add_argument("--profile", choices=["default", "fast"], default="default")
    parser.add_argument("--cap", type=float, default=600.0,
                        help="seconds each round may take to reach every HSDir")
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    base = (args.dir or Path(tempfile.mkdtemp(prefix="omjb-"))).absolute()
    network = TorNetwork(base / "tornet", N_AUTHORITIES)
    print(f"private network: {N_AUTHORITIES} authorities, files in {base}", flush=True)
    try:
        network.start()
        rows = asyncio.run(run(args, network, base))
    finally:
        network.stop()
    print()
    print(f"=== join through tor -> intro points on every responsible HSDir "
          f"({args.profile} timings, {N_AUTHORITIES} HSDirs) ===")
    for key in ("join", "peers", "plan", "hsdirs"):
        values = [r[key] for r in rows]
        print(f"{key:>7}: median {statistics.median(values):6.1f} s  "
              f"(runs: {', '.join(f'{v:.1f}' for v in values)})")
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
