"""Benchmark: a stray publisher on the HSDirs, from its upload to detection to recovery.

Runs on a private Tor network (10 authorities = 10 HSDirs, 8 per descriptor). The
cluster's side is onionmesh's Publisher with the default timings (one HSFETCH check
every 30 s); its intro points are one node instance's. Each round a stray with the same
master key, on another tor, HSPOSTs newer revisions of both descriptors (half the
intro points) to every responsible HSDir. Measured per round:

- detection: stray's first HSPOST sent -> the Publisher's CONFLICT event;
- recovery: CONFLICT -> every responsible HSDir of the fetchable period, asked directly
  by a third tor (HSFETCH ... SERVER=), serves the cluster's intro points at a revision
  above the stray's;

and over the whole run the conflict checks' cost in HSFETCHes per hour (the core's
fetch counter over the Publisher's lifetime).

Usage: .venv/bin/python bench/conflict.py [--rounds 5] [--gap 20]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from onionmesh.crypto.keys import Ed25519Identity
from onionmesh.descriptor.errors import DescriptorError
from onionmesh.descriptor.parse import parse_descriptor
from onionmesh.publish.core import PublishEvent, PublishEventKind, PublishTiming, tor_revision
from onionmesh.publish.master import MasterDescriptorBuilder
from onionmesh.publish.publisher import Publisher
from onionmesh.testnet import TorNetwork
from onionmesh.tor.control import TorController
from onionmesh.tor.intro_points import IntroPointsError, NodeIntroWatcher, fetch_descriptor

TIMING = PublishTiming()


async def node_points(watcher: NodeIntroWatcher, timeout: float = 90.0) -> list:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        await watcher.poll_once()
        for period in reversed(watcher.sets.periods()):
            found = watcher.sets.for_period(period)
            if found is not None and found.intro_points:
                return list(found.intro_points)
        await asyncio.sleep(1.0)  # poll period while the node's tor builds its descriptor
    raise RuntimeError("the node never exposed intro points")


async def stray_upload(ctl: TorController, master: Ed25519Identity, publisher: Publisher,
                       points: list) -> dict[int, int]:
    builder = MasterDescriptorBuilder(master, lifetime_minutes=180)
    address = master.onion_address.removesuffix(".onion")
    revisions = {}
    for number, target in publisher.targets.items():
        now = time.time()
        revision = max(tor_revision(target, now, None),
                       (publisher.tracker.revision(number) or 0) + 1)
        text = builder.build(number, target.period.period_length, revision, points, now=now,
                             blinded=target.blinded)
        revisions[number] = revision
        for hsdir in target.hsdirs:
            await ctl.hs_post(text, server=hsdir, hs_address=address)
    return revisions


async def all_ours(checker: TorController, publisher: Publisher, address: str,
                   keys: set[bytes], above: int) -> bool:
    period = publisher.core.fetchable
    if period is None or not publisher.tracker.complete(period):
        return False
    target = publisher.targets[period]
    for hsdir in target.hsdirs:
        try:
            text = await fetch_descriptor(checker, address, servers=[hsdir], timeout=30)
            # (tor's time period may roll over meanwhile: the checker's tor fetches its own.)
            desc = parse_descriptor(text, address, period_length=target.period.period_length)
        except (IntroPointsError, DescriptorError):
            return False
        if (desc.period_number != period or {ip.auth_key for ip in desc.intro_points} != keys
                or desc.revision_counter <= above):
            return False
    return True


async def run(net: TorNetwork, rounds: int, gap: float) -> None:
    node = await net.aadd_onion_service("bcnode")
    pub_tor = await net.aadd_client("bcpub")
    stray_tor = await net.aadd_client("bcstray")
    own = await TorController.connect(port=node.control_port)
    ctl = await TorController.connect(port=pub_tor.control_port)
    stray = await TorController.connect(port=stray_tor.control_port)
    checker = await TorController.connect(port=stray_tor.control_port)
    conflicts: list[float] = []
    master = Ed25519Identity.generate()
    address = master.onion_address.removesuffix(".onion")

    def on_event(event: PublishEvent) -> None:
        if event.kind is PublishEventKind.CONFLICT:
            conflicts.append(time.monotonic())

    watcher = NodeIntroWatcher(node.onion_address, period_length=lambda: 8, own=own)
    points = await node_points(watcher)
    publisher = Publisher(ctl, master, lambda p: points, timing=TIMING, on_event=on_event)
    started = time.monotonic()
    await publisher.start()
    detections: list[float] = []
    recoveries: list[float] = []
    try:
        await publisher.wait_published(120)
        for index in range(rounds):
            await asyncio.sleep(gap)  # spacing between rounds, not a readiness wait
            seen = len(conflicts)
            sent = time.monotonic()
            revisions = await stray_upload(stray, master, publisher,
                                           points[: max(1, len(points) // 2)])
            deadline = sent + 4 * TIMING.check_interval
            while len(conflicts) == seen and time.monotonic() < deadline:
                await asyncio.sleep(0.1)  # poll period for the event list
            if len(conflicts) == seen:
                print(f"round {index + 1}: not detected within {deadline - sent:.0f} s",
                      flush=True)
                continue
            detected = conflicts[seen]
            detections.append(detected - sent)
            fetchable = publisher.core.fetchable
            above = revisions.get(fetchable or -1, 0)
            keys = {p.auth_key for p in points}
            while time.monotonic() < detected + 180:
                if await all_ours(checker, publisher, address, keys, above):
                    break
                await asyncio.sleep(0.5)  # poll period between full sweeps
            else:
                print(f"round {index + 1}: not recovered within 180 s", flush=True)
                continue
            recoveries.append(time.monotonic() - detected)
            print(f"round {index + 1}: detection {detections[-1]:.1f} s, recovery "
                  f"{recoveries[-1]:.1f} s", flush=True)
    finally:
        elapsed = time.monotonic() - started
        fetches = publisher.core.fetches
        await publisher.stop()
        for controller in (own, ctl, stray, checker):
            await controller.close()
    print(f"detection (stray HSPOST -> CONFLICT), {len(detections)}/{rounds} rounds: "
          f"{summary(detections)}")
    print(f"recovery (CONFLICT -> every HSDir of the fetchable period serves ours), "
          f"{len(recoveries)}/{rounds} rounds: {summary(recoveries)}")
    print(f"conflict-check cost: {fetches} HSFETCHes in {elapsed:.0f} s = "
          f"{fetches * 3600 / elapsed:.0f} per hour (configured: one per "
          f"{TIMING.check_interval:.0f} s = {3600 / TIMING.check_interval:.0f} per hour, plus "
          f"one per UPLOAD_REJECTED)")


def summary(values: list[float]) -> str:
    if not values:
        return "n/a"
    return (f"median {statistics.median(values):.1f} s, min {min(values):.1f} s, "
            f"max {max(values):.1f} s")


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--gap", type=float, default=20.0, help="seconds between rounds")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-conflict-"))
    net = TorNetwork(workdir / "net", 10)
    started = time.monotonic()
    await asyncio.to_thread(net.start)
    try:
        print(f"network of 10 HSDirs ready in {time.monotonic() - started:.0f} s", flush=True)
        await run(net, args.rounds, args.gap)
    finally:
        await asyncio.to_thread(net.stop)
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
