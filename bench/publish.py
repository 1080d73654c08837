"""Benchmark: from "intro points known" to "every responsible HSDir accepted both descriptors".

Runs on a private Tor network (10 authorities = 10 HSDirs, tor picks 8 per descriptor) and
measures, in the same run:

- onionmesh: two node instances of master M1; their intro points are read first (own
  descriptor + HSFETCH); each publish starts a fresh ``Publisher`` on a client tor
  (t0 = start, intro points already known);
- Onionbalance 0.2.4: two node instances of master M2 and ``onionbalance --is-testnet``
  on a frontend tor; each publish is a fresh onionbalance process (t0 = the moment the
  frontend tor has received both instance descriptors after the start).

t1 is judged the same way for both, from the publishing tor's own HS_DESC events seen on
a separate control connection: every HSDir that tor's hash ring makes responsible for the
first and/or second descriptor has answered UPLOADED as many times as descriptors it is
responsible for (1 or 2). HSPOST uploads emit no "UPLOAD" event and "UPLOADED" does not
name the descriptor, so an UPLOADED for the other descriptor counts too: this can only
flatter Onionbalance (whose ring differs from tor's), never onionmesh (which holds one
post per HSDir in flight and posts exactly the responsible sets). The responsible sets
come from onionmesh's ring (tests check it equals tor's own choice). A publish that
never reaches that state within the timeout is reported with its coverage.

Usage: .venv/bin/python bench/publish.py [--runs 7] [--ob-runs 5] [--timeout 120]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from onionmesh.crypto.address import decode_onion_address
from onionmesh.crypto.blinding import blind_public_key
from onionmesh.crypto.keys import Ed25519Identity
from onionmesh.descriptor.layers import b64_nopad
from onionmesh.hsdir.hashring import responsible_hsdirs
from onionmesh.hsdir.timeperiod import descriptor_periods, period_length_minutes
from onionmesh.mesh.plan import Contribution, select_intro_points
from onionmesh.node.publishing import decode_intro_point, encode_intro_point
from onionmesh.publish.publisher import Publisher, fetch_consensus
from onionmesh.testnet import TorNetwork
from onionmesh.tor.control import TorController
from onionmesh.tor.control_protocol import parse_hs_desc_event
from onionmesh.tor.intro_points import NodeIntroWatcher
from onionmesh.tor_limits import MAX_INTRO_POINTS

VENV_BIN = Path(sys.executable).parent


def selected_intro_points(sets: list, period: int) -> list:
    """The master's intro points for ``period`` from the nodes' sets (IntroSet or None),
    chosen by the mesh's own selector as the daemon does."""
    contributions = [
        Contribution(f"n{i:03d}", {period: [encode_intro_point(p) for p in s.intro_points]}, {})
        for i, s in enumerate(sets) if s is not None
    ]
    chosen = select_intro_points(contributions, MAX_INTRO_POINTS).get(period, ())
    return [decode_intro_point(data) for _, data in chosen]


