"""Consensus and md/all parsing (dir-spec 3.3, 3.4.1), including stem's lost final newline."""

from __future__ import annotations

import base64
import calendar
import contextlib
import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from stem.descriptor.microdescriptor import Microdescriptor
from stem.descriptor.networkstatus import NetworkStatusDocumentV3

from onionmesh.errors import OnionmeshError
from onionmesh.hsdir.consensus import (
    Consensus,
    ConsensusError,
    Relay,
    attach_ed25519_ids,
    parse_consensus,
    parse_microdescriptors,
)
from onionmesh.hsdir.hashring import eligible_hsdirs
from tests.hsdir.netdocs import (
    ConsensusSpec,
    b64,
    make_consensus,
    make_md_all,
    make_microdescriptor,
    make_relays,
    md_digest,
)

VALID_AFTER = calendar.timegm((2026, 11, 24, 5, 0, 0))
SRV_PREV = bytes(range(32))
SRV_CUR = bytes(range(32, 64))


@pytest.fixture(scope="module")
def relays():
    specs = make_relays(12)
    # Vary the entries the way a real consensus does.
    specs[1].flags = ("Fast", "Running", "Stable", "V2Dir", "Valid")  # no HSDir flag
    specs[2].pr = specs[2].pr.replace("HSDir=2", "HSDir=1")  # v2-only directory
    specs[3].md_body = make_microdescriptor(3, None)  # md without an ed25519 id
    specs[3].ed25519_id = None
    return specs


@pytest.fixture(scope="module")
def consensus_text(relays):
    spec = ConsensusSpec(
        valid_after=VALID_AFTER,
        params={"hsdir_n_replicas": 2, "hsdir_spread_store": 5, "CircuitPriorityHalflifeMsec": -1},
        srv_previous=SRV_PREV,
        srv_current=SRV_CUR,
        relays=relays,
    )
    return make_consensus(spec)


def test_fixture_is_a_valid_consensus_for_stem(consensus_text, relays):
    # Independent check that the hand-written fixture is realistic.
    doc = NetworkStatusDocumentV3(consensus_text.encode(), validate=True)
    assert doc.is_microdescriptor
    assert len(doc.routers) == len(relays)
    for spec in relays:
        md = Microdescriptor(spec.md_body.encode(), validate=True)
        assert md.digest() == b64(md_digest(spec.md_body))


def test_parse_consensus_header(consensus_text):
    c = parse_consensus(consensus_text)
    assert c.valid_after == VALID_AFTER
    assert c.fresh_until == VALID_AFTER + 3600
    assert c.valid_until == VALID_AFTER + 3 * 3600
    assert c.voting_interval == 3600
    assert c.params == {
        "hsdir_n_replicas": 2,
        "hsdir_spread_store": 5,
        "CircuitPriorityHalflifeMsec": -1,
    }
    assert c.srv_previous == SRV_PREV
    assert c.srv_current == SRV_CUR


def test_parse_consensus_agrees_with_stem(consensus_text):
    c = parse_consensus(consensus_text)
    doc = NetworkStatusDocumentV3(consensus_text.encode(), validate=True)
    ours = {r.fingerprint: r for r in c.relays}
    assert set(ours) == set(doc.routers)
    for fpr, entry in doc.routers.items():
        relay = ours[fpr]
        assert relay.nickname == entry.nickname
        assert relay.address == entry.address
        assert relay.or_port == entry.or_port
        assert relay.flags == frozenset(entry.flags)
        assert b64(relay.md_digest) == entry.microdescriptor_digest
        assert relay.protocols is not None
        assert {k: sorted(v) for k, v in relay.protocols.items()} == {
            k: sorted(v) for k, v in entry.protocols.items()
        }
        assert relay.ed25519_id is None  # not attached yet


def test_relay_fingerprint_is_uppercase_hex():
    relay = Relay("n", bytes(range(20)), bytes(32), "10.0.0.1", 1, frozenset())
    assert relay.fingerprint == bytes(range(20)).hex().upper()
    assert len(relay.fingerprint) == 40


def test_attach_ed25519_ids(consensus_text, relays):
    c = attach_ed25519_ids(
        parse_consensus(consensus_text), parse_microdescriptors(make_md_all(relays))
    )
    by_nick = {r.nickname: r for r in c.relays}
    for spec in relays:
        assert by_nick[spec.nickname].ed25519_id == spec.ed25519_id
    ring = {r.nickname for r in eligible_hsdirs(c.relays)}
    # no HSDir flag, HSDir=1 only, and no ed25519 id: all three stay off the ring
    assert ring == {s.nickname for s in relays} - {s.nickname for s in relays[1:4]}


@pytest.mark.parametrize("variant", ["as-tor", "no-final-newline", "crlf", "crlf-no-final"])
def test_md_all_with_and_without_final_newline(relays, variant):
    text = make_md_all(relays)
    if variant == "no-final-newline":
        text = text[:-1]  # what stem's get_info("md/all") hands over
    elif variant == "crlf":
        text = text.replace("\n", "\r\n")
    elif variant == "crlf-no-final":
        text = text.replace("\n", "\r\n")[:-2]
    mds = parse_microdescriptors(text)
    expected = {md_digest(s.md_body): s.ed25519_id for s in relays if s.ed25519_id is not None}
    assert mds == expected
    # The last relay in md/all is the one stem's stripping used to drop.
    assert md_digest(relays[-1].md_body) in mds


