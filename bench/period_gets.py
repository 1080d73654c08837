"""Benchmark: GETs a caching tor client gets answered over whole time periods, no faults.

A 3-node onionmesh cluster (``onionmesh run`` processes, default timings, managed tors) on a
private Tor network (8-minute time periods, SRV rotation at each period's midpoint) and one
client tor that behaves like a browser: every GET uses a fresh SOCKS username (fresh
circuits) and the client never sends NEWNYM, so it keeps the master descriptor it fetched
until its cache expires at the next time period, as real clients do. One GET every
``--interval`` seconds for ``--periods`` full periods; a GET succeeds if tor connects and the
backend answers within ``--timeout`` seconds (no retry beyond tor's own).

Reported: GETs made and answered, and failures by where they fell in the period (first or
second half), as JSON on the last line.

``--daemon-src DIR`` runs the nodes' ``onionmesh run`` from another source tree (for a
before/after comparison; the harness and client stay this tree's).

Run: ``PYTHONPATH=src .venv/bin/python bench/period_gets.py`` (about 18 minutes).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from onionmesh.hsdir.timeperiod import (
    period_length_minutes,
    period_start,
    rotation_offset_minutes,
    time_period_number,
)
from onionmesh.publish.publisher import fetch_consensus
from onionmesh.testnet import SocksError, TorNetwork
from onionmesh.testnet.node_cluster import NodeCluster, cluster_ready
from onionmesh.tor.control import TorController

N_AUTHORITIES = 10  # as the test suite's network: 10 HSDirs


async def period_clock(client: Any) -> tuple[int, int]:
    """(period length in seconds, rotation offset in minutes) from the client's consensus."""
    controller = await TorController.connect(port=client.control_port)
    try:
        consensus = await fetch_consensus(controller)
    finally:
        await controller.close()
    return period_length_minutes(consensus) * 60, rotation_offset_minutes(consensus)


async def run(args: argparse.Namespace, network: TorNetwork, base: Path) -> dict[str, Any]:
    cluster = NodeCluster(network, base / "cluster", 3)
    if args.daemon_src:
        for node in cluster.nodes.values():
            node.env["PYTHONPATH"] = str(Path(args.daemon_src).absolute())
    try:
        cluster.create()
        if args.daemon_src:
            for node in cluster.nodes.values():
                node.env["PYTHONPATH"] = str(Path(args.daemon_src).absolute())
        cluster.start()
        await cluster.wait_until(lambda d: cluster_ready(cluster, d), 300.0, "cluster published")
        client = await network.aadd_client("browser")
        length, offset = await period_clock(client)
        minutes = length // 60
        end = time.time() + args.periods * length
        results: list[dict[str, Any]] = []
        while time.time() < end:
            started = time.time()
            period = time_period_number(started, minutes, rotation_offset=offset)
            into = started - period_start(period, minutes, rotation_offset=offset)
            entry: dict[str, Any] = {"at": round(started, 1), "period": period,
                                     "into_period": round(into, 1)}
            try:
                response = await client.abrowser_get(cluster.master_address, "/",
                                                     timeout=args.timeout)
                entry["ok"] = response.status == 200
                entry["node"] = response.text.strip()
            except SocksError as exc:
                entry["ok"] = False
                entry["error"] = str(exc)[:120]
            entry["seconds"] = round(time.time() - started, 1)
            results.append(entry)
            print(json.dumps(entry), flush=True)
            await asyncio.sleep(max(0.0, started + args.interval - time.time()))  # GET pacing
        half = length / 2
        failed = [r for r in results if not r["ok"]]
        return {
            "gets": len(results),
            "answered": len(results) - len(failed),
            "failed_first_half": sum(1 for r in failed if r["into_period"] < half),
            "failed_second_half": sum(1 for r in failed if r["into_period"] >= half),
            "period_seconds": length,
            "interval": args.interval,
            "daemon_src": args.daemon_src or "this tree",
        }
    finally:
        cluster.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--periods", type=float, default=2.0)
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between GETs")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per GET")
    parser.add_argument("--daemon-src", default=None, help="source tree the nodes run from")
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args(argv)
    base = (args.dir or Path(tempfile.mkdtemp(prefix="omperiod-"))).absolute()
    network = TorNetwork(base / "tornet", N_AUTHORITIES)
    print(f"private network: {N_AUTHORITIES} authorities, files in {base}", flush=True)
    try:
        network.start()
        summary = asyncio.run(run(args, network, base))
    finally:
        network.stop()
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
