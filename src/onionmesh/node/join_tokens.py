"""Join tokens: what ``add-node`` prints, and the inviting node's persistent bookkeeping.

A token (``onionmesh-join-2.<base64url msgpack>``) carries a fresh one-time
*join key* (an ed25519 seed made for this token only) and public facts: the
authority's public key, the master address, the sponsor's id and coordination
address, the expiry and the cluster's timing settings. It holds no long-lived
secret: the cluster secret travels in the join answer, boxed to the joiner,
and the join key is worth nothing once the token is used or expired. It also
names the *join onions* of its bootstrap peers (the inviter first), where
``join`` reaches the cluster through tor (docs/coordination.md).

The sponsor keeps one ``TokenRecord`` per issued token in a 0600 file
(``[membership] join_tokens_path``): the join key's public half, expiry,
whether the node may publish, the reserved node id, and, once used, the
digest of the request that used it. Every change happens under an exclusive
``flock`` on a side lock file, so ``add-node`` and the running daemon never
lose each other's updates, and a token is marked used on disk before the
answer leaves (single use survives a crash or restart). Expired and used
records are pruned after ``RECORD_KEEP`` seconds.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import fcntl
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import msgspec
from msgspec import Meta

from onionmesh.crypto.securefile import SecureFileError, atomic_write
from onionmesh.mesh.join import TokenGrant
from onionmesh.node.errors import NodeError, TokenError

TOKEN_PREFIX = "onionmesh-join-2."
LEGACY_TOKEN_PREFIX = "onionmesh-join-1."
MAX_TOKEN_CHARS = 4096  # a real token is about 400 characters
MAX_RECORDS = 4096
MAX_STORE_BYTES = 1 << 20
RECORD_KEEP = 7 * 86400.0  # how long used/expired records stay (answers to resends, audits)
DEFAULT_TOKEN_LIFETIME = 3600.0

_NodeId = Annotated[str, Meta(pattern=r"\A[a-z0-9][a-z0-9._-]{0,63}\Z")]
_Key = Annotated[bytes, Meta(min_length=32, max_length=32)]
_Onion = Annotated[str, Meta(pattern=r"\A[a-z2-7]{56}\.onion\Z")]
_Address = Annotated[str, Meta(pattern=r"\A[0-9A-Fa-f.:\[\]]{3,64}:[0-9]{1,5}\Z")]
_Seconds = Annotated[float, Meta(ge=0, le=2**40)]
_Number = Annotated[int, Meta(ge=0, le=10**6)] | Annotated[float, Meta(ge=0, le=1e6)]
# The values are checked again when the joiner's config is validated.
_Timing = Annotated[dict[Annotated[str, Meta(max_length=32)], Annotated[dict[
    Annotated[str, Meta(max_length=32)], _Number], Meta(max_length=8)]], Meta(max_length=4)]


class TokenStoreError(NodeError):
    """The token bookkeeping file is unreadable or damaged (joins are refused)."""


class JoinTokenBody(msgspec.Struct, array_like=True, forbid_unknown_fields=True, frozen=True):
    """What a token says. ``join_seed`` is the one-time secret; the rest is public."""

    join_seed: _Key
    authority_key: _Key
    master_address: _Onion
    sponsor_id: _NodeId
    sponsor_address: _Address
    expires_at: _Seconds
    timing: _Timing
    # Where `join` reaches the cluster through tor: (node id, join onion) pairs, the
    # inviter first. Tokens from before joining through tor have none.
    bootstrap: Annotated[list[tuple[_NodeId, _Onion]], Meta(max_length=16)] = []

    def __repr__(self) -> str:  # never show the join key
        return f"JoinTokenBody(master={self.master_address!r}, sponsor={self.sponsor_id!r})"


_body_decoder = msgspec.msgpack.Decoder(JoinTokenBody)


def encode_token(body: JoinTokenBody) -> str:
    raw = msgspec.msgpack.encode(body)
    text = TOKEN_PREFIX + base64.urlsafe_b64encode(raw).decode().rstrip("=")
    decode_token(text)  # never print what `join` would refuse
    return text


def decode_token(text: str) -> JoinTokenBody:
    """Parse a token; ``TokenError`` names the problem, never the token."""
    text = text.strip()
    if len(text) > MAX_TOKEN_CHARS:
        raise TokenError(f"join token is longer than {MAX_TOKEN_CHARS} characters; copy it again")
    if text.startswith(LEGACY_TOKEN_PREFIX):
        raise TokenError("this is a token of an older onionmesh (it carried the cluster "
                         "secret); ask for a new one from `onionmesh add-node`")
    if not text.startswith(TOKEN_PREFIX):
        raise TokenError(f"not an onionmesh join token (it must start with {TOKEN_PREFIX!r})")
    payload = text[len(TOKEN_PREFIX):]
    try:
        raw = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
        return _body_decoder.decode(raw)
    except (binascii.Error, ValueError, msgspec.MsgspecError):
        raise TokenError("join token is damaged or incomplete; copy it again") from None


_ONION = re.compile(r"\A[a-z2-7]{56}\.onion\Z")
_NODE_ID = re.compile(r"\A[a-z0-9][a-z0-9._-]{0,63}\Z")


def check_bootstrap_peer(node_id: str, onion: str) -> tuple[str, str]:
    """A bootstrap peer as a token names it, or ``TokenError`` saying what is wrong."""
    if not _NODE_ID.match(node_id):
        raise TokenError(f"bootstrap peer id {node_id[:80]!r} is not a node id")
    onion = onion.lower()
    if not onion.endswith(".onion"):
        onion += ".onion"
    if not _ONION.match(onion):
        raise TokenError(f"bootstrap peer {node_id}: {onion[:80]!r} is not a v3 onion address "
                         "(56 base32 characters, then .onion)")
    return node_id, onion


def read_token_text(source: str) -> str:
    """The token from a file, or from stdin for ``-`` (never from the command line)."""
    import sys

    try:
        if source == "-":
            text = sys.stdin.read(MAX_TOKEN_CHARS + 1)
        else:
            with open(source, encoding="utf-8") as handle:
                text = handle.read(MAX_TOKEN_CHARS + 1)
    except (OSError, UnicodeDecodeError) as exc:
        where = "stdin" if source == "-" else source
        raise TokenError(f"cannot read the join token from {where}: "
                         f"{getattr(exc, 'strerror', None) or 'not UTF-8 text'}") from None
    return text


# -- the sponsor's bookkeeping --------------------------------------------------------


class TokenRecord(msgspec.Struct, array_like=True, forbid_unknown_fields=True, frozen=True):
    join_key: _Key  # public half of the token's join key
    issued_at: _Seconds
    expires_at: _Seconds
    may_publish: bool
    node_id: _NodeId | None = None
    used_by: Annotated[bytes, Meta(max_length=32)] | None = None  # request digest
    used_at: _Seconds | None = None


class _StoreFile(msgspec.Struct, array_like=True, forbid_unknown_fields=True):
    version: int
    records: Annotated[list[TokenRecord], Meta(max_length=MAX_RECORDS)]


_store_decoder = msgspec.msgpack.Decoder(_StoreFile)


class TokenStore:
    """The persistent list of issued tokens (one file, changed under a lock)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._cache: tuple[int, int, dict[bytes, TokenRecord]] | None = None

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = self.path.with_name(self.path.name + ".lock")
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _read(self) -> dict[bytes, TokenRecord]:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise TokenStoreError(f"join token file {self.path}: {exc.strerror}") from None
        try:
            info = os.fstat(fd)
            if self._cache is not None and self._cache[:2] == (info.st_mtime_ns, info.st_size):
                return dict(self._cache[2])
            if info.st_mode & 0o077:
                raise TokenStoreError(f"join token file {self.path} is readable by others")
            data = os.read(fd, MAX_STORE_BYTES + 1)
        finally:
            os.close(fd)
        if len(data) > MAX_STORE_BYTES:
            raise TokenStoreError(f"join token file {self.path} is too large")
        try:
            store = _store_decoder.decode(data)
        except (msgspec.MsgspecError, ValueError):
            raise TokenStoreError(f"join token file {self.path} is damaged") from None
        records = {r.join_key: r for r in store.records}
        self._cache = (info.st_mtime_ns, info.st_size, records)
        return dict(records)

    def _write(self, records: dict[bytes, TokenRecord], now: float) -> None:
        kept = [r for r in records.values()
                if max(r.expires_at, r.used_at or 0.0) + RECORD_KEEP > now]
        kept.sort(key=lambda r: r.issued_at)
        data = msgspec.msgpack.encode(_StoreFile(1, kept[-MAX_RECORDS:]))
        try:
            atomic_write(self.path, data, mode=0o600, overwrite=True)
        except SecureFileError as exc:
            raise TokenStoreError(f"cannot write {self.path}: {exc}") from None
        self._cache = None

    def issue(self, join_key: bytes, now: float, lifetime: float, *, may_publish: bool,
              node_id: str | None = None) -> TokenRecord:
        record = TokenRecord(join_key, now, now + lifetime, may_publish, node_id)
        with self._locked():
            records = self._read()
            records[join_key] = record
            self._write(records, now)
        return record

    def grant(self, join_key: bytes) -> TokenGrant | None:
        """What the sponsor core needs to judge a request naming ``join_key``."""
        record = self._read().get(join_key)
        if record is None:
            return None
        return TokenGrant(record.join_key, record.expires_at, record.may_publish,
                          record.node_id, record.used_by)

    def mark_used(self, join_key: bytes, request_digest: bytes, now: float) -> bool:
        """Record the use on disk; False if another request used the token meanwhile."""
        with self._locked():
            records = self._read()
            record = records.get(join_key)
            if record is None or (record.used_by is not None and record.used_by != request_digest):
                return False
            if record.used_by is None:
                records[join_key] = msgspec.structs.replace(record, used_by=request_digest,
                                                            used_at=now)
                self._write(records, now)
        return True

    def records(self) -> list[TokenRecord]:
        return sorted(self._read().values(), key=lambda r: r.issued_at)