def test_lost_final_newline_changes_the_naive_digest(relays):
    # Documents the trap: hashing the last md without its newline gives a digest
    # that is not in the consensus.
    last = relays[-1].md_body
    assert hashlib.sha256(last[:-1].encode()).digest() != md_digest(last)


def test_microdescriptors_without_onion_key_object_and_with_annotations():
    # tor 0.4.9 may omit the TAP key object; annotations are not part of the body.
    a = make_microdescriptor(1, b"\x01" * 32, onion_key=False)
    b = make_microdescriptor(2, b"\x02" * 32)
    text = "@last-listed 2026-11-24 05:00:00\n" + a + "@last-listed 2026-11-24 05:00:00\n" + b
    assert parse_microdescriptors(text) == {md_digest(a): b"\x01" * 32, md_digest(b): b"\x02" * 32}


def test_ed25519_none_means_no_identity():
    body = make_microdescriptor(5, None) + "id ed25519 none\n"
    assert parse_microdescriptors(body) == {}


def test_empty_md_all_is_empty():
    assert parse_microdescriptors("") == {}
    assert parse_microdescriptors("\n") == {}


def test_consensus_without_srv_and_params(relays):
    text = make_consensus(ConsensusSpec(valid_after=VALID_AFTER, params={}, relays=relays[:2]))
    c = parse_consensus(text)
    assert c.srv_current is None and c.srv_previous is None
    assert c.params == {}
    assert len(c.relays) == 2


def test_non_ascii_in_ignored_lines_is_fine(consensus_text):
    text = consensus_text.replace(
        "contact Ops Team <auth0@example.org>", "contact \u00c9quipe <auth0@example.org>"
    )
    assert "\u00c9" in text
    assert len(parse_consensus(text).relays) == len(parse_consensus(consensus_text).relays)


def test_param_clamping(relays):
    text = make_consensus(
        ConsensusSpec(
            valid_after=VALID_AFTER, params={"hsdir_spread_store": 500}, relays=relays[:1]
        )
    )
    c = parse_consensus(text)
    assert c.param("hsdir_spread_store", 4, 1, 128) == 128
    assert c.param("hsdir_spread_fetch", 3, 1, 128) == 3


# --------------------------------------------------------------------------- bad input


def _replace_line(text: str, prefix: str, new: str) -> str:
    lines = text.split("\n")
    for i, line in enumerate(lines):
        if line.startswith(prefix):
            lines[i] = new
            return "\n".join(lines)
    raise AssertionError(f"no line starts with {prefix!r}")


@pytest.mark.parametrize(
    ("prefix", "new", "needle"),
    [
        ("network-status-version", "network-status-version 2", "version 3"),
        ("network-status-version", "network-status-version 3 ns", "flavour"),
        ("valid-after", "valid-after 2026-13-24 05:00:00", "valid-after"),
        ("valid-after", "valid-after 2026-11-24", "valid-after"),
        ("fresh-until", "fresh-until 2026-11-24 04:00:00", "inconsistent"),
        ("params", "params hsdir_spread_store=four", "hsdir_spread_store=four"),
        ("params", "params x=99999999999", "params"),
        ("shared-rand-current-value", "shared-rand-current-value 9 AAAA", "44 base64"),
        ("shared-rand-current-value", "shared-rand-current-value x " + "A" * 43 + "=", "reveals"),
        ("r relay", "r relay AAAA 2026-11-24 05:00:00 10.0.0.1 9001 0", "identity"),
        ("r relay", "r bad!nick " + "A" * 27 + " 2026-11-24 05:00:00 10.0.0.1 9001 0", "nickname"),
        ("r relay", "r relay " + "A" * 27 + " 2026-11-24 05:00:00 10.0.0.300 9001 0", "address"),
        ("r relay", "r relay " + "A" * 27 + " 2026-11-24 05:00:00 10.0.0.1 70000 0", "ORPort"),
        ("r relay", "r relay " + "A" * 27 + " 2026-11-24 05:00:00 10.0.0.1", "7 arguments"),
        ("m ", "m !!!", "microdescriptor digest"),
        ("m ", "m " + "A" * 20, "microdescriptor digest"),
        ("pr ", "pr HSDir=2-1", "HSDir"),
        ("pr ", "pr HSDir=99", "HSDir"),
        ("pr ", "pr HSDir", "protocol entry"),
        ("s ", "s Fast Bad\u00e9Flag", "flag"),
    ],
)
def test_bad_consensus_lines_name_the_line(consensus_text, prefix, new, needle):
    bad = _replace_line(consensus_text, prefix, new)
    with pytest.raises(ConsensusError) as info:
        parse_consensus(bad)
    message = str(info.value)
    assert needle in message
    if not needle.startswith("inconsistent"):
        assert "line " in message


