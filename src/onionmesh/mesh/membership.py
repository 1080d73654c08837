"""Membership and failure detection: where peers are declared suspect, dead and removed.

Per peer: ``unknown`` (named by config or gossip, never heard in this boot)
-> ``alive`` (heard) -> ``suspect`` (missed heartbeats, "N more until dead")
-> ``dead`` after ``dead_threshold`` missed heartbeats. A dead peer's intro
points stay in the plan for ``removal_grace_period`` and then leave it. A
dead peer that is heard again has *recovered*; if it recovers
``flap_threshold`` times within ``flap_window`` it is *damped*: its intro
points wait ``flap_hold`` seconds of uninterrupted life before they re-enter
the plan, so a bouncing node cannot trigger a republish storm.

All times are the local node's clock (``now`` as given to the core): a peer's
own timestamps are never used for liveness, so skewed clocks do not matter.
A heartbeat counts as missed ``heartbeat_slack`` of an interval after it was
due; DEAD comes at ``dead_threshold + slack`` intervals of silence. (Peers send
each heartbeat twice, half an interval apart, so a missed heartbeat means two
datagrams lost: see ``MeshCore.handle_timer``.)
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from onionmesh.mesh.config import MeshConfig
from onionmesh.mesh.events import (
    Event,
    PeerDamped,
    PeerDead,
    PeerLeft,
    PeerRecovered,
    PeerSuspect,
)
from onionmesh.mesh.intro import EMPTY_DIGEST, intro_digest
from onionmesh.mesh.vocabulary import PeerState, Role

# Short names for the states, used throughout membership and the core.
UNKNOWN, ALIVE = PeerState.UNKNOWN, PeerState.ALIVE
SUSPECT, DEAD = PeerState.SUSPECT, PeerState.DEAD
IntroSets = Mapping[int, tuple[bytes, ...]]


def members_digest(node_ids: Iterable[str]) -> bytes:
    """A 16-byte digest of a set of node ids (gossip convergence check)."""
    h = hashlib.blake2b(digest_size=16, person=b"onionmesh-member")
    for node_id in sorted(node_ids):
        h.update(node_id.encode() + b"\x00")
    return h.digest()


@dataclass(frozen=True)
class PeerView:
    """A read-only snapshot of one peer for status pages and the simulator."""

    node_id: str
    address: str
    state: PeerState
    last_seen: float | None  # local time the peer was last heard
    intro_count: int
    priority: int
    eligible: bool
    role: Role
    term: int


@dataclass
class PeerRecord:
    """Everything this node knows about one peer."""

    node_id: str
    address: str
    public_key: bytes | None
    state: PeerState = UNKNOWN
    last_heard: float | None = None
    missed_reported: int = 0
    dead_since: float | None = None
    boot: int = 0
    # Intro points as last received, when each was first seen (freshness), digest.
    intro_sets: dict[int, tuple[bytes, ...]] = field(default_factory=dict)
    intro_first_seen: dict[bytes, float] = field(default_factory=dict)
    intro_digest: bytes = EMPTY_DIGEST
    # From the peer's last heartbeat.
    advertised_digest: bytes = EMPTY_DIGEST
    advertised_count: int = 0
    members_digest: bytes = b""
    priority: int = 0
    eligible: bool = False
    role: Role = Role.STANDBY
    term: int = 0
    plan_count: int = 0
    # Flap damping and resend rate limits.
    recoveries: list[float] = field(default_factory=list)
    damped_until: float = float("-inf")
    damp_active: bool = False
    deadline: float | None = None  # next timeline deadline (see Membership._touch)
    last_intro_request: float = float("-inf")
    last_peerlist_sent: float = float("-inf")

    @property
    def intro_count(self) -> int:
        return sum(len(v) for v in self.intro_sets.values())

    @property
    def intro_synced(self) -> bool:
        """True when we hold exactly the intro points the peer advertises."""
        return self.intro_digest == self.advertised_digest

    def set_intro_points(self, sets: Mapping[int, Sequence[bytes]], now: float) -> bool:
        """Replace the peer's intro points; return True if they changed."""
        new = {p: tuple(v) for p, v in sets.items() if v}
        digest = intro_digest(new)
        if digest == self.intro_digest:
            return False
        seen = {ip: self.intro_first_seen.get(ip, now) for v in new.values() for ip in v}
        self.intro_sets, self.intro_first_seen, self.intro_digest = new, seen, digest
        return True

    def clear_intro_points(self) -> bool:
        return self.set_intro_points({}, 0.0)

    def view(self) -> PeerView:
        return PeerView(
            node_id=self.node_id,
            address=self.address,
            state=self.state,
            last_seen=self.last_heard,
            intro_count=self.intro_count,
            priority=self.priority,
            eligible=self.eligible,
            role=self.role,
            term=self.term,
        )


