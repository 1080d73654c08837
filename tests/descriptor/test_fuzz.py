"""Arbitrary input into the parsers gives a typed DescriptorError, never a crash."""

from __future__ import annotations

import contextlib
import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from onionmesh.crypto.keys import Ed25519Identity
from onionmesh.descriptor import DescriptorError, build_descriptor, parse_descriptor
from onionmesh.descriptor.intro import decode_link_specifiers, parse_intro_point
from onionmesh.descriptor.parse import _parse_inner, _parse_middle
from tests.descriptor.conftest import NOW, PERIOD, PERIOD_LENGTH, random_intro_point

MASTER = Ed25519Identity.from_seed(bytes(range(32)))
ADDRESS = MASTER.onion_address
VALID = build_descriptor(MASTER, PERIOD, PERIOD_LENGTH, 1, [random_intro_point()], now=NOW)
_DESC = parse_descriptor(VALID, ADDRESS, period_number=PERIOD, now=NOW)
INTRO_TEXT = _DESC.intro_points[0].encode()

KEYWORDS = ["hs-descriptor", "descriptor-lifetime", "descriptor-signing-key-cert",
            "revision-counter", "superencrypted", "signature", "desc-auth-type",
            "desc-auth-ephemeral-key", "auth-client", "encrypted", "create2-formats",
            "introduction-point", "onion-key", "auth-key", "enc-key", "enc-key-cert",
            "legacy-key", "legacy-key-cert", "flow-control", "pow-params", "3", "ntor", "x25519"]
OBJECTS = ["-----BEGIN MESSAGE-----", "-----END MESSAGE-----", "-----BEGIN ED25519 CERT-----",
           "-----END ED25519 CERT-----", "AQgABqKwAQVql1QZ", "===", ""]
line = st.lists(st.sampled_from(KEYWORDS + OBJECTS) | st.text(max_size=12), min_size=0,
                max_size=4).map(" ".join)
documents = st.lists(line, max_size=25).map("\n".join)
FUZZ = settings(max_examples=300, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])


def _refused_or_parsed(call) -> None:
    """Parsing may succeed or raise DescriptorError; anything else fails the test."""
    with contextlib.suppress(DescriptorError):
        call()


@FUZZ
@given(st.text())
def test_arbitrary_text_descriptor(text: str) -> None:
    _refused_or_parsed(lambda: parse_descriptor(text, ADDRESS, period_number=PERIOD, now=NOW))


@FUZZ
@given(documents)
def test_keyword_soup_descriptor(text: str) -> None:
    _refused_or_parsed(lambda: parse_descriptor(text, ADDRESS, period_number=PERIOD, now=NOW))


@FUZZ
@given(st.binary())
def test_arbitrary_bytes_descriptor(data: bytes) -> None:
    _refused_or_parsed(lambda: parse_descriptor(data, ADDRESS, now=NOW))  # type: ignore[arg-type]
    _refused_or_parsed(lambda: parse_descriptor(data.decode("latin-1"), ADDRESS, now=NOW))


@FUZZ
@given(st.integers(0, len(VALID) - 1), st.text(min_size=0, max_size=3))
def test_mutated_valid_descriptor(position: int, insert: str) -> None:
    text = VALID[:position] + insert + VALID[position + 1:]
    _refused_or_parsed(lambda: parse_descriptor(text, ADDRESS, period_number=PERIOD, now=NOW))


@FUZZ
@given(st.text() | documents)
def test_arbitrary_intro_point(text: str) -> None:
    _refused_or_parsed(lambda: parse_intro_point(text))


@FUZZ
@given(st.integers(0, len(INTRO_TEXT) - 1), st.text(max_size=3))
def test_mutated_intro_point(position: int, insert: str) -> None:
    _refused_or_parsed(lambda: parse_intro_point(INTRO_TEXT[:position] + insert +
                                                 INTRO_TEXT[position + 1:]))


@FUZZ
@given(st.binary(max_size=80))
def test_arbitrary_link_specifiers(data: bytes) -> None:
    _refused_or_parsed(lambda: decode_link_specifiers(data))


@FUZZ
@given(documents)
def test_decrypted_layers_grammar(text: str) -> None:
    """The middle and inner parsers only ever see MAC-checked text, but must still be safe."""
    _refused_or_parsed(lambda: _parse_middle(text))
    _refused_or_parsed(lambda: _parse_inner("create2-formats 2\n" + text, os.urandom(32), NOW))
    _refused_or_parsed(lambda: _parse_inner(text, os.urandom(32), NOW))
