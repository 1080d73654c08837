"""The microdesc-flavoured consensus and microdescriptors, as tor's control port gives them.

Sources: ``GETINFO dir/status-vote/current/consensus-microdesc`` (dir-spec
section 3.4.1, microdesc flavour) and ``GETINFO md/all`` (dir-spec section
3.3, microdescriptors concatenated).

Only what onion-service publishing needs is kept: the validity times, the
``params`` line, both shared random values, and for every relay its
identity, microdescriptor digest, address, flags and protocol versions.
The relay's ed25519 identity lives in its microdescriptor (``id ed25519``),
so the two documents are joined on the microdescriptor digest, which is
SHA-256 over the microdescriptor text exactly as tor stores it: from its
``onion-key`` line up to the start of the next microdescriptor, final
newline included. Some controllers (stem) strip the final newline of the
``md/all`` reply, which changes the last digest and silently drops that
relay from the hash ring; :func:`parse_microdescriptors` restores it.

Parsing is hand written because no maintained library parses these
documents without also pulling in stem (which onionmesh must not import).
Every malformed line raises :class:`ConsensusError` naming the line.
"""

from __future__ import annotations

import base64
import binascii
import calendar
import hashlib
import ipaddress
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from functools import lru_cache
from types import MappingProxyType

from onionmesh.hsdir.errors import ConsensusError

__all__ = [
    "Consensus",
    "ConsensusError",
    "Relay",
    "attach_ed25519_ids",
    "parse_consensus",
    "parse_microdescriptors",
]

# tor refuses protocol versions above 63 (protover.c MAX_PROTOCOL_VERSION).
_MAX_PROTOCOL_VERSION = 63
_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1

_NICKNAME_RE = re.compile(r"[A-Za-z0-9]{1,19}", re.ASCII)
_BASE64_RE = re.compile(r"[A-Za-z0-9+/]+={0,2}", re.ASCII)
_DATE_RE = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})", re.ASCII)
_CLOCK_RE = re.compile(r"([0-9]{2}):([0-9]{2}):([0-9]{2})", re.ASCII)
_INT_RE = re.compile(r"-?[0-9]{1,10}", re.ASCII)
_UINT_RE = re.compile(r"[0-9]{1,20}", re.ASCII)
_PARAM_RE = re.compile(r"([A-Za-z0-9_-]+)=(-?[0-9]{1,10})", re.ASCII)
_KEYWORD_RE = re.compile(r"[A-Za-z0-9-]+", re.ASCII)
_PROTO_NAME_RE = re.compile(r"[A-Za-z0-9_-]+", re.ASCII)
_RANGE_RE = re.compile(r"([0-9]{1,2})(?:-([0-9]{1,2}))?", re.ASCII)

# Keywords that end the router-status section (dir-spec 3.4.1 footer).
_FOOTER_KEYWORDS = frozenset({"directory-footer", "bandwidth-weights", "directory-signature"})


@dataclass(frozen=True)
class Relay:
    """One router status entry of the consensus (plus its ed25519 id, once attached).

    ``protocols`` is the parsed ``pr`` line (protocol name -> supported
    versions); ``None`` means the entry had no ``pr`` line, which every
    current consensus method emits, so such a relay is assumed to be a
    modern one.
    """

    nickname: str
    identity: bytes
    md_digest: bytes
    address: str
    or_port: int
    flags: frozenset[str]
    ed25519_id: bytes | None = None
    protocols: Mapping[str, frozenset[int]] | None = field(default=None, hash=False, repr=False)

    @property
    def fingerprint(self) -> str:
        """The 40-hex-digit uppercase RSA identity, as ``HSPOST SERVER=`` wants it."""
        return self.identity.hex().upper()

    @property
    def supports_hsdir_v3(self) -> bool:
        """True if the relay advertises ``HSDir=2`` (v3 onion-service directory)."""
        if self.protocols is None:
            return True
        return 2 in self.protocols.get("HSDir", frozenset())


