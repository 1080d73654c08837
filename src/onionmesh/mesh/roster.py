"""The signed roster: who is a member of the cluster, and whose key is revoked.

Pure (no I/O except the two file helpers at the end, which the shells call).
Every membership fact is a statement signed by the cluster's *authority key*
(see docs/security.md, "Roster and authority key", for why that is a key of
its own made at ``init`` and not the master key):

* ``MemberEntry``: node id, node public key (ed25519, what the node signs its
  mesh datagrams with), whether it may publish, when it was added, and room
  for a WireGuard public key, a coordination onion address, the node's WireGuard
  endpoint (underlay ``IP:port``) and its mesh address inside the tunnel
  (``tunnel-IP:port``). The last two are newer: an entry without them is
  encoded exactly as before (trailing empty fields are left out), so nodes
  that predate them still verify it.
  Carried as ``SignedEntry(body, signature)``: ``body`` is the entry's exact
  msgpack bytes, so what was signed is what is stored and gossiped.
* ``Revocation``: a node key that is refused from now on, forever. Carried as
  ``SignedRevocation(body, signature)``.

Signatures are ed25519 over ``context || body`` with a fixed ASCII context
per statement kind (``ENTRY_CONTEXT``, ``REVOCATION_CONTEXT``). Nothing tor
signs starts with these bytes (tor's certificates start with version byte
0x01, its descriptor signatures with "Tor onion service descriptor sig v3"),
and the authority key signs nothing else, so a roster signature can never be
replayed as something else or the other way round.

Merge rules (every node applies the same ones, so gossip converges):

* an entry counts only if its signature verifies under the roster's
  authority key and its node key is not revoked;
* per node id the newest entry wins (``added_at``, then the larger body
  bytes as a tie-break), so re-adding a node under a new key replaces it;
* a revocation removes every entry with that key and stays in the roster:
  a revoked key can never be (re-)added, also not after a restart (the
  roster file keeps the revocations);
* at most ``MAX_MEMBERS`` members and ``MAX_REVOCATIONS`` revocations, so a
  roster (and its gossip) has a fixed upper size.

API summary (for the CLI, the daemon and the join exchange)::

    authority = AuthorityKey.generate()               # at init; keep the seed secret
    save_authority_key(path, authority)               # 0600, refuses to overwrite
    roster = Roster(authority.public_key)
    roster.merge_entry(authority.sign_entry(MemberEntry("a", key_a, True, now)))
    roster.merge_revocation(authority.sign_revocation(Revocation("b", key_b, now)))
    roster.key_of("a"); roster.may_publish("a"); roster.is_revoked(key_b)
    save_roster(path, roster)                         # 0600, atomic
    roster = load_roster(path, expected_authority=...)  # RosterError names the problem

``merge_entry`` / ``merge_revocation`` raise ``RosterError`` for anything
invalid and return a ``MergeResult`` otherwise; the mesh core uses them to
apply gossip, so bad gossip changes nothing.
"""

from __future__ import annotations

import enum
import hashlib
import ipaddress
import os
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated

import msgspec
from msgspec import Meta
from nacl.exceptions import CryptoError
from nacl.signing import SigningKey, VerifyKey

from onionmesh.crypto.securefile import SecureFileError, atomic_write
from onionmesh.mesh.errors import MeshError

ROSTER_VERSION = 1
ENTRY_CONTEXT = b"onionmesh roster v1 member entry\x00"
REVOCATION_CONTEXT = b"onionmesh roster v1 revocation\x00"
MAX_MEMBERS = 256
MAX_REVOCATIONS = 4096
MAX_ENTRY_BYTES = 512  # an encoded MemberEntry is ~310 bytes at most
MAX_ROSTER_FILE_BYTES = 4 * 1024 * 1024
AUTHORITY_FILE_HEADER = b"== onionmesh authority key v1 ==\x00"

_NodeId = Annotated[str, Meta(pattern=r"^[a-z0-9._-]{1,64}$")]
_Key = Annotated[bytes, Meta(min_length=32, max_length=32)]
_OptKey = Annotated[bytes, Meta(max_length=32)]  # empty, or 32 bytes (checked below)
_OptOnion = Annotated[str, Meta(pattern=r"^([a-z2-7]{56}\.onion)?$")]
# An IP literal and port ("192.0.2.1:51820", "[2001:db8::1]:51820"), or empty; the
# address itself is checked with ipaddress in _decode_entry.
_OptHostPort = Annotated[
    str, Meta(pattern=r"^((\[[0-9A-Fa-f:.]+\]|[0-9.]+):[0-9]{1,5})?$", max_length=64)
]
_U63 = Annotated[int, Meta(ge=0, le=2**63 - 1)]
_Sig = Annotated[bytes, Meta(min_length=64, max_length=64)]
_Body = Annotated[bytes, Meta(min_length=1, max_length=MAX_ENTRY_BYTES)]


