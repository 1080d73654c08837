"""The v3 HSDir hash ring (rend-spec-v3 [HASHRING]) and responsible HSDirs.

The walk is tor's ``hs_get_responsible_hsdirs`` (hs_common.c): for each
replica 1..hsdir_n_replicas, binary-search the ring (sorted by hsdir_index)
for the service's hs_index and take the next ``spread`` relays clockwise,
skipping relays an earlier replica already chose, and stopping once the
walk is back where it started. On small rings this returns fewer relays
than ``n_replicas * spread`` but never loops and never repeats a relay.

Eligible relays, as in tor: the ``HSDir`` flag, ``HSDir=2`` in the ``pr``
line, and an ed25519 identity from the microdescriptor. When two relays
claim one ed25519 identity tor keeps the first it sees in the consensus and
drops the other from the ring; so do we.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

from onionmesh.hsdir.consensus import Consensus, Relay
from onionmesh.hsdir.errors import HsdirError

__all__ = [
    "HashRing",
    "RingParams",
    "eligible_hsdirs",
    "hs_index",
    "hsdir_index",
    "responsible_hsdirs",
    "ring_params",
]


def _int8(value: int, what: str) -> bytes:
    if not 0 <= value < 2**64:
        raise HsdirError(f"{what} must fit in an unsigned 64-bit integer")
    return value.to_bytes(8, "big")


def _check_len(value: bytes, length: int, what: str) -> None:
    if not isinstance(value, bytes | bytearray | memoryview) or len(value) != length:
        raise HsdirError(f"{what} must be {length} bytes")


def hsdir_index(ed25519_id: bytes, srv: bytes, period_number: int, period_length: int) -> bytes:
    """SHA3-256("node-idx" | ed25519_id | srv | INT_8(period_number) | INT_8(period_length))."""
    _check_len(ed25519_id, 32, "ed25519 identity")
    _check_len(srv, 32, "shared random value")
    return hashlib.sha3_256(
        b"node-idx"
        + bytes(ed25519_id)
        + bytes(srv)
        + _int8(period_number, "period number")
        + _int8(period_length, "period length")
    ).digest()


def hs_index(replica: int, blinded_key: bytes, period_number: int, period_length: int) -> bytes:
    """SHA3-256("store-at-idx" | blinded_key | INT_8(replica) | INT_8(length) | INT_8(number))."""
    _check_len(blinded_key, 32, "blinded key")
    return hashlib.sha3_256(
        b"store-at-idx"
        + bytes(blinded_key)
        + _int8(replica, "replica")
        + _int8(period_length, "period length")
        + _int8(period_number, "period number")
    ).digest()


@dataclass(frozen=True)
class RingParams:
    """hsdir_n_replicas, hsdir_spread_store and hsdir_spread_fetch (tor's defaults)."""

    n_replicas: int = 2
    spread_store: int = 4
    spread_fetch: int = 3


def ring_params(consensus: Consensus) -> RingParams:
    """The ring parameters of a consensus; the ranges are tor's (and the spec's)."""
    return RingParams(
        n_replicas=consensus.param("hsdir_n_replicas", 2, 1, 16),
        spread_store=consensus.param("hsdir_spread_store", 4, 1, 128),
        spread_fetch=consensus.param("hsdir_spread_fetch", 3, 1, 128),
    )


def eligible_hsdirs(relays: Iterable[Relay]) -> list[Relay]:
    """Relays tor puts on the v3 ring, in consensus order, first claimant of an ed25519 id only."""
    seen: set[bytes] = set()
    chosen: list[Relay] = []
    for relay in relays:
        if relay.ed25519_id is None or relay.ed25519_id in seen:
            continue
        # tor clears the ed25519 id of the later duplicate, whatever its flags.
        seen.add(relay.ed25519_id)
        if "HSDir" in relay.flags and relay.supports_hsdir_v3:
            chosen.append(relay)
    return chosen


class HashRing:
    """The ring for one (SRV, period): relays sorted by their hsdir_index.

    Build it once per consensus and descriptor, then ask it for several
    blinded keys; building costs one SHA3 per HSDir.
    """

    def __init__(
        self, relays: Iterable[Relay], srv: bytes, period_number: int, period_length: int
    ) -> None:
        _check_len(srv, 32, "shared random value")
        entries = []
        for relay in eligible_hsdirs(relays):
            assert relay.ed25519_id is not None  # eligible_hsdirs guarantees it
            index = hsdir_index(relay.ed25519_id, srv, period_number, period_length)
            entries.append((index, relay))
        entries.sort(key=lambda item: item[0])
        self._indices = [index for index, _ in entries]
        self._relays = [relay for _, relay in entries]
        self.period_number = period_number
        self.period_length = period_length

    def __len__(self) -> int:
        return len(self._relays)

    def responsible(
        self, blinded_key: bytes, *, n_replicas: int = 2, spread: int = 4
    ) -> list[Relay]:
        """The responsible HSDirs for ``blinded_key``, in tor's selection order."""
        _check_len(blinded_key, 32, "blinded key")
        if n_replicas < 1 or spread < 1:
            raise HsdirError("n_replicas and spread must be at least 1")
        chosen: list[Relay] = []
        chosen_ids: set[bytes] = set()
        size = len(self._relays)
        if size == 0:
            return chosen
        for replica in range(1, n_replicas + 1):
            target = hs_index(replica, blinded_key, self.period_number, self.period_length)
            start = bisect.bisect_left(self._indices, target)
            if start == size:
                start = 0
            idx = start
            added = 0
            while added < spread:
                relay = self._relays[idx]
                if relay.identity not in chosen_ids:
                    chosen.append(relay)
                    chosen_ids.add(relay.identity)
                    added += 1
                idx = (idx + 1) % size
                if idx == start:
                    break  # went all the way round: the ring is smaller than the spread
        return chosen


def responsible_hsdirs(
    blinded_key: bytes,
    period_number: int,
    period_length: int,
    srv: bytes,
    consensus: Consensus,
    *,
    for_fetch: bool = False,
) -> list[Relay]:
    """The HSDirs responsible for a blinded key in one time period, in tor's order.

    Uses ``hsdir_spread_store`` (or ``hsdir_spread_fetch`` with
    ``for_fetch=True``) and ``hsdir_n_replicas`` from the consensus. The
    consensus must have its ed25519 ids attached (:func:`attach_ed25519_ids`).
    """
    params = ring_params(consensus)
    ring = HashRing(consensus.relays, srv, period_number, period_length)
    spread = params.spread_fetch if for_fetch else params.spread_store
    return ring.responsible(blinded_key, n_replicas=params.n_replicas, spread=spread)