class Membership:
    """The peer table and its timeline (no I/O; all methods take ``now``)."""

    def __init__(self, config: MeshConfig) -> None:
        self.config = config
        self.peers: dict[str, PeerRecord] = {}
        self.removed: set[str] = set()
        # (deadline, order, node id); superseded entries are skipped lazily
        self._heap: list[tuple[float, int, str]] = []
        self._order = itertools.count()

    # -- timeline -----------------------------------------------------------

    def _missed_at(self, rec: PeerRecord, k: int) -> float:
        """Local time at which the k-th heartbeat after the last one counts as missed."""
        assert rec.last_heard is not None
        return rec.last_heard + (k + self.config.heartbeat_slack) * self.config.heartbeat_interval

    def heard(self, rec: PeerRecord, now: float) -> list[Event]:
        """The peer spoke (an authenticated datagram); return the transition events."""
        events: list[Event] = []
        was = rec.state
        rec.last_heard = now if rec.last_heard is None else max(rec.last_heard, now)
        rec.missed_reported = 0
        rec.state = ALIVE
        if was == DEAD:
            rec.dead_since = None
            cfg = self.config
            rec.recoveries = [t for t in rec.recoveries if t > now - cfg.flap_window] + [now]
            events.append(PeerRecovered(rec.node_id))
            if len(rec.recoveries) >= cfg.flap_threshold:
                rec.damped_until = now + cfg.flap_hold
                rec.damp_active = True
                events.append(PeerDamped(rec.node_id, rec.damped_until))
        self._touch(rec)
        return events

    def tick(self, now: float) -> tuple[list[Event], bool]:
        """Advance every peer whose deadline has come; return events and whether plan input changed.

        Only due peers are visited (a heap of deadlines), so a tick costs
        O(log N) per due peer rather than O(N).
        """
        events: list[Event] = []
        changed = False
        while self._heap and self._heap[0][0] <= now:
            due, _, node_id = heapq.heappop(self._heap)
            rec = self.peers.get(node_id)
            if rec is None or rec.deadline != due:
                continue  # superseded entry
            changed |= self._advance(rec, now, events)
            self._touch(rec)
        return events, changed

    def _advance(self, rec: PeerRecord, now: float, events: list[Event]) -> bool:
        changed = False
        threshold = self.config.dead_threshold
        if rec.damp_active and now >= rec.damped_until:
            rec.damp_active = False
            changed = True
        if rec.state == DEAD:
            if rec.intro_sets and self._removal_due(rec, now):
                # The grace is over: the intro points leave the plan. Drop them so
                # a recovery cannot bring stale ones back before the peer resends.
                changed |= rec.clear_intro_points()
            return changed
        if rec.state == UNKNOWN or rec.last_heard is None:
            return changed
        dead_at = rec.last_heard + (threshold + self.config.heartbeat_slack) * (
            self.config.heartbeat_interval
        )
        if now >= dead_at:
            rec.state = DEAD
            rec.dead_since = dead_at
            events.append(PeerDead(rec.node_id, rec.intro_count))
            if self._removal_due(rec, now):
                rec.clear_intro_points()
            return True  # candidates changed even if intro points stay for the grace
        missed = 0
        while missed + 1 < threshold and now >= self._missed_at(rec, missed + 1):
            missed += 1
        if missed > rec.missed_reported:
            rec.state = SUSPECT
            rec.missed_reported = missed
            events.append(PeerSuspect(rec.node_id, missed, threshold - missed))
        return changed

    def resume_after_pause(self, gap: float) -> None:
        """This node did not run for ``gap`` seconds: for liveness, that time did not pass.

        Silence we could not listen to is no evidence, so every alive or suspect
        peer's timeline moves forward by the gap: a peer that really died is
        declared dead after the usual number of missed heartbeats from now on.
        """
        for rec in self.peers.values():
            if rec.state in (ALIVE, SUSPECT) and rec.last_heard is not None:
                rec.last_heard += gap
                self._touch(rec)

    def depart(self, rec: PeerRecord, now: float) -> list[Event]:
        """The peer announced a clean shutdown: dead at once, intro points out at once."""
        if rec.state == DEAD and not rec.intro_sets:
            return []
        count = rec.intro_count
        rec.state = DEAD
        # Its removal grace is already over: the grace guards against flapping on
        # missed heartbeats, and a clean departure is no such doubt.
        rec.dead_since = now - self.config.removal_grace_period
        rec.clear_intro_points()
        self._touch(rec)
        return [PeerLeft(rec.node_id, count)]

    def _removal_due(self, rec: PeerRecord, now: float) -> bool:
        grace = self.config.removal_grace_period
        return rec.dead_since is not None and now >= rec.dead_since + grace

    def _deadline(self, rec: PeerRecord) -> float | None:
        """The next local time at which this peer's timeline has something to do."""
        cfg = self.config
        t: float | None = None
        if rec.state in (ALIVE, SUSPECT) and rec.last_heard is not None:
            k = rec.missed_reported + 1
            if k < cfg.dead_threshold:
                t = self._missed_at(rec, k)
            else:
                t = rec.last_heard + (cfg.dead_threshold + cfg.heartbeat_slack) * (
                    cfg.heartbeat_interval
                )
        elif rec.state == DEAD and rec.dead_since is not None and rec.intro_sets:
            t = rec.dead_since + cfg.removal_grace_period
        if rec.damp_active:
            t = rec.damped_until if t is None else min(t, rec.damped_until)
        return t

    def _touch(self, rec: PeerRecord) -> None:
        """Recompute the peer's deadline and (re)schedule it."""
        rec.deadline = self._deadline(rec)
        if rec.deadline is not None:
            heapq.heappush(self._heap, (rec.deadline, next(self._order), rec.node_id))

    def next_deadline(self) -> float | None:
        """The earliest local time at which ``tick`` has something to do."""
        while self._heap:
            due, _, node_id = self._heap[0]
            rec = self.peers.get(node_id)
            if rec is not None and rec.deadline == due:
                return due
            heapq.heappop(self._heap)
        return None

    # -- queries ------------------------------------------------------------

    def contributes(self, rec: PeerRecord, now: float) -> bool:
        """Whether the peer's intro points belong in the plan at ``now``."""
        if rec.state in (ALIVE, SUSPECT):
            return now >= rec.damped_until
        if rec.state == DEAD:
            return not self._removal_due(rec, now) and now >= rec.damped_until
        return False

    def live_ids(self) -> list[str]:
        return [r.node_id for r in self.peers.values() if r.state in (ALIVE, SUSPECT)]

    def add(self, node_id: str, address: str, public_key: bytes | None) -> PeerRecord | None:
        """Track a new peer (unless the operator removed it); None if removed."""
        if node_id in self.removed:
            return None
        rec = self.peers.get(node_id)
        if rec is None:
            rec = PeerRecord(node_id=node_id, address=address, public_key=public_key)
            self.peers[node_id] = rec
        return rec

    def remove(self, node_id: str) -> PeerRecord | None:
        """Operator removal: forget the peer and refuse it from now on."""
        self.removed.add(node_id)
        return self.peers.pop(node_id, None)
