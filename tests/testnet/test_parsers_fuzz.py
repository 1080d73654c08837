"""Arbitrary input to the harness's parsers gives a typed error, never a crash."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from onionmesh.errors import OnionmeshError
from onionmesh.testnet.consensus import check_completeness, split_microdescriptors
from onionmesh.testnet.socks import parse_http_response
from onionmesh.testnet.state import load_state
from onionmesh.tor.torrc import normalize_onion_address

LINE = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["r ", "s ", "m ", "onion-key", "@x", "directory-footer"]).flatmap(
        lambda head: st.text(max_size=30).map(lambda tail: head + tail)
    ),
)
DOC = st.lists(LINE, max_size=12).map("\n".join)


@settings(max_examples=300, deadline=None)
@given(DOC, DOC)
def test_consensus_and_md_parsing_only_raise_typed_errors(consensus, md_all):
    try:
        split_microdescriptors(md_all)
        result = check_completeness(consensus, md_all, {"A" * 40: "auth0"})
    except OnionmeshError:
        return
    assert isinstance(result.describe(), str)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_http_parsing_only_raises_typed_errors(raw):
    try:
        response = parse_http_response(raw)
    except OnionmeshError:
        return
    assert isinstance(response.status, int) and raw.startswith(b"HTTP/")


JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=200, deadline=None)
@given(st.one_of(JSONISH, st.fixed_dictionaries({"nodes": st.lists(JSONISH, max_size=3)})))
def test_state_file_loading_only_raises_typed_errors(data):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "testnet.json"
        path.write_text(json.dumps(data))
        try:
            state = load_state(path)
        except OnionmeshError:
            return
    assert isinstance(state["nodes"], list)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=70))
def test_onion_address_validation_only_raises_typed_errors(text):
    try:
        address = normalize_onion_address(text)
    except OnionmeshError:
        return
    assert len(address) == 56
