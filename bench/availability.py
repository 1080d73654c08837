"""Benchmark: what browser-like clients see while faults roll through a cluster, onionmesh
and Onionbalance 0.2.4 side by side on one private Tor network.

One private Tor network (10 authorities = 10 HSDirs, 8-minute time periods) carries:

* an onionmesh cluster of 3 ``onionmesh run`` nodes with the DEFAULT configuration;
* an Onionbalance 0.2.4 deployment (3 instance tors with their backends, a frontend tor,
  the ``onionbalance --is-testnet`` process).

One client tor per system GETs its master address for the whole run like a browser: a
fresh circuit per GET (new SOCKS credentials), the descriptor cache kept (never NEWNYM),
one retry on a fresh circuit after a failure (a browser's reload), 30 s per try.

The schedule cycles through six faults, each applied to both systems at the same moment
(the analogous part of each), ``OUTAGE`` s long, with ``STEADY`` s of steady state
between them, until at least two full time periods have passed, so faults land in both
halves of a period:

  standby-kill     SIGKILL a standby node (daemon + tor)   | an instance (tor + backend)
  publisher-kill   SIGKILL the publisher node              | the onionbalance process
  freeze           SIGSTOP a standby daemon, then SIGCONT  | SIGSTOP an instance tor
  tor-kill         SIGKILL only a node's tor               | only an instance's tor
  backend-kill     stop a node's web backend               | an instance's backend
  relay-kill       stop a relay hosting a node's intro point (shared network: both see it)

after which the victim is restarted / resumed and the next steady phase begins.

Per phase and system: GETs that succeeded (first try, with the retry) / total, p50/p95
latency of successful GETs (timed in the GET's own thread; a retried GET counts both
tries), the reasons of failed tries, seconds from the fault until the faulty node's last
answer (0: none after the fault), and from the recovery until it answered again (looked
for until the next fault). A failed GET never ends a client's loop and a fault step that
crashes is reported in its phase while the schedule goes on. Rows are printed as phases
settle and appended to ``phases.jsonl``; every GET goes to ``gets-<system>.jsonl``; the
directory (network, node and Onionbalance logs) is kept.

Run: ``nice -n 5 .venv/bin/python bench/availability.py --dir DIR`` (two cycles, at least
two time periods: about 25 minutes + setup); ``--smoke`` runs one short cycle to check the
script; ``--cycles``, ``--outage`` and ``--steady`` shape it. The JSON summary is the
last line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from onionmesh.descriptor.intro import LS_LEGACY_ID
from onionmesh.descriptor.parse import parse_descriptor
from onionmesh.hsdir.timeperiod import period_length_minutes, rotation_offset_minutes
from onionmesh.publish.publisher import fetch_consensus
from onionmesh.testnet import SocksError, TorClient, TorNetwork
from onionmesh.testnet.backend import start_backend_process
from onionmesh.testnet.node_cluster import NodeCluster
from onionmesh.tor.control import TorController
from onionmesh.tor.intro_points import fetch_descriptor
from onionmesh.tor.process import stop_pid

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script: bench/ siblings
from failover import ObDeployment, start_onionbalance, stop_onionbalance

N_AUTHORITIES = 10
FAULTS = ("standby-kill", "publisher-kill", "freeze", "tor-kill", "backend-kill", "relay-kill")


@dataclass
class Get:
    at: float
    ok: bool
    retried: bool
    latency: float | None
    node: str | None
    error: str | None = None


@dataclass
class Phase:
    name: str
    start: float
    end: float = 0.0
    victims: dict[str, str] = field(default_factory=dict)  # system -> node/instance name
    recovered_at: float | None = None
    error: str | None = None  # a fault or recovery step that crashed (the run goes on)


class Browser:
    """GETs one master address like a browser until stopped; every outcome is kept.

    Any failure of one try (SOCKS error, timeout, reset connection, bad HTTP, a status
    other than 200) is one failed try with its reason; after a failed first try comes one
    retry on a fresh circuit (a browser's reload). Nothing a GET does ends the loop.
    Each GET is also appended to ``log`` as one JSON line, so a run cut short keeps them.
    """

    def __init__(self, client: TorClient, master: str, log: Path | None = None) -> None:
        self.client, self.master, self.log = client, master, log
        self.gets: list[Get] = []
        self.done = asyncio.Event()

    def _try(self) -> tuple[float, str | None, str | None]:
        """One GET on a fresh circuit, timed in its worker thread (so a busy event loop
        does not inflate it): (seconds, answering node, failure reason)."""
        started = time.monotonic()
        try:
            response = self.client.browser_get(self.master, timeout=30.0)
        except SocksError as exc:
            code = getattr(exc, "code", None)
            reason = f"socks 0x{code:02X}" if code else f"socks: {str(exc)[:60]}"
            return time.monotonic() - started, None, reason
        except Exception as exc:  # reset, refused, bad HTTP, ...: a failed try, with why
            return time.monotonic() - started, None, f"{type(exc).__name__}: {str(exc)[:60]}"
        if response.status != 200:
            return time.monotonic() - started, None, f"http {response.status}"
        return time.monotonic() - started, response.text.strip(), None

    async def _get(self) -> Get:
        started = time.time()
        latency, node, reason = await asyncio.to_thread(self._try)
        if reason is None:
            return Get(started, True, False, latency, node)
        latency2, node, reason2 = await asyncio.to_thread(self._try)
        if reason2 is None:  # latency as the user saw it: both tries
            return Get(started, True, True, latency + latency2, node, reason)
        return Get(started, False, True, None, None, f"{reason}; then {reason2}")

    async def run(self) -> None:
        while not self.done.is_set():
            try:
                get = await self._get()
            except Exception as exc:  # a bug here must not end the measurement either
                get = Get(time.time(), False, True, None, None, f"bench: {exc!r}"[:80])
                await asyncio.sleep(1.0)  # do not spin on a persistent bench bug
            self.gets.append(get)
            if self.log is not None:
                with contextlib.suppress(OSError), open(self.log, "a") as out:
                    out.write(json.dumps(get.__dict__) + "\n")


# ----------------------------------------------------------------------------- faults


class MeshFaults:
    def __init__(self, cluster: NodeCluster, network: TorNetwork) -> None:
        self.cluster, self.network = cluster, network
        self.stopped_relay: Any = None
        self.turn = 0

    async def _roles(self) -> tuple[str, str]:
        """The publisher, and the standby whose turn it is (faults rotate over them)."""
        docs = await asyncio.to_thread(self.cluster.statuses)  # socket reads: off the loop
        pub = min(self.cluster.publishers(docs), default="n1")
        standbys = sorted(n for n in self.cluster.nodes if n != pub)
        self.turn += 1
        return pub, standbys[(self.turn - 1) % len(standbys)]

    async def apply(self, fault: str) -> str:
        pub, standby = await self._roles()
        node = self.cluster.nodes[standby]
        if fault == "standby-kill":
            node.kill(signal.SIGKILL)
            return standby
        if fault == "publisher-kill":
            self.cluster.nodes[pub].kill(signal.SIGKILL)
            return pub
        if fault == "freeze":
            os.kill(node.pid, signal.SIGSTOP)
            return standby
        if fault == "tor-kill":
            tor = node.tor_pid()
            if tor is not None:
                os.kill(tor, signal.SIGKILL)
            return standby
        if fault == "backend-kill":
            await asyncio.to_thread(node.stop_backend)
            return standby
        if fault == "relay-kill":
            self.stopped_relay = await self._relay_of(standby)
            if self.stopped_relay is None:
                raise RuntimeError(f"no relay found for {standby}'s intro points")
            await asyncio.to_thread(self.stopped_relay.process.stop)
            return f"{standby} (relay {self.stopped_relay.name})"
        raise ValueError(fault)

    async def _relay_of(self, node_id: str) -> Any:
        """The relay of one of the node's intro points the master descriptor carries."""
        from onionmesh.tor.intro_points import read_own_descriptor

        sock = self.cluster.nodes[node_id].torrc_value("ControlSocket")
        doc = self.cluster.nodes[node_id].status()
        address = ((doc.node.onion_address or "") if doc is not None else "").removesuffix(
            ".onion")
        if not sock or not address:
            return None
        controller = await TorController.connect(socket_path=sock)
        try:
            length = period_length_minutes(await fetch_consensus(controller))
            text = await read_own_descriptor(controller, address)
        finally:
            await controller.close()
        if not text:
            return None
        by_fpr = {n.fingerprint.upper(): n for n in self.network.nodes if n.fingerprint}
        for ip in parse_descriptor(text, address, period_length=length).intro_points:
            for spec in ip.link_specifiers:
                if spec.type == LS_LEGACY_ID and spec.data.hex().upper() in by_fpr:
                    return by_fpr[spec.data.hex().upper()]
        return None

    async def recover(self, fault: str, victim: str) -> None:
        node = self.cluster.nodes[victim.split()[0]]
        if fault in ("standby-kill", "publisher-kill"):
            await asyncio.to_thread(node.start)
        elif fault == "freeze":
            os.kill(node.pid, signal.SIGCONT)
        elif fault == "backend-kill":
            node.backend = await asyncio.to_thread(
                start_backend_process, node.node_id, node.backend_port,
                node.root / "backend.log")
        elif fault == "relay-kill" and self.stopped_relay is not None:
            relay, self.stopped_relay = self.stopped_relay, None
            await asyncio.to_thread(relay.process.start)
        # tor-kill: the daemon restarts its tor by itself


class ObFaults:
    def __init__(self, dep: ObDeployment, network: TorNetwork, config: Path,
                 log_path: Path) -> None:
        self.dep, self.network, self.config, self.log_path = dep, network, config, log_path
        self.turn = 0

    async def apply(self, fault: str) -> str:
        inst = self.dep.instances[self.turn % len(self.dep.instances)]
        self.turn += 1
        if fault == "standby-kill":
            for pid in (inst.process.pid, inst.backend.pid if inst.backend else None):
                if pid is not None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
            return inst.name
        if fault == "publisher-kill":
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.dep.proc.pid, signal.SIGKILL)
            return "onionbalance"
        if fault == "freeze":
            if inst.process.pid is not None:
                os.kill(inst.process.pid, signal.SIGSTOP)
            return inst.name
        if fault == "tor-kill":
            if inst.process.pid is not None:
                os.kill(inst.process.pid, signal.SIGKILL)
            return inst.name
        if fault == "backend-kill":
            if inst.backend is not None:
                await asyncio.to_thread(stop_pid, inst.backend.pid, None, timeout=5.0)
            return inst.name
        return "-"  # relay-kill: the relay is shared, stopped by the onionmesh side

    async def recover(self, fault: str, victim: str) -> None:
        inst = next((i for i in self.dep.instances if i.name == victim), None)
        if fault == "publisher-kill":
            import subprocess

            binary = Path(sys.executable).with_name("onionbalance")
            with open(self.log_path, "ab") as out:
                self.dep.proc = subprocess.Popen(
                    [str(binary), "--is-testnet", "-i", "127.0.0.1", "-p",
                     str(self.dep.frontend.control_port), "-c", str(self.config), "-v", "info"],
                    stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True)
            return
        if inst is None:
            return
        if fault == "freeze" and inst.process.pid is not None:
            os.kill(inst.process.pid, signal.SIGCONT)
        elif fault in ("standby-kill", "tor-kill"):
            await asyncio.to_thread(inst.process.start)
            if fault == "standby-kill":
                inst.backend = await asyncio.to_thread(start_backend_process, inst.name,
                                                       inst.target_port)
        elif fault == "backend-kill":
            inst.backend = await asyncio.to_thread(start_backend_process, inst.name,
                                                   inst.target_port)


