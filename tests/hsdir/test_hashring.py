"""The HSDir hash ring: tor's index vectors, Onionbalance's published ring vectors, small rings."""

from __future__ import annotations

import base64
import hashlib
import random
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from onionmesh.hsdir.consensus import (
    Consensus,
    Relay,
    attach_ed25519_ids,
    parse_consensus,
    parse_microdescriptors,
)
from onionmesh.hsdir.errors import HsdirError
from onionmesh.hsdir.hashring import (
    HashRing,
    RingParams,
    eligible_hsdirs,
    hs_index,
    hsdir_index,
    responsible_hsdirs,
    ring_params,
)
from onionmesh.hsdir.timeperiod import descriptor_periods
from tests.hsdir.netdocs import (
    ConsensusSpec,
    RelaySpec,
    make_consensus,
    make_md_all,
    make_microdescriptor,
)

HSDIR_PR = {"HSDir": frozenset({2})}


def relay(i: int, *, ed: bytes | None = None, flags=("HSDir", "Running", "Valid"), pr=HSDIR_PR):
    return Relay(
        nickname=f"r{i}",
        identity=hashlib.sha1(b"id%d" % i).digest() if i > 255 else bytes([i]) * 20,
        md_digest=hashlib.sha256(b"md%d" % i).digest(),
        address="10.0.0.1",
        or_port=9001,
        flags=frozenset(flags),
        ed25519_id=ed if ed is not None else hashlib.sha256(b"ed%d" % i).digest(),
        protocols=pr,
    )


def consensus_of(relays, *, valid_after=1_800_000_000, params=None, srv=(b"P" * 32, b"C" * 32)):
    return Consensus(
        valid_after=valid_after,
        fresh_until=valid_after + 3600,
        valid_until=valid_after + 3 * 3600,
        voting_interval=3600,
        params=params or {},
        srv_previous=srv[0],
        srv_current=srv[1],
        relays=tuple(relays),
    )


# tor test_hs_common.c test_hs_indexes
def test_tor_index_vectors():
    assert (
        hs_index(1, b"\x42" * 32, 42, 1440).hex()
        == "37e5cbbd56a22823714f18f1623ece5983a0d64c78495a8cfab854245e5f9a8a"
    )
    assert (
        hsdir_index(b"\x42" * 32, b"\x43" * 32, 42, 1440).hex()
        == "db475361014a09965e7e5e4d4a25b8f8d4b8f16cb1d8a7e95eed50249cc1a2d5"
    )


# Onionbalance test/v3/test_v3_hashring.py: 255 relays (identity bytes([i])*20,
# ed25519 id bytes([i])*32), consensus valid-after 10101010101, current SRV
# 41*32, previous SRV 42*32, and two blinded keys.
OB_FIRST = [
    "D1D1D1D1D1D1D1D1D1D1D1D1D1D1D1D1D1D1D1D1",
    "2F2F2F2F2F2F2F2F2F2F2F2F2F2F2F2F2F2F2F2F",
    "B0B0B0B0B0B0B0B0B0B0B0B0B0B0B0B0B0B0B0B0",
    "3A3A3A3A3A3A3A3A3A3A3A3A3A3A3A3A3A3A3A3A",
    "5A5A5A5A5A5A5A5A5A5A5A5A5A5A5A5A5A5A5A5A",
    "DFDFDFDFDFDFDFDFDFDFDFDFDFDFDFDFDFDFDFDF",
    "F7F7F7F7F7F7F7F7F7F7F7F7F7F7F7F7F7F7F7F7",
    "3434343434343434343434343434343434343434",
]
OB_SECOND = [
    "5D5D5D5D5D5D5D5D5D5D5D5D5D5D5D5D5D5D5D5D",
    "9A9A9A9A9A9A9A9A9A9A9A9A9A9A9A9A9A9A9A9A",
    "D1D1D1D1D1D1D1D1D1D1D1D1D1D1D1D1D1D1D1D1",
    "7A7A7A7A7A7A7A7A7A7A7A7A7A7A7A7A7A7A7A7A",
    "C3C3C3C3C3C3C3C3C3C3C3C3C3C3C3C3C3C3C3C3",
    "C6C6C6C6C6C6C6C6C6C6C6C6C6C6C6C6C6C6C6C6",
    "E9E9E9E9E9E9E9E9E9E9E9E9E9E9E9E9E9E9E9E9",
    "8686868686868686868686868686868686868686",
]
OB_FIRST_KEY = bytes.fromhex("063AEC5E1FD3025098F2DF71EF570B28D94B463FFCCB5EC6A9C061E38F551C6A")
OB_SECOND_KEY = bytes.fromhex("5DB624F2D74F103E6E8C6FBCCD074586EF5A5572F90673C00B77DEF94EC11499")
OB_VALID_AFTER = 10101010101


def _ob_relays():
    return [relay(i, ed=bytes([i]) * 32, flags=("HSDir",)) for i in range(1, 256)]


