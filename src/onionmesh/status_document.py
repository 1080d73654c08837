"""The status document a running node serves on its status socket, as one typed struct.

``onionmesh.node.snapshot.build_snapshot`` assembles it (its output is checked against
:class:`StatusDocument` in the tests); everyone who reads it (``onionmesh status``, the
demo, the cluster harness and tests, the benchmarks) decodes it with
:func:`decode_status` / :func:`read_status` and reads attributes instead of walking dicts.

Readers ignore sections and keys they do not know, so a newer daemon's document still
decodes; a known key with the wrong type is an error naming its path (``$.peers[...].state``).
No key material and no cluster secret appear in it.
"""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Any

import msgspec

from onionmesh.errors import OnionmeshError
from onionmesh.mesh.vocabulary import PeerState, Role
from onionmesh.status_socket import query_status
from onionmesh.transport.paths import Path as MeshPath

SCHEMA_VERSION = 1


class NodeState(enum.StrEnum):
    """Where the daemon is in its life (``node.state``)."""

    STARTING = "starting"  # key and clock checks, tor bootstrap: no mesh yet
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"


class MasterKeySource(enum.StrEnum):
    """Which master key the node loaded (``node.master_key``)."""

    PRIMARY = "primary"
    BACKUP = "backup"  # the primary failed a check; [master] backup_key_path passed them all
    NONE = "none"  # no master key: shares intro points, never publishes


class StatusDocumentError(OnionmeshError):
    """A status document does not have the shape of :class:`StatusDocument`."""


class _Section(msgspec.Struct):
    """Common base of every section (required fields first, then the optional ones)."""


class NodeStatus(_Section):
    id: str
    state: NodeState
    pid: int | None = None
    uptime: float | None = None
    priority: int = 0
    eligible: bool = False  # holds the master key, so may publish
    master_key: MasterKeySource = MasterKeySource.NONE
    coordination_address: str | None = None
    onion_address: str | None = None  # the node's own service (private to the cluster)
    tor_pid: int | None = None


class RestrictedDiscoveryStatus(_Section):
    """``[master] authorized_clients`` as the daemon runs it (node/client_set.py)."""

    clients: int
    fingerprint: str  # of the public keys: every node that may publish must show the same


class ClockStatus(_Section):
    verdict: str  # ok | bad | unknown (onionmesh.clock.ClockVerdict)
    message: str
    offset_hint: float | None = None  # seconds ahead (+) of the peers' median or the window
    test_offset: float = 0.0
    # Which check judged the offset: "peers_median" (live peers' clocks and ours),
    # "consensus_window" (alone: tor's consensus) or "none" (alone, no consensus yet).
    basis: str = "none"
    peers: int = 0  # live peers in the median
    tolerance: float | None = None  # the tolerance of that check
    hold: str | None = None  # why this node neither claims the lease nor signs, if it does not


class ServiceCheckStatus(_Section):
    kind: str
    state: str
    last: str | None = None
    last_ago: float | None = None


class AdvertisingStatus(_Section):
    """Whether this node shares its intro points, and why not (node/advertise_gate.py)."""

    advertising: bool
    withdrawn_because: str | None = None
    service_check: ServiceCheckStatus | None = None
    tor: str | None = None
    intro_circuits_established: int = 0
    intro_points_from_tor: int = 0
    intro_points_advertised: int = 0
    # per time period of the node's descriptors (the period number as a string: a JSON
    # key): a midpoint drops the older period's set, so the total alone halves there
    # without anything being lost
    intro_points_by_period: dict[str, int] = msgspec.field(default_factory=dict)


class LeaseStatus(_Section):
    holder: str
    term: int = 0
    renewed_ago: float | None = None
    expires_in: float | None = None


class ClusterStatus(_Section):
    role: Role
    publisher: str | None = None
    term: int = 0
    lease: LeaseStatus | None = None


class PeerStatus(_Section):
    state: PeerState
    address: str
    last_seen_ago: float | None = None
    intro_points: int = 0
    role: Role = Role.STANDBY
    priority: int = 0
    eligible: bool = False
    term: int = 0


class PlanStatus(_Section):
    """On the publisher: what the master descriptors carry."""

    count: int
    per_period: dict[str, int]
    # period -> the whole pool when the nodes hold more intro points than one descriptor
    # carries (the publisher splits it over several descriptors; see ``publisher``)
    offered: dict[str, int] = {}
    term: int = 0
    generation: int = 0
    per_node: dict[str, int] = {}
    last_requested_generation: int | None = None
    # period -> live nodes left out of it: their set for exactly that period is not
    # known yet (docs/time-periods.md); never filled in with another period's
    left_out: dict[str, list[str]] = {}


class OwnPeriodsStatus(_Section):
    """This node's intro-point sets against the master's time periods."""

    master_periods: list[int] = []
    fetchable_period: int | None = None  # the period HSFETCH brings (tor's current)
    shared: list[int] = []  # periods this node shares a set for
    not_known_yet: list[int] = []  # master periods it shares nothing for yet


class HsdirUploadStatus(_Section):
    """The last upload result at one HSDir (node/uploads_view.py)."""

    result: str  # uploaded | failed
    age: float
    at: float = 0.0
    reason: str | None = None
    blinded_key: str | None = None
    failures_in_a_row: int = 0