@dataclass(frozen=True)
class Consensus:
    """The parts of a microdesc consensus that onion-service publishing needs.

    Times are unix seconds (UTC). ``voting_interval`` is
    ``fresh_until - valid_after`` in seconds, exactly as tor derives it.
    """

    valid_after: int
    fresh_until: int
    valid_until: int
    voting_interval: int
    params: dict[str, int] = field(hash=False)
    srv_current: bytes | None
    srv_previous: bytes | None
    relays: tuple[Relay, ...]

    def param(self, name: str, default: int, minimum: int, maximum: int) -> int:
        """A consensus parameter clamped to [minimum, maximum], as tor's networkstatus_get_param."""
        value = self.params.get(name, default)
        return max(minimum, min(maximum, value))


# --------------------------------------------------------------------------- helpers


def _describe(lineno: int, line: str) -> str:
    """A short, safe description of a line for error messages."""
    shown = line if len(line) <= 80 else line[:77] + "..."
    return f"line {lineno} ({shown!r})"


class _Where:
    """A line's description, rendered only if an error message needs it (parsing stays fast)."""

    __slots__ = ("line", "lineno")

    def __init__(self, lineno: int, line: str) -> None:
        self.lineno = lineno
        self.line = line

    def __str__(self) -> str:
        return _describe(self.lineno, self.line)


def _fields(line: str) -> list[str]:
    """Split a document line into keyword and arguments (spaces and tabs only, as dir-spec)."""
    if "\t" in line:
        line = line.replace("\t", " ")
    return [part for part in line.split(" ") if part]


def _lines(text: str) -> Iterator[tuple[int, str]]:
    """Number the lines of a document; CRLF (a raw control-port reply) counts as LF."""
    for index, raw in enumerate(text.split("\n"), start=1):
        yield index, raw[:-1] if raw.endswith("\r") else raw