class AcceptanceObserver:
    """Follows one master's uploads through HS_DESC events of the publishing tor."""

    def __init__(self, ctl: TorController, address: str, instances: tuple[str, ...] = ()):
        self.ctl = ctl
        self.address = address.removesuffix(".onion")
        self.instances = {a.removesuffix(".onion") for a in instances}
        self.failed: dict[str, set[str]] = defaultdict(set)
        self.uploaded: dict[str, int] = defaultdict(int)
        self.instance_seen: dict[str, float] = {}
        self.result_times: list[float] = []  # every UPLOADED/FAILED for the master
        self.expected: dict[str, set[str]] = {}
        self._sub = ctl.subscribe("HS_DESC", "HS_DESC_CONTENT")
        self._task = asyncio.create_task(self._run())
        self._changed = asyncio.Event()

    async def compute_expected(self) -> None:
        consensus = await fetch_consensus(self.ctl)
        key = decode_onion_address(self.address)
        self.expected = {}
        for period in descriptor_periods(consensus, time.time()):
            blinded = blind_public_key(key, period.period_number, period.period_length)
            relays = responsible_hsdirs(blinded, period.period_number, period.period_length,
                                        period.srv, consensus)
            self.expected[b64_nopad(blinded)] = {r.fingerprint for r in relays}

    async def _run(self) -> None:
        async for event in self._sub:
            now = time.monotonic()
            if event.type == "HS_DESC_CONTENT":
                addr = event.text.split(" ")[0]
                if addr in self.instances and event.data:
                    self.instance_seen.setdefault(addr, now)
                    self._changed.set()
                continue
            parsed = parse_hs_desc_event(event)
            if parsed.address != self.address or parsed.hsdir is None:
                continue
            if parsed.action in ("UPLOADED", "FAILED"):
                self.result_times.append(now)
            if parsed.action == "UPLOADED":
                self.uploaded[parsed.hsdir] += 1
            elif parsed.action == "FAILED" and parsed.descriptor_id:
                self.failed[parsed.hsdir].add(parsed.descriptor_id)
            self._changed.set()

    def needs(self) -> dict[str, int]:
        """HSDir -> how many of the two descriptors it is responsible for (1 or 2)."""
        need: dict[str, int] = defaultdict(int)
        for hsdirs in self.expected.values():
            for hsdir in hsdirs:
                need[hsdir] += 1
        return need

    def instances_known(self) -> bool:
        return len(self.instance_seen) == len(self.instances)

    def first_round_end(self, after: float, gap: float = 3.0) -> float | None:
        """When the first burst of upload answers after ``after`` ended (answers less than
        ``gap`` s apart belong to one round; a publisher re-uploading later starts another)."""
        times = sorted(t for t in self.result_times if t >= after)
        if not times:
            return None
        end = times[0]
        for t in times[1:]:
            if t - end > gap:
                break
            end = t
        return end

    def coverage(self) -> tuple[int, int]:
        need = self.needs()
        got = sum(min(self.uploaded[h], n) for h, n in need.items())
        return got, sum(need.values())

    def complete(self) -> bool:
        got, total = self.coverage()
        return total > 0 and got == total

    async def wait(self, predicate, timeout: float) -> bool:
        try:
            async with asyncio.timeout(timeout):
                while not predicate():
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            return False
        return True

    async def close(self) -> None:
        self._sub.close()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._task


async def onionmesh_runs(net: TorNetwork, runs: int, timeout: float) -> list[float | None]:
    master = Ed25519Identity.generate()
    nodes = [await net.aadd_onion_service(f"omnode{i}", ob_master=master.onion_address)
             for i in range(2)]
    client = await net.aadd_client("ompub")
    ctl = await TorController.connect(port=client.control_port)
    node_ctls = [await TorController.connect(port=n.control_port) for n in nodes]
    length = period_length_minutes(await fetch_consensus(ctl))
    watchers = [NodeIntroWatcher(n.onion_address, period_length=lambda: length, own=c,
                                 fetcher=ctl) for n, c in zip(nodes, node_ctls, strict=True)]
    for _ in range(60):
        for w in watchers:
            await w.poll_once()
        if all(w.sets.best_for(0) for w in watchers):
            break
        await asyncio.sleep(1.0)

    def source(period: int):
        return selected_intro_points([w.sets.best_for(period) for w in watchers], period)

    results: list[float | None] = []
    for run in range(runs):
        observer = AcceptanceObserver(ctl, master.onion_address)
        await observer.compute_expected()
        publisher = Publisher(ctl, master, source)
        t0 = time.monotonic()
        await publisher.start()
        ok = await observer.wait(observer.complete, timeout)
        elapsed = time.monotonic() - t0 if ok else None
        got, total = observer.coverage()
        print(f"  onionmesh run {run + 1}: "
              + (f"{elapsed:.3f} s" if ok else f"not complete after {timeout:.0f} s")
              + f" ({got}/{total} HSDir slots)", flush=True)
        results.append(elapsed)
        await publisher.stop()
        await observer.close()
        await asyncio.sleep(1.5)  # a new second: the next revision counter must be higher
    for c in (ctl, *node_ctls):
        await c.close()
    return results


