"""The join exchange, sans-IO: a new node proves its token and its key, and gets a
roster entry signed by the authority, the current roster and the cluster secret.

Two small pure state machines, one per side; the shells carry their bytes
(UDP to the sponsor's coordination port now, tor later) and keep the token
bookkeeping (which tokens exist, expiry, single use: persisted by the CLI).

Wire (every datagram starts with ``MAGIC`` so a shell can tell join traffic
from mesh envelopes, which are msgpack arrays starting 0x94)::

    joiner  -> sponsor  JoinRequest(body, token_signature, node_signature)
    sponsor -> joiner   JoinAccept(body, authority_signature)   # one datagram
                        JoinRosterChunk(...) x n                # the roster, split
                        or JoinRefused()                        # no reason, ever

* ``JoinRequest.body`` (``RequestBody``) names the one-time *join key* of the
  token (its public half identifies the token), the joiner's node id, node
  key, optional WireGuard key / coordination onion, an ephemeral X25519 key
  (so the cluster secret travels encrypted to this joiner only), a timestamp
  and a nonce. It is signed twice, under distinct contexts: by the join key
  (proves the token) and by the new node key (proves possession of it).
* ``JoinAccept.body`` (``AcceptBody``) binds the answer to the request
  (``request_digest``), carries the authority-signed ``SignedEntry`` of the
  joiner, the cluster secret boxed to the joiner's ephemeral key, the digest
  and chunk count of the roster (new entry included), and is signed by the
  authority key, so a joiner only believes a sponsor that holds that key.
* ``JoinRosterChunk``: roster statements (each authority-signed on its own)
  in pieces under the 60,000-byte datagram limit; the joiner is done when
  the statements it has merged give exactly the signed roster digest.
* ``JoinRefused`` says nothing about why (unknown, used and expired tokens
  look the same); the reason stays in the sponsor's log via
  ``JoinDecision.refused``.

API for the shells::

    # sponsor (a node holding the authority key)
    sponsor = JoinSponsor(authority, roster, cluster_secret, max_age=300.0)
    decision = sponsor.handle(data, now, grant_for=lambda join_key: grant_or_None,
                              entropy=os.urandom(32))
    for datagram in decision.replies: send(datagram, addr)
    if decision.accepted is not None:
        # persist: token used by decision.request_digest; roster.merge_entry(accepted)
        # then save_roster(...) and core.add_roster_statements([accepted], [], now)
    log(decision.refused)  # None, or why (for the log, never sent)

    # joiner (``onionmesh join``)
    joiner = Joiner(join_seed, authority_public_key, node_id, node_seed, now,
                    entropy=os.urandom(64))
    send(joiner.request(), sponsor_addr)          # resend the same bytes on timeout
    result = joiner.receive(datagram, now)        # None until complete; JoinError if refused
    result.entry, result.roster, result.cluster_secret

A lost answer is handled by resending the same request: ``TokenGrant.used_by``
is the digest of the request that used the token, and the same request is
answered again (a different one is refused).
"""

from __future__ import annotations

import enum
import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated

import msgspec
from msgspec import Meta
from nacl.exceptions import CryptoError
from nacl.public import Box, PrivateKey, PublicKey
from nacl.signing import SigningKey, VerifyKey

from onionmesh.mesh.errors import MeshError
from onionmesh.mesh.roster import (
    ROSTER_VERSION,
    AuthorityKey,
    MemberEntry,
    Roster,
    RosterDocument,
    RosterError,
    SignedEntry,
    SignedRevocation,
    split_host_port,
)

MAGIC = b"OMJ1"
MAX_JOIN_DATAGRAM = 60_000
CHUNK_BUDGET = 50_000  # bytes of statements per roster chunk (headroom for framing)
TOKEN_CONTEXT = b"onionmesh join v1 token proof\x00"
NODE_CONTEXT = b"onionmesh join v1 node key proof\x00"
ACCEPT_CONTEXT = b"onionmesh join v1 accept\x00"
MAX_CHUNKS = 64

_NodeId = Annotated[str, Meta(pattern=r"^[a-z0-9._-]{1,64}$")]
_Key = Annotated[bytes, Meta(min_length=32, max_length=32)]
_OptKey = Annotated[bytes, Meta(max_length=32)]
_OptOnion = Annotated[str, Meta(pattern=r"^([a-z2-7]{56}\.onion)?$")]
_OptHostPort = Annotated[str, Meta(max_length=64)]  # checked as the roster entry checks it
_U63 = Annotated[int, Meta(ge=0, le=2**63 - 1)]
_Sig = Annotated[bytes, Meta(min_length=64, max_length=64)]
_Digest = Annotated[bytes, Meta(min_length=32, max_length=32)]
_Small = Annotated[bytes, Meta(max_length=1024)]


