"""Sans-IO end to end: real MeshCores + PathSelectors over a simulated two-path network.

WireGuard links are fast and can be blocked per node; tor is slow (0.3-3 s, seeded)
and never blocked. Each node's shell does what MultipathTransport does: mesh datagrams
on the selector's path, probes/ACKs answered on the path they came in on, every frame
over WireGuard reported to the selector, the last datagram re-sent on the new path on a
switch. Blocks start at any moment and last any time; a node's daemon can be killed and
restarted with a fresh core and selector while tor streams to it fail.
"""

from __future__ import annotations

import heapq
import itertools
import random

import pytest

from onionmesh.mesh.config import MeshConfig
from onionmesh.mesh.core import MeshCore
from onionmesh.mesh.events import BecamePublisher, PeerDead, SteppedDown
from onionmesh.mesh.identity import PeerSeed
from onionmesh.transport.paths import (
    FellBackToTor,
    Path,
    PathConfig,
    PathSelector,
    SendProbe,
    WireGuardDown,
    WireGuardRestored,
)
from tests.mesh.netloop import SECRET, identity

NODES = ("n1", "n2", "n3")
WG_DELAY = 0.002


class TwoPathNet:
    def __init__(self, seed: int, config: MeshConfig, fallback: bool) -> None:
        self.rng = random.Random(seed)
        self.now = 0.0
        dead_after = (config.dead_threshold + config.heartbeat_slack) * config.heartbeat_interval
        paths = PathConfig.for_heartbeat(config.heartbeat_interval, dead_after, fallback)
        idents = {n: identity(n, priority=100 + i) for i, n in enumerate(NODES)}
        self.cores = {n: MeshCore(config, idents[n], SECRET,
                                  [PeerSeed(m, idents[m].address, idents[m].public_key)
                                   for m in NODES if m != n], 0.0) for n in NODES}
        self.selectors = {n: PathSelector(paths, 0.0, random.Random(seed * 7 + i))
                          for i, n in enumerate(NODES)}
        for n, sel in self.selectors.items():
            sel.set_peers([m for m in NODES if m != n], 0.0)
        self.blocked: set[str] = set()  # nodes whose WireGuard port is blocked
        self.down: set[str] = set()  # nodes whose daemon is not running
        self.tor_broken: set[str] = set()  # nodes whose coordination onion is unreachable
        self.seed = seed
        self.paths = paths
        self.config = config
        self.idents = idents
        self.queue: list[tuple[float, int, str, str, str, bytes, Path]] = []
        self.seq = itertools.count()
        self.last: dict[tuple[str, str], bytes] = {}
        self.events: list[tuple[float, str, object]] = []
        for n in NODES:
            self.flush(n)

    def transmit(self, src: str, dst: str, kind: str, data: bytes, path: Path) -> None:
        if src in self.down or dst in self.down:
            return
        if path is Path.TOR and dst in self.tor_broken:
            return
        if path is Path.WIREGUARD:
            if src in self.blocked or dst in self.blocked:
                return
            delay = WG_DELAY
        else:
            delay = self.rng.uniform(0.3, 3.0)
        heapq.heappush(self.queue, (self.now + delay, next(self.seq), src, dst, kind, data,
                                    path))

    def flush(self, n: str) -> None:
        core, sel = self.cores[n], self.selectors[n]
        for data, addr in core.datagrams_to_send(self.now):
            dst = addr.split(":")[0]
            self.last[(n, dst)] = data
            self.transmit(n, dst, "mesh", data, sel.path_for(dst))
        for action in sel.actions():
            kind = "probe" if isinstance(action, SendProbe) else "ack"
            self.transmit(n, action.node_id, kind, action.nonce, action.path)
        for event in sel.events():
            self.events.append((self.now, n, event))
            last = self.last.get((n, event.node_id))
            if isinstance(event, FellBackToTor) and last is not None:
                self.transmit(n, event.node_id, "mesh", last, Path.TOR)
            elif isinstance(event, WireGuardRestored) and last is not None:
                self.transmit(n, event.node_id, "mesh", last, Path.WIREGUARD)
        while (ev := core.next_event()) is not None:
            self.events.append((self.now, n, ev))

    def run_until(self, end: float) -> None:
        while True:
            candidates = [(self.queue[0][0], "net", "")] if self.queue else []
            for n in NODES:
                if n in self.down:
                    continue
                for owner, timer in (("core", self.cores[n].get_timer()),
                                     ("sel", self.selectors[n].get_timer())):
                    if timer is not None:
                        candidates.append((timer, owner, n))
            t, owner, n = min(candidates)
            if t > end:
                self.now = end
                return
            self.now = max(self.now, t)
            if owner == "core":
                self.cores[n].handle_timer(self.now)
            elif owner == "sel":
                self.selectors[n].handle_timer(self.now)
            else:
                _, _, src, n, kind, data, path = heapq.heappop(self.queue)
                if n in self.down:
                    continue
                if path is Path.WIREGUARD:
                    self.selectors[n].wireguard_heard(src, self.now)
                if kind == "mesh":
                    self.cores[n].receive_datagram(data, f"{src}:7000", self.now)
                elif kind == "probe":
                    self.selectors[n].probe_received(src, data, path)
                else:
                    self.selectors[n].ack_received(src, data, path, self.now)
            self.flush(n)

    def kill(self, n: str) -> None:
        self.down.add(n)
        self.queue = [item for item in self.queue if n not in (item[2], item[3])]
        heapq.heapify(self.queue)

    def restart(self, n: str) -> None:
        """A fresh daemon: new core (a new boot) and selector, peers from its files."""
        self.down.discard(n)
        self.cores[n] = MeshCore(self.config, self.idents[n], SECRET,
                                 [PeerSeed(m, self.idents[m].address, self.idents[m].public_key)
                                  for m in NODES if m != n], self.now)
        self.selectors[n] = PathSelector(self.paths, self.now, random.Random(self.seed + 99))
        self.selectors[n].set_peers([m for m in NODES if m != n], self.now)
        self.flush(n)

    def of(self, kind: type) -> list[tuple[float, str, object]]:
        return [e for e in self.events if isinstance(e[2], kind)]