async def onionbalance_runs(net: TorNetwork, workdir: Path, runs: int,
                           timeout: float) -> list[tuple[float | None, float | None, int, int]]:
    conf_dir = workdir / "ob"
    subprocess.run([str(VENV_BIN / "onionbalance-config"), "--no-interactive", "-n", "2",
                    "--output", str(conf_dir)], check=True, capture_output=True)
    key = next(conf_dir.glob("*.key"))
    master_addr = key.stem
    nodes = [await net.aadd_onion_service(f"obnode{i}", ob_master=master_addr)
             for i in range(2)]
    frontend = await net.aadd_client("obfront")
    instances = "".join(
        f"  - address: {n.onion_address}.onion\n    name: node{i}\n" for i, n in enumerate(nodes)
    )
    config = conf_dir / "config.yaml"
    config.write_text(f"services:\n- key: {key}\n  instances:\n{instances}")
    ctl = await TorController.connect(port=frontend.control_port)
    await ctl.set_events("HS_DESC", "HS_DESC_CONTENT")
    results = []
    for run in range(runs):
        observer = AcceptanceObserver(ctl, master_addr, tuple(n.onion_address for n in nodes))
        await observer.compute_expected()
        log_path = workdir / f"onionbalance-{run}.log"
        with open(log_path, "wb") as log_file:
            proc = subprocess.Popen(
                [str(VENV_BIN / "onionbalance"), "--is-testnet", "-i", "127.0.0.1",
                 "-p", str(frontend.control_port), "-c", str(config), "-v", "info"],
                stdout=log_file, stderr=subprocess.STDOUT,
            )
        try:
            known = await observer.wait(observer.instances_known, timeout)
            t0 = max(observer.instance_seen.values()) if known else None
            ok = known and await observer.wait(observer.complete, timeout)
            elapsed = time.monotonic() - t0 if ok and t0 is not None else None
            if not ok:  # let its upload round finish to report its coverage
                await observer.wait(lambda: False, 15)
            # Onionbalance's own notion of done: its first upload round got its answers.
            round_end = observer.first_round_end(t0) if t0 is not None else None
            round_time = round_end - t0 if round_end is not None else None
            got, total = observer.coverage()
            print(f"  onionbalance run {run + 1}: "
                  + (f"{elapsed:.3f} s" if elapsed is not None
                     else f"not complete after {timeout:.0f} s")
                  + f" ({got}/{total} HSDir slots; its upload round answered after "
                  + (f"{round_time:.3f} s)" if round_time is not None else "n/a)"), flush=True)
            results.append((elapsed, round_time, got, total))
        finally:
            proc.terminate()  # our own child, by its Popen handle
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            await observer.close()
        await asyncio.sleep(1.5)  # a new second before the next publisher's revision counter
    await ctl.close()
    return results


def summary(values: list[float | None]) -> str:
    done = [v for v in values if v is not None]
    if not done:
        return "never complete"
    return (f"median {statistics.median(done):.3f} s (min {min(done):.3f}, max {max(done):.3f},"
            f" {len(done)}/{len(values)} complete)")


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=7, help="onionmesh publishes")
    parser.add_argument("--ob-runs", type=int, default=5, help="Onionbalance publishes")
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO")
    args = parser.parse_args()
    if args.verbose:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    workdir = Path(tempfile.mkdtemp(prefix="bench-publish-"))
    net = TorNetwork(workdir / "net", 10)
    started = time.monotonic()
    await asyncio.to_thread(net.start)
    try:
        print(f"network of 10 HSDirs ready in {time.monotonic() - started:.0f} s", flush=True)
        om = await onionmesh_runs(net, args.runs, args.timeout)
        ob = (await onionbalance_runs(net, workdir, args.ob_runs, args.timeout)
              if args.ob_runs else [])
    finally:
        await asyncio.to_thread(net.stop)
    ob_times = [t for t, _, _, _ in ob]
    ob_rounds = [r for _, r, _, _ in ob]
    print(f"onionmesh publish (intro points known -> all responsible HSDirs accepted both "
          f"descriptors): {summary(om)}")
    print(f"onionbalance 0.2.4 publish (same measure): {summary(ob_times)}")
    print(f"onionbalance 0.2.4 until its own upload round was answered (its HSDir choice): "
          f"{summary(ob_rounds)}")
    slots = [f"{g}/{t}" for _, _, g, t in ob]
    print(f"onionbalance responsible HSDir slots reached per run: {', '.join(slots)}")
    om_done = [v for v in om if v is not None]
    ob_done = [v for v in ob_times if v is not None]
    ob_round_done = [v for v in ob_rounds if v is not None]
    if om_done and ob_done:
        ratio = statistics.median(ob_done) / statistics.median(om_done)
        print(f"publish speedup vs onionbalance: {ratio:.1f}x")
    else:
        print("publish speedup vs onionbalance: n/a (onionbalance never reached every "
              "responsible HSDir)")
    if om_done and ob_round_done:
        ratio = statistics.median(ob_round_done) / statistics.median(om_done)
        print(f"publish speedup vs onionbalance's own upload round: {ratio:.1f}x")
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
