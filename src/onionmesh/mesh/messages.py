"""The mesh wire schema, version 1: every message a node sends to a peer.

Messages are msgspec Structs encoded as compact msgpack arrays (field order
is the schema; unknown or missing fields are refused). Every field carries
its own bounds so a decoded message is already range-checked. Times never
travel as absolute deadlines: a lease is judged on the receiver's own clock
from when it heard the renewal, so skewed clocks cannot extend or cut it.

Message kinds (tag):
  1 Heartbeat     liveness, role/term, priority, intro-point and membership digests
  2 Join          a node's first message of a boot; the receiver answers with its state
  3 IntroPoints   the sender's complete intro-point sets (sent immediately on change)
  4 IntroRequest  "your heartbeat digest differs from what I hold: resend"
  5 LeaseClaim    the sender just became publisher with this term
  6 LeaseRelease  the sender stops publishing (shutdown or step-down)
  7 PeerList      gossip: the members the sender knows (sent on a digest mismatch)
  8 Leave         the sender is shutting down cleanly: drop it and its intro points now
  9 RosterUpdate  gossip: authority-signed roster entries and revocations (roster.py);
                  nodes of a cluster without a roster refuse it as malformed, harmlessly

Terms: the schema allows 63 bits (what version 1 always carried) but a core
never sends or adopts a term above ``MAX_TERM``, so ``term + 1`` can never
leave the schema (see election.py).
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta

from onionmesh.mesh.roster import MAX_MEMBERS, MAX_REVOCATIONS, SignedEntry, SignedRevocation
from onionmesh.mesh.vocabulary import Role
from onionmesh.tor_limits import MAX_INTRO_POINTS

WIRE_VERSION = 1
MAX_INTRO_POINT_BYTES = 4096  # one encoded intro point is ~1 KB in practice
MAX_INTRO_POINTS_PER_SET = MAX_INTRO_POINTS  # a node's set is one of its descriptors
MAX_PERIODS = 4  # tor has two (current and next); a little slack for rotation
MAX_GOSSIP_PEERS = 512
MAX_TERM = 2**62  # far below the schema's 2**63 - 1: a claim's term + 1 always fits

NodeId = Annotated[str, Meta(pattern=r"^[a-z0-9._-]{1,64}$")]
OptNodeId = Annotated[str, Meta(pattern=r"^([a-z0-9._-]{1,64})?$")]
Address = Annotated[str, Meta(max_length=255)]
Digest = Annotated[bytes, Meta(min_length=16, max_length=16)]
Echo = Annotated[bytes, Meta(max_length=16)]  # empty, or the receiver's 16-byte challenge
PublicKey = Annotated[bytes, Meta(min_length=32, max_length=32)]
U32 = Annotated[int, Meta(ge=0, lt=2**32)]
U63 = Annotated[int, Meta(ge=0, le=2**63 - 1)]
Priority = Annotated[int, Meta(ge=0, lt=2**31)]
IntroPoint = Annotated[bytes, Meta(min_length=1, max_length=MAX_INTRO_POINT_BYTES)]
IntroSet = Annotated[list[IntroPoint], Meta(max_length=MAX_INTRO_POINTS_PER_SET)]


class _Msg(msgspec.Struct, array_like=True, forbid_unknown_fields=True, frozen=True):
    """Common base: compact array encoding, strict decoding."""


class Heartbeat(_Msg, tag=1, frozen=True):
    role: Role
    term: U63  # highest term the sender knows (its own lease term when publisher)
    leader: OptNodeId  # whom the sender follows as publisher ("" = nobody)
    priority: Priority
    eligible: bool
    address: Address
    intro_digest: Digest
    intro_count: U32
    members_digest: Digest
    plan_count: U32  # intro points in the sender's publish plan (publishers only)


class Join(Heartbeat, tag=2, frozen=True):
    """Same fields as a Heartbeat; asks the receiver to send its full state."""


class IntroPoints(_Msg, tag=3, frozen=True):
    digest: Digest
    sets: Annotated[dict[U32, IntroSet], Meta(max_length=MAX_PERIODS)]


class IntroRequest(_Msg, tag=4, frozen=True):
    have: Digest  # the digest the requester currently holds for the sender


class LeaseClaim(_Msg, tag=5, frozen=True):
    term: U63
    priority: Priority
    plan_count: U32


class LeaseRelease(_Msg, tag=6, frozen=True):
    term: U63
    # Seconds nobody should claim (a publisher yielding to a foreign descriptor
    # that sees more intro points); 0 for an ordinary release.
    hold_off: Annotated[int, Meta(ge=0, le=3600)]


class PeerInfo(_Msg, frozen=True):
    node_id: NodeId
    address: Address
    public_key: PublicKey
    boot: U63  # 0 when the gossiping node has not heard this peer's current boot
    challenge: Digest  # that boot's challenge, so a newcomer's first message is verifiable


class PeerList(_Msg, tag=7, frozen=True):
    peers: Annotated[list[PeerInfo], Meta(max_length=MAX_GOSSIP_PEERS)]


class Leave(_Msg, tag=8, frozen=True):
    """A clean shutdown: unlike a crash, nothing is gained by waiting for missed
    heartbeats and the removal grace (its tor is stopping with it)."""

    term: U63  # highest term the sender knows


class RosterUpdate(_Msg, tag=9, frozen=True):
    """Roster statements, each verified on its own under the authority key."""

    entries: Annotated[list[SignedEntry], Meta(max_length=MAX_MEMBERS)]
    revocations: Annotated[list[SignedRevocation], Meta(max_length=MAX_REVOCATIONS)]


Message = (
    Heartbeat
    | Join
    | IntroPoints
    | IntroRequest
    | LeaseClaim
    | LeaseRelease
    | PeerList
    | Leave
    | RosterUpdate
)


class Signed(_Msg, frozen=True):
    """The signed part of an envelope: who, which boot/sequence, when, to whom, what."""

    sender: NodeId
    public_key: PublicKey
    boot: U63  # per-boot id; a restarted sender uses a larger one
    seq: U63  # per-boot sequence number, strictly increasing from 1
    ts_ms: U63  # sender's clock, milliseconds (checked against datagram_max_age)
    challenge: Digest  # the sender's per-boot challenge (receivers echo it back)
    to: OptNodeId  # recipient node id, "" when not yet known (first contact by address)
    echo: Echo  # the recipient's current challenge: proves this was sent after it booted
    body: Message


class Sealed(_Msg, frozen=True):
    """The outer envelope: version, signed bytes, ed25519 signature, cluster MAC."""

    version: int
    signed: bytes
    signature: Annotated[bytes, Meta(min_length=64, max_length=64)]
    mac: Annotated[bytes, Meta(min_length=32, max_length=32)]
