"""The mesh's closed vocabularies: every state, role, outcome and reason code is an enum.

They are ``StrEnum``s so that the wire format, the status document and the log lines keep
the plain strings they always had, while code (and metric labels) use the members. Events
carry one of these as their kind plus a free-text detail for the log.
"""

from __future__ import annotations

import enum


class PeerState(enum.StrEnum):
    """What this node believes about a peer (membership.py moves it between these)."""

    UNKNOWN = "unknown"  # configured or gossiped, never heard from
    ALIVE = "alive"
    SUSPECT = "suspect"  # missed heartbeats, not dead yet
    DEAD = "dead"  # its intro points leave the plan after the removal grace


class Role(enum.StrEnum):
    """A node's role as its heartbeat announces it."""

    PUBLISHER = "publisher"
    STANDBY = "standby"


class ElectionOutcome(enum.StrEnum):
    """What a publisher does when another node claims to publish too."""

    KEEP = "keep"  # we win the conflict and stay publisher
    STEP_DOWN = "step_down"  # the other one wins


class TakeoverCause(enum.StrEnum):
    """Why this node claimed the lease (``BecamePublisher``)."""

    LEASE_EXPIRED = "lease_expired"  # the publisher stopped renewing (dead, partitioned)
    LEASE_RELEASED = "lease_released"  # the publisher let go (clean shutdown, step-down)
    NO_PUBLISHER = "no_publisher"  # none heard since this node started listening


class StepDownCause(enum.StrEnum):
    """Why this node stopped publishing (``SteppedDown``)."""

    SHUTDOWN = "shutdown"
    LOST_CONFLICT = "lost_conflict"  # another publisher won the comparison
    FOREIGN_DESCRIPTOR = "foreign_descriptor"  # the HSDirs hold a better one that is not ours
    PAUSED = "paused"  # this process did not run for longer than a lease
    NOT_ALLOWED = "not_allowed"  # the roster no longer lets this node publish
    CLOCK = "clock"  # this node's clock is off the cluster's (or not NTP-synchronised)


class ConflictKind(enum.StrEnum):
    TWO_PUBLISHERS = "two_publishers"  # another node's heartbeat says publisher
    FOREIGN_DESCRIPTOR = "foreign_descriptor"  # the HSDirs hold a descriptor that is not ours


class ConflictResolution(enum.StrEnum):
    KEEP = "keep"
    STEP_DOWN = "step_down"
    NONE = "none"  # not publisher: nothing to resolve


class RejectReason(enum.StrEnum):
    """Why a received datagram was refused (the rejection counter and metric label)."""

    OVERSIZED = "oversized"
    MALFORMED = "malformed"
    UNSUPPORTED_VERSION = "unsupported_version"
    REPLAYED = "replayed"
    UNKNOWN_CLUSTER = "unknown_cluster"  # the cluster MAC does not verify
    OWN_ID = "own_id"
    MISDIRECTED = "misdirected"
    FORGED = "forged"
    STALE = "stale"  # timestamp outside the clock-skew window
    UNVERIFIED = "unverified"  # authentic, but the echo does not prove it is of this boot
    REMOVED = "removed"  # the sender was removed by the operator
    NOT_MEMBER = "not_member"  # roster mode: the sender is not in the roster (or revoked)
    INELIGIBLE = "ineligible"  # a publisher claim from a member that may not publish
    TERM_OVERFLOW = "term_overflow"  # a term above MAX_TERM
    PEER_TABLE_FULL = "peer_table_full"  # no roster: the peer table is at its cap
    GOSSIP_LIMIT = "gossip_limit"  # roster statements beyond the sender's verify budget
    ROSTER_REVOKED = "roster_revoked"  # a gossiped entry for a revoked key
    ROSTER_INVALID = "roster_invalid"  # a gossiped roster statement that does not verify
    INTERNAL_ERROR = "internal_error"  # a bug while applying an accepted message (contained)


class PublishTrigger(enum.StrEnum):
    """Why the mesh asks for a publish (the publish reason of the log line and metric)."""

    NEW_PLAN = "new plan"
    NEW_TERM = "new term"
    TAKEOVER = "takeover"
    CONFLICT = "conflict"
    MEMBERSHIP_CHANGE = "membership change"
    INTRO_POINT_ROTATION = "intro-point rotation"
    PERIODIC_REFRESH = "periodic refresh"

    @property
    def label(self) -> str:
        """The metrics label: the value with only ``[a-z_]``."""
        return self.value.replace(" ", "_").replace("-", "_")
