"""Events the core reports to its shell, each with its log line.

The shell (or simulator) pops them with ``MeshCore.next_event()`` and logs
``event.message``. The peer and publish lines are the ones operators know from
docs/scenarios.md; keep their wording stable (alerts and dashboards match on it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from onionmesh.mesh.vocabulary import (
    ConflictKind,
    ConflictResolution,
    PublishTrigger,
    RejectReason,
    StepDownCause,
    TakeoverCause,
)

if TYPE_CHECKING:
    from onionmesh.mesh.plan import PublishPlan


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


@dataclass(frozen=True)
class PeerSuspect:
    node_id: str
    missed: int
    remaining: int

    @property
    def message(self) -> str:
        return (
            f"Peer {self.node_id} missed {_plural(self.missed, 'heartbeat')}, "
            f"{self.remaining} more until dead"
        )


@dataclass(frozen=True)
class PeerDead:
    node_id: str
    intro_count: int

    @property
    def message(self) -> str:
        return (
            f"Peer {self.node_id} declared DEAD, removing "
            f"{_plural(self.intro_count, 'intro point')}"
        )


@dataclass(frozen=True)
class PeerLeft:
    node_id: str
    intro_count: int

    @property
    def message(self) -> str:
        return (
            f"Peer {self.node_id} left the mesh (clean shutdown), removing "
            f"{_plural(self.intro_count, 'intro point')}"
        )


@dataclass(frozen=True)
class PeerRecovered:
    node_id: str

    @property
    def message(self) -> str:
        return f"Peer {self.node_id} came back! Adding to mesh"


@dataclass(frozen=True)
class IntroPointsRequested:
    node_id: str

    @property
    def message(self) -> str:
        return "Re-fetching intro points from recovered peer"


@dataclass(frozen=True)
class PeerDiscovered:
    node_id: str
    address: str

    @property
    def message(self) -> str:
        return f"Discovered peer {self.node_id} at {self.address}"


@dataclass(frozen=True)
class PeerRemoved:
    node_id: str

    @property
    def message(self) -> str:
        return f"Peer {self.node_id} removed by the operator; it stays removed"


@dataclass(frozen=True)
class PeerDamped:
    """A flapping peer's intro points are held out of the plan until it stays up."""

    node_id: str
    hold_until: float

    @property
    def message(self) -> str:
        return (
            f"Peer {self.node_id} is flapping; its intro points wait until it stays up "
            f"(until t={self.hold_until:.1f})"
        )


@dataclass(frozen=True)
class BecamePublisher:
    term: int
    cause: TakeoverCause
    reason: str  # the detail for the log line, e.g. whose lease expired

    @property
    def message(self) -> str:
        return f"Became publisher for term {self.term} ({self.reason})"


@dataclass(frozen=True)
class SteppedDown:
    term: int
    cause: StepDownCause
    reason: str  # the detail for the log line
    new_publisher: str | None

    @property
    def message(self) -> str:
        who = self.new_publisher or "nobody yet"
        return f"Stepped down as publisher of term {self.term} ({self.reason}); publisher: {who}"


@dataclass(frozen=True)
class WokeFromPause:
    """This node did not run for ``gap`` seconds (SIGSTOP, VM pause): its view is stale."""

    gap: float
    listen_until: float

    @property
    def message(self) -> str:
        return (
            f"Woke after {self.gap:.1f} s without running; view is stale: listening for a "
            "heartbeat round before declaring peers dead, claiming or publishing"
        )


@dataclass(frozen=True)
class ConflictDetected:
    """Two publishers at once, or a descriptor on the HSDirs that is not ours."""

    kind: ConflictKind
    other: str  # the other publisher's id, or "hsdir" for a foreign descriptor
    our_intro_count: int
    their_intro_count: int
    resolution: ConflictResolution

    @property
    def message(self) -> str:
        return (
            f"Publisher conflict ({self.kind}) with {self.other}: we see "
            f"{self.our_intro_count} intro points, they {self.their_intro_count}; "
            f"resolution: {self.resolution}"
        )


@dataclass(frozen=True)
class PublishRequested:
    plan: PublishPlan
    trigger: PublishTrigger
    detail: str = ""  # e.g. which nodes joined or left, whose lease expired

    @property
    def reason(self) -> str:
        """The trigger and its detail, as the log line shows them."""
        return f"{self.trigger}: {self.detail}" if self.detail else str(self.trigger)

    @property
    def message(self) -> str:
        return f"{self.plan.message} ({self.reason})"


@dataclass(frozen=True)
class MessageRejected:
    reason: RejectReason
    detail: str  # may quote what the sender claimed: shown escaped, truncated
    addr: str

    @property
    def message(self) -> str:
        return f"Rejected datagram from {self.addr}: {self.reason} {self.detail!r:.200}"


@dataclass(frozen=True)
class RosterChanged:
    """The roster gained members or revocations (from gossip or the operator):
    the shell persists ``MeshCore.roster`` so a restart keeps them."""

    members: int
    revoked: int
    added: tuple[str, ...]  # node ids added or re-keyed
    removed: tuple[str, ...]  # node ids whose key was revoked or replaced

    @property
    def message(self) -> str:
        parts = [f"+{n}" for n in self.added] + [f"-{n}" for n in self.removed]
        change = " ".join(parts) if parts else "no member change"
        return (
            f"Roster updated ({change}): {_plural(self.members, 'member')}, "
            f"{_plural(self.revoked, 'revoked key')}"
        )


@dataclass(frozen=True)
class SendRefused:
    """The core built a message its peers would reject; it was not sent."""

    kind: str
    reason: RejectReason

    @property
    def message(self) -> str:
        return f"Not sending {self.kind}: {self.reason} (a peer would reject it)"


Event = (
    PeerSuspect
    | PeerDead
    | PeerLeft
    | PeerRecovered
    | IntroPointsRequested
    | PeerDiscovered
    | PeerRemoved
    | PeerDamped
    | BecamePublisher
    | SteppedDown
    | WokeFromPause
    | ConflictDetected
    | PublishRequested
    | MessageRejected
    | RosterChanged
    | SendRefused
)