def test_missing_required_lines(consensus_text):
    for keyword in ("valid-after", "fresh-until", "valid-until"):
        lines = [x for x in consensus_text.split("\n") if not x.startswith(keyword)]
        with pytest.raises(ConsensusError, match=keyword):
            parse_consensus("\n".join(lines))


def test_entry_without_m_line_and_duplicates(consensus_text):
    no_m = "\n".join(x for x in consensus_text.split("\n") if not x.startswith("m "))
    with pytest.raises(ConsensusError, match="no 'm' line"):
        parse_consensus(no_m)
    lines = consensus_text.split("\n")
    first_r = next(i for i, x in enumerate(lines) if x.startswith("r "))
    dup = lines[: first_r + 7] + lines[first_r : first_r + 7] + lines[first_r + 7 :]
    with pytest.raises(ConsensusError, match="listed twice"):
        parse_consensus("\n".join(dup))
    twice = consensus_text.replace("valid-until", "valid-until 2030-01-01 00:00:00\nvalid-until", 1)
    with pytest.raises(ConsensusError, match="appears twice"):
        parse_consensus(twice)


def test_unclosed_object_and_empty(consensus_text):
    cut = consensus_text[: consensus_text.rindex("-----END SIGNATURE-----")]
    with pytest.raises(ConsensusError, match="never closed"):
        parse_consensus(cut)
    with pytest.raises(ConsensusError, match="empty"):
        parse_consensus("  \n\n")


def test_bad_microdescriptors():
    good = make_microdescriptor(1, b"\x07" * 32)
    with pytest.raises(ConsensusError, match="before the first 'onion-key'"):
        parse_microdescriptors("garbage\n" + good)
    with pytest.raises(ConsensusError, match="ed25519 identity"):
        parse_microdescriptors(good.replace(b64(b"\x07" * 32), "AAAA"))
    with pytest.raises(ConsensusError, match="second 'id ed25519'"):
        parse_microdescriptors(good + f"id ed25519 {b64(b'x' * 32)}\n")
    with pytest.raises(ConsensusError, match="non-ASCII"):
        parse_microdescriptors(good.replace("p accept", "p acc\u00e9pt"))
    with pytest.raises(ConsensusError, match="never closed"):
        parse_microdescriptors(good.split("-----END")[0])


def test_consensus_error_is_an_onionmesh_error():
    assert issubclass(ConsensusError, OnionmeshError)
    with pytest.raises(ConsensusError):
        parse_consensus(b"network-status-version 3")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- fuzzing


_LINEISH = st.lists(
    st.one_of(
        st.sampled_from(
            [
                "network-status-version 3 microdesc",
                "valid-after 2026-11-24 05:00:00",
                "fresh-until 2026-11-24 06:00:00",
                "valid-until 2026-11-24 08:00:00",
                "params a=1 b=-2",
                "shared-rand-current-value 1 " + base64.b64encode(bytes(32)).decode(),
                "r n " + "A" * 27 + " 2026-11-24 05:00:00 10.0.0.1 9001 0",
                "m " + "A" * 43,
                "s HSDir Running",
                "pr HSDir=2",
                "-----BEGIN X-----",
                "-----END X-----",
                "directory-footer",
                "onion-key",
                "id ed25519 " + "B" * 43,
                "@annotation",
                "",
            ]
        ),
        st.text(max_size=60),
    ),
    max_size=30,
).map("\n".join)


@settings(max_examples=400, deadline=None)
@given(_LINEISH)
def test_fuzz_consensus_parser_raises_only_consensus_error(text):
    try:
        result = parse_consensus(text)
    except ConsensusError:
        return
    assert isinstance(result, Consensus)
    assert result.valid_after < result.fresh_until <= result.valid_until


@settings(max_examples=400, deadline=None)
@given(_LINEISH)
def test_fuzz_md_parser_raises_only_consensus_error(text):
    try:
        result = parse_microdescriptors(text)
    except ConsensusError:
        return
    assert all(len(k) == 32 and len(v) == 32 for k, v in result.items())


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=400))
def test_fuzz_arbitrary_text(text):
    for parser in (parse_consensus, parse_microdescriptors):
        with contextlib.suppress(ConsensusError):
            parser(text)


_MUTATION_BASE = make_consensus(
    ConsensusSpec(
        valid_after=VALID_AFTER,
        srv_previous=SRV_PREV,
        srv_current=SRV_CUR,
        relays=make_relays(2, onion_key=False),
    )
)
_MD_BASE = make_md_all(make_relays(2, seed=7, onion_key=False))


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from([_MUTATION_BASE, _MD_BASE]),
    st.lists(
        st.tuples(st.integers(0, 10**6), st.integers(0, 40), st.text(max_size=8)),
        min_size=1,
        max_size=4,
    ),
)
def test_fuzz_mutated_documents(base, edits):
    # Splice random text into a valid document: only ConsensusError may escape.
    text = base
    for position, cut, insert in edits:
        at = position % (len(text) + 1)
        text = text[:at] + insert + text[at + cut :]
    for parser in (parse_consensus, parse_microdescriptors):
        with contextlib.suppress(ConsensusError):
            parser(text)