class JoinProblem(enum.StrEnum):
    """Why the exchange failed on this side (``JoinError.reason``)."""

    BAD_ANSWER = "bad_answer"
    BAD_REQUEST = "bad_request"
    ENTROPY = "entropy"
    MALFORMED = "malformed"
    OVERSIZED = "oversized"
    REFUSED = "refused"
    WRONG_AUTHORITY = "wrong_authority"


class JoinRefusal(enum.StrEnum):
    """Why a sponsor refused a request: for its log only, never sent."""

    BAD_NODE_PROOF = "bad_node_proof"
    BAD_TOKEN_PROOF = "bad_token_proof"
    EXPIRED_TOKEN = "expired_token"
    MALFORMED = "malformed"
    NODE_ID_TAKEN = "node_id_taken"
    NODE_KEY_TAKEN = "node_key_taken"
    REVOKED_KEY = "revoked_key"
    STALE_REQUEST = "stale_request"
    UNEXPECTED_MESSAGE = "unexpected_message"
    UNKNOWN_TOKEN = "unknown_token"
    USED_TOKEN = "used_token"
    WRONG_NODE_ID = "wrong_node_id"
    ROSTER = "roster"  # the roster refused the entry


class JoinError(MeshError):
    """The exchange failed; ``reason`` says which way (never holds secrets)."""

    def __init__(self, reason: JoinProblem, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class _Strict(msgspec.Struct, array_like=True, forbid_unknown_fields=True, frozen=True):
    pass


class RequestBody(_Strict, frozen=True):
    join_key: _Key  # public half of the token's one-time join key
    node_id: _NodeId
    node_key: _Key
    wg_key: _OptKey
    coord_onion: _OptOnion
    box_key: _Key  # ephemeral X25519 public key: the cluster secret is boxed to it
    ts: _U63  # joiner's unix time, seconds
    nonce: Annotated[bytes, Meta(min_length=16, max_length=16)]
    # Newer fields, left out of the encoding while empty (see _encode_request), so a
    # request without them is what an older sponsor expects.
    wg_endpoint: _OptHostPort = ""  # the joiner's WireGuard endpoint, underlay IP:port
    mesh_address: _OptHostPort = ""  # its mesh address inside the tunnel
    join_onion: _OptOnion = ""  # its own join onion (it relays joins there once a member)


def _encode_request(body: RequestBody) -> bytes:
    fields = list(msgspec.structs.astuple(body))
    while len(fields) > 8 and fields[-1] == "":
        fields.pop()
    return msgspec.msgpack.encode(fields)


class AcceptBody(_Strict, frozen=True):
    request_digest: _Digest
    entry: SignedEntry
    boxed_secret: _Small  # Box(sponsor ephemeral, joiner box_key) of the cluster secret
    sponsor_box_key: _Key
    roster_digest: Annotated[bytes, Meta(min_length=16, max_length=16)]
    chunks: Annotated[int, Meta(ge=1, le=MAX_CHUNKS)]


class JoinRequest(_Strict, tag=1, frozen=True):
    body: Annotated[bytes, Meta(max_length=1024)]
    token_signature: _Sig
    node_signature: _Sig


class JoinAccept(_Strict, tag=2, frozen=True):
    body: Annotated[bytes, Meta(max_length=8192)]
    authority_signature: _Sig


class JoinRosterChunk(_Strict, tag=3, frozen=True):
    request_digest: _Digest
    index: Annotated[int, Meta(ge=0, lt=MAX_CHUNKS)]
    authority_key: _Key
    entries: Annotated[list[SignedEntry], Meta(max_length=512)]
    revocations: Annotated[list[SignedRevocation], Meta(max_length=4096)]


class JoinRefused(_Strict, tag=4, frozen=True):
    pass


JoinMessage = JoinRequest | JoinAccept | JoinRosterChunk | JoinRefused

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(JoinMessage)
_request_decoder = msgspec.msgpack.Decoder(RequestBody)
_accept_decoder = msgspec.msgpack.Decoder(AcceptBody)


def is_join_datagram(data: bytes) -> bool:
    """Whether a datagram belongs to the join exchange (not to the mesh)."""
    return data[: len(MAGIC)] == MAGIC


def encode_message(msg: JoinMessage) -> bytes:
    data = MAGIC + _encoder.encode(msg)
    if len(data) > MAX_JOIN_DATAGRAM:
        raise JoinError(JoinProblem.OVERSIZED, f"join datagram of {len(data)} bytes")
    decode_message(data)  # never send what the other side must refuse
    return data


def decode_message(data: bytes) -> JoinMessage:
    if len(data) > MAX_JOIN_DATAGRAM:
        raise JoinError(JoinProblem.OVERSIZED, f"{len(data)} bytes")
    if not is_join_datagram(data):
        raise JoinError(JoinProblem.MALFORMED, "not a join datagram")
    try:
        return _decoder.decode(data[len(MAGIC) :])
    except (msgspec.MsgspecError, ValueError) as exc:
        raise JoinError(JoinProblem.MALFORMED, f"join message: {exc}") from None


def request_digest(body: bytes) -> bytes:
    return hashlib.blake2b(body, digest_size=32, person=b"onionmesh-joinrq").digest()


def _verify(key: bytes, context: bytes, body: bytes, signature: bytes) -> bool:
    try:
        VerifyKey(key).verify(context + body, signature)
    except (CryptoError, ValueError, TypeError):
        return False
    return True


def _box_nonce(digest: bytes) -> bytes:
    # The sponsor's box key is fresh per answer, so a nonce derived from the
    # request never repeats under one key pair.
    return digest[: Box.NONCE_SIZE]


def _roster_chunks(roster: Roster) -> list[tuple[list[SignedEntry], list[SignedRevocation]]]:
    """Split the roster's statements into pieces of at most CHUNK_BUDGET bytes."""
    chunks: list[tuple[list[SignedEntry], list[SignedRevocation]]] = [([], [])]
    size = 0
    items: list[SignedEntry | SignedRevocation] = [
        *roster.signed_revocations(),
        *roster.signed_entries(),
    ]
    for item in items:
        n = len(item.body) + 80
        if size + n > CHUNK_BUDGET:
            chunks.append(([], []))
            size = 0
        size += n
        if isinstance(item, SignedEntry):
            chunks[-1][0].append(item)
        else:
            chunks[-1][1].append(item)
    return chunks


# -- sponsor ----------------------------------------------------------------------


@dataclass(frozen=True)
class TokenGrant:
    """What the sponsor's token bookkeeping knows about one token."""

    join_key: bytes  # public half of the one-time join key
    expires_at: float  # unix seconds
    may_publish: bool
    node_id: str | None = None  # the id the operator reserved for it, if any
    used_by: bytes | None = None  # request digest that used the token, once used


@dataclass(frozen=True)
class JoinDecision:
    replies: list[bytes]
    accepted: SignedEntry | None = None  # the new member's entry: merge, persist, gossip
    request_digest: bytes | None = None  # mark the token used by this request
    refused: JoinRefusal | None = None  # why, for the sponsor's log only
    join_key: bytes | None = None  # which token the request named (when decodable)


class JoinSponsor:
    """Answers join requests; needs the authority key (pure: no clock, no I/O)."""

    def __init__(
        self,
        authority: AuthorityKey,
        roster: Roster,
        cluster_secret: bytes | None,
        *,
        max_age: float = 300.0,  # [coordination] datagram_max_age: a request's age bound
    ) -> None:
        if roster.authority_key != authority.public_key:
            raise JoinError(JoinProblem.WRONG_AUTHORITY, "the roster belongs to another authority")
        self._authority = authority
        self.roster = roster
        self._secret = cluster_secret or b""
        self._max_age = max_age

    def _refuse(self, reason: JoinRefusal, join_key: bytes | None = None) -> JoinDecision:
        return JoinDecision([encode_message(JoinRefused())], refused=reason, join_key=join_key)

    def handle(
        self,
        data: bytes,
        now: float,
        grant_for: Callable[[bytes], TokenGrant | None],
        entropy: bytes,
    ) -> JoinDecision:
        """Check a JoinRequest and answer it; never raises for bad input."""
        try:
            msg = decode_message(data)
        except JoinError:
            return JoinDecision([], refused=JoinRefusal.MALFORMED)  # not worth an answer
        if not isinstance(msg, JoinRequest):
            return JoinDecision([], refused=JoinRefusal.UNEXPECTED_MESSAGE)
        try:
            body = _request_decoder.decode(msg.body)
        except (msgspec.MsgspecError, ValueError):
            return JoinDecision([], refused=JoinRefusal.MALFORMED)
        digest = request_digest(msg.body)
        grant = grant_for(body.join_key)
        if grant is None:
            return self._refuse(JoinRefusal.UNKNOWN_TOKEN, body.join_key)
        if not _verify(body.join_key, TOKEN_CONTEXT, msg.body, msg.token_signature):
            return self._refuse(JoinRefusal.BAD_TOKEN_PROOF, body.join_key)
        if not _verify(body.node_key, NODE_CONTEXT, msg.body, msg.node_signature):
            return self._refuse(JoinRefusal.BAD_NODE_PROOF, body.join_key)
        if now >= grant.expires_at:
            return self._refuse(JoinRefusal.EXPIRED_TOKEN, body.join_key)
        if grant.used_by is not None and not hmac.compare_digest(grant.used_by, digest):
            return self._refuse(JoinRefusal.USED_TOKEN, body.join_key)
        if abs(body.ts - now) > self._max_age:
            return self._refuse(JoinRefusal.STALE_REQUEST, body.join_key)
        if grant.node_id is not None and grant.node_id != body.node_id:
            return self._refuse(JoinRefusal.WRONG_NODE_ID, body.join_key)
        if self.roster.is_revoked(body.node_key):
            return self._refuse(JoinRefusal.REVOKED_KEY, body.join_key)
        current = self.roster.member(body.node_id)
        if current is not None and current.node_key != body.node_key:
            return self._refuse(JoinRefusal.NODE_ID_TAKEN, body.join_key)
        if any(
            m.node_key == body.node_key and m.node_id != body.node_id for m in self.roster.members()
        ):
            return self._refuse(JoinRefusal.NODE_KEY_TAKEN, body.join_key)
        if len(entropy) < 32:
            raise JoinError(JoinProblem.ENTROPY, "the sponsor needs 32 random bytes per answer")
        entry = MemberEntry(
            body.node_id, body.node_key, grant.may_publish, int(now), body.wg_key,
            body.coord_onion, body.wg_endpoint, body.mesh_address, body.join_onion,
        )
        existing = self.roster.signed_entry(body.node_id)
        if existing is not None and grant.used_by is not None:
            signed = existing  # a resent request that already succeeded: same entry again
        else:
            try:
                signed = self._authority.sign_entry(entry)
            except RosterError:  # e.g. an endpoint that is no IP:port
                return JoinDecision([], refused=JoinRefusal.MALFORMED)
        after = self.roster.copy()
        try:
            after.merge_entry(signed)
        except RosterError:
            return self._refuse(JoinRefusal.ROSTER, body.join_key)
        chunks = _roster_chunks(after)
        eph = PrivateKey(entropy[:32])
        boxed = (
            Box(eph, PublicKey(body.box_key)).encrypt(self._secret, _box_nonce(digest)).ciphertext
            if self._secret
            else b""
        )
        accept = AcceptBody(
            digest, signed, boxed, bytes(eph.public_key), after.digest(), len(chunks)
        )
        accept_bytes = _encoder.encode(accept)
        signature = SigningKey(self._authority.seed).sign(ACCEPT_CONTEXT + accept_bytes).signature
        replies = [encode_message(JoinAccept(accept_bytes, signature))]
        for i, (entries, revocations) in enumerate(chunks):
            replies.append(
                encode_message(
                    JoinRosterChunk(digest, i, after.authority_key, entries, revocations)
                )
            )
        return JoinDecision(replies, accepted=signed, request_digest=digest, join_key=body.join_key)


# -- joiner -----------------------------------------------------------------------


@dataclass(frozen=True)
class JoinResult:
    entry: MemberEntry
    signed_entry: SignedEntry
    roster: Roster  # verified, the joiner's own entry included
    cluster_secret: bytes | None

    def __repr__(self) -> str:
        return f"JoinResult(node_id={self.entry.node_id!r}, members={len(self.roster)})"


@dataclass
class _Pending:
    accept: AcceptBody | None = None
    chunks: dict[int, JoinRosterChunk] = field(default_factory=dict)


class Joiner:
    """The new node's side: one request, then collect the answer (pure)."""

    def __init__(
        self,
        join_seed: bytes,
        authority_key: bytes,
        node_id: str,
        node_seed: bytes,
        now: float,
        *,
        entropy: bytes,
        wg_key: bytes = b"",
        coord_onion: str = "",
        wg_endpoint: str = "",
        mesh_address: str = "",
        join_onion: str = "",
    ) -> None:
        if len(entropy) < 48:
            raise JoinError(JoinProblem.ENTROPY, "the joiner needs 48 random bytes")
        self._params = (join_seed, authority_key, node_id, node_seed, wg_key, coord_onion,
                        wg_endpoint, mesh_address, join_onion)
        self._authority_key = authority_key
        self._box = PrivateKey(entropy[:32])
        node = SigningKey(node_seed)
        join = SigningKey(join_seed)
        body = RequestBody(
            bytes(join.verify_key),
            node_id,
            bytes(node.verify_key),
            wg_key,
            coord_onion,
            bytes(self._box.public_key),
            max(0, int(now)),
            entropy[32:48],
            wg_endpoint,
            mesh_address,
            join_onion,
        )
        try:
            raw = _encode_request(body)
            _request_decoder.decode(raw)
            for value in (wg_endpoint, mesh_address):
                if value:
                    split_host_port(value)
        except (msgspec.MsgspecError, ValueError) as exc:
            raise JoinError(
                JoinProblem.BAD_REQUEST, f"cannot build a join request: {exc}"
            ) from None
        self._body = body
        self._digest = request_digest(raw)
        self._request = encode_message(
            JoinRequest(
                raw,
                join.sign(TOKEN_CONTEXT + raw).signature,
                node.sign(NODE_CONTEXT + raw).signature,
            )
        )
        self._pending = _Pending()
        self.result: JoinResult | None = None

    def request(self) -> bytes:
        """The request datagram (the same bytes on every resend)."""
        return self._request

    @property
    def requested_at(self) -> int:
        """The request's timestamp: a sponsor refuses it once it is older than its
        ``datagram_max_age``."""
        return self._body.ts

    def renewed(self, now: float, *, entropy: bytes) -> Joiner:
        """A fresh request (new timestamp, nonce and box key) for the same node, for a
        retry after the old one got too old. A sponsor that already admitted the old
        one refuses it (the token is used): resend the old request while it is fresh."""
        (join_seed, authority_key, node_id, node_seed, wg_key, coord_onion, wg_endpoint,
         mesh_address, join_onion) = self._params
        return Joiner(join_seed, authority_key, node_id, node_seed, now, entropy=entropy,
                      wg_key=wg_key, coord_onion=coord_onion, wg_endpoint=wg_endpoint,
                      mesh_address=mesh_address, join_onion=join_onion)

    def receive(self, data: bytes, now: float) -> JoinResult | None:
        """Feed one answer datagram; the result once complete.

        ``JoinError(JoinProblem.REFUSED, ...)`` when the sponsor refused; anything that
        does not belong to this exchange is ignored (returns None).
        """
        if self.result is not None:
            return self.result
        try:
            msg = decode_message(data)
        except JoinError:
            return None
        if isinstance(msg, JoinRefused):
            raise JoinError(
                JoinProblem.REFUSED,
                "the sponsor refused the token (unknown, used or "
                "expired), or this node's id or key",
            )
        if isinstance(msg, JoinAccept):
            if not _verify(self._authority_key, ACCEPT_CONTEXT, msg.body, msg.authority_signature):
                return None
            try:
                accept = _accept_decoder.decode(msg.body)
            except (msgspec.MsgspecError, ValueError):
                return None
            if accept.request_digest != self._digest:
                return None
            self._pending.accept = accept
        elif isinstance(msg, JoinRosterChunk):
            if msg.request_digest != self._digest or msg.authority_key != self._authority_key:
                return None
            self._pending.chunks[msg.index] = msg
        return self._complete()

    def _complete(self) -> JoinResult | None:
        accept = self._pending.accept
        if accept is None or len(self._pending.chunks) < accept.chunks:
            return None
        chunks = [self._pending.chunks.get(i) for i in range(accept.chunks)]
        if any(c is None for c in chunks):
            return None
        roster = Roster(self._authority_key)
        # Invalid statements are simply not merged: the digest check below fails then.
        roster.merge_document(
            RosterDocument(
                ROSTER_VERSION,
                self._authority_key,
                [e for c in chunks if c is not None for e in c.entries],
                [r for c in chunks if c is not None for r in c.revocations],
            )
        )
        try:
            entry = roster.verify_entry(accept.entry)
        except RosterError:
            raise JoinError(
                JoinProblem.BAD_ANSWER, "the entry is not signed by the authority"
            ) from None
        b = self._body
        if (entry.node_id, entry.node_key) != (b.node_id, b.node_key):
            raise JoinError(JoinProblem.BAD_ANSWER, "the entry names another node or key")
        if roster.digest() != accept.roster_digest or roster.member(b.node_id) != entry:
            raise JoinError(JoinProblem.BAD_ANSWER, "the roster does not match its signed digest")
        secret: bytes | None = None
        if accept.boxed_secret:
            try:
                secret = Box(self._box, PublicKey(accept.sponsor_box_key)).decrypt(
                    accept.boxed_secret, _box_nonce(self._digest)
                )
            except (CryptoError, ValueError, TypeError):
                raise JoinError(
                    JoinProblem.BAD_ANSWER, "the cluster secret does not decrypt"
                ) from None
        self.result = JoinResult(entry, accept.entry, roster, secret)
        return self.result
