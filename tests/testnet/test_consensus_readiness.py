"""Phase-1 readiness parsing (pure): consensus router entries, md/all splitting, digests."""

from __future__ import annotations

import base64
import hashlib

import pytest

from onionmesh.testnet.consensus import (
    ConsensusParseError,
    check_completeness,
    microdescriptor_digest,
    parse_router_entries,
    split_microdescriptors,
)

ALL_FLAGS = "Authority Fast Guard HSDir Running Stable V2Dir Valid"


def md(i: int) -> str:
    key = base64.b64encode(bytes([i]) * 32).decode().rstrip("=")
    return f"onion-key\nntor-onion-key {key}\nid ed25519 {key}\n"


def digest(text: str) -> str:
    return base64.b64encode(hashlib.sha256(text.encode()).digest()).decode().rstrip("=")


def fpr(i: int) -> bytes:
    return bytes([i + 1]) * 20


def consensus(relays: list[tuple[int, str, str | None]]) -> str:
    lines = ["network-status-version 3 microdesc", "vote-status consensus"]
    for i, flags, m in relays:
        ident = base64.b64encode(fpr(i)).decode().rstrip("=")
        lines += [f"r auth{i} {ident} 2026-11-24 00:00:00 127.0.0.1 5000 0", f"s {flags}"]
        if m is not None:
            lines.append(f"m {m}")
    lines += ["directory-footer", "r bogus entry after footer"]
    return "\n".join(lines) + "\n"


def expected(n: int) -> dict[str, str]:
    return {fpr(i).hex().upper(): f"auth{i}" for i in range(n)}


def test_router_entries_read_r_s_m_lines():
    entries = parse_router_entries(consensus([(0, ALL_FLAGS, "abc"), (1, "Running", None)]))
    assert [e.nickname for e in entries] == ["auth0", "auth1"]
    assert entries[0].fingerprint == fpr(0).hex().upper()
    assert "HSDir" in entries[0].flags and entries[0].md_digest == "abc"
    assert entries[1].flags == frozenset({"Running"}) and entries[1].md_digest is None


def test_split_restores_the_stripped_final_newline_and_skips_annotations():
    texts = [md(1), md(2), md(3)]
    md_all = "@last-listed 2026-11-24\n" + "".join(texts)
    parts = split_microdescriptors(md_all.rstrip("\n"))  # control port strips the last newline
    assert parts == texts
    assert [microdescriptor_digest(p) for p in parts] == [digest(t) for t in texts]
    assert split_microdescriptors("") == []
    with pytest.raises(ConsensusParseError):
        split_microdescriptors("ntor-onion-key x\n")


def test_complete_view_is_ready():
    mds = [md(i) for i in range(3)]
    text = consensus([(i, ALL_FLAGS, digest(mds[i])) for i in range(3)])
    result = check_completeness(text, "".join(mds).rstrip("\n"), expected(3))
    assert result.ready
    assert result.relays_flagged == 3


def test_missing_relay_flag_and_microdescriptor_are_reported():
    mds = [md(i) for i in range(3)]
    text = consensus(
        [
            (0, ALL_FLAGS, digest(mds[0])),
            (1, "Running Valid V2Dir", digest(mds[1])),  # lacks HSDir and Guard
        ]
    )
    result = check_completeness(text, mds[0], expected(3))
    assert not result.ready
    assert result.missing_flags == {"auth1": frozenset({"HSDir", "Guard"})}
    assert result.missing_microdescs == ("auth1",)
    assert result.unknown_relays == ("auth2",)
    described = result.describe()
    assert "auth2" in described and "lacks Guard HSDir" in described


def test_wrong_microdescriptor_digest_is_not_ready():
    mds = [md(0)]
    text = consensus([(0, ALL_FLAGS, digest(md(9)))])
    assert check_completeness(text, mds[0], expected(1)).missing_microdescs == ("auth0",)


@pytest.mark.parametrize(
    "bad", ["r onlynick\n", "r auth0 !!!notbase64 x\n", "r auth0 AAAA 2026\n", "r a b\nm\n"]
)
def test_malformed_consensus_is_a_typed_error(bad):
    with pytest.raises(ConsensusParseError):
        parse_router_entries(bad)
