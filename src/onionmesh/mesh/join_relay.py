"""Relaying a join request from any member to the authority node, sans-IO.

Only the node holding the roster authority key (and the token records) can admit a
node. Every other member serves a join onion too and, when a joiner reaches it,
passes the joiner's request on to the authority over the mesh channel (the same
transport as mesh datagrams: UDP, WireGuard, or its tor fallback) and passes the
authority's answer back unchanged. The relay gains nothing it could use:

* it cannot admit anyone: the answer is signed by the authority key, which the
  joiner checks (``mesh.join.Joiner``); the cluster secret in it is boxed to the
  joiner's ephemeral key;
* it cannot make the authority do much: ``JoinRelay`` forwards only what decodes as
  one join request of bounded size, at most ``RelayLimits.rate`` a second (with a
  small burst) and ``max_pending`` at a time; the authority's ``RelayIntake`` takes
  at most ``per_relay_per_second`` from each member, then the sponsor shell's own
  overall budget applies. A flood through relays costs the authority a bounded
  number of signature checks;
* it cannot forge an answer: the relay itself passes on only a ``JoinAccept`` that
  verifies under the authority key (and roster chunks bound to that request), so
  nobody on the mesh path can feed a joiner junk through an honest relay.

Wire (between members; every datagram starts with ``RELAY_MAGIC``)::

    relay -> every peer      RelayEnvelope(RelayedRequest(relay_id, request))
    authority -> relay       RelayEnvelope(RelayedReply(relay_id, reply)) x n

``RelayEnvelope`` is signed by the sender's node key (checked against its roster
entry) with a timestamp (refused when older than ``max_age``), so neither side acts
on a datagram from outside the roster. A relay does not know which member holds
the authority key: it sends to every peer it knows until one answer verifies, then
to that one first (and to everyone again if it stays silent). Members without the
key drop relayed requests unread.

API::

    relay = JoinRelay("n2", node_seed, first_id=random_u32)
    step = relay.forward(request, peers, now)             # Forward | RelayDrop
    for addr in step.targets: send(step.datagram, addr)
    done = relay.receive(datagram, now, roster)           # RelayDone | RelayDrop | None
    step = relay.due(step.relay_id, now, peers)    # at relay.next_due(): Resend | RelayExpired

    intake = RelayIntake("n1", node_seed)
    got = intake.receive(datagram, now, roster)           # RelayedJoin | RelayDrop
    for reply in answer(got.request): send(intake.seal_reply(got, reply, now), addr)
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated

import msgspec
from msgspec import Meta
from nacl.exceptions import CryptoError
from nacl.signing import SigningKey, VerifyKey

from onionmesh.mesh.errors import MeshConfigError
from onionmesh.mesh.join import (
    ACCEPT_CONTEXT,
    MAX_JOIN_DATAGRAM,
    AcceptBody,
    JoinAccept,
    JoinError,
    JoinProblem,
    JoinRefused,
    JoinRequest,
    JoinRosterChunk,
    RequestBody,
    decode_message,
    request_digest,
)
from onionmesh.mesh.roster import Roster

RELAY_MAGIC = b"OMR1"
RELAY_CONTEXT = b"onionmesh join relay v1\x00"
MAX_REQUEST_BYTES = 2048  # a join request is ~1,300 bytes at most (1,024-byte body)
MAX_RELAY_DATAGRAM = 65_000  # under the UDP payload limit the transports carry

_NodeId = Annotated[str, Meta(pattern=r"^[a-z0-9._-]{1,64}$")]
_U63 = Annotated[int, Meta(ge=0, le=2**63 - 1)]


class RelayDropReason(enum.StrEnum):
    """Why a relay datagram, or a request handed to a relay, was not acted on."""

    MALFORMED = "malformed"
    NOT_A_MEMBER = "not_a_member"  # the sender is not in the roster
    BAD_SIGNATURE = "bad_signature"
    STALE = "stale"  # older than max_age (or from too far ahead)
    RATE_LIMITED = "rate_limited"
    TOO_MANY_PENDING = "too_many_pending"
    OVERSIZED = "oversized"
    NOT_A_REQUEST = "not_a_request"  # a join onion stream sent something else
    UNKNOWN_RELAY_ID = "unknown_relay_id"  # an answer for nothing pending (late, duplicate)
    UNVERIFIED_ANSWER = "unverified_answer"  # not signed by the authority / another request
    NO_PEERS = "no_peers"  # nobody to relay to


@dataclass(frozen=True)
class RelayLimits:
    rate: float = 1.0  # requests a second forwarded, on average
    burst: int = 5  # requests forwarded back to back before the rate applies
    max_pending: int = 4  # requests waiting for the authority at once
    resend_after: float = 5.0  # no answer yet: send again (to every peer)
    answer_timeout: float = 30.0  # give the joiner up (its stream closes; it tries another peer)
    per_relay_per_second: int = 5  # the authority's intake, per relaying member

    def __post_init__(self) -> None:
        if not (0 < self.rate <= 100 and 1 <= self.burst <= 1000
                and 1 <= self.max_pending <= 256 and 1 <= self.per_relay_per_second <= 1000):
            raise MeshConfigError(f"join relay limits out of range: {self}")
        if not 0 < self.resend_after <= self.answer_timeout <= 600:
            raise MeshConfigError(
                "join relay timings must satisfy 0 < resend_after "
                f"({self.resend_after:g} s) <= answer_timeout ({self.answer_timeout:g} s) "
                "<= 600 s")


class _Strict(msgspec.Struct, array_like=True, forbid_unknown_fields=True, frozen=True):
    pass


class RelayedRequest(_Strict, tag=1, frozen=True):
    relay_id: _U63
    request: Annotated[bytes, Meta(max_length=MAX_REQUEST_BYTES)]


class RelayedReply(_Strict, tag=2, frozen=True):
    relay_id: _U63
    reply: Annotated[bytes, Meta(max_length=MAX_JOIN_DATAGRAM)]


class RelaySigned(_Strict, frozen=True):
    sender: _NodeId
    ts: _U63  # sender's unix time, seconds
    body: RelayedRequest | RelayedReply


class RelayEnvelope(_Strict, frozen=True):
    signed: Annotated[bytes, Meta(max_length=MAX_RELAY_DATAGRAM)]
    signature: Annotated[bytes, Meta(min_length=64, max_length=64)]


_encoder = msgspec.msgpack.Encoder()
_envelope_decoder = msgspec.msgpack.Decoder(RelayEnvelope)
_signed_decoder = msgspec.msgpack.Decoder(RelaySigned)
_request_body_decoder = msgspec.msgpack.Decoder(RequestBody)
_accept_decoder = msgspec.msgpack.Decoder(AcceptBody)


def is_relay_datagram(data: bytes) -> bool:
    """Whether a datagram on the mesh channel belongs to join relaying."""
    return data[: len(RELAY_MAGIC)] == RELAY_MAGIC


def _seal(seed: bytes, sender: str, now: float, body: RelayedRequest | RelayedReply) -> bytes:
    signed = _encoder.encode(RelaySigned(sender, max(0, int(now)), body))
    signature = SigningKey(seed).sign(RELAY_CONTEXT + signed).signature
    data = RELAY_MAGIC + _encoder.encode(RelayEnvelope(signed, signature))
    if len(data) > MAX_RELAY_DATAGRAM:
        raise JoinError(JoinProblem.OVERSIZED, f"relay datagram of {len(data)} bytes")
    return data


@dataclass(frozen=True)
class RelayDrop:
    reason: RelayDropReason
    detail: str = ""


def _open(data: bytes, now: float, roster: Roster, max_age: float) -> RelaySigned | RelayDrop:
    """Check a relay datagram's envelope: a roster member signed it recently."""
    if len(data) > MAX_RELAY_DATAGRAM:
        return RelayDrop(RelayDropReason.OVERSIZED, f"{len(data)} bytes")
    if not is_relay_datagram(data):
        return RelayDrop(RelayDropReason.MALFORMED, "not a relay datagram")
    try:
        envelope = _envelope_decoder.decode(data[len(RELAY_MAGIC):])
        signed = _signed_decoder.decode(envelope.signed)
    except (msgspec.MsgspecError, ValueError) as exc:
        return RelayDrop(RelayDropReason.MALFORMED, str(exc))
    key = roster.key_of(signed.sender)
    if key is None or roster.is_revoked(key):
        return RelayDrop(RelayDropReason.NOT_A_MEMBER, signed.sender)
    try:
        VerifyKey(key).verify(RELAY_CONTEXT + envelope.signed, envelope.signature)
    except (CryptoError, ValueError, TypeError):
        return RelayDrop(RelayDropReason.BAD_SIGNATURE, signed.sender)
    if abs(signed.ts - now) > max_age:
        return RelayDrop(RelayDropReason.STALE, f"{signed.sender}: {signed.ts - now:+.0f} s")
    return signed