# ----------------------------------------------------------------------------- report


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def phase_stats(gets: list[Get], phase: Phase, victim: str | None,
                back_until: float) -> dict[str, Any]:
    """One phase of one system. ``back_until``: how far to look for the victim's first
    answer after its recovery (the next fault), which may lie past this phase's end."""
    mine = [g for g in gets if phase.start <= g.at < phase.end]
    ok = [g for g in mine if g.ok]
    latencies = [g.latency for g in ok if g.latency is not None]
    stats: dict[str, Any] = {
        "gets": len(mine), "ok": len(ok), "ok_first_try": sum(1 for g in ok if not g.retried),
        "p50": percentile(latencies, 0.5), "p95": percentile(latencies, 0.95),
        "failed": sorted({g.error for g in mine if not g.ok and g.error}),
        "retried_after": sorted({g.error for g in ok if g.error}),
    }
    victim = (victim or "").split(" ")[0]
    if victim and victim not in ("-", "onionbalance") and phase.recovered_at is not None:
        answered = [g.at for g in gets if g.ok and g.node == victim]
        during = [t for t in answered if phase.start <= t < phase.recovered_at]
        # the start of the last GET it answered after the fault (0: none after it)
        stats["stopped_after"] = max(during) - phase.start if during else 0.0
        back = [t for t in answered if phase.recovered_at <= t < back_until]
        stats["back_after"] = (min(back) - phase.recovered_at) if back else None
        stats["answered_during_outage"] = len(during)
    return stats