class PublisherStatus(_Section):
    builds: int = 0
    periods: dict[str, dict[str, int]] = {}  # period -> upload status -> HSDirs
    published: bool = False
    revisions: dict[str, int] = {}  # period -> revision of the descriptor last built
    conflicts: int = 0  # foreign descriptors this publisher's checks found
    # period -> different descriptors its last revision was built as (1; more when the
    # nodes hold more than 20 intro points: each HSDir gets one of them)
    descriptors: dict[str, int] = {}


class ConflictsStatus(_Section):
    """Foreign master descriptors this node's conflict checks found (node/conflict_record.py)."""

    count: int
    last_at: float  # node clock, unix time
    last_age: float
    message: str  # the log line and ``conflict`` alert summary of the last one
    period: int
    revision: int
    intro_points: int
    hsdirs: list[str] = []  # HSDirs seen serving that revision
    all_hsdirs: list[str] = []  # every HSDir seen serving a foreign descriptor
    our_revision: int | None = None
    our_intro_points: int | None = None


class TorStreamStatus(_Section):
    """This node's stream to a peer's coordination onion (transport/tor_channel.py)."""

    connected: bool = False
    connects: int = 0
    failures: int = 0
    last_error: str | None = None


class PeerPathStatus(_Section):
    """How mesh datagrams reach one peer when WireGuard is on (transport/paths.py)."""

    path: MeshPath
    fallback_since: float | None = None  # unix time (node clock) it moved to tor; None: not
    last_wireguard_ack_age: float | None = None
    last_handshake_age: float | None = None  # seconds since the last WireGuard handshake
    rtt_wireguard: float | None = None
    rtt_tor: float | None = None
    fallbacks: int = 0
    tor_stream: TorStreamStatus | None = None


class JoinOnionStatus(_Section):
    """This node's join onion (node/join_relay_service.py): where `onionmesh join` reaches
    it, and whether it answers joins (the authority node) or relays them."""

    address: str
    role: str  # answers | relays
    streams_answered: int = 0  # join onion streams that got an answer
    relayed: int = 0  # relays: answers passed back; the authority: relayed requests answered
    relay_unanswered: int = 0  # relays: given up without an answer from the authority
    relay_not_forwarded: int = 0  # relays: requests refused (bounds, not a join request)


class CoordinationStatus(_Section):
    """The coordination link (``[wireguard]``): absent when the mesh runs over plain UDP."""

    interface: str
    tunnel_address: str
    tor_fallback: bool
    backend: str | None = None  # kernel | wireguard-go (Backend), None before it is up
    coordination_onion: str | None = None
    problems: list[str] = []  # what the last WireGuard repair could not fix
    missing_peers: list[str] = []  # roster members without a WireGuard peer, and why
    peers: dict[str, PeerPathStatus] = {}
    sent: dict[str, int] = {}  # mesh frames per path
    received: dict[str, int] = {}


class StatusDocument(_Section):
    node: NodeStatus
    master_address: str
    clock: ClockStatus
    version: int = SCHEMA_VERSION
    time: float = 0.0
    advertising: AdvertisingStatus | None = None
    # Absent until the mesh runs (tor not ready yet):
    cluster: ClusterStatus | None = None
    peers: dict[str, PeerStatus] = {}
    intro_points: dict[str, int] = {}  # node id -> intro points it contributes
    own_periods: OwnPeriodsStatus | None = None
    plan: PlanStatus | None = None
    uploads: dict[str, HsdirUploadStatus] = {}  # HSDir fingerprint -> last result
    descriptor_age: float | None = None  # seconds since an HSDir last accepted ours
    publisher: PublisherStatus | None = None
    conflicts: ConflictsStatus | None = None  # absent until a check finds a foreign one
    rejected_messages: dict[str, int] = {}  # RejectReason -> count
    error: str | None = None  # the daemon could not build the rest (a bug; see its log)
    coordination: CoordinationStatus | None = None
    restricted_discovery: RestrictedDiscoveryStatus | None = None  # absent: no clients
    join_onion: JoinOnionStatus | None = None  # absent: no roster, or no join onion

    @property
    def role(self) -> Role | None:
        """publisher / standby, or None before the mesh runs."""
        return self.cluster.role if self.cluster is not None else None

    @property
    def is_publisher(self) -> bool:
        return self.role is Role.PUBLISHER

    def carried_nodes(self) -> set[str]:
        """Nodes with intro points in the publish plan (empty on a standby)."""
        if self.plan is None:
            return set()
        return {node for node, count in self.plan.per_node.items() if count}

    def uploads_since(self, since: float) -> tuple[int, int]:
        """(accepted, failed) HSDir results newer than ``since``."""
        ups = self.uploads.values()
        return (sum(1 for u in ups if u.result == "uploaded" and u.at > since),
                sum(1 for u in ups if u.result == "failed" and u.at > since))


def decode_status(raw: Any) -> StatusDocument:
    """A status document (parsed JSON) as a :class:`StatusDocument`."""
    try:
        return msgspec.convert(raw, StatusDocument)
    except msgspec.ValidationError as exc:
        raise StatusDocumentError(f"status document: {exc}") from None


def read_status(path: Path, timeout: float = 5.0) -> StatusDocument:
    """Ask the node on status socket ``path`` and decode its answer.

    Raises ``StatusUnavailable`` when nothing answers, ``StatusDocumentError`` when
    the answer is not a status document.
    """
    return decode_status(query_status(path, timeout))