# -- the relaying member ----------------------------------------------------------


@dataclass(frozen=True)
class Forward:
    relay_id: int
    joiner: str  # the node id the request asks for (for the log)
    datagram: bytes
    targets: tuple[str, ...]  # mesh addresses to send it to


Resend = Forward


@dataclass(frozen=True)
class RelayDone:
    relay_id: int
    joiner: str
    authority_node: str  # which member answered
    replies: tuple[bytes, ...]  # pass these back to the joiner, in order
    accepted: bool  # an accept (False: the authority refused)


@dataclass(frozen=True)
class RelayExpired:
    relay_id: int
    joiner: str
    waited: float


@dataclass
class _Pending:
    joiner: str
    digest: bytes
    datagram: bytes
    started: float
    last_sent: float
    accept: bytes | None = None
    chunk_count: int = 0
    chunks: dict[int, bytes] = field(default_factory=dict)
    answered_by: str = ""


class JoinRelay:
    """A member's relay for joiners reaching its join onion (pure: no clock, no I/O)."""

    def __init__(self, node_id: str, node_seed: bytes, *, first_id: int,
                 limits: RelayLimits | None = None, max_age: float = 300.0) -> None:
        self.node_id = node_id
        self._seed = node_seed
        self.limits = limits or RelayLimits()
        self._max_age = max_age
        self._next_id = first_id % 2**62 + 1
        self._tokens = float(self.limits.burst)
        self._refilled: float | None = None
        self._pending: dict[int, _Pending] = {}
        self.authority_node: str | None = None  # learned from the first verified answer
        self.forwarded = 0
        self.refused = 0

    @property
    def pending(self) -> int:
        return len(self._pending)

    def _targets(self, peers: Mapping[str, str], everyone: bool) -> tuple[str, ...]:
        others = {nid: addr for nid, addr in peers.items() if nid != self.node_id and addr}
        if not everyone and self.authority_node in others:
            return (others[self.authority_node],)
        return tuple(others[nid] for nid in sorted(others))

    def forward(self, request: bytes, peers: Mapping[str, str], now: float,
                ) -> Forward | RelayDrop:
        """A joiner's request from the join onion; ``peers``: node id -> mesh address."""
        if len(request) > MAX_REQUEST_BYTES:
            return self._refuse(RelayDropReason.OVERSIZED, f"{len(request)} bytes")
        try:
            msg = decode_message(request)
            if not isinstance(msg, JoinRequest):
                return self._refuse(RelayDropReason.NOT_A_REQUEST, type(msg).__name__)
            body = _request_body_decoder.decode(msg.body)
        except (JoinError, msgspec.MsgspecError, ValueError) as exc:
            return self._refuse(RelayDropReason.NOT_A_REQUEST, str(exc))
        if len(self._pending) >= self.limits.max_pending:
            return self._refuse(RelayDropReason.TOO_MANY_PENDING,
                                f"{len(self._pending)} requests wait for the authority")
        if self._refilled is not None:
            elapsed = max(0.0, now - self._refilled)
            self._tokens = min(float(self.limits.burst), self._tokens + elapsed * self.limits.rate)
        self._refilled = now
        if self._tokens < 1.0:
            return self._refuse(RelayDropReason.RATE_LIMITED,
                                f"over {self.limits.rate:g} a second")
        targets = self._targets(peers, everyone=False)
        if not targets:
            return self._refuse(RelayDropReason.NO_PEERS, "no other member is known")
        self._tokens -= 1.0
        relay_id = self._next_id
        self._next_id += 1
        datagram = _seal(self._seed, self.node_id, now, RelayedRequest(relay_id, request))
        self._pending[relay_id] = _Pending(body.node_id, request_digest(msg.body), datagram,
                                           now, now)
        self.forwarded += 1
        return Forward(relay_id, body.node_id, datagram, targets)

    def _refuse(self, reason: RelayDropReason, detail: str) -> RelayDrop:
        self.refused += 1
        return RelayDrop(reason, detail)

    def due(self, relay_id: int, now: float, peers: Mapping[str, str]
            ) -> Resend | RelayExpired | None:
        """Called when ``relay_id`` has waited ``resend_after`` without a complete answer:
        send it again (to every peer: the authority may have moved), or give up."""
        pending = self._pending.get(relay_id)
        if pending is None:
            return None
        if now - pending.started >= self.limits.answer_timeout:
            del self._pending[relay_id]
            return RelayExpired(relay_id, pending.joiner, now - pending.started)
        pending.last_sent = now
        # A fresh timestamp, so a resend late in a long wait is not judged stale.
        pending.datagram = _seal(self._seed, self.node_id, now,
                                 RelayedRequest(relay_id, _request_of(pending.datagram)))
        return Resend(relay_id, pending.joiner, pending.datagram,
                      self._targets(peers, everyone=True))

    def next_due(self, relay_id: int) -> float | None:
        """When ``due`` should be called for ``relay_id`` (None: nothing pending)."""
        pending = self._pending.get(relay_id)
        if pending is None:
            return None
        return min(pending.last_sent + self.limits.resend_after,
                   pending.started + self.limits.answer_timeout)

    def cancel(self, relay_id: int) -> None:
        """The joiner's stream went away: forget the request."""
        self._pending.pop(relay_id, None)

    def receive(self, data: bytes, now: float, roster: Roster) -> RelayDone | RelayDrop | None:
        """An answer datagram from a member: None while the answer is incomplete."""
        opened = _open(data, now, roster, self._max_age)
        if isinstance(opened, RelayDrop):
            return opened
        body = opened.body
        if not isinstance(body, RelayedReply):
            return RelayDrop(RelayDropReason.NOT_A_REQUEST, "a relayed request at a relay")
        pending = self._pending.get(body.relay_id)
        if pending is None:
            return RelayDrop(RelayDropReason.UNKNOWN_RELAY_ID, str(body.relay_id))
        try:
            msg = decode_message(body.reply)
        except JoinError as exc:
            return RelayDrop(RelayDropReason.MALFORMED, str(exc))
        if isinstance(msg, JoinRefused):
            del self._pending[body.relay_id]
            self._learn(opened.sender)
            return RelayDone(body.relay_id, pending.joiner, opened.sender, (body.reply,), False)
        if isinstance(msg, JoinAccept):
            if pending.accept == body.reply:
                return None  # a resend's duplicate
            accept = _verified_accept(msg, roster.authority_key)
            if accept is None or accept.request_digest != pending.digest:
                return RelayDrop(RelayDropReason.UNVERIFIED_ANSWER,
                                 f"an accept from {opened.sender} that does not verify")
            if pending.accept is not None:
                # Another answer to a resend (the roster changed in between): its own
                # chunks follow it; the ones held may belong to the first answer.
                pending.chunks.clear()
            pending.accept, pending.chunk_count = body.reply, accept.chunks
            pending.answered_by = opened.sender
        elif isinstance(msg, JoinRosterChunk):
            if msg.request_digest != pending.digest or msg.authority_key != roster.authority_key:
                return RelayDrop(RelayDropReason.UNVERIFIED_ANSWER,
                                 f"a roster chunk from {opened.sender} for another request")
            pending.chunks.setdefault(msg.index, body.reply)
        else:
            return RelayDrop(RelayDropReason.MALFORMED, type(msg).__name__)
        if pending.accept is None or any(i not in pending.chunks
                                         for i in range(pending.chunk_count)):
            return None
        del self._pending[body.relay_id]
        self._learn(pending.answered_by)
        replies = (pending.accept, *(pending.chunks[i] for i in range(pending.chunk_count)))
        return RelayDone(body.relay_id, pending.joiner, pending.answered_by, replies, True)

    def _learn(self, node_id: str) -> None:
        self.authority_node = node_id