def period_fraction(at: float, period: float, offset: float) -> float:
    """Where in its time period ``at`` lies (tor's periods start ``offset`` s after the
    multiples of their length: the rotation offset, 12 voting intervals)."""
    return round(((at - offset) % period) / period, 2)


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


HEADER = ("phase            system        @period  victim          ok/total (1st try)   "
          "p50    p95  stopped   back  failures")


def row_line(row: dict[str, Any]) -> str:
    return (f"{row['phase']:<16} {row['system']:<13} {row['at_period_fraction']:>6}  "
            f"{(row.get('victim') or '')[:14]:<14}  "
            f"{row['ok']:>3}/{row['gets']:<3} ({row['ok_first_try']:>3})      "
            f"{fmt(row['p50']):>6} {fmt(row['p95']):>6}  {fmt(row.get('stopped_after')):>6} "
            f"{fmt(row.get('back_after')):>6}  {'; '.join(row['failed'])}")


class Recorder:
    """Phases as they end; their rows are printed (and kept in ``phases.jsonl``) once the
    GETs that started in them have finished, so a run cut short still yields figures."""

    def __init__(self, browsers: dict[str, Browser], period: float, offset: float,
                 base: Path) -> None:
        self.browsers, self.period, self.offset, self.base = browsers, period, offset, base
        self.phases: list[Phase] = []
        self.printed = 0

    def rows(self, phase: Phase, index: int) -> list[dict[str, Any]]:
        later = [p.start for p in self.phases[index + 1:] if p.name != "steady"]
        back_until = later[0] if later else float("inf")
        return [{"phase": phase.name, "system": system,
                 "at_period_fraction": period_fraction(phase.start, self.period, self.offset),
                 "victim": phase.victims.get(system), "error": phase.error,
                 **phase_stats(b.gets, phase, phase.victims.get(system), back_until)}
                for system, b in self.browsers.items()]

    def flush(self, final: bool = False) -> None:
        """Print the rows of ended phases whose GETs are all done (two 30 s tries)."""
        settled = time.time() - 65.0
        while self.printed < len(self.phases):
            phase = self.phases[self.printed]
            if not final and phase.end > settled:
                break
            if self.printed == 0:
                print(HEADER, flush=True)
            for row in self.rows(phase, self.printed):
                print(row_line(row), flush=True)
                with open(self.base / "phases.jsonl", "a") as out:
                    out.write(json.dumps(row) + "\n")
            if phase.error:
                print(f"    ^ fault step: {phase.error}", flush=True)
            self.printed += 1


