"""Benchmark: one node under a flood of forged and replayed datagrams (issue 9).

Three real ``MeshCore``s in roster mode (default MeshConfig): ``a`` publishes,
``b`` is a standby that may publish, ``c`` is a standby that may not (the
captured node: the insider holds its key, its boot and the cluster secret).
An outsider holds nothing. Each flood is aimed at ``a``:

=====================  ===============================================================
outsider_forged        sealed with another cluster secret and key (MAC refuses it)
outsider_replay        b's and c's real datagrams to a, replayed within the skew window
insider_claim          c's fresh, correctly sealed LeaseClaims (refused: may not publish)
insider_peerlist       c's fresh PeerLists of 100 fake members (nothing learnt)
insider_bad_signature  c's id and MAC, a broken signature
insider_impersonation  c's MAC, b's id, c's key (refused before any signature check)
=====================  ===============================================================

For each flood we measure the CPU cost of ``a.receive_datagram`` per flood datagram
and the cost of one honest heartbeat from ``b`` (its full path: MAC, signature,
replay and freshness checks, applying it). The node keeps up with a flood as long
as its one core spends less than a second per second; beyond that its socket
buffer overflows and honest heartbeats are lost with the flood. So the highest
rate at which it keeps every peer alive is ``(1 - honest load) / cost`` flood
datagrams per second per core; the ratio ``heartbeat cost / flood cost`` says how
many flood datagrams cost as much as verifying one honest heartbeat.

Each flood then runs for ``--seconds`` of simulated time at 90% of that rate,
interleaved with the honest traffic, and the run checks what must not change:
``a`` still publishes, every node follows it, nobody is suspect or dead, the plan
is the same and the roster too; it also checks that ``a`` kept up (CPU time spent
below the simulated time). Run: ``.venv/bin/python bench/flood.py`` (``--quick``
for fewer samples).
"""

from __future__ import annotations

import argparse
import hashlib
import heapq
import itertools
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from onionmesh.mesh.auth import ClusterKey, Sealer
from onionmesh.mesh.codec import decode_sealed, encode_sealed
from onionmesh.mesh.config import MeshConfig
from onionmesh.mesh.core import MeshCore
from onionmesh.mesh.identity import NodeIdentity, PeerSeed
from onionmesh.mesh.messages import (
    Heartbeat,
    LeaseClaim,
    Message,
    PeerInfo,
    PeerList,
    Sealed,
)
from onionmesh.mesh.roster import AuthorityKey, MemberEntry, Roster

SECRET = b"flood-bench-cluster-secret-0123456789"
T0 = 1_800_000_000.0


def _seed(name: str) -> bytes:
    return hashlib.sha256(b"flood:" + name.encode()).digest()


