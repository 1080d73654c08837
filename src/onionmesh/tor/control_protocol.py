"""Pure (I/O-free) parsing and formatting of tor's control-port protocol.

Everything here works on ``str`` lines without their CRLF and raises only the
typed errors defined below, so hypothesis can feed it arbitrary text. The
formats follow tor's control-spec ("Replies", "Asynchronous events",
"HS_DESC", "PROTOCOLINFO", "AUTHCHALLENGE", "ADD_ONION"):

* a reply line is ``StatusCode Sep Text`` where StatusCode is three digits and
  Sep is ``" "`` (last line), ``"-"`` (more lines follow) or ``"+"`` (a data
  block follows, terminated by a line holding a single ``"."``; data lines
  starting with ``"."`` carry an extra leading dot);
* every line of one reply carries the same status code; status 650 marks an
  asynchronous event, which may itself span several lines (``650-`` or
  ``650+``, e.g. CONF_CHANGED or HS_DESC_CONTENT).

Written from the specification rather than reusing stem: stem is a test-only
dependency of this project and its parser is synchronous.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

from onionmesh.errors import OnionmeshError


class ControlError(OnionmeshError):
    """Base class of every error of the tor control client."""


class ControlProtocolError(ControlError):
    """tor (or whatever answered) sent a malformed or unexpected reply."""


class ControlReplyError(ControlError):
    """tor answered a command with a 4xx/5xx status."""

    def __init__(self, status: int, text: str, command: str = "") -> None:
        self.status = status
        self.text = text
        self.command = command
        where = f" to {command}" if command else ""
        super().__init__(f"tor replied {status} {text!r}{where}")


class ControlTimeout(ControlError):
    """A command or connection attempt did not complete in time."""


class AuthenticationError(ControlError):
    """Authentication to the control port failed or is impossible."""


class ControlClosed(ControlError):
    """The control connection is closed (or closed while a command waited)."""


class ControlConnectError(ControlClosed):
    """The control port could not be reached (refused, missing socket, ...)."""


class ControlArgumentError(ControlError):
    """A caller passed an argument that cannot be sent safely to tor."""


#: Longest line we accept; tor's own lines are far shorter (descriptor and
#: consensus lines are < 1 KiB), so anything longer is a broken peer.
MAX_LINE_CHARS = 1 << 20

_STATUS_RE = re.compile(r"[1-6][0-9][0-9]")
_EVENT_STATUS = 650


@dataclass(frozen=True)
class ReplyLine:
    """One logical reply line; ``data`` holds the unescaped block of a ``+`` line."""

    status: int
    sep: str
    text: str
    data: str | None = None


@dataclass(frozen=True)
class Reply:
    """A complete reply: the status of its final line and all of its lines."""

    status: int
    lines: tuple[ReplyLine, ...]

    @property
    def is_ok(self) -> bool:
        """True for 2xx replies."""
        return 200 <= self.status < 300

    @property
    def text(self) -> str:
        """Text of the first line (the whole text of a one-line reply)."""
        return self.lines[0].text if self.lines else ""

    def raise_for_status(self, command: str = "") -> Reply:
        """Raise ControlReplyError for a 4xx/5xx reply; return self otherwise."""
        if self.status >= 400:
            raise ControlReplyError(self.status, self.lines[-1].text, command)
        return self


@dataclass(frozen=True)
class ControlEvent:
    """An asynchronous (650) event.

    ``text`` is the first line after the event name; ``data`` is the data
    block of a ``650+`` event (HS_DESC_CONTENT descriptor, NEWCONSENSUS) or,
    for ``650-`` events such as CONF_CHANGED, the following lines' texts
    joined with "\\n" (the closing "OK" excluded). ``lines`` keeps them all.
    """

    type: str
    text: str
    data: str | None
    received_at: float
    lines: tuple[ReplyLine, ...] = field(default=(), repr=False)


@dataclass(frozen=True)
class HsDescEvent:
    """A parsed HS_DESC event (control-spec "HiddenService descriptors")."""

    action: str
    address: str
    auth_type: str
    hsdir: str | None
    descriptor_id: str | None
    reason: str | None
    replica: int | None
    hsdir_index: str | None
    hsdir_nickname: str | None = None


def parse_reply_line(line: str) -> tuple[int, str, str]:
    """Split one reply line (CRLF stripped) into (status, sep, text)."""
    if not isinstance(line, str):
        raise ControlProtocolError(f"reply line must be str, not {type(line).__name__}")
    if len(line) > MAX_LINE_CHARS:
        raise ControlProtocolError(f"reply line longer than {MAX_LINE_CHARS} characters")
    if len(line) < 4:
        raise ControlProtocolError(f"reply line too short: {line[:40]!r}")
    code, sep, text = line[:3], line[3], line[4:]
    if not _STATUS_RE.fullmatch(code):
        raise ControlProtocolError(f"reply line has no valid status code: {line[:40]!r}")
    if sep not in " -+":
        raise ControlProtocolError(f"reply line has bad separator {sep!r}: {line[:40]!r}")
    return int(code), sep, text


class ReplyAssembler:
    """Incrementally groups raw lines into complete Reply objects.

    ``feed`` returns a Reply when the line completes one, else None. After a
    ControlProtocolError the assembler is in an undefined state and the
    connection must be dropped (the stream cannot be resynchronised).
    """

    def __init__(self) -> None:
        self._lines: list[ReplyLine] = []
        self._data_head: tuple[int, str] | None = None
        self._data: list[str] = []

    @property
    def idle(self) -> bool:
        """True between replies (no partial reply buffered)."""
        return not self._lines and self._data_head is None

    def feed(self, line: str) -> Reply | None:
        """Consume one line (without CRLF)."""
        if self._data_head is not None:
            return self._feed_data(line)
        status, sep, text = parse_reply_line(line)
        if self._lines and self._lines[0].status != status:
            raise ControlProtocolError(
                f"status changed from {self._lines[0].status} to {status} inside one reply"
            )
        if sep == "+":
            self._data_head = (status, text)
            self._data = []
            return None
        self._lines.append(ReplyLine(status, sep, text))
        if sep == " ":
            return self._finish(status)
        return None

    def _feed_data(self, line: str) -> Reply | None:
        if len(line) > MAX_LINE_CHARS:
            raise ControlProtocolError(f"data line longer than {MAX_LINE_CHARS} characters")
        if line == ".":
            assert self._data_head is not None
            status, text = self._data_head
            self._lines.append(ReplyLine(status, "+", text, "\n".join(self._data)))
            self._data_head = None
            self._data = []
            return None
        # Dot-unescaping: a data line that starts with "." was sent as "..".
        self._data.append(line[1:] if line.startswith(".") else line)
        return None

    def _finish(self, status: int) -> Reply:
        reply = Reply(status, tuple(self._lines))
        self._lines = []
        return reply


def parse_reply_lines(lines: list[str] | tuple[str, ...]) -> list[Reply]:
    """Parse a complete list of lines into replies (a partial tail is an error)."""
    asm = ReplyAssembler()
    out: list[Reply] = []
    for line in lines:
        reply = asm.feed(line)
        if reply is not None:
            out.append(reply)
    if not asm.idle:
        raise ControlProtocolError("input ends inside a reply")
    return out


def is_event(reply: Reply) -> bool:
    """True if the reply is an asynchronous event (status 650)."""
    return reply.status == _EVENT_STATUS


def event_from_reply(reply: Reply, received_at: float | None = None) -> ControlEvent:
    """Turn a 650 reply into a ControlEvent (type, first-line text, data)."""
    if reply.status != _EVENT_STATUS or not reply.lines:
        raise ControlProtocolError(f"not an event reply: status {reply.status}")
    first = reply.lines[0]
    etype, _, text = first.text.partition(" ")
    if not etype or not re.fullmatch(r"[A-Za-z0-9_]+", etype):
        raise ControlProtocolError(f"event has no valid type: {first.text[:40]!r}")
    data = first.data
    rest = list(reply.lines[1:])
    # Multi-line events end with "650 OK"; keep the lines in between as data.
    if rest and rest[-1].sep == " " and rest[-1].text == "OK":
        rest = rest[:-1]
    if data is None and rest:
        data = "\n".join(ln.data if ln.data is not None else ln.text for ln in rest)
    when = time.time() if received_at is None else received_at
    return ControlEvent(etype, text, data, when, reply.lines)


# ---------------------------------------------------------------------------
# Quoted strings and keyword arguments


_C_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", '"': '"', "'": "'"}


def quote(value: str) -> str:
    """Quote a value as a control-spec QuotedString (escaping \\ and ")."""
    if not isinstance(value, str):
        raise ControlArgumentError(f"value to quote must be str, not {type(value).__name__}")
    if "\r" in value or "\n" in value or "\0" in value:
        raise ControlArgumentError("value contains CR, LF or NUL")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def unquote(text: str, start: int = 0) -> tuple[str, int]:
    """Decode the QuotedString starting at text[start] == '"'.

    Returns (value, index just past the closing quote). Handles the C escapes
    tor emits (\\n \\t \\r \\\\ \\" and 1-3 digit octal).
    """
    if start >= len(text) or text[start] != '"':
        raise ControlProtocolError("quoted string does not start with '\"'")
    out: list[str] = []
    i = start + 1
    n = len(text)
    while i < n:
        ch = text[i]
        if ch == '"':
            return "".join(out), i + 1
        if ch == "\\":
            if i + 1 >= n:
                break
            nxt = text[i + 1]
            if nxt in "01234567":
                j = i + 1
                while j < n and j < i + 4 and text[j] in "01234567":
                    j += 1
                code = int(text[i + 1 : j], 8)
                if code > 0xFF:
                    raise ControlProtocolError("octal escape out of range in quoted string")
                out.append(chr(code))
                i = j
                continue
            out.append(_C_ESCAPES.get(nxt, nxt))
            i += 2
            continue
        out.append(ch)
        i += 1
    raise ControlProtocolError("unterminated quoted string")


def parse_keywords(text: str) -> tuple[list[str], dict[str, str]]:
    """Split ``word word KEY=value KEY="quoted value"`` into (positional, keyed).

    Positional words are those before and between keyword arguments that
    contain no "="; a repeated key keeps its last value.
    """
    positional: list[str] = []
    keyed: dict[str, str] = {}
    i, n = 0, len(text)
    while i < n:
        if text[i] == " ":
            i += 1
            continue
        j = i
        while j < n and text[j] not in " =\"":
            j += 1
        if j < n and text[j] == "=":
            key = text[i:j]
            if not key:
                raise ControlProtocolError(f"empty keyword in {text[:60]!r}")
            if j + 1 < n and text[j + 1] == '"':
                value, i = unquote(text, j + 1)
                if i < n and text[i] != " ":
                    raise ControlProtocolError(f"junk after quoted value of {key}")
            else:
                k = text.find(" ", j + 1)
                k = n if k < 0 else k
                value, i = text[j + 1 : k], k
            keyed[key] = value
        elif j < n and text[j] == '"':
            raise ControlProtocolError(f"unexpected quote in {text[:60]!r}")
        else:
            positional.append(text[i:j])
            i = j
    return positional, keyed


# ---------------------------------------------------------------------------
# Outgoing data blocks


def escape_data(data: str) -> str:
    """Encode a data block for a ``+COMMAND``: CRLF lines, dot-stuffing, final ".".

    Line endings are normalised to CRLF; a trailing newline of ``data`` does
    not produce an extra empty line.
    """
    if "\0" in data:
        raise ControlArgumentError("data block contains NUL")
    body = data.replace("\r\n", "\n").replace("\r", "\n")
    if body.endswith("\n"):
        body = body[:-1]
    lines = body.split("\n") if body else []
    stuffed = ["." + ln if ln.startswith(".") else ln for ln in lines]
    return "".join(ln + "\r\n" for ln in stuffed) + ".\r\n"


_SAFE_TOKEN_RE = re.compile(r"[!-~]+")  # printable ASCII, no space


def check_token(value: str, what: str) -> str:
    """Validate one space-free printable argument (address, server, key) or raise."""
    if not isinstance(value, str) or not _SAFE_TOKEN_RE.fullmatch(value):
        raise ControlArgumentError(f"{what} must be non-empty printable ASCII without spaces")
    return value


# ---------------------------------------------------------------------------
# Reply payload helpers


def parse_key_value_lines(
    reply: Reply, *, allow_bare: bool = False
) -> list[tuple[str, str | None]]:
    """Return (key, value) for each line of a GETINFO/GETCONF/ADD_ONION reply.

    The trailing "OK" line is skipped. ``key=`` lines with a data block take
    the block as value. ``allow_bare`` accepts lines without "=" (GETCONF
    uses them for options at their default) as (key, None).
    """
    pairs: list[tuple[str, str | None]] = []
    for idx, line in enumerate(reply.lines):
        if idx == len(reply.lines) - 1 and line.text == "OK" and line.data is None:
            continue
        key, eq, value = line.text.partition("=")
        if not key:
            raise ControlProtocolError(f"reply line without key: {line.text[:60]!r}")
        if line.data is not None:
            pairs.append((key, line.data))
        elif eq:
            pairs.append((key, value))
        elif allow_bare:
            pairs.append((key, None))
        else:
            raise ControlProtocolError(f"reply line without '=': {line.text[:60]!r}")
    return pairs


def maybe_unquote(value: str) -> str:
    """Unquote a value that is a single QuotedString; return others unchanged."""
    if len(value) >= 2 and value.startswith('"'):
        try:
            text, end = unquote(value)
        except ControlProtocolError:
            return value
        if end == len(value):
            return text
    return value


# ---------------------------------------------------------------------------
# HS_DESC events

_HS_ADDR_RE = re.compile(r"[a-z2-7]{16}|[a-z2-7]{56}")
_WORD_RE = re.compile(r"[A-Z][A-Z0-9_]*")
_LONGNAME_RE = re.compile(r"\$([0-9A-Fa-f]{40})(?:[~=]([A-Za-z0-9]{1,19}))?")
_DESC_ID_RE = re.compile(r"[A-Za-z0-9+/]+={0,2}")
_KEYED_RE = re.compile(r"([A-Z][A-Z0-9_]*)=(.*)", re.S)
_HEX_RE = re.compile(r"[0-9A-Fa-f]+")


def parse_hs_desc_event(event: ControlEvent | str) -> HsDescEvent:
    """Parse an HS_DESC event (a ControlEvent, or its line with/without "650 HS_DESC ").

    Format (control-spec and tor's control_events.c)::

        HS_DESC Action HSAddress AuthType HsDir [DescriptorID]
                [REASON=r] [REPLICA=n] [HSDIR_INDEX=hex]

    HsDir is "UNKNOWN" or a LongName "$<40 hex>[~|=nickname]". Unknown
    KEY=value fields are ignored for forward compatibility.
    """
    if isinstance(event, ControlEvent):
        if event.type != "HS_DESC":
            raise ControlProtocolError(f"not an HS_DESC event: {event.type[:40]!r}")
        text = event.text
    elif isinstance(event, str):
        text = event
        if text.startswith("650 "):
            text = text[4:]
        if text.startswith("HS_DESC "):
            text = text[len("HS_DESC ") :]
    else:
        raise ControlProtocolError(f"HS_DESC event must be str or ControlEvent, not {type(event)}")
    tokens = text.split(" ")
    if len(tokens) < 4:
        raise ControlProtocolError(f"HS_DESC event has fewer than 4 fields: {text[:80]!r}")
    action, address, auth_type, hsdir_raw = tokens[:4]
    if not _WORD_RE.fullmatch(action):
        raise ControlProtocolError(f"HS_DESC action is not a word: {action[:40]!r}")
    if address != "UNKNOWN" and not _HS_ADDR_RE.fullmatch(address):
        raise ControlProtocolError(f"HS_DESC address is not an onion address: {address[:60]!r}")
    if not _WORD_RE.fullmatch(auth_type):
        raise ControlProtocolError(f"HS_DESC auth type is not a word: {auth_type[:40]!r}")
    hsdir: str | None = None
    nickname: str | None = None
    if hsdir_raw != "UNKNOWN":
        m = _LONGNAME_RE.fullmatch(hsdir_raw)
        if not m:
            raise ControlProtocolError(f"HS_DESC HsDir is not a LongName: {hsdir_raw[:60]!r}")
        hsdir, nickname = m.group(1).upper(), m.group(2)
    descriptor_id: str | None = None
    reason: str | None = None
    replica: int | None = None
    hsdir_index: str | None = None
    seen_keyed = False
    for tok in tokens[4:]:
        keyed = _KEYED_RE.fullmatch(tok)
        if keyed and keyed.group(1) in ("REASON", "REPLICA", "HSDIR_INDEX"):
            key, value = keyed.group(1), keyed.group(2)
            seen_keyed = True
            if key == "REASON":
                if not _WORD_RE.fullmatch(value):
                    raise ControlProtocolError(f"HS_DESC REASON is not a word: {value[:40]!r}")
                reason = value
            elif key == "REPLICA":
                if not value.isascii() or not value.isdigit() or len(value) > 9:
                    raise ControlProtocolError(f"HS_DESC REPLICA is not a number: {value[:40]!r}")
                replica = int(value)
            else:
                if not _HEX_RE.fullmatch(value):
                    raise ControlProtocolError(f"HS_DESC HSDIR_INDEX is not hex: {value[:40]!r}")
                hsdir_index = value.upper()
        elif descriptor_id is None and not seen_keyed and _DESC_ID_RE.fullmatch(tok):
            descriptor_id = tok
        elif keyed:
            seen_keyed = True  # an extension field we do not know: ignore it
        else:
            raise ControlProtocolError(f"HS_DESC has an unexpected field: {tok[:60]!r}")
    return HsDescEvent(
        action=action,
        address=address,
        auth_type=auth_type,
        hsdir=hsdir,
        descriptor_id=descriptor_id,
        reason=reason,
        replica=replica,
        hsdir_index=hsdir_index,
        hsdir_nickname=nickname,
    )


def parse_conf_changed(event: ControlEvent) -> list[tuple[str, str | None]]:
    """(option, value) pairs of a CONF_CHANGED event; value None = reset to default.

    tor quotes a value when torrc syntax needs it (``#``, leading quote,
    control characters), so quoted values are decoded.
    """
    if event.type != "CONF_CHANGED":
        raise ControlProtocolError(f"not a CONF_CHANGED event: {event.type[:40]!r}")
    pairs: list[tuple[str, str | None]] = []
    for line in (event.data or "").split("\n") if event.data else []:
        key, eq, value = line.partition("=")
        if not key:
            raise ControlProtocolError(f"CONF_CHANGED line without option: {line[:60]!r}")
        pairs.append((key, maybe_unquote(value) if eq else None))
    return pairs