def _b64decode(value: str, length: int, what: str, where: object) -> bytes:
    """Decode unpadded or padded base64 that must yield exactly ``length`` bytes."""
    if not _BASE64_RE.fullmatch(value):
        raise ConsensusError(f"{where}: {what} is not base64")
    stripped = value.rstrip("=")
    try:
        raw = base64.b64decode(stripped + "=" * (-len(stripped) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ConsensusError(f"{where}: {what} is not valid base64") from exc
    if len(raw) != length:
        raise ConsensusError(f"{where}: {what} decodes to {len(raw)} bytes, expected {length}")
    return raw


def _parse_time(date: str, clock: str, where: object) -> int:
    """``YYYY-MM-DD HH:MM:SS`` (UTC) to unix seconds."""
    d = _DATE_RE.fullmatch(date)
    c = _CLOCK_RE.fullmatch(clock)
    if d is None or c is None:
        raise ConsensusError(f"{where}: time is not 'YYYY-MM-DD HH:MM:SS'")
    try:
        year, month, day = (int(x) for x in d.groups())
        hour, minute, second = (int(x) for x in c.groups())
        moment = datetime(year, month, day, hour, minute, second)
    except ValueError as exc:
        raise ConsensusError(f"{where}: time is not a valid date") from exc
    return calendar.timegm(moment.timetuple())


@lru_cache(maxsize=1024)
def _protocols_from(text: str) -> Mapping[str, frozenset[int]]:
    """A ``pr`` line's arguments: ``Name=1-3,5 Other=2`` -> {"Name": {1,2,3,5}, "Other": {2}}.

    Cached: thousands of relays share a handful of distinct ``pr`` lines.
    Errors carry no location; the caller adds it.
    """
    protocols: dict[str, frozenset[int]] = {}
    for entry in _fields(text):
        name, sep, ranges = entry.partition("=")
        if not sep or not _PROTO_NAME_RE.fullmatch(name):
            raise ConsensusError(f"bad protocol entry {entry[:40]!r}")
        if name in protocols:
            raise ConsensusError(f"protocol {name} listed twice")
        versions: set[int] = set()
        for part in ranges.split(",") if ranges else []:
            m = _RANGE_RE.fullmatch(part)
            if m is None:
                raise ConsensusError(f"bad version range {part[:20]!r} for {name}")
            low = int(m.group(1))
            high = int(m.group(2)) if m.group(2) is not None else low
            if high < low or high > _MAX_PROTOCOL_VERSION:
                raise ConsensusError(f"bad version range {part!r} for {name}")
            versions.update(range(low, high + 1))
        protocols[name] = frozenset(versions)
    return MappingProxyType(protocols)


def _parse_protocols(args: list[str], where: object) -> Mapping[str, frozenset[int]]:
    try:
        return _protocols_from(" ".join(args))
    except ConsensusError as exc:
        raise ConsensusError(f"{where}: {exc}") from None


def _parse_params(args: list[str], where: object) -> dict[str, int]:
    params: dict[str, int] = {}
    for entry in args:
        m = _PARAM_RE.fullmatch(entry)
        if m is None:
            raise ConsensusError(f"{where}: bad parameter {entry[:40]!r}")
        value = int(m.group(2))
        if not _INT32_MIN <= value <= _INT32_MAX:
            raise ConsensusError(f"{where}: parameter {m.group(1)} is outside int32")
        params[m.group(1)] = value
    return params


def _parse_srv(args: list[str], where: object) -> bytes:
    """``shared-rand-*-value NumReveals Value`` -> the 32-byte value."""
    if len(args) < 2:
        raise ConsensusError(f"{where}: needs the number of reveals and the value")
    if not _UINT_RE.fullmatch(args[0]):
        raise ConsensusError(f"{where}: number of reveals is not a number")
    # tor's sr_parse_srv insists on the 44-character padded encoding.
    if len(args[1]) != 44:
        raise ConsensusError(f"{where}: shared random value is not 44 base64 characters")
    return _b64decode(args[1], 32, "shared random value", where)


class _EntryBuilder:
    """Collects the lines of one router status entry (``r`` up to the next ``r``)."""

    def __init__(self, lineno: int, line: str, args: list[str]) -> None:
        self.where = _Where(lineno, line)
        # Microdesc flavour: r nickname identity YYYY-MM-DD HH:MM:SS IP ORPort DirPort
        if len(args) != 7:
            raise ConsensusError(
                f"{self.where}: a microdesc 'r' line has 7 arguments, got {len(args)}"
            )
        nickname, identity, date, clock, address, or_port, dir_port = args
        if not _NICKNAME_RE.fullmatch(nickname):
            raise ConsensusError(f"{self.where}: bad nickname")
        self.nickname = nickname
        self.identity = _b64decode(identity, 20, "identity", self.where)
        _parse_time(date, clock, self.where)
        try:
            if not address.isascii():
                raise ValueError(address)
            ipaddress.IPv4Address(address)
        except ValueError as exc:
            raise ConsensusError(f"{self.where}: address is not an IPv4 address") from exc
        self.address = address
        self.or_port = self._port(or_port, "ORPort", allow_zero=False)
        self._port(dir_port, "DirPort", allow_zero=True)
        self.md_digest: bytes | None = None
        self.flags: frozenset[str] | None = None
        self.protocols: Mapping[str, frozenset[int]] | None = None

    def _port(self, value: str, what: str, *, allow_zero: bool) -> int:
        if not _UINT_RE.fullmatch(value) or len(value) > 5:
            raise ConsensusError(f"{self.where}: {what} is not a number")
        port = int(value)
        if port > 65535 or (port == 0 and not allow_zero):
            raise ConsensusError(f"{self.where}: {what} {port} is out of range")
        return port

    def add(self, keyword: str, args: list[str], where: object) -> None:
        if keyword == "m":
            if self.md_digest is not None:
                raise ConsensusError(f"{where}: second 'm' line for {self.nickname}")
            if len(args) != 1:
                raise ConsensusError(f"{where}: a microdesc 'm' line has one digest")
            self.md_digest = _b64decode(args[0], 32, "microdescriptor digest", where)
        elif keyword == "s":
            if self.flags is not None:
                raise ConsensusError(f"{where}: second 's' line for {self.nickname}")
            for flag in args:
                if not _KEYWORD_RE.fullmatch(flag):
                    raise ConsensusError(f"{where}: bad flag {flag[:20]!r}")
            self.flags = frozenset(args)
        elif keyword == "pr":
            if self.protocols is not None:
                raise ConsensusError(f"{where}: second 'pr' line for {self.nickname}")
            self.protocols = _parse_protocols(args, where)
        # a, v, w, p and unknown keywords carry nothing the hash ring needs.

    def build(self) -> Relay:
        if self.md_digest is None:
            raise ConsensusError(f"{self.where}: router entry has no 'm' line")
        return Relay(
            nickname=self.nickname,
            identity=self.identity,
            md_digest=self.md_digest,
            address=self.address,
            or_port=self.or_port,
            flags=self.flags if self.flags is not None else frozenset(),
            ed25519_id=None,
            protocols=self.protocols,
        )


# --------------------------------------------------------------------------- consensus


def parse_consensus(text: str) -> Consensus:
    """Parse a microdesc-flavoured consensus document (dir-spec 3.4.1).

    Raises :class:`ConsensusError` naming the offending line for anything
    malformed, a missing required header, inconsistent times, or a relay
    listed twice.
    """
    if not isinstance(text, str):
        raise ConsensusError("consensus must be text")
    header: dict[str, tuple[list[str], _Where]] = {}
    params: dict[str, int] = {}
    relays: list[Relay] = []
    seen_identities: set[bytes] = set()
    entry: _EntryBuilder | None = None
    in_object: str | None = None
    object_start = ""
    first = True
    section = "header"  # header -> routers -> footer

    def finish_entry() -> None:
        nonlocal entry
        if entry is not None:
            relay = entry.build()
            if relay.identity in seen_identities:
                raise ConsensusError(f"{entry.where}: relay {relay.fingerprint} listed twice")
            seen_identities.add(relay.identity)
            relays.append(relay)
            entry = None

    for lineno, line in _lines(text):
        if in_object is not None:
            if line.startswith("-----END ") and line.endswith("-----"):
                in_object = None
            continue
        if line.startswith("-----BEGIN ") and line.endswith("-----"):
            in_object = line
            object_start = _describe(lineno, line)
            continue
        parts = _fields(line)
        if not parts:
            continue
        keyword, args = parts[0], parts[1:]
        where = _Where(lineno, line)
        if first:
            first = False
            if keyword != "network-status-version" or not args or args[0] != "3":
                raise ConsensusError(f"{where}: not a version 3 network status document")
            if len(args) > 1 and args[1] != "microdesc":
                raise ConsensusError(f"{where}: consensus flavour {args[1]!r} is not microdesc")
            continue
        if keyword in _FOOTER_KEYWORDS:
            finish_entry()
            section = "footer"
            continue
        if section == "footer":
            continue
        if keyword == "r":
            finish_entry()
            section = "routers"
            entry = _EntryBuilder(lineno, line, args)
            continue
        if section == "routers":
            assert entry is not None  # section only becomes "routers" with an entry
            entry.add(keyword, args, where)
            continue
        # Header (and the dir-source sections, whose lines we ignore).
        if keyword in (
            "valid-after",
            "fresh-until",
            "valid-until",
            "shared-rand-current-value",
            "shared-rand-previous-value",
            "params",
        ):
            if keyword in header:
                raise ConsensusError(f"{where}: '{keyword}' appears twice")
            header[keyword] = (args, where)
            if keyword == "params":
                params = _parse_params(args, where)
    if in_object is not None:
        raise ConsensusError(f"{object_start}: object is never closed")
    if first:
        raise ConsensusError("consensus is empty")
    finish_entry()

    times: dict[str, int] = {}
    for keyword in ("valid-after", "fresh-until", "valid-until"):
        if keyword not in header:
            raise ConsensusError(f"consensus has no '{keyword}' line")
        args, where = header[keyword]
        if len(args) != 2:
            raise ConsensusError(f"{where}: '{keyword}' needs a date and a time")
        times[keyword] = _parse_time(args[0], args[1], where)
    valid_after, fresh_until = times["valid-after"], times["fresh-until"]
    valid_until = times["valid-until"]
    if not valid_after < fresh_until <= valid_until:
        raise ConsensusError(
            "consensus times are inconsistent: need valid-after < fresh-until <= valid-until"
        )

    srvs: dict[str, bytes | None] = {}
    for keyword in ("shared-rand-current-value", "shared-rand-previous-value"):
        if keyword in header:
            args, where = header[keyword]
            srvs[keyword] = _parse_srv(args, where)
        else:
            srvs[keyword] = None

    return Consensus(
        valid_after=valid_after,
        fresh_until=fresh_until,
        valid_until=valid_until,
        voting_interval=fresh_until - valid_after,
        params=params,
        srv_current=srvs["shared-rand-current-value"],
        srv_previous=srvs["shared-rand-previous-value"],
        relays=tuple(relays),
    )


# --------------------------------------------------------------------------- microdescriptors


def _split_microdescriptors(text: str) -> Iterator[tuple[int, str]]:
    """Yield (first line number, body) for each microdescriptor, as tor delimits them.

    A body starts at an ``onion-key`` line and runs up to the next line that
    starts a microdescriptor (``onion-key``) or an annotation (``@``), or to
    the end of the text. Annotations are not part of the body.
    """
    lines = text.split("\n")
    # split() leaves a trailing "" when the text ends with "\n".
    ends_with_newline = lines[-1] == ""
    if ends_with_newline:
        lines.pop()
    start: int | None = None
    for index, line in enumerate(lines):
        if line.startswith("onion-key") or line.startswith("@"):
            if start is not None:
                yield start + 1, "".join(f"{x}\n" for x in lines[start:index])
                start = None
            if line.startswith("onion-key"):
                start = index
        elif start is None and line.strip():
            raise ConsensusError(
                f"{_describe(index + 1, line)}: text before the first 'onion-key' line"
            )
    if start is not None:
        # The final newline belongs to the last body even if the caller lost it:
        # tor stores and hashes every microdescriptor with its closing "\n".
        yield start + 1, "".join(f"{x}\n" for x in lines[start:])


def parse_microdescriptors(text: str) -> dict[bytes, bytes]:
    """Map microdescriptor digest -> ed25519 identity for every md with an ``id ed25519`` line.

    Accepts ``GETINFO md/all`` with or without its final newline, LF or
    CRLF line ends. Microdescriptors without an ed25519 identity are left
    out (they cannot be on the v3 hash ring).
    """
    if not isinstance(text, str):
        raise ConsensusError("microdescriptors must be text")
    text = text.replace("\r\n", "\n")
    result: dict[bytes, bytes] = {}
    for first_line, body in _split_microdescriptors(text):
        try:
            raw = body.encode("ascii")
        except UnicodeEncodeError as exc:
            raise ConsensusError(
                f"microdescriptor at line {first_line}: contains non-ASCII characters"
            ) from exc
        ed25519_id: bytes | None = None
        seen_ed_line = False
        in_object = False
        for offset, line in enumerate(body.split("\n")[:-1]):
            lineno = first_line + offset
            if in_object:
                if line.startswith("-----END ") and line.endswith("-----"):
                    in_object = False
                continue
            if line.startswith("-----BEGIN ") and line.endswith("-----"):
                in_object = True
                continue
            parts = _fields(line)
            if len(parts) >= 2 and parts[0] == "id" and parts[1] == "ed25519":
                where = _describe(lineno, line)
                if len(parts) != 3:
                    raise ConsensusError(f"{where}: 'id ed25519' needs exactly one key")
                if seen_ed_line:
                    raise ConsensusError(f"{where}: second 'id ed25519' line")
                seen_ed_line = True
                # "none" (old votes' spelling of "no key") means no identity, not an error.
                if parts[2] != "none":
                    ed25519_id = _b64decode(parts[2], 32, "ed25519 identity", where)
        if in_object:
            raise ConsensusError(f"microdescriptor at line {first_line}: object is never closed")
        if ed25519_id is not None:
            result[hashlib.sha256(raw).digest()] = ed25519_id
    return result


def attach_ed25519_ids(consensus: Consensus, mds: Mapping[bytes, bytes]) -> Consensus:
    """Return the consensus with each relay's ed25519 id taken from its microdescriptor.

    Relays whose microdescriptor is missing (or has no ed25519 id) get
    ``None`` and so stay off the hash ring, as in tor.
    """
    relays = tuple(replace(r, ed25519_id=mds.get(r.md_digest)) for r in consensus.relays)
    return replace(consensus, relays=relays)