# ----------------------------------------------------------------------------- main


async def fault_step(what: str, step: Any) -> tuple[Any, str | None]:
    """Run one fault/recovery step; a crash is reported and the schedule goes on."""
    try:
        return await step, None
    except Exception as exc:
        message = f"{what}: {type(exc).__name__}: {exc}"
        print(f"  ! {message}", flush=True)
        return None, message


async def run(args: argparse.Namespace, network: TorNetwork, base: Path) -> dict[str, Any]:
    cluster = NodeCluster(network, base / "mesh", 3)  # default timings
    cluster.create()
    cluster.start()
    dep = await start_onionbalance(network, base / "ob")
    mesh_client = await network.aadd_client("meshbrowser")
    ob_client = await network.aadd_client("obbrowser")
    mesh_faults = MeshFaults(cluster, network)
    ob_faults = ObFaults(dep, network, base / "ob" / "config.yaml", dep.log_path)
    browsers = {"onionmesh": Browser(mesh_client, cluster.master_address,
                                     base / "gets-onionmesh.jsonl"),
                "onionbalance": Browser(ob_client, dep.master.onion_address,
                                        base / "gets-onionbalance.jsonl")}
    tasks: list[asyncio.Task[None]] = []
    recorder: Recorder | None = None
    period = offset = 0.0
    try:
        from onionmesh.testnet.node_cluster import cluster_ready

        await cluster.wait_until(lambda d: cluster_ready(cluster, d), 300.0, "mesh ready")
        await wait_ob_ready(ob_client, dep.master.onion_address)
        controller = await TorController.connect(port=mesh_client.control_port)
        try:
            consensus = await fetch_consensus(controller)
            period = period_length_minutes(consensus) * 60.0
            offset = rotation_offset_minutes(consensus) * 60.0  # periods start this late
        finally:
            await controller.close()
        recorder = Recorder(browsers, period, offset, base)
        tasks = [asyncio.create_task(b.run()) for b in browsers.values()]
        began = time.time()
        print(f"both systems ready; time period {period:.0f} s; GETs begin "
              f"(@{period_fraction(began, period, offset):.2f} of a period)", flush=True)
        cycle = 0
        while cycle < args.cycles or time.time() - began < args.min_periods * period:
            for fault in FAULTS:
                steady = Phase("steady", time.time())
                await asyncio.sleep(args.steady)  # the steady phase itself
                steady.end = time.time()
                recorder.phases.append(steady)
                recorder.flush()
                phase = Phase(fault, time.time())
                for system, faults in (("onionmesh", mesh_faults), ("onionbalance", ob_faults)):
                    victim, error = await fault_step(f"{system} {fault}", faults.apply(fault))
                    phase.victims[system] = victim or "-"
                    phase.error = "; ".join(filter(None, (phase.error, error))) or None
                print(f"[{time.time() - began:6.0f} s] {fault}: {phase.victims}", flush=True)
                await asyncio.sleep(args.outage)  # the outage itself
                phase.recovered_at = time.time()
                for system, faults in (("onionmesh", mesh_faults), ("onionbalance", ob_faults)):
                    if phase.victims[system] != "-" or fault == "publisher-kill":
                        _, error = await fault_step(f"{system} recover {fault}",
                                                    faults.recover(fault, phase.victims[system]))
                        phase.error = "; ".join(filter(None, (phase.error, error))) or None
                await asyncio.sleep(args.steady)  # watch it come back
                phase.end = time.time()
                recorder.phases.append(phase)
                recorder.flush()
            cycle += 1
        if recorder is not None:  # the last phases' victims may come back in this tail
            tail = Phase("steady", time.time())
            await asyncio.sleep(args.steady)
            tail.end = time.time()
            recorder.phases.append(tail)
    except Exception as exc:  # report what was measured; say what broke
        print(f"schedule stopped: {type(exc).__name__}: {exc}", flush=True)
    finally:
        for browser in browsers.values():
            browser.done.set()
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 70.0)
        cluster.stop()
        stop_onionbalance(dep)
        # A backend the schedule restarted is not the network's record: stop it here.
        for inst in dep.instances:
            if inst.backend is not None:
                stop_pid(inst.backend.pid, None, timeout=5.0)
    if recorder is None:
        return {"period_s": period, "rows": []}
    recorder.flush(final=True)
    rows = [row for i, phase in enumerate(recorder.phases) for row in recorder.rows(phase, i)]
    return {"period_s": period, "rows": rows}