@pytest.mark.parametrize("seed", range(12))
def test_blocked_tunnel_at_any_moment_never_kills_and_comes_back(seed: int) -> None:
    rng = random.Random(seed)
    net = TwoPathNet(seed, MeshConfig(), fallback=True)
    net.run_until(60.0)  # settled: one publisher, everyone alive
    assert len({c.publisher_id for c in net.cores.values()}) == 1
    leaders_before = len(net.of(BecamePublisher)) + len(net.of(SteppedDown))
    start = 60.0 + rng.uniform(0, 20)
    duration = rng.choice([rng.uniform(3, 15), rng.uniform(15, 300)])
    victim = rng.choice(NODES)
    net.run_until(start)
    net.blocked.add(victim)
    net.run_until(start + duration)
    net.blocked.clear()
    net.run_until(start + duration + 120.0)
    assert net.of(PeerDead) == [], (victim, duration)
    assert len(net.of(BecamePublisher)) + len(net.of(SteppedDown)) == leaders_before
    assert all(view.state == "alive" for c in net.cores.values() for view in c.peers().values())
    if duration > 10:  # long enough that the selectors must have switched
        assert net.of(FellBackToTor) and net.of(WireGuardRestored)
    assert all(sel.path_for(m) is Path.WIREGUARD for n, sel in net.selectors.items()
               for m in NODES if m != n)


@pytest.mark.parametrize("seed", range(4))
def test_without_fallback_a_blocked_tunnel_is_a_dead_peer(seed: int) -> None:
    net = TwoPathNet(seed, MeshConfig(), fallback=False)
    net.run_until(60.0)
    net.blocked.add("n3")
    net.run_until(100.0)
    dead = {(n, e.node_id) for _, n, e in net.of(PeerDead)}  # type: ignore[attr-defined]
    assert {("n1", "n3"), ("n2", "n3"), ("n3", "n1"), ("n3", "n2")} <= dead
    assert net.of(FellBackToTor) == [] and net.of(WireGuardDown)


@pytest.mark.parametrize("seed", range(8))
def test_a_restarted_daemon_hears_the_publisher_over_wireguard_at_once(seed: int) -> None:
    """A standby's daemon dies (its tunnel with it): its peers fall back to tor and
    re-probe WireGuard with backoff, by the time it restarts up to ``backoff_cap`` apart.
    Tor streams to it fail all along (a re-created coordination onion the peers' tor
    cannot reach yet). Its first frames over WireGuard make every peer re-probe at once,
    so it hears the publisher within its start-up listen window: it claims nothing, the
    publisher and term stay, and every path is back on WireGuard within a heartbeat."""
    rng = random.Random(seed)
    net = TwoPathNet(seed, MeshConfig(), fallback=True)
    net.run_until(60.0)
    (publisher,) = {c.publisher_id for c in net.cores.values()}
    assert publisher is not None
    term = net.cores[publisher].term
    victim = rng.choice([n for n in NODES if n != publisher])
    killed = 60.0 + rng.uniform(0, 5)
    net.run_until(killed)
    net.kill(victim)
    net.tor_broken.add(victim)
    restarted = killed + rng.uniform(60, 240)
    net.run_until(restarted)
    assert all(net.selectors[n].path_for(victim) is Path.TOR for n in NODES if n != victim)
    claims_before = len(net.of(BecamePublisher))
    net.restart(victim)
    hb = net.config.heartbeat_interval
    net.run_until(restarted + hb)
    assert all(net.selectors[n].path_for(victim) is Path.WIREGUARD
               for n in NODES if n != victim), net.events[-10:]
    net.run_until(restarted + 4 * (net.config.lease_duration + net.config.lease_grace))
    assert len(net.of(BecamePublisher)) == claims_before, net.of(BecamePublisher)
    assert {c.publisher_id for c in net.cores.values()} == {publisher}
    assert net.cores[publisher].term == term
    assert all(view.state == "alive" for c in net.cores.values() for view in c.peers().values())
