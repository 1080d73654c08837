"""Hypothesis fuzzing of the control-protocol parsers: arbitrary text -> typed error only."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from onionmesh.errors import OnionmeshError
from onionmesh.tor.control_auth import parse_authchallenge, parse_protocolinfo
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