async def wait_ob_ready(client: TorClient, master: str, timeout: float = 600.0) -> None:
    """Onionbalance publishes once it has fetched its instances (every 20 s or so)."""
    deadline = time.monotonic() + timeout
    controller = await TorController.connect(port=client.control_port)
    try:
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                await fetch_descriptor(controller, master, timeout=20.0)
                return
            await asyncio.sleep(5.0)  # poll period
    finally:
        await controller.close()
    raise TimeoutError(f"Onionbalance did not publish {master[:12]}… within {timeout:g} s")


def report(result: dict[str, Any]) -> None:
    print()
    print(HEADER)
    for row in result["rows"]:
        print(row_line(row))
    for system in ("onionmesh", "onionbalance"):
        mine = [r for r in result["rows"] if r["system"] == system]
        total = sum(r["gets"] for r in mine)
        ok = sum(r["ok"] for r in mine)
        first = sum(r["ok_first_try"] for r in mine)
        steady = [r["p95"] for r in mine if r["phase"] == "steady" and r["p95"] is not None]
        faulty = [r["p95"] for r in mine if r["phase"] != "steady" and r["p95"] is not None]
        base = statistics.median(steady) if steady else None
        worst = max(faulty, default=None)
        print(f"{system}: {ok}/{total} GETs ok ({first} on the first try); p95 steady "
              f"median {fmt(base)} s, worst fault phase {fmt(worst)} s "
              f"({fmt(worst / base if worst and base else None)}x)")
    print(json.dumps(result))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=2, help="fault cycles (at least; the "
                        "run also lasts two time periods)")
    parser.add_argument("--min-periods", type=float, default=2.0,
                        help="run at least this many time periods (default 2)")
    parser.add_argument("--outage", type=float, default=40.0)
    parser.add_argument("--steady", type=float, default=30.0)
    parser.add_argument("--smoke", action="store_true",
                        help="one short cycle (10 s outages, 10 s steady): checks the script")
    parser.add_argument("--dir", type=Path, default=None,
                        help="where the network, nodes and logs live (kept after the run)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.cycles, args.min_periods, args.outage, args.steady = 1, 0.0, 10.0, 10.0
    base = (args.dir or Path(tempfile.mkdtemp(prefix="omav-"))).absolute()
    network = TorNetwork(base / "tornet", N_AUTHORITIES, supervise=False)
    print(f"private network: {N_AUTHORITIES} authorities, files in {base}", flush=True)
    try:
        network.start()
        result = asyncio.run(run(args, network, base))
    finally:
        network.stop()
    report(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