def _check_ob_vectors(consensus: Consensus) -> None:
    first, second = descriptor_periods(consensus, OB_VALID_AFTER)
    got_first = responsible_hsdirs(
        OB_FIRST_KEY, first.period_number, first.period_length, first.srv, consensus
    )
    got_second = responsible_hsdirs(
        OB_SECOND_KEY, second.period_number, second.period_length, second.srv, consensus
    )
    assert [r.fingerprint for r in got_first] == OB_FIRST
    assert [r.fingerprint for r in got_second] == OB_SECOND


def test_onionbalance_ring_vectors():
    c = consensus_of(
        _ob_relays(), valid_after=OB_VALID_AFTER, srv=(bytes([42]) * 32, bytes([41]) * 32)
    )
    _check_ob_vectors(c)


@pytest.mark.parametrize("final_newline", [True, False])
def test_onionbalance_ring_vectors_from_consensus_text(final_newline):
    # End to end: consensus text + md/all -> ring, with and without md/all's final newline.
    specs = []
    for i in range(1, 256):
        ed = bytes([i]) * 32
        specs.append(
            RelaySpec(
                nickname=f"hsdir{i}",
                identity=bytes([i]) * 20,
                md_body=make_microdescriptor(i, ed, onion_key=False),
                address=f"10.1.0.{i}",
                ed25519_id=ed,
            )
        )
    text = make_consensus(
        ConsensusSpec(
            valid_after=OB_VALID_AFTER // 3600 * 3600,
            srv_previous=bytes([42]) * 32,
            srv_current=bytes([41]) * 32,
            relays=specs,
        )
    )
    md_all = make_md_all(specs)
    if not final_newline:
        md_all = md_all[:-1]
    c = attach_ed25519_ids(parse_consensus(text), parse_microdescriptors(md_all))
    assert len(eligible_hsdirs(c.relays)) == 255  # nobody dropped
    # Same hour as the vector's valid-after: same periods, same SRVs.
    _check_ob_vectors(c)


def _onionbalance_responsible(relays, blinded_key, is_first, srvs, valid_after):
    """Onionbalance 0.2.4's own ring, driven through its module globals."""
    from onionbalance.hs_v3 import consensus as ob_consensus
    from onionbalance.hs_v3 import hashring as ob_hashring
    from onionbalance.hs_v3 import tor_node
    from onionbalance.hs_v3.onionbalance import my_onionbalance

    nodes = []
    for r in relays:
        md = mock.Mock()
        rs = mock.Mock()
        rs.fingerprint = r.identity.hex()
        rs.protocols = {"HSDir": [2]}
        rs.flags = ["HSDir"]
        md.identifiers = {"ed25519": base64.b64encode(r.ed25519_id).decode()}
        nodes.append(tor_node.Node(md, rs))
    cons = ob_consensus.Consensus(do_refresh_consensus=False)
    cons.consensus = mock.Mock()
    import datetime

    cons.consensus.valid_after = datetime.datetime.fromtimestamp(valid_after, datetime.UTC).replace(
        tzinfo=None
    )
    cons.get_current_srv = mock.Mock(return_value=srvs[1])
    cons.get_previous_srv = mock.Mock(return_value=srvs[0])
    cons.is_live = mock.Mock(return_value=True)
    cons.nodes = nodes
    saved = my_onionbalance.consensus if hasattr(my_onionbalance, "consensus") else None
    my_onionbalance.consensus = cons
    try:
        return [fp.upper() for fp in ob_hashring.get_responsible_hsdirs(blinded_key, is_first)]
    finally:
        my_onionbalance.consensus = saved


def _wraps_past_the_end(relays, key, period, srv) -> bool:
    top = max(hsdir_index(r.ed25519_id, srv, period, 1440) for r in relays)
    return any(hs_index(rep, key, period, 1440) > top for rep in (1, 2))


@pytest.mark.parametrize("seed", range(4))
def test_agrees_with_onionbalance_on_large_random_rings(seed):
    rng = random.Random(seed)
    relays = [relay(1000 + seed * 1000 + i) for i in range(rng.randint(12, 80))]
    srvs = (rng.randbytes(32), rng.randbytes(32))
    valid_after = rng.randint(1_600_000_000, 1_900_000_000) // 3600 * 3600
    c = consensus_of(relays, valid_after=valid_after, srv=srvs)
    for period in descriptor_periods(c, valid_after):
        # Onionbalance 0.2.4 does not advance past index 0 when an hs_index
        # falls after the last ring entry (it then stops that replica early);
        # compare only keys that avoid that bug.
        key = rng.randbytes(32)
        while _wraps_past_the_end(relays, key, period.period_number, period.srv):
            key = rng.randbytes(32)
        ours = responsible_hsdirs(key, period.period_number, 1440, period.srv, c)
        theirs = _onionbalance_responsible(relays, key, period.is_first, srvs, valid_after)
        assert [r.fingerprint for r in ours] == theirs


