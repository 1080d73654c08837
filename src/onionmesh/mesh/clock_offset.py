"""This node's clock offset against its live peers (pure; fed by MeshCore).

Every authenticated datagram carries the sender's wall clock (``ts_ms``). The
receiver notes (sender timestamp, local receive time) per peer; the difference
is how far our clock is ahead of that peer's (plus the one-way delay, well under
a second on any path the mesh uses).

The node's offset is the median over the cluster's clocks, its own included
(offset 0): with three nodes, one of them wrong, both honest nodes see a median
of 0 and the wrong one sees its own error. A single lying or broken peer moves
nobody's median by more than the spread of the honest clocks. With an even count
of clocks (one peer, three peers...) the two middle values tie and the one closer
to our own clock wins: when exactly half the clocks disagree nobody can tell which
half is wrong, and stopping both halves would leave nobody to sign. So two nodes
alone never hold each other back; three or more catch the odd one out. With no
live peer there is no median at all and the caller falls back to tor's consensus
window (``onionmesh.clock``).

Only datagrams the receiver accepted count. Their age bound (``[coordination]
datagram_max_age``, 300 s) is far wider than the clock tolerance, so a clock minutes
off is still heard and counted here; a datagram refused as stale is not counted,
because without the echo handshake nothing proves it was sent recently (a replayed
recording would read as a clock far off; see ``auth.py``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class ClockSample:
    """The latest timestamp one peer sent and when we received it (our clock)."""

    sent_at: float
    received_at: float

    @property
    def offset(self) -> float:
        """Seconds our clock is ahead (+) or behind (-) this peer's."""
        return self.received_at - self.sent_at


def median_offset(peer_offsets: Iterable[float]) -> float | None:
    """Our offset against the cluster: the median of every clock, ours (0) included.

    None without a peer: then nothing but the consensus window can judge the clock.
    """
    clocks = sorted([0.0, *peer_offsets])
    if len(clocks) == 1:
        return None
    middle = len(clocks) // 2
    if len(clocks) % 2:
        return clocks[middle]
    return min(clocks[middle - 1], clocks[middle], key=abs)  # a tie: trust our own side


def live_offsets(samples: Mapping[str, ClockSample], live: Iterable[str]) -> dict[str, float]:
    """Each live peer's offset (peers we have no sample from yet are left out)."""
    return {node_id: samples[node_id].offset for node_id in live if node_id in samples}