class Lab:
    """Three cores on a lossless 10 ms network (global clock, no skew)."""

    def __init__(self) -> None:
        self.config = MeshConfig()
        self.now = T0
        authority = AuthorityKey(_seed("authority"))
        self.ids = {
            "a": NodeIdentity("a", _seed("a"), 200, True, "a:7000"),
            "b": NodeIdentity("b", _seed("b"), 100, True, "b:7000"),
            "c": NodeIdentity("c", _seed("c"), 50, False, "c:7000"),
        }
        roster = Roster(authority.public_key)
        for ident in self.ids.values():
            roster.merge_entry(
                authority.sign_entry(MemberEntry(ident.node_id, ident.public_key,
                                                 ident.eligible, 1))
            )
        self.cores: dict[str, MeshCore] = {}
        for n, ident in self.ids.items():
            seeds = [PeerSeed(o, f"{o}:7000") for o in self.ids if o != n]
            self.cores[n] = MeshCore(self.config, ident, SECRET, seeds, self.now,
                                     roster=roster.copy())
            self.cores[n].set_local_intro_points(
                {1: [f"{n}-{i}".encode() for i in range(3)]}, self.now
            )
        self._queue: list[tuple[float, int, str, bytes, str]] = []
        self._seq = itertools.count()
        self.captured: list[tuple[float, bytes, str]] = []  # honest datagrams to a
        self.cpu_a = 0.0  # CPU seconds a spent on everything
        for n in self.cores:
            self._flush(n)

    def _flush(self, n: str) -> None:
        core = self.cores[n]
        for data, addr in core.datagrams_to_send(self.now):
            dst = addr.split(":")[0]
            if dst == "a":
                self.captured.append((self.now, data, f"{n}:7000"))
                self.captured = self.captured[-500:]
            heapq.heappush(self._queue, (self.now + 0.01, next(self._seq), dst, data,
                                         f"{n}:7000"))
        while core.next_event() is not None:
            pass

    def inject(self, at: float, data: bytes, src: str) -> None:
        heapq.heappush(self._queue, (at, next(self._seq), "a", data, src))

    def run_until(self, t_end: float) -> None:
        clock = time.process_time
        while True:
            next_t, timer = (self._queue[0][0] if self._queue else float("inf")), None
            for n, core in self.cores.items():
                t = core.get_timer()
                if t is not None and t < next_t:
                    next_t, timer = t, n
            if next_t > t_end:
                self.now = t_end
                return
            self.now = max(self.now, next_t)
            if timer is not None:
                start = clock()
                self.cores[timer].handle_timer(self.now)
                if timer == "a":
                    self.cpu_a += clock() - start
                self._flush(timer)
            else:
                _, _, dst, data, src = heapq.heappop(self._queue)
                start = clock()
                self.cores[dst].receive_datagram(data, src, self.now)
                if dst == "a":
                    self.cpu_a += clock() - start
                self._flush(dst)

    # -- what an attacker can make ------------------------------------------------

    def insider_seal(self, body: Message, sender: str | None = None) -> bytes:
        core = self.cores["c"]
        sealer = core._sealer  # the captured node's own key, boot and sequence
        if sender is None:
            return sealer.seal(body, self.now, "a", core._handshake.echo_for("a"))
        saved, sealer.node_id = sealer.node_id, sender
        try:
            return sealer.seal(body, self.now, "a", core._handshake.echo_for("a"))
        finally:
            sealer.node_id = saved

    def state(self) -> tuple:
        a = self.cores["a"]
        plan = a.publish_plan()
        views = {
            n: sorted((p, v.state) for p, v in core.peers().items())
            for n, core in self.cores.items()
        }
        return (a.is_publisher, [c.publisher_id for c in self.cores.values()], views,
                None if plan is None else dict(plan.intro_points),
                a.roster.digest() if a.roster else None)


def _heartbeat(lab: Lab, sender: str) -> Heartbeat:
    return lab.cores[sender]._heartbeat_body(Heartbeat)


def make_floods(lab: Lab) -> dict[str, Callable[[int], bytes]]:
    outsider = Sealer("b", os.urandom(32), ClusterKey(os.urandom(32)), 7)
    fake_peers = PeerList([
        PeerInfo(f"fake{i}", f"10.0.{i // 250}.{i % 250}:7000", os.urandom(32), 5, bytes(16))
        for i in range(100)
    ])

    # The MAC check refuses these before anything else, so a pool of them is as good
    # as fresh ones (and spares the benchmark a signature per datagram).
    forged_pool = [outsider.seal(_heartbeat(lab, "b"), lab.now, "a") for _ in range(500)]

    def outsider_forged(i: int) -> bytes:
        return forged_pool[i % len(forged_pool)]

    def outsider_replay(i: int) -> bytes:
        recent = [d for t, d, _ in lab.captured if lab.now - t < 20]
        return recent[i % len(recent)]

    def insider_claim(i: int) -> bytes:
        return lab.insider_seal(LeaseClaim(lab.cores["a"].term + 1, 2**31 - 1, 2**32 - 1))

    def insider_peerlist(i: int) -> bytes:
        return lab.insider_seal(fake_peers)

    def insider_bad_signature(i: int) -> bytes:
        # Break the signature and recompute the MAC, as an insider with the secret can.
        sealed = decode_sealed(lab.insider_seal(_heartbeat(lab, "c")))
        bad = bytes([sealed.signature[0] ^ 1]) + sealed.signature[1:]
        key = ClusterKey(SECRET)
        return encode_sealed(Sealed(sealed.version, sealed.signed, bad,
                                    key.tag(sealed.signed, bad)))

    def insider_impersonation(i: int) -> bytes:
        return lab.insider_seal(_heartbeat(lab, "c"), sender="b")

    return {
        "outsider_forged": outsider_forged,
        "outsider_replay": outsider_replay,
        "insider_claim": insider_claim,
        "insider_peerlist": insider_peerlist,
        "insider_bad_signature": insider_bad_signature,
        "insider_impersonation": insider_impersonation,
    }


