"""A tiny deterministic network for multi-core scenario tests (not the simulator).

Every node's clock is the global clock plus an optional fixed skew. Datagrams
take ``delay`` seconds; links can be cut in one direction (``block``) to make
partitions. Nodes can be killed and restarted (a restart is a new MeshCore
with the same identity). Events of every core are collected per node.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
from collections.abc import Callable, Iterable

from onionmesh.mesh.config import MeshConfig
from onionmesh.mesh.core import MeshCore
from onionmesh.mesh.events import Event
from onionmesh.mesh.identity import NodeIdentity, PeerSeed
from onionmesh.mesh.roster import AuthorityKey, MemberEntry, Roster

SECRET = b"cluster-secret-for-tests-0123456789"
AUTHORITY = AuthorityKey(hashlib.sha256(b"authority-key-for-tests").digest())


def seed_for(node_id: str) -> bytes:
    return hashlib.sha256(b"node-key:" + node_id.encode()).digest()


def identity(node_id: str, priority: int = 100, eligible: bool = True) -> NodeIdentity:
    return NodeIdentity(node_id, seed_for(node_id), priority, eligible, f"{node_id}:7000")


class Net:
    def __init__(
        self,
        config: MeshConfig,
        delay: float = 0.05,
        duplicate: bool = False,
        roster: bool = False,
    ) -> None:
        self.config = config
        # Roster mode: every node added becomes a member (may publish = eligible);
        # the authority's roster is handed to each core as it starts (a copy, like a file).
        self.roster: Roster | None = Roster(AUTHORITY.public_key) if roster else None
        self.delay = delay
        self.duplicate = duplicate  # deliver every datagram twice, the copy later
        self.now = 0.0
        self.cores: dict[str, MeshCore] = {}
        self.identities: dict[str, NodeIdentity] = {}
        self.skew: dict[str, float] = {}
        self.events: dict[str, list[Event]] = {}
        self.timeline: list[tuple[float, str, Event]] = []  # (global time, node, event)
        self.blocked: set[tuple[str, str]] = set()
        self._queue: list[tuple[float, int, str, bytes, str]] = []
        self._seq = itertools.count()
        self.sent: list[tuple[float, str, str, bytes]] = []  # (time, src, dst, data)
        # Loss: called per datagram as (src, dst); True drops it.
        self.lose: Callable[[str, str], bool] | None = None

    # -- topology -----------------------------------------------------------

    def add(
        self, ident: NodeIdentity, bootstrap: Iterable[str] | None = None, skew: float = 0.0
    ) -> MeshCore:
        self.identities[ident.node_id] = ident
        self.skew[ident.node_id] = skew
        if self.roster is not None and self.roster.key_of(ident.node_id) != ident.public_key:
            self.admit(ident)
        names = list(self.identities) if bootstrap is None else list(bootstrap)
        seeds = [
            PeerSeed(n, self.identities[n].address, self.identities[n].public_key)
            for n in names
            if n != ident.node_id and n in self.identities
        ]
        roster = self.roster.copy() if self.roster is not None else None
        core = MeshCore(
            self.config, ident, SECRET, seeds, self.local(ident.node_id), roster=roster
        )
        self.cores[ident.node_id] = core
        self.events.setdefault(ident.node_id, [])
        self.flush(ident.node_id)
        return core

    def admit(self, ident: NodeIdentity, added_at: int = 1) -> None:
        """The authority signs a member entry; running cores learn it as from a sponsor."""
        assert self.roster is not None
        signed = AUTHORITY.sign_entry(
            MemberEntry(ident.node_id, ident.public_key, ident.eligible, added_at)
        )
        self.roster.merge_entry(signed)
        for node_id, core in self.cores.items():
            core.add_roster_statements([signed], [], self.local(node_id))
            self.flush(node_id)

    def local(self, node_id: str) -> float:
        return self.now + self.skew.get(node_id, 0.0)

    def kill(self, node_id: str) -> None:
        del self.cores[node_id]

    def restart(self, node_id: str, bootstrap: Iterable[str] | None = None) -> MeshCore:
        return self.add(self.identities[node_id], bootstrap, self.skew[node_id])

    def partition(self, *groups: Iterable[str]) -> None:
        sets = [set(g) for g in groups]
        for a, b in itertools.permutations(range(len(sets)), 2):
            for x in sets[a]:
                for y in sets[b]:
                    self.blocked.add((x, y))

    def heal(self) -> None:
        self.blocked.clear()

    # -- running ------------------------------------------------------------

    def _addr_owner(self, addr: str) -> str:
        return addr.split(":")[0]

    def flush(self, node_id: str) -> None:
        core = self.cores.get(node_id)
        if core is None:
            return
        for data, addr in core.datagrams_to_send(self.local(node_id)):
            dst = self._addr_owner(addr)
            self.sent.append((self.now, node_id, dst, data))
            if (node_id, dst) in self.blocked:
                continue
            if self.lose is not None and self.lose(node_id, dst):
                continue
            heapq.heappush(
                self._queue, (self.now + self.delay, next(self._seq), dst, data, f"{node_id}:7000")
            )
            if self.duplicate:  # a second copy, later (duplication and reordering)
                heapq.heappush(
                    self._queue,
                    (self.now + 3 * self.delay, next(self._seq), dst, data, f"{node_id}:7000"),
                )
        while (ev := core.next_event()) is not None:
            self.events[node_id].append(ev)
            self.timeline.append((self.now, node_id, ev))

    def inject(self, dst: str, data: bytes, src_addr: str = "evil:1") -> None:
        heapq.heappush(self._queue, (self.now, next(self._seq), dst, data, src_addr))

    def run_until(self, t_end: float) -> None:
        last_fire: tuple[str, float] | None = None
        repeats = 0
        while True:
            next_t = self._queue[0][0] if self._queue else float("inf")
            timer_node = None
            for nid, core in self.cores.items():
                t = core.get_timer()
                if t is None:
                    continue
                t_global = t - self.skew[nid]
                if t_global < next_t:
                    next_t, timer_node = t_global, nid
            if next_t > t_end:
                self.now = t_end
                return
            self.now = max(self.now, next_t)
            if timer_node is not None:
                # A core whose timer does not move after handle_timer would spin forever.
                fire = (timer_node, next_t)
                repeats = repeats + 1 if fire == last_fire else 0
                last_fire = fire
                assert repeats < 10, f"{timer_node}'s timer is stuck at {next_t}"
                self.cores[timer_node].handle_timer(self.local(timer_node))
                self.flush(timer_node)
            else:
                _, _, dst, data, src = heapq.heappop(self._queue)
                core = self.cores.get(dst)
                if core is not None:
                    core.receive_datagram(data, src, self.local(dst))
                    self.flush(dst)

    def times(self, node_id: str, kind: type) -> list[float]:
        return [t for t, n, e in self.timeline if n == node_id and isinstance(e, kind)]

    def publishers(self) -> list[str]:
        return sorted(n for n, c in self.cores.items() if c.is_publisher)

    def of(self, node_id: str, kind: type) -> list:
        return [e for e in self.events[node_id] if isinstance(e, kind)]
