"""The handshake cache: which challenge to echo to each node (see auth.py).

Every message a node sends carries its per-boot challenge; a receiver accepts
a message only if it echoes the receiver's current challenge. This cache
remembers, per node, the boot and challenge we should echo and where to send
first-contact heartbeats. It is the only state an unverified message may
touch, and it cannot be rolled back: hearsay (unverified messages, gossip)
may only move a node to a boot we have never seen for it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

MAX_ENTRIES = 4096  # only cluster members (MAC + signature) can add entries
MAX_SEEN_BOOTS = 16


@dataclass(frozen=True)
class HandshakeEntry:
    boot: int
    challenge: bytes
    address: str
    seen: tuple[int, ...] = ()  # the node's earlier boots, newest last


class HandshakeCache:
    """node id -> HandshakeEntry."""

    def __init__(self, own_id: str) -> None:
        self._own_id = own_id
        self._entries: dict[str, HandshakeEntry] = {}

    def learn(
        self,
        node_id: str,
        boot: int,
        challenge: bytes,
        address: str,
        *,
        verified: bool,
        is_retired: Callable[[str, int], bool],
    ) -> bool:
        """Record what to echo to ``node_id``; return True for a boot never seen before.

        ``verified``: the message passed every check, so its boot is the node's
        current one. Otherwise only a never-seen boot may replace the entry.
        """
        if node_id == self._own_id or boot <= 0:
            return False
        old = self._entries.get(node_id)
        if old is None and len(self._entries) >= MAX_ENTRIES:
            return False
        if old is not None and boot == old.boot:
            if address and address != old.address:
                self._entries[node_id] = HandshakeEntry(boot, old.challenge, address, old.seen)
            return False
        seen = () if old is None else (*old.seen, old.boot)[-MAX_SEEN_BOOTS:]
        if not verified and (boot in seen or is_retired(node_id, boot)):
            return False
        keep_address = address or (old.address if old is not None else "")
        self._entries[node_id] = HandshakeEntry(boot, challenge, keep_address, seen)
        return True

    def echo_for(self, node_id: str) -> bytes:
        """The challenge to echo to ``node_id`` (empty when we have none)."""
        entry = self._entries.get(node_id)
        return entry.challenge if entry is not None else b""

    def get(self, node_id: str) -> HandshakeEntry | None:
        return self._entries.get(node_id)

    def drop(self, node_id: str) -> None:
        self._entries.pop(node_id, None)

    def items(self) -> Iterator[tuple[str, HandshakeEntry]]:
        return iter(list(self._entries.items()))