class RosterProblem(enum.StrEnum):
    """Why a roster statement or file was refused (``RosterError.reason``)."""

    BAD_KEY = "bad_key"
    BAD_SIGNATURE = "bad_signature"
    FULL = "full"
    INVALID_STATEMENT = "invalid_statement"
    MALFORMED = "malformed"
    OVERSIZED = "oversized"
    REVOKED = "revoked"
    UNREADABLE = "unreadable"
    UNSAFE_FILE = "unsafe_file"
    UNSUPPORTED_VERSION = "unsupported_version"
    UNWRITABLE = "unwritable"
    WRONG_AUTHORITY = "wrong_authority"


class RosterError(MeshError):
    """A roster statement or file is invalid; ``reason`` says which way."""

    def __init__(self, reason: RosterProblem, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class MergeResult(enum.StrEnum):
    ADDED = "added"  # a new member, or a newer entry for a member (e.g. a new key)
    UNCHANGED = "unchanged"  # already known, or older than what we hold
    REVOKED = "revoked"  # a revocation that removed or pre-empted something


class _Strict(msgspec.Struct, array_like=True, forbid_unknown_fields=True, frozen=True):
    pass


class MemberEntry(_Strict, frozen=True):
    """One member of the cluster, as the authority signed it."""

    node_id: _NodeId
    node_key: _Key
    may_publish: bool
    added_at: _U63  # unix seconds
    wg_key: _OptKey = b""  # WireGuard public key; empty = none
    coord_onion: _OptOnion = ""  # coordination onion address; empty = none
    # Where the other members reach it (docs/coordination.md); empty = not in the entry
    # (then only a [wireguard] peers line in their config can say).
    wg_endpoint: _OptHostPort = ""  # its WireGuard endpoint: underlay IP:port
    mesh_address: _OptHostPort = ""  # its mesh address inside the tunnel: tunnel-IP:port
    # Its join onion, where `onionmesh join` reaches it (it relays to the authority node):
    # `add-node` names every member's in a token. Empty = not in the entry.
    join_onion: _OptOnion = ""


class Revocation(_Strict, frozen=True):
    """A node key refused from now on (``node_id`` only for logs and operators)."""

    node_id: _NodeId
    node_key: _Key
    revoked_at: _U63  # unix seconds


class SignedEntry(_Strict, frozen=True):
    body: _Body  # the exact msgpack bytes of a MemberEntry
    signature: _Sig


class SignedRevocation(_Strict, frozen=True):
    body: _Body  # the exact msgpack bytes of a Revocation
    signature: _Sig


class RosterDocument(_Strict, frozen=True):
    """The roster file (and the roster part of a join answer)."""

    version: int
    authority_key: _Key
    entries: Annotated[list[SignedEntry], Meta(max_length=MAX_MEMBERS)]
    revocations: Annotated[list[SignedRevocation], Meta(max_length=MAX_REVOCATIONS)]


_encoder = msgspec.msgpack.Encoder()
# MemberEntry fields added after the roster shipped: left out of the encoding while
# empty (array_like decoders fill trailing defaults), so an entry without them has the
# bytes an older node expects (its decoder refuses unknown trailing fields).
_ENTRY_OPTIONAL_TAIL = 3


def encode_entry(entry: MemberEntry) -> bytes:
    fields = list(msgspec.structs.astuple(entry))
    for _ in range(_ENTRY_OPTIONAL_TAIL):
        if fields[-1] != "":
            break
        fields.pop()
    return _encoder.encode(fields)


def split_host_port(text: str) -> tuple[str, int]:
    """``IP:port`` / ``[IPv6]:port`` -> (IP, port); ValueError names what is wrong."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"{text!r}: expected IP:port with a port of 1-65535")
    bracketed = host.startswith("[") and host.endswith("]")
    address = ipaddress.ip_address(host[1:-1] if bracketed else host)  # ValueError if not
    if (address.version == 6) != bracketed:
        raise ValueError(f"{text!r}: an IPv6 address goes in brackets, IPv4 without")
    return str(address), int(port)
_entry_decoder = msgspec.msgpack.Decoder(MemberEntry)
_revocation_decoder = msgspec.msgpack.Decoder(Revocation)
_document_decoder = msgspec.msgpack.Decoder(RosterDocument)


def _decode_entry(body: bytes) -> MemberEntry:
    try:
        entry = _entry_decoder.decode(body)
    except (msgspec.MsgspecError, ValueError) as exc:
        raise RosterError(RosterProblem.MALFORMED, f"member entry: {exc}") from None
    if len(entry.wg_key) not in (0, 32):
        raise RosterError(
            RosterProblem.MALFORMED, "member entry: WireGuard key must be empty or 32 bytes"
        )
    for name in ("wg_endpoint", "mesh_address"):
        value = getattr(entry, name)
        if value:
            try:
                split_host_port(value)
            except ValueError as exc:
                raise RosterError(RosterProblem.MALFORMED, f"member entry: {name}: {exc}") \
                    from None
    return entry


def _decode_revocation(body: bytes) -> Revocation:
    try:
        return _revocation_decoder.decode(body)
    except (msgspec.MsgspecError, ValueError) as exc:
        raise RosterError(RosterProblem.MALFORMED, f"revocation: {exc}") from None


class AuthorityKey:
    """The cluster authority's signing key (secret: never in reprs or logs)."""

    def __init__(self, seed: bytes) -> None:
        if not isinstance(seed, bytes) or len(seed) != 32:
            raise RosterError(RosterProblem.BAD_KEY, "an authority key seed is 32 bytes")
        self._key = SigningKey(seed)
        self.public_key = bytes(self._key.verify_key)

    @classmethod
    def generate(cls) -> AuthorityKey:
        return cls(os.urandom(32))

    @property
    def seed(self) -> bytes:
        return bytes(self._key)

    def __repr__(self) -> str:
        return f"AuthorityKey(public={self.public_key.hex()[:16]}...)"

    def sign_entry(self, entry: MemberEntry) -> SignedEntry:
        body = encode_entry(entry)
        _decode_entry(body)  # never sign what a verifier would refuse
        return SignedEntry(body, self._key.sign(ENTRY_CONTEXT + body).signature)

    def sign_revocation(self, revocation: Revocation) -> SignedRevocation:
        body = _encoder.encode(revocation)
        _decode_revocation(body)
        return SignedRevocation(body, self._key.sign(REVOCATION_CONTEXT + body).signature)


def _newer(a: SignedEntry, a_entry: MemberEntry, b: SignedEntry, b_entry: MemberEntry) -> bool:
    """Whether ``a`` supersedes ``b`` (same node id): newest first, then larger bytes."""
    return (a_entry.added_at, a.body) > (b_entry.added_at, b.body)


class Roster:
    """The verified roster of one cluster (one authority key)."""

    def __init__(self, authority_key: bytes) -> None:
        if not isinstance(authority_key, bytes) or len(authority_key) != 32:
            raise RosterError(RosterProblem.BAD_KEY, "an authority public key is 32 bytes")
        self.authority_key = authority_key
        try:
            self._verify_key = VerifyKey(authority_key)
        except (CryptoError, ValueError, TypeError):
            raise RosterError(
                RosterProblem.BAD_KEY, "authority public key is not a valid point"
            ) from None
        self._entries: dict[str, tuple[SignedEntry, MemberEntry]] = {}
        self._revoked: dict[bytes, SignedRevocation] = {}
        self._digest: bytes | None = None

    # -- queries ------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._entries

    def member(self, node_id: str) -> MemberEntry | None:
        item = self._entries.get(node_id)
        return None if item is None else item[1]

    def signed_entry(self, node_id: str) -> SignedEntry | None:
        item = self._entries.get(node_id)
        return None if item is None else item[0]

    def key_of(self, node_id: str) -> bytes | None:
        """The node key a datagram from ``node_id`` must verify under (None: not a member)."""
        item = self._entries.get(node_id)
        return None if item is None else item[1].node_key

    def may_publish(self, node_id: str) -> bool:
        item = self._entries.get(node_id)
        return item is not None and item[1].may_publish

    def is_revoked(self, node_key: bytes) -> bool:
        return node_key in self._revoked

    def members(self) -> list[MemberEntry]:
        """Every member, ordered by node id."""
        return [self._entries[n][1] for n in sorted(self._entries)]

    def signed_entries(self) -> list[SignedEntry]:
        return [self._entries[n][0] for n in sorted(self._entries)]

    def signed_revocations(self) -> list[SignedRevocation]:
        return [self._revoked[k] for k in sorted(self._revoked)]

    def revoked_keys(self) -> list[bytes]:
        return sorted(self._revoked)

    def digest(self) -> bytes:
        """16 bytes that differ whenever two rosters of one authority differ."""
        if self._digest is None:
            h = hashlib.blake2b(digest_size=16, person=b"onionmesh-roster")
            h.update(self.authority_key)
            for s in self.signed_entries():
                h.update(b"E" + len(s.body).to_bytes(2, "big") + s.body + s.signature)
            for r in self.signed_revocations():
                h.update(b"R" + len(r.body).to_bytes(2, "big") + r.body + r.signature)
            self._digest = h.digest()
        return self._digest

    def holds(self, statement: SignedEntry | SignedRevocation) -> bool:
        """Whether this exact statement is already in effect (no signature check needed:
        a statement equal to one we verified is that one). Cheap, for gossip."""
        try:
            if isinstance(statement, SignedEntry):
                node_id = _decode_entry(statement.body).node_id
                item = self._entries.get(node_id)
                return item is not None and item[0] == statement
            key = _decode_revocation(statement.body).node_key
            return self._revoked.get(key) == statement
        except RosterError:
            return False

    # -- verification and merging -------------------------------------------

    def _verify(self, context: bytes, body: bytes, signature: bytes) -> None:
        try:
            self._verify_key.verify(context + body, signature)
        except (CryptoError, ValueError, TypeError):
            raise RosterError(
                RosterProblem.BAD_SIGNATURE, "not signed by this cluster's authority"
            ) from None

    def verify_entry(self, signed: SignedEntry) -> MemberEntry:
        """Decode and check one signed entry without merging it."""
        if not isinstance(signed, SignedEntry):
            raise RosterError(RosterProblem.MALFORMED, "not a signed member entry")
        self._verify(ENTRY_CONTEXT, signed.body, signed.signature)
        return _decode_entry(signed.body)

    def verify_revocation(self, signed: SignedRevocation) -> Revocation:
        if not isinstance(signed, SignedRevocation):
            raise RosterError(RosterProblem.MALFORMED, "not a signed revocation")
        self._verify(REVOCATION_CONTEXT, signed.body, signed.signature)
        return _decode_revocation(signed.body)

    def merge_entry(self, signed: SignedEntry) -> MergeResult:
        """Add or update a member from a signed entry; ``RosterError`` if invalid."""
        entry = self.verify_entry(signed)
        if entry.node_key in self._revoked:
            raise RosterError(RosterProblem.REVOKED, f"{entry.node_id}: its key was revoked")
        old = self._entries.get(entry.node_id)
        if old is not None:
            if old[0] == signed or not _newer(signed, entry, *old):
                return MergeResult.UNCHANGED
        elif len(self._entries) >= MAX_MEMBERS:
            raise RosterError(RosterProblem.FULL, f"roster already has {MAX_MEMBERS} members")
        self._entries[entry.node_id] = (signed, entry)
        self._digest = None
        return MergeResult.ADDED

    def merge_revocation(self, signed: SignedRevocation) -> MergeResult:
        """Revoke a key (and drop the member holding it); ``RosterError`` if invalid."""
        revocation = self.verify_revocation(signed)
        key = revocation.node_key
        if key in self._revoked:
            return MergeResult.UNCHANGED
        if len(self._revoked) >= MAX_REVOCATIONS:
            raise RosterError(
                RosterProblem.FULL, f"roster already has {MAX_REVOCATIONS} revocations"
            )
        self._revoked[key] = signed
        for node_id, (_, entry) in list(self._entries.items()):
            if entry.node_key == key:
                del self._entries[node_id]
        self._digest = None
        return MergeResult.REVOKED

    def merge_document(self, doc: RosterDocument) -> list[RosterProblem]:
        """Merge every statement of ``doc``; return the reasons of those refused."""
        if doc.authority_key != self.authority_key:
            raise RosterError(
                RosterProblem.WRONG_AUTHORITY, "roster belongs to another cluster authority"
            )
        refused: list[RosterProblem] = []
        # Revocations first, so an entry for a revoked key never counts, in any order.
        for r in doc.revocations:
            try:
                self.merge_revocation(r)
            except RosterError as exc:
                refused.append(exc.reason)
        for e in doc.entries:
            try:
                self.merge_entry(e)
            except RosterError as exc:
                refused.append(exc.reason)
        return refused

    # -- serialisation --------------------------------------------------------

    def to_document(self) -> RosterDocument:
        return RosterDocument(
            ROSTER_VERSION, self.authority_key, self.signed_entries(), self.signed_revocations()
        )

    def encode(self) -> bytes:
        return _encoder.encode(self.to_document())

    @classmethod
    def from_document(cls, doc: RosterDocument) -> Roster:
        """A roster from a document; every statement must verify (strict)."""
        if doc.version != ROSTER_VERSION:
            raise RosterError(RosterProblem.UNSUPPORTED_VERSION, f"roster version {doc.version}")
        roster = cls(doc.authority_key)
        refused = roster.merge_document(doc)
        if refused:
            raise RosterError(
                RosterProblem.INVALID_STATEMENT,
                f"{len(refused)} statement(s) refused ({refused[0]})",
            )
        return roster

    @classmethod
    def decode(cls, data: bytes) -> Roster:
        if len(data) > MAX_ROSTER_FILE_BYTES:
            raise RosterError(RosterProblem.OVERSIZED, f"roster of {len(data)} bytes")
        try:
            doc = _document_decoder.decode(data)
        except (msgspec.MsgspecError, ValueError) as exc:
            raise RosterError(RosterProblem.MALFORMED, f"roster: {exc}") from None
        return cls.from_document(doc)

    def copy(self) -> Roster:
        other = Roster(self.authority_key)
        other._entries = dict(self._entries)
        other._revoked = dict(self._revoked)
        return other


def roster_from(
    authority_key: bytes,
    entries: Iterable[SignedEntry],
    revocations: Iterable[SignedRevocation] = (),
) -> Roster:
    """A roster from signed statements (strict: every one must verify)."""
    return Roster.from_document(
        RosterDocument(ROSTER_VERSION, authority_key, list(entries), list(revocations))
    )


# -- files ------------------------------------------------------------------------


def _read_private(path: Path, limit: int, what: str, *, secret: bool = False) -> bytes:
    """Read a regular file, not group/world writable (nor readable if ``secret``)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        raise RosterError(RosterProblem.UNREADABLE, f"{what} {path}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise RosterError(RosterProblem.UNSAFE_FILE, f"{what} {path} is not a regular file")
        if st.st_mode & 0o022:
            raise RosterError(
                RosterProblem.UNSAFE_FILE,
                f"{what} {path} is group- or world-writable (chmod 600 it)",
            )
        if secret and st.st_mode & 0o077:
            raise RosterError(
                RosterProblem.UNSAFE_FILE, f"{what} {path} is readable by others (chmod 600 it)"
            )
        if st.st_size > limit:
            raise RosterError(
                RosterProblem.OVERSIZED, f"{what} {path} is larger than {limit} bytes"
            )
        with os.fdopen(fd, "rb", closefd=False) as handle:
            return handle.read(limit + 1)
    finally:
        os.close(fd)


def save_roster(path: str | os.PathLike[str], roster: Roster) -> None:
    """Write the roster atomically, mode 0600 (replaces the previous file)."""
    try:
        atomic_write(path, roster.encode(), mode=0o600, overwrite=True)
    except SecureFileError as exc:
        raise RosterError(RosterProblem.UNWRITABLE, str(exc)) from None


def load_roster(path: str | os.PathLike[str], expected_authority: bytes | None = None) -> Roster:
    """Read and fully verify a roster file; ``RosterError`` names what is wrong."""
    p = Path(path)
    data = _read_private(p, MAX_ROSTER_FILE_BYTES, "roster file")
    try:
        roster = Roster.decode(data)
    except RosterError as exc:
        raise RosterError(exc.reason, f"roster file {p}: {exc.detail}") from None
    if expected_authority is not None and roster.authority_key != expected_authority:
        raise RosterError(
            RosterProblem.WRONG_AUTHORITY, f"roster file {p} is of another cluster authority"
        )
    return roster


def save_authority_key(path: str | os.PathLike[str], key: AuthorityKey) -> None:
    """Write the authority key (0600); refuses to overwrite an existing file."""
    try:
        atomic_write(path, AUTHORITY_FILE_HEADER + key.seed, mode=0o600, overwrite=False)
    except SecureFileError as exc:
        raise RosterError(RosterProblem.UNWRITABLE, str(exc)) from None


def load_authority_key(path: str | os.PathLike[str]) -> AuthorityKey:
    p = Path(path)
    data = _read_private(p, 256, "authority key file", secret=True)
    if len(data) != len(AUTHORITY_FILE_HEADER) + 32 or not data.startswith(AUTHORITY_FILE_HEADER):
        raise RosterError(
            RosterProblem.MALFORMED, f"authority key file {p} is not an onionmesh authority key"
        )
    return AuthorityKey(data[len(AUTHORITY_FILE_HEADER) :])