def test_wrap_past_the_end_still_gives_a_full_set():
    # The case Onionbalance gets wrong: tor wraps to the ring start and keeps going.
    relays = [relay(2000 + i) for i in range(20)]
    c = consensus_of(relays)
    srv = b"S" * 32
    key = next(
        k
        for k in (hashlib.sha256(b"k%d" % i).digest() for i in range(10000))
        if hs_index(2, k, 5, 1440) > max(hsdir_index(r.ed25519_id, srv, 5, 1440) for r in relays)
    )
    result = responsible_hsdirs(key, 5, 1440, srv, c)
    assert len(result) == 8
    ring = sorted(relays, key=lambda r: hsdir_index(r.ed25519_id, srv, 5, 1440))
    replica2 = [r for r in ring if r not in result[:4]][:4]
    assert result[4:] == replica2


def test_eligibility_rules():
    dup_ed = hashlib.sha256(b"shared").digest()
    relays = [
        relay(1),
        relay(2, flags=("Running", "Valid")),  # no HSDir flag
        relay(3, pr={"HSDir": frozenset({1})}),  # no v3 directory support
        relay(4, pr=None),  # no pr line: assumed modern
        relay(5, ed=dup_ed),
        relay(6, ed=dup_ed),  # second claimant of an ed25519 id: tor drops it
        Relay("r7", bytes([7]) * 20, bytes(32), "10.0.0.1", 1, frozenset({"HSDir"})),  # no ed id
    ]
    assert [r.nickname for r in eligible_hsdirs(relays)] == ["r1", "r4", "r5"]


@pytest.mark.parametrize("size", range(1, 9))
def test_small_rings_terminate_without_duplicates(size):
    relays = [relay(300 + i) for i in range(size)]
    c = consensus_of(relays)
    key = hashlib.sha256(b"service").digest()
    store = responsible_hsdirs(key, 20000, 1440, b"S" * 32, c)
    fetch = responsible_hsdirs(key, 20000, 1440, b"S" * 32, c, for_fetch=True)
    assert len(store) == min(8, size)
    assert len(fetch) == min(6, size)
    assert len({r.identity for r in store}) == len(store)
    assert {r.identity for r in store} <= {r.identity for r in relays}
    # tor clients fetch from a prefix of each replica's store set, so with a
    # ring at least as large as both replicas the fetch set is inside the store set
    if size >= 8:
        assert {r.identity for r in fetch} <= {r.identity for r in store}


def test_empty_ring():
    c = consensus_of([relay(1, flags=("Running",))])
    assert responsible_hsdirs(b"k" * 32, 1, 1440, b"S" * 32, c) == []


def test_consensus_params_drive_the_walk():
    relays = [relay(400 + i) for i in range(40)]
    c = consensus_of(relays, params={"hsdir_n_replicas": 3, "hsdir_spread_store": 2})
    assert ring_params(c) == RingParams(n_replicas=3, spread_store=2, spread_fetch=3)
    assert len(responsible_hsdirs(b"k" * 32, 1, 1440, b"S" * 32, c)) == 6
    assert len(responsible_hsdirs(b"k" * 32, 1, 1440, b"S" * 32, c, for_fetch=True)) == 9
    clamped = consensus_of(relays, params={"hsdir_n_replicas": 0, "hsdir_spread_store": 999})
    assert ring_params(clamped) == RingParams(n_replicas=1, spread_store=128, spread_fetch=3)


def test_bad_arguments_raise_typed_errors():
    with pytest.raises(HsdirError, match="blinded key"):
        hs_index(1, b"short", 1, 1440)
    with pytest.raises(HsdirError, match="ed25519"):
        hsdir_index(b"x", b"S" * 32, 1, 1440)
    with pytest.raises(HsdirError, match="shared random"):
        hsdir_index(b"x" * 32, b"S", 1, 1440)
    with pytest.raises(HsdirError, match="period number"):
        hs_index(1, b"k" * 32, -1, 1440)
    ring = HashRing([relay(1)], b"S" * 32, 1, 1440)
    with pytest.raises(HsdirError):
        ring.responsible(b"k" * 32, n_replicas=0)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.binary(min_size=32, max_size=32), max_size=40, unique=True),
    st.binary(min_size=32, max_size=32),
    st.binary(min_size=32, max_size=32),
    st.integers(min_value=1, max_value=5),
    st.integers(min_value=1, max_value=6),
    st.randoms(use_true_random=False),
)
def test_random_ring_properties(ed_ids, srv, key, n_replicas, spread, shuffler):
    relays = [relay(500 + i, ed=ed) for i, ed in enumerate(ed_ids)]
    ring = HashRing(relays, srv, 777, 1440)
    result = ring.responsible(key, n_replicas=n_replicas, spread=spread)
    assert len(result) == min(n_replicas * spread, len(relays))
    assert len({r.identity for r in result}) == len(result)
    # deterministic, and independent of the order relays appear in the consensus
    shuffled = relays[:]
    shuffler.shuffle(shuffled)
    again = HashRing(shuffled, srv, 777, 1440).responsible(
        key, n_replicas=n_replicas, spread=spread
    )
    assert again == result
    if relays:
        # replica 1 starts at the first relay clockwise from hs_index(1)
        target = hs_index(1, key, 777, 1440)
        indexed = sorted((hsdir_index(r.ed25519_id, srv, 777, 1440), r.nickname) for r in relays)
        after = [nick for idx, nick in indexed if idx >= target]
        assert result[0].nickname == (after[0] if after else indexed[0][1])