def _cost(lab: Lab, make: Callable[[int], bytes], samples: int, src: str) -> float:
    """Mean CPU seconds of a.receive_datagram over fresh datagrams (events drained)."""
    a = lab.cores["a"]
    datas = [make(i) for i in range(samples)]
    start = time.process_time()
    for d in datas:
        a.receive_datagram(d, src, lab.now)
        while a.next_event() is not None:
            pass
    cost = (time.process_time() - start) / samples
    a.datagrams_to_send(lab.now)
    return cost


def _honest_cost(lab: Lab, samples: int) -> float:
    """One honest heartbeat from b, full path (fresh sequence numbers, right echo)."""
    b = lab.cores["b"]
    return _cost(lab, lambda i: b._sealer.seal(_heartbeat(lab, "b"), lab.now, "a",
                                               b._handshake.echo_for("a")), samples, "b:7000")


@dataclass(frozen=True)
class Result:
    kind: str
    cost_us: float
    max_rate: float  # flood datagrams/s one core can refuse while keeping up
    ratio: float  # honest heartbeat cost / flood datagram cost
    held: bool  # the 90% run changed nothing (publisher, views, plan, roster)
    cpu_share: float  # a's CPU seconds per simulated second in the 90% run (< 1: kept up)


def run(seconds: float, samples: int) -> tuple[float, list[Result]]:
    lab = Lab()
    lab.run_until(T0 + 40)
    assert lab.cores["a"].is_publisher, "a did not become publisher"
    honest = _honest_cost(lab, samples)
    # Honest load on a: what it spent per simulated second before any flood.
    lab.cpu_a = 0.0
    t = lab.now
    lab.run_until(t + 20)
    honest_load = lab.cpu_a / 20
    results = []
    for kind, make in make_floods(lab).items():
        src = "c:7000" if kind.startswith("insider") else "evil:1"
        cost = _cost(lab, make, samples, src)
        max_rate = (1 - honest_load) / cost
        # The 90% run: the flood spread evenly over `seconds` of simulated time.
        lab.run_until(lab.now + 1)
        before = lab.state()
        lab.cpu_a = 0.0
        rate = 0.9 * max_rate
        start, step = lab.now, 0.25
        end = start + seconds
        while lab.now < end:
            n = int(rate * step)
            for i in range(n):
                lab.inject(lab.now + step * i / max(n, 1), make(i), src)
            lab.run_until(lab.now + step)
        lab.run_until(lab.now + 1)
        share = lab.cpu_a / (lab.now - start)
        results.append(Result(kind, cost * 1e6, max_rate, honest / cost,
                              lab.state() == before, share))
    return honest, results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=15.0,
                        help="simulated seconds of each 90%% flood run (default 15)")
    parser.add_argument("--quick", action="store_true", help="fewer samples, 6 s runs")
    args = parser.parse_args()
    samples = 500 if args.quick else 2000
    seconds = 6.0 if args.quick else args.seconds
    honest, results = run(seconds, samples)
    print(f"honest heartbeat from b (full path): {honest * 1e6:.1f} us "
          f"= {1 / honest:,.0f}/s per core")
    print(f"{'flood':24} {'us/datagram':>12} {'max rate/s/core':>16} {'ratio':>7} "
          f"{'90% run':>9} {'cpu share':>10}")
    for r in results:
        print(f"{r.kind:24} {r.cost_us:12.1f} {r.max_rate:16,.0f} {r.ratio:7.1f} "
              f"{'held' if r.held else 'BROKE':>9} {r.cpu_share:10.2f}")
    if not all(r.held for r in results):
        raise SystemExit("a flood changed the cluster's state")


if __name__ == "__main__":
    main()
