"""Benchmark: failover of an onionmesh cluster vs Onionbalance 0.2.4, same private Tor network.

One private Tor network (10 authorities = 10 HSDirs, 8-minute time periods) carries, at the
same time:

* an Onionbalance 0.2.4 deployment (3 backend instance tors + a frontend tor + the
  ``onionbalance --is-testnet`` process); one backend (tor and web server) is SIGKILLed and
  we wait, capped, until its intro points leave the master descriptor on every HSDir;
* an onionmesh cluster of 3 ``onionmesh run`` nodes (each with its own managed tor), first
  with the default config, then with the fast profile (1 s heartbeats, 4 s lease), measuring:

  (a) standby SIGKILLed -> every responsible HSDir serves a master descriptor without its
      intro points;
  (b) publisher SIGKILLed -> a standby takes over (status), and every responsible HSDir
      serves the new publisher's descriptor (none of the dead publisher's intro points);
  (c) share of client GETs (new circuits each, no retry) that succeed while the nodes are
      SIGKILLed and restarted one at a time.

"Every responsible HSDir" is measured from outside, the same way for both: a probe tor
HSFETCHes the master from each HSDir separately (``HSFETCH SERVER=``) every couple of
seconds; the HSDirs that held the master descriptor before the kill are the responsible ones
(for the time period clients use), and the drop time is the first probe at which all of them
serve a verified descriptor (our decoder) without any of the dead node's intro points.

Run: ``.venv/bin/python bench/failover.py`` (about 25-35 minutes; ``--ob-cap`` caps the
Onionbalance wait, default 900 s, reported as ">= cap" if it never drops the backend).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from onionmesh.crypto.keys import Ed25519Identity, encode_secret_key_file
from onionmesh.descriptor.parse import parse_descriptor
from onionmesh.errors import OnionmeshError
from onionmesh.hsdir.timeperiod import period_length_minutes
from onionmesh.publish.publisher import fetch_consensus
from onionmesh.testnet import SocksError, TorClient, TorNetwork
from onionmesh.testnet.node_cluster import FAST_PROFILE, Docs, NodeCluster
from onionmesh.testnet.nodes import ServiceInstance
from onionmesh.tor.control import TorController
from onionmesh.tor.control_protocol import parse_hs_desc_event
from onionmesh.tor.intro_points import enable_events
from onionmesh.tor.process import stop_pid

log = logging.getLogger("bench.failover")

N_AUTHORITIES = 10
PROBE_INTERVAL = 2.0
FETCH_TIMEOUT = 20.0
OUTAGE = 30.0  # (c): how long each node stays dead before it is restarted


class BenchError(OnionmeshError):
    """A step of the benchmark did not reach its state within its bound."""


def now() -> float:
    return time.time()


# ----------------------------------------------------------------------------- HSDir probe


class HsdirProbe:
    """Fetches a master descriptor from every HSDir, one ``HSFETCH SERVER=`` each."""

    def __init__(self, controller: TorController, hsdirs: list[str], period_length: int):
        self.controller = controller
        self.hsdirs = hsdirs
        self.period_length = period_length
        self.lock = asyncio.Lock()  # one HSFETCH round at a time on this controller

    async def snapshot(self, address: str) -> dict[str, frozenset[bytes] | None]:
        """Intro keys served by each HSDir (None: it has no (valid) descriptor)."""
        addr = address.removesuffix(".onion")
        result: dict[str, frozenset[bytes] | None] = {}
        async with self.lock:
            await enable_events(self.controller, "HS_DESC", "HS_DESC_CONTENT")
            sub = self.controller.subscribe("HS_DESC", "HS_DESC_CONTENT")
            try:
                await self.controller.hs_fetch(addr, self.hsdirs)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(FETCH_TIMEOUT):
                        async for event in sub:
                            self._take(event, addr, result)
                            if len(result) >= len(self.hsdirs):
                                break
            finally:
                sub.close()
        return result

    def _take(self, event: Any, addr: str, result: dict[str, frozenset[bytes] | None]) -> None:
        if event.type == "HS_DESC_CONTENT":
            fields = event.text.split(" ")
            if len(fields) < 3 or fields[0] != addr:
                return
            hsdir = fields[2].lstrip("$").split("~")[0].split("=")[0].upper()
            if not event.data:
                result.setdefault(hsdir, None)
                return
            try:
                desc = parse_descriptor(event.data, addr, period_length=self.period_length)
            except OnionmeshError:
                result[hsdir] = None
                return
            result[hsdir] = frozenset(ip.auth_key for ip in desc.intro_points)
            return
        parsed = parse_hs_desc_event(event)
        if parsed.address == addr and parsed.action == "FAILED" and parsed.hsdir:
            result.setdefault(parsed.hsdir.lstrip("$").split("~")[0].upper(), None)

    async def keys_of(self, address: str) -> frozenset[bytes]:
        """Union of the intro keys every HSDir serves for ``address`` (a node's own address)."""
        snap = await self.snapshot(address)
        return frozenset().union(*(k for k in snap.values() if k))

    async def wait_drop(self, master: str, dead: frozenset[bytes], holders: set[str],
                        started: float, cap: float, trace: Path | None = None
                        ) -> tuple[float | None, int]:
        """Seconds from ``started`` until no HSDir serves ``master`` with a key of ``dead``
        and at least as many HSDirs serve it as held it before the kill (``holders``; the
        responsible set changes at a time-period switch); None if ``cap`` passed first.
        Every probe is appended to ``trace`` (JSON lines)."""
        probes = 0
        while now() - started < cap:
            snap = await self.snapshot(master)
            probes += 1
            serving = {h for h, keys in snap.items() if keys is not None}
            dirty = {h for h in serving if snap[h] & dead}
            if trace is not None:
                with open(trace, "a") as out:
                    out.write(json.dumps({"t": round(now() - started, 1),
                                          "serving": len(serving), "dirty": len(dirty),
                                          "answered": len(snap)}) + "\n")
            if not dirty and len(serving) >= len(holders):
                return now() - started, probes
            await asyncio.sleep(PROBE_INTERVAL)  # probe period
        return None, probes


async def holders_of(probe: HsdirProbe, master: str, keys: Any,
                     timeout: float = 180.0) -> tuple[set[str], frozenset[bytes]]:
    """HSDirs serving ``master`` with some of a node's intro keys, and those keys.

    ``keys`` is a coroutine function returning the node's current intro keys; it is asked
    again on every round because a freshly (re)started node's descriptors and the master
    plan take a little while to agree."""
    deadline = time.monotonic() + timeout
    while True:
        must_contain = await keys()
        snap = await probe.snapshot(master)
        holders = {h for h, held in snap.items() if held is not None}
        if holders and must_contain and all(snap[h] & must_contain for h in holders):
            return holders, must_contain
        if time.monotonic() > deadline:
            raise BenchError(f"master {master[:12]}… not served with the expected intro points "
                             f"by its HSDirs within {timeout:g} s")
        await asyncio.sleep(PROBE_INTERVAL)


# ----------------------------------------------------------------------------- Onionbalance


@dataclass
class ObResult:
    drop: float | None = None
    cap: float = 0.0
    probes: int = 0
    error: str = ""
    period_at_kill: int | None = None


@dataclass
class ObDeployment:
    master: Ed25519Identity
    instances: list[ServiceInstance]
    frontend: TorClient
    proc: subprocess.Popen[bytes]
    log_path: Path


async def start_onionbalance(network: TorNetwork, base: Path) -> ObDeployment:
    master = Ed25519Identity.generate()
    base.mkdir(parents=True, exist_ok=True)
    key_path = base / "master_ed25519_secret_key"
    key_path.write_bytes(encode_secret_key_file(master))
    os.chmod(key_path, 0o600)
    instances = [await network.aadd_onion_service(f"obinst{i}", ob_master=master.onion_address)
                 for i in range(1, 4)]
    frontend = await network.aadd_client("obfront")
    lines = ["services:", f"- key: {key_path}", "  instances:"]
    for inst in instances:
        lines += [f"  - address: {inst.onion_address}", f"    name: {inst.name}"]
    config = base / "config.yaml"
    config.write_text("\n".join(lines) + "\n")
    log_path = base / "onionbalance.log"
    binary = Path(sys.executable).with_name("onionbalance")
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(
            [str(binary), "--is-testnet", "-i", "127.0.0.1", "-p", str(frontend.control_port),
             "-c", str(config), "-v", "info"],
            stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True)
    return ObDeployment(master, instances, frontend, proc, log_path)


def kill_instance(inst: ServiceInstance) -> None:
    """SIGKILL a backend: its tor and its web server (the harness does not restart them)."""
    for pid in (inst.process.pid, inst.backend.pid if inst.backend else None):
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


async def measure_onionbalance(network: TorNetwork, probe: HsdirProbe, base: Path, cap: float,
                               killed: asyncio.Event, result: ObResult) -> ObDeployment | None:
    """Deploy Onionbalance, wait until it publishes all 3 backends, kill one, time the drop."""
    result.cap = cap
    dep = None
    try:
        dep = await start_onionbalance(network, base)
        keys = [functools.partial(probe.keys_of, i.onion_address) for i in dep.instances]
        # Wait until the master carries every backend (Onionbalance fetches them every 20 s).
        await holders_of(probe, dep.master.onion_address, keys[1], timeout=400.0)
        await holders_of(probe, dep.master.onion_address, keys[2], timeout=200.0)
        holders, dead = await holders_of(probe, dep.master.onion_address, keys[0],
                                         timeout=200.0)
        started = now()
        kill_instance(dep.instances[0])
        killed.set()
        print(f"[onionbalance] backend {dep.instances[0].name} SIGKILLed; "
              f"{len(holders)} HSDirs hold the master; waiting up to {cap:.0f} s", flush=True)
        result.drop, result.probes = await probe.wait_drop(
            dep.master.onion_address, dead, holders, started, cap, base / "trace-ob.jsonl")
    except (OnionmeshError, OSError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"
    finally:
        killed.set()
    return dep


def stop_onionbalance(dep: ObDeployment | None) -> None:
    if dep is not None and dep.proc.poll() is None:
        stop_pid(dep.proc.pid, None, timeout=10.0)
        with contextlib.suppress(subprocess.TimeoutExpired):
            dep.proc.wait(5.0)


# ----------------------------------------------------------------------------- onionmesh


@dataclass
class ProfileResult:
    name: str
    standby_drop: float | None = None
    takeover: float | None = None
    publisher_drop: float | None = None
    gets_ok: int = 0
    gets_total: int = 0
    get_errors: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


def _ready(cluster: NodeCluster, docs: Docs) -> bool:
    from onionmesh.testnet.node_cluster import cluster_ready

    return cluster_ready(cluster, docs)


async def restart_and_heal(cluster: NodeCluster, node_id: str, timeout: float = 240.0) -> None:
    cluster.nodes[node_id].start()
    await cluster.wait_until(lambda d: _ready(cluster, d), timeout, f"{node_id} back")


async def node_keys(probe: HsdirProbe, cluster: NodeCluster, docs: Docs,
                    node_id: str) -> frozenset[bytes]:
    """A node's intro keys: its descriptor as clients fetch it now, plus the current one
    its own tor holds (the two time periods have different intro points)."""
    from onionmesh.tor.intro_points import read_own_descriptor

    address = (docs[node_id].node.onion_address or "").removesuffix(".onion")
    keys = set(await probe.keys_of(address))
    sock = cluster.nodes[node_id].torrc_value("ControlSocket") or "/nonexistent"
    with contextlib.suppress(OnionmeshError, OSError):
        controller = await TorController.connect(socket_path=sock)
        try:
            text = await read_own_descriptor(controller, address)
        finally:
            await controller.close()
        if text:
            desc = parse_descriptor(text, address, period_length=probe.period_length)
            keys |= {ip.auth_key for ip in desc.intro_points}
    return frozenset(keys)


async def run_profile(network: TorNetwork, probe: HsdirProbe, clients: list[TorClient],
                      base: Path, name: str, settings: dict[str, Any] | None) -> ProfileResult:
    """(a), (b) and (c) on a fresh 3-node cluster; a step that fails is reported, not fatal."""
    from onionmesh.testnet.errors import ClusterError

    res = ProfileResult(name)
    cluster = NodeCluster(network, base / name, 3, settings=settings)
    steps = (("a", measure_standby), ("b", measure_publisher), ("c", measure_gets))
    try:
        cluster.create()
        cluster.start()
        await cluster.wait_until(lambda d: _ready(cluster, d), 300.0, "cluster ready")
        for label, step in steps:
            try:
                await step(cluster, probe, clients, base, res)
            except (BenchError, ClusterError) as exc:
                res.errors.append(f"({label}) {type(exc).__name__}: {exc}")
                print(f"[{name}] ({label}) failed: {exc}", flush=True)
                await wait_all_running(cluster)
    finally:
        cluster.stop()
    return res


async def wait_all_running(cluster: NodeCluster) -> None:
    for node in cluster.nodes.values():
        if not node.running():
            node.start()
    await cluster.wait_until(lambda d: _ready(cluster, d), 240.0, "healthy again")


async def measure_standby(cluster: NodeCluster, probe: HsdirProbe, clients: list[TorClient],
                          base: Path, res: ProfileResult) -> None:
    """(a) a standby SIGKILLed: until no HSDir serves its intro points."""
    docs = await cluster.wait_until(lambda d: _ready(cluster, d), 120.0, "healthy")
    pub = next(iter(cluster.publishers(docs)))
    victim = max(set(cluster.nodes) - {pub})
    holders, dead = await holders_of(probe, cluster.master_address, functools.partial(
        node_keys, probe, cluster, docs, victim))
    started = now()
    cluster.nodes[victim].kill(signal.SIGKILL)
    res.standby_drop, _ = await probe.wait_drop(cluster.master_address, dead, holders, started,
                                                600.0, base / f"trace-{res.name}-a.jsonl")
    print(f"[{res.name}] (a) standby {victim} killed: dropped from all {len(holders)} "
          f"HSDirs after {fmt(res.standby_drop)}", flush=True)
    await restart_and_heal(cluster, victim)


async def measure_publisher(cluster: NodeCluster, probe: HsdirProbe, clients: list[TorClient],
                            base: Path, res: ProfileResult) -> None:
    """(b) the publisher SIGKILLed: takeover (status), then its descriptor everywhere."""
    docs = await cluster.wait_until(lambda d: _ready(cluster, d), 120.0, "healthy")
    pub = next(iter(cluster.publishers(docs)))
    holders, dead = await holders_of(probe, cluster.master_address, functools.partial(
        node_keys, probe, cluster, docs, pub))
    started = now()
    cluster.nodes[pub].kill(signal.SIGKILL)
    docs = await cluster.wait_until(
        lambda d: bool(cluster.publishers(d) - {pub}), 300.0, "takeover")
    res.takeover = now() - started
    res.publisher_drop, _ = await probe.wait_drop(cluster.master_address, dead, holders,
                                                  started, 600.0,
                                                  base / f"trace-{res.name}-b.jsonl")
    new = next(iter(cluster.publishers(docs) - {pub}))
    print(f"[{res.name}] (b) publisher {pub} killed: {new} took over after "
          f"{fmt(res.takeover)}, its descriptor on all {len(holders)} HSDirs after "
          f"{fmt(res.publisher_drop)}", flush=True)
    await restart_and_heal(cluster, pub)


async def measure_gets(cluster: NodeCluster, probe: HsdirProbe, clients: list[TorClient],
                       base: Path, res: ProfileResult) -> None:
    """(c) GETs while the nodes are SIGKILLed and restarted one at a time."""
    done = asyncio.Event()
    tallies: list[dict[str, int]] = [{} for _ in clients]
    loops = [asyncio.create_task(get_loop(c, cluster.master_address, done, t))
             for c, t in zip(clients, tallies, strict=True)]
    try:
        for node_id in sorted(cluster.nodes):
            cluster.nodes[node_id].kill(signal.SIGKILL)
            await asyncio.sleep(OUTAGE)  # the outage itself, not a readiness wait
            await restart_and_heal(cluster, node_id)
    finally:
        done.set()
        await asyncio.gather(*loops, return_exceptions=True)
    for tally in tallies:
        for key, count in tally.items():
            res.gets_total += count
            if key == "ok":
                res.gets_ok += count
            else:
                res.get_errors[key] = res.get_errors.get(key, 0) + count
    print(f"[{res.name}] (c) GETs while killing/restarting each node: {res.gets_ok}/"
          f"{res.gets_total} ok {res.get_errors or ''}", flush=True)


async def get_loop(client: TorClient, master: str, done: asyncio.Event,
                   tally: dict[str, int]) -> None:
    """GET with fresh circuits (NEWNYM before each), no retry; count outcomes."""
    while not done.is_set():
        await client.anewnym()
        try:
            response = await client.ahttp_get(master, "/", timeout=30.0)
            key = "ok" if response.status == 200 else f"http {response.status}"
        except SocksError as exc:
            code = getattr(exc, "code", None)
            key = f"socks 0x{code:02X}" if code else "timeout/closed"
        tally[key] = tally.get(key, 0) + 1


def fmt(value: float | None, cap: float | None = None) -> str:
    if value is None:
        return f">= {cap:.0f} s (cap)" if cap else "not reached"
    return f"{value:.1f} s"


# ----------------------------------------------------------------------------- main


async def run(args: argparse.Namespace, network: TorNetwork, base: Path) -> dict[str, Any]:
    probe_client = await network.aadd_client("probe")
    clients = [await network.aadd_client(f"getter{i}") for i in range(3)]
    controller = await TorController.connect(port=probe_client.control_port)
    length = period_length_minutes(await fetch_consensus(controller))
    probe = HsdirProbe(controller, network.hsdir_fingerprints(), length)
    ob = ObResult()
    killed = asyncio.Event()
    ob_task = asyncio.create_task(measure_onionbalance(network, probe, base / "ob", args.ob_cap,
                                                       killed, ob))
    profiles: list[ProfileResult] = []
    dep = None
    try:
        await killed.wait()  # start our runs once Onionbalance's wait is under way
        for name, settings in (("default", None), ("fast", FAST_PROFILE)):
            if name in args.profiles:
                profiles.append(await run_profile(network, probe, clients, base, name,
                                                  settings))
        dep = await ob_task
    finally:
        ob_task.cancel()
        with contextlib.suppress(BaseException):
            dep = dep or await ob_task
        stop_onionbalance(dep)
        await controller.close()
    return {"onionbalance": ob, "profiles": profiles}


def report(results: dict[str, Any]) -> None:
    ob: ObResult = results["onionbalance"]
    print()
    print("=== failover (private Tor network, 10 HSDirs, 8-minute time periods) ===")
    if ob.error:
        print(f"onionbalance 0.2.4: measurement failed: {ob.error}")
    print(f"onionbalance 0.2.4 (a) backend killed -> dropped on all HSDirs: "
          f"{fmt(ob.drop, ob.cap)}")
    for res in results["profiles"]:
        share = 100.0 * res.gets_ok / res.gets_total if res.gets_total else 0.0
        print(f"onionmesh {res.name:<7} (a) standby killed -> dropped on all HSDirs: "
              f"{fmt(res.standby_drop)}")
        print(f"onionmesh {res.name:<7} (b) publisher killed -> takeover {fmt(res.takeover)}, "
              f"new descriptor on all HSDirs {fmt(res.publisher_drop)}")
        print(f"onionmesh {res.name:<7} (c) GETs ok while nodes die one at a time: "
              f"{res.gets_ok}/{res.gets_total} ({share:.1f} %) {res.get_errors or ''}")
        for error in res.errors:
            print(f"onionmesh {res.name:<7} step failed: {error}")
        if res.standby_drop:
            ob_time = ob.drop if ob.drop is not None else ob.cap
            bound = "" if ob.drop is not None else ">= "
            print(f"ratio (a) onionbalance / onionmesh {res.name}: "
                  f"{bound}{ob_time / res.standby_drop:.1f}x")
    print(json.dumps({
        "onionbalance_drop_s": ob.drop, "onionbalance_cap_s": ob.cap,
        "profiles": {r.name: {"standby_drop_s": r.standby_drop, "takeover_s": r.takeover,
                              "publisher_drop_s": r.publisher_drop, "gets_ok": r.gets_ok,
                              "gets_total": r.gets_total, "get_errors": r.get_errors,
                              "errors": r.errors}
                     for r in results["profiles"]},
    }))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ob-cap", type=float, default=900.0,
                        help="cap of the Onionbalance wait in seconds (default 900)")
    parser.add_argument("--profiles", nargs="+", default=["default", "fast"],
                        choices=["default", "fast"])
    parser.add_argument("--dir", type=Path, default=None)
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    base = (args.dir or Path(tempfile.mkdtemp(prefix="omfo-"))).absolute()
    # No supervision: a SIGKILLed Onionbalance backend must stay dead.
    network = TorNetwork(base / "tornet", N_AUTHORITIES, supervise=False)
    print(f"private network: {N_AUTHORITIES} authorities, files in {base}", flush=True)
    try:
        network.start()
        results = asyncio.run(run(args, network, base))
    finally:
        network.stop()
    report(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