def _request_of(datagram: bytes) -> bytes:
    signed = _signed_decoder.decode(_envelope_decoder.decode(datagram[len(RELAY_MAGIC):]).signed)
    assert isinstance(signed.body, RelayedRequest)
    return signed.body.request


def _verified_accept(msg: JoinAccept, authority_key: bytes) -> AcceptBody | None:
    try:
        VerifyKey(authority_key).verify(ACCEPT_CONTEXT + msg.body, msg.authority_signature)
        return _accept_decoder.decode(msg.body)
    except (CryptoError, ValueError, TypeError, msgspec.MsgspecError):
        return None


# -- the authority node's intake --------------------------------------------------


@dataclass(frozen=True)
class RelayedJoin:
    relay_node: str  # the member that relayed it
    relay_id: int
    request: bytes  # the joiner's join datagram, for the sponsor shell
    joiner: str  # the node id it asks for ("" when the body does not decode)


class RelayIntake:
    """The authority node's side: which relayed requests to answer (pure)."""

    def __init__(self, node_id: str, node_seed: bytes, *, limits: RelayLimits | None = None,
                 max_age: float = 300.0) -> None:
        self.node_id = node_id
        self._seed = node_seed
        self.limits = limits or RelayLimits()
        self._max_age = max_age
        self._second = -1
        self._counts: dict[str, int] = {}
        self.dropped = 0

    def receive(self, data: bytes, now: float, roster: Roster) -> RelayedJoin | RelayDrop:
        opened = _open(data, now, roster, self._max_age)
        if isinstance(opened, RelayDrop):
            self.dropped += 1
            return opened
        body = opened.body
        if not isinstance(body, RelayedRequest):
            self.dropped += 1
            return RelayDrop(RelayDropReason.UNKNOWN_RELAY_ID, "a relayed reply at the authority")
        if opened.sender == self.node_id:
            self.dropped += 1
            return RelayDrop(RelayDropReason.MALFORMED, "a relayed request from this node")
        second = int(now)
        if second != self._second:
            self._second, self._counts = second, {}
        count = self._counts.get(opened.sender, 0) + 1
        self._counts[opened.sender] = count
        if count > self.limits.per_relay_per_second:
            self.dropped += 1
            return RelayDrop(RelayDropReason.RATE_LIMITED,
                             f"{opened.sender}: over {self.limits.per_relay_per_second} a second")
        joiner = ""
        try:
            msg = decode_message(body.request)
            if isinstance(msg, JoinRequest):
                joiner = _request_body_decoder.decode(msg.body).node_id
        except (JoinError, msgspec.MsgspecError, ValueError):
            pass  # the sponsor refuses it and says why
        return RelayedJoin(opened.sender, body.relay_id, body.request, joiner)

    def seal_reply(self, got: RelayedJoin, reply: bytes, now: float) -> bytes:
        """One of the sponsor's answer datagrams, for the relay that asked."""
        return _seal(self._seed, self.node_id, now, RelayedReply(got.relay_id, reply))


def relay_id_from(entropy: bytes) -> int:
    """A relay's first request id from the shell's random bytes (ids of two boots of one
    relay then do not meet)."""
    return int.from_bytes(hashlib.blake2b(entropy, digest_size=4).digest(), "big") << 20
