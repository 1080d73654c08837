"""Hypothesis fuzzing of the control-protocol parsers: arbitrary text -> typed error only."""

from __future__ import annotations

import asyncio
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from onionmesh.errors import OnionmeshError
from onionmesh.tor.control_auth import parse_authchallenge, parse_protocolinfo
from onionmesh.tor.control_connection import ControlConnection
from onionmesh.tor.control_protocol import (
    ControlEvent,
    Reply,
    escape_data,
    event_from_reply,
    parse_hs_desc_event,
    parse_key_value_lines,
    parse_keywords,
    parse_reply_line,
    parse_reply_lines,
    unquote,
)

# Text biased towards the protocol's own alphabet so the fuzzer reaches deep paths.
_ALPHABET = st.sampled_from(list(' -+.=$~"\\0123456789ABCDEFHSUNOK_abcdefxyz27\t')) | (
    st.characters()
)
protocol_text = st.text(_ALPHABET, max_size=120)
reply_like_line = st.one_of(
    protocol_text,
    st.builds(
        lambda code, sep, text: f"{code}{sep}{text}",
        st.sampled_from(["250", "650", "552", "515", "999", "25x"]),
        st.sampled_from([" ", "-", "+", "*"]),
        protocol_text,
    ),
    st.just("."),
)
hs_desc_like = st.lists(
    st.one_of(
        protocol_text,
        st.sampled_from(
            [
                "HS_DESC",
                "REQUESTED",
                "UPLOADED",
                "FAILED",
                "UNKNOWN",
                "NO_AUTH",
                "$" + "A" * 40 + "~nick",
                "$" + "A" * 40 + "=nick",
                "a" * 56,
                "REASON=NOT_FOUND",
                "REPLICA=",
                "REPLICA=1",
                "HSDIR_INDEX=ABCD",
                "QkJCQkJC",
            ]
        ),
    ),
    max_size=9,
).map(" ".join)


def _typed_or_ok(fn, *args) -> object:
    try:
        return fn(*args)
    except OnionmeshError:
        return None


@settings(max_examples=400, deadline=None)
@given(protocol_text)
def test_parse_reply_line_fuzz(text: str) -> None:
    result = _typed_or_ok(parse_reply_line, text)
    if result is not None:
        status, sep, rest = result
        assert f"{status:03d}{sep}{rest}" == text


@settings(max_examples=300, deadline=None)
@given(st.lists(reply_like_line, max_size=12))
def test_assembler_and_payload_parsers_fuzz(lines: list[str]) -> None:
    replies = _typed_or_ok(parse_reply_lines, lines)
    for reply in replies or []:
        assert isinstance(reply, Reply) and reply.lines
        _typed_or_ok(event_from_reply, reply)
        _typed_or_ok(parse_key_value_lines, reply)
        _typed_or_ok(parse_protocolinfo, reply)
        _typed_or_ok(parse_authchallenge, reply)


@settings(max_examples=400, deadline=None)
@given(hs_desc_like)
def test_parse_hs_desc_event_fuzz(text: str) -> None:
    for candidate in (text, "HS_DESC " + text, "650 HS_DESC " + text):
        parsed = _typed_or_ok(parse_hs_desc_event, candidate)
        if parsed is not None:
            assert parsed.hsdir is None or len(parsed.hsdir) == 40
            assert parsed.replica is None or parsed.replica >= 0
    _typed_or_ok(parse_hs_desc_event, ControlEvent("HS_DESC", text, None, 0.0))


@settings(max_examples=300, deadline=None)
@given(protocol_text)
def test_keywords_and_unquote_fuzz(text: str) -> None:
    _typed_or_ok(parse_keywords, text)
    _typed_or_ok(unquote, text)
    _typed_or_ok(unquote, '"' + text)


@settings(max_examples=300, deadline=None)
@given(st.text(st.characters(blacklist_characters="\r\0"), max_size=200))
def test_escape_data_roundtrip(text: str) -> None:
    """A data block sent with escape_data parses back to the same text."""
    wire = escape_data(text)
    lines = ["250+x=", *wire.split("\r\n")[:-1], "250 OK"]
    (reply,) = parse_reply_lines(lines)
    expected = text[:-1] if text.endswith("\n") else text
    assert reply.lines[0].data == expected


wire_line = reply_like_line.map(lambda t: (t + "\r\n").encode("utf-8", "surrogatepass"))


class _NullWriter:
    """Stands in for a StreamWriter: the fuzzed reader never needs to send."""

    def write(self, data: bytes) -> None:
        pass

    async def drain(self) -> None:
        pass

    def close(self) -> None:
        pass

    async def wait_closed(self) -> None:
        pass


async def _run_reader(chunks: list[bytes]) -> tuple[list[object], list[BaseException]]:
    reader = asyncio.StreamReader(limit=1 << 12)
    events: list[object] = []
    lost: list[BaseException] = []
    writer: Any = _NullWriter()
    conn = ControlConnection(reader, writer, events.append, lambda c, e: lost.append(e), "fuzz")
    waiters = [asyncio.create_task(conn.send(b"X\r\n", "X", 30)) for _ in range(3)]
    for chunk in chunks:
        reader.feed_data(chunk)
    reader.feed_eof()
    outcomes: list[BaseException] = []
    for waiter in waiters:
        try:
            await waiter
        except BaseException as exc:  # collected and checked by the caller
            outcomes.append(exc)
    await conn.aclose()
    assert len(lost) == 1
    return events, outcomes


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(st.binary(max_size=64), wire_line), max_size=10))
def test_connection_reader_fuzz(chunks: list[bytes]) -> None:
    """Arbitrary bytes from the peer: every waiter ends with a typed error or a reply."""
    events, outcomes = asyncio.run(_run_reader(chunks))
    assert all(isinstance(e, ControlEvent) for e in events)
    assert all(isinstance(exc, OnionmeshError) for exc in outcomes)
