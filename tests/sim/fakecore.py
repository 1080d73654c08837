"""A small, deliberately simple mesh core used only to test the simulator engine.

It speaks JSON heartbeats authenticated with an HMAC of the cluster secret,
keeps per-sender (boot, seq) replay state and a timestamp window, detects
dead peers, elects a publisher with a lease, and builds a fair plan. It is
not the real core (``onionmesh.mesh``); it exists so the engine and its
invariant checker can be tested on their own, including with deliberately
broken variants (see ``BROKEN``).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from onionmesh.sim.coreapi import NodeSpec

MAX_DATAGRAM = 65536


@dataclass(frozen=True)
class FakeConfig:
    heartbeat_interval: float = 1.0
    dead_threshold: int = 3
    removal_grace_period: float = 4.0
    lease_duration: float = 3.0
    lease_grace: float = 0.5
    min_publish_interval: float = 2.0
    datagram_max_age: float = 30.0  # the simulator's window (sim/runner.py)
    max_intro_points: int = 20


@dataclass(frozen=True)
class FakePlan:
    term: int
    generation: int
    intro_points: Mapping[int, tuple[tuple[str, bytes], ...]]
    previous_count: int


@dataclass(frozen=True)
class MessageRejected:
    reason: str
    addr: str


@dataclass(frozen=True)
class PublishRequested:
    plan: FakePlan
    reason: str


@dataclass(frozen=True)
class BecamePublisher:
    term: int
    reason: str


@dataclass(frozen=True)
class SteppedDown:
    term: int
    reason: str
    new_publisher: str | None


@dataclass
class _Peer:
    addr: str
    last_seen: float | None = None
    boot: str = ""
    seq: int = -1
    old_boots: set[str] = field(default_factory=set)
    ips: dict[int, list[bytes]] = field(default_factory=dict)
    is_pub: bool = False
    term: int = 0
    priority: int = 0
    eligible: bool = False


class FakeCore:
    """Sans-IO fake: heartbeat every interval, full intro sets in every heartbeat."""

    def __init__(self, config: FakeConfig, spec: NodeSpec, secret: bytes,
                 bootstrap: Sequence[NodeSpec], now: float, broken: str = "") -> None:
        self.cfg = config
        self.spec = spec
        self._secret = secret
        self.broken = broken
        self.boot = hashlib.sha256(f"{spec.node_id}/{now!r}".encode()).hexdigest()[:16]
        self.seq = 0
        self.started = now
        self.next_hb = now
        self.peers_: dict[str, _Peer] = {b.node_id: _Peer(b.address) for b in bootstrap}
        self.removed: set[str] = set()
        self.ips: dict[int, list[bytes]] = {}
        self._events: list[object] = []
        self._out: list[tuple[bytes, str]] = []
        self.publisher = False
        self.term = 0
        self.follow: str | None = None
        self.follow_seen = now
        self.plan: FakePlan | None = None
        self.last_publish: float | None = None
        self.pending = False
        self.generation = 0

    # -- views ---------------------------------------------------------------
    @property
    def is_publisher(self) -> bool:
        return self.publisher

    @property
    def publisher_id(self) -> str | None:
        return self.spec.node_id if self.publisher else self.follow

    def publish_plan(self) -> FakePlan | None:
        return self.plan if self.publisher else None

    def peers(self) -> Mapping[str, object]:
        return {k: (v.last_seen, v.is_pub, v.term) for k, v in self.peers_.items()}

    # -- outputs ----------------------------------------------------------------
    def get_timer(self) -> float | None:
        t = self.next_hb
        if self.publisher and self.pending and self.last_publish is not None:
            t = min(t, self.last_publish + self.cfg.min_publish_interval)
        return t

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, str]]:
        out, self._out = self._out, []
        return out

    def next_event(self) -> object | None:
        return self._events.pop(0) if self._events else None

    # -- inputs -------------------------------------------------------------------
    def set_local_intro_points(self, sets: Mapping[int, Sequence[bytes]], now: float) -> None:
        self.ips = {int(p): list(v) for p, v in sets.items()}
        self._broadcast(now)  # share right away, not on the next heartbeat
        self._update(now)

    def remove_peer(self, node_id: str, now: float) -> None:
        self.removed.add(node_id)
        self.peers_.pop(node_id, None)
        self._update(now)

    def shutdown(self, now: float) -> None:
        if self.publisher:
            self.publisher = False
            self._events.append(SteppedDown(self.term, "shutdown", None))
        self._broadcast(now)

    def report_foreign_descriptor(self, revision: int, intro_count: int, now: float) -> None:
        pass

    def handle_timer(self, now: float) -> None:
        if now >= self.next_hb:
            self._broadcast(now)
            while self.next_hb <= now:
                self.next_hb += self.cfg.heartbeat_interval
        self._update(now)

    def receive_datagram(self, data: bytes, addr: str, now: float) -> None:
        reason = self._accept(data, now)
        if reason:
            self._events.append(MessageRejected(reason, addr))
        else:
            self._update(now)

    # -- internals ------------------------------------------------------------------
    def _accept(self, data: bytes, now: float) -> str:
        if len(data) > MAX_DATAGRAM:
            return "oversized"
        if len(data) < 33:
            return "malformed"
        body, mac = data[:-32], data[-32:]
        if not hmac.compare_digest(mac, hmac.new(self._secret, body, "sha256").digest()):
            return "forged"
        try:
            msg = json.loads(body)
            sender, boot, seq, ts = msg["id"], msg["boot"], int(msg["seq"]), float(msg["ts"])
        except (ValueError, KeyError, TypeError):
            return "malformed"
        if sender == self.spec.node_id or sender in self.removed:
            return "unknown_sender"
        if abs(ts - now) > self.cfg.datagram_max_age and self.broken != "no_skew_check":
            return "stale"
        peer = self.peers_.setdefault(sender, _Peer(msg["addr"]))
        if self.broken != "accept_replays":
            if boot in peer.old_boots or (boot == peer.boot and seq <= peer.seq):
                return "replayed"
            if boot != peer.boot:
                if peer.boot:
                    peer.old_boots.add(peer.boot)
                peer.boot = boot
        peer.seq = seq
        peer.addr = msg["addr"]
        peer.last_seen = now
        peer.ips = {int(p): [bytes.fromhex(x) for x in v] for p, v in msg["ips"].items()}
        peer.is_pub, peer.term = bool(msg["pub"]), int(msg["term"])
        peer.priority, peer.eligible = int(msg["prio"]), bool(msg["elig"])
        for nid, a in msg["peers"]:
            if nid != self.spec.node_id and nid not in self.removed:
                self.peers_.setdefault(nid, _Peer(a))
        if peer.is_pub:
            self._on_publisher(sender, peer, now)
        return ""

    def _rank(self, prio: int, nid: str) -> tuple[int, str]:
        return (prio, "".join(chr(255 - ord(c)) for c in nid))  # higher prio, then lower id

    def _on_publisher(self, sender: str, peer: _Peer, now: float) -> None:
        self.term = max(self.term, peer.term)
        if self.publisher and self.broken != "always_publish":
            mine = (self.term, self._rank(self.spec.priority, self.spec.node_id))
            theirs = (peer.term, self._rank(peer.priority, sender))
            if theirs < mine:
                return
            self.publisher = False
            self._events.append(SteppedDown(self.term, "conflict", sender))
        if not self.publisher:
            self.follow, self.follow_seen = sender, now

    def _alive(self, peer: _Peer, now: float) -> bool:
        limit = self.cfg.dead_threshold * self.cfg.heartbeat_interval
        return peer.last_seen is not None and now - peer.last_seen <= limit

    def _update(self, now: float) -> None:
        cfg = self.cfg
        lease_over = now - self.follow_seen > cfg.lease_duration + cfg.lease_grace
        warm = now - self.started > cfg.lease_duration + cfg.lease_grace
        if not self.publisher and self.spec.eligible and warm and (
            lease_over or self.broken == "always_publish"
        ):
            rivals = [p for p in self.peers_.values() if p.eligible and self._alive(p, now)]
            me = self._rank(self.spec.priority, self.spec.node_id)
            if self.broken == "always_publish" or all(
                self._rank(p.priority, n) < me for n, p in self.peers_.items() if p in rivals
            ):
                self.publisher = True
                self.follow = None
                self.term += 1
                self._events.append(BecamePublisher(self.term, "lease expired"))
                self._broadcast(now)
        if self.publisher:
            self._refresh_plan(now)

    def _refresh_plan(self, now: float) -> None:
        cfg = self.cfg
        keep = cfg.dead_threshold * cfg.heartbeat_interval + cfg.removal_grace_period
        if self.broken == "never_remove":
            keep = float("inf")
        others = sorted(
            (n, p.ips) for n, p in self.peers_.items()
            if p.last_seen is not None and now - p.last_seen <= keep
        )
        contrib = [(self.spec.node_id, self.ips), *others]
        points: dict[int, tuple[tuple[str, bytes], ...]] = {}
        for period in sorted({p for _, s in contrib for p, v in s.items() if v}):
            queues = [(n, s.get(period, [])) for n, s in contrib if s.get(period)]
            chosen: list[tuple[str, bytes]] = []
            depth = 0
            while len(chosen) < cfg.max_intro_points and any(depth < len(q) for _, q in queues):
                for n, q in queues:
                    if depth < len(q) and len(chosen) < cfg.max_intro_points:
                        chosen.append((n, q[depth]))
                depth += 1
            points[period] = tuple(chosen)
        if self.plan is None or self.plan.intro_points != points or self.plan.term != self.term:
            prev = max((len(v) for v in self.plan.intro_points.values()), default=0) \
                if self.plan else 0
            self.generation += 1
            self.plan = FakePlan(self.term, self.generation, points, prev)
            self.pending = True
        limit = 0.0 if self.broken == "no_rate_limit" else cfg.min_publish_interval
        # Compare against the same sum get_timer() returns, or float rounding livelocks.
        if self.pending and (self.last_publish is None or now >= self.last_publish + limit):
            self.pending = False
            self.last_publish = now
            self._events.append(PublishRequested(self.plan, "plan changed"))

    def _broadcast(self, now: float) -> None:
        self.seq += 1
        msg = {
            "id": self.spec.node_id, "addr": self.spec.address, "boot": self.boot,
            "seq": self.seq, "ts": now, "pub": self.publisher, "term": self.term,
            "prio": self.spec.priority, "elig": self.spec.eligible,
            "ips": {str(p): [ip.hex() for ip in v] for p, v in self.ips.items()},
            "peers": sorted((n, p.addr) for n, p in self.peers_.items()),
        }
        body = json.dumps(msg, sort_keys=True).encode()
        data = body + hmac.new(self._secret, body, "sha256").digest()
        for peer in self.peers_.values():
            self._out.append((data, peer.addr))


BROKEN = ("accept_replays", "no_rate_limit", "never_remove", "always_publish", "no_skew_check")


class FakeFactory:
    """CoreFactory for FakeCore, optionally a broken variant."""

    def __init__(self, broken: str = "", config: FakeConfig | None = None) -> None:
        self.config = config or FakeConfig()
        self.broken = broken

    def make_core(self, spec: NodeSpec, cluster_secret: bytes, bootstrap: Sequence[NodeSpec],
                  now: float) -> FakeCore:
        return FakeCore(self.config, spec, cluster_secret, bootstrap, now, self.broken)
