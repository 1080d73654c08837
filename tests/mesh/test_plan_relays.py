"""One intro point per relay in the plan, derived from the intro points' own link specifiers."""

from __future__ import annotations

import base64
import hashlib
import itertools
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from onionmesh.descriptor.intro import (
    LS_ED25519_ID,
    LS_LEGACY_ID,
    LinkSpecifier,
    encode_link_specifiers,
    ipv4_link_specifier,
    recertify,
)
from onionmesh.descriptor.signer import FreshSigningKey
from onionmesh.mesh.plan import Contribution, select_intro_points
from onionmesh.mesh.relay import relay_keys, relay_label
from onionmesh.node.publishing import encode_intro_point
from tests.descriptor.conftest import random_intro_point


def _rsa(relay: int) -> bytes:
    return hashlib.sha1(b"rsa%d" % relay).digest()


def _ed(relay: int) -> bytes:
    return hashlib.sha256(b"ed%d" % relay).digest()


def ip_on(relay: int, tag: str, *, rsa: bool = True, ed: bool = True) -> bytes:
    """A stand-in encoded intro point: a real ``introduction-point`` line, then a tag."""
    specs = [ipv4_link_specifier("127.0.0.1", 5000 + relay)]
    if rsa:
        specs.append(LinkSpecifier(LS_LEGACY_ID, _rsa(relay)))
    if ed:
        specs.append(LinkSpecifier(LS_ED25519_ID, _ed(relay)))
    line = base64.b64encode(encode_link_specifiers(specs))
    return b"introduction-point " + line + b"\nonion-key ntor " + tag.encode() + b"\n"


def relay_of_plan(entries) -> list[frozenset]:
    return [relay_keys(ip) for _, ip in entries]


def assert_one_per_relay(entries) -> None:
    seen: set = set()
    for keys in relay_of_plan(entries):
        assert keys is not None and not keys & seen
        seen |= keys


def test_relay_identity_comes_from_a_real_encoded_intro_point():
    point = random_intro_point(3)
    encoded = encode_intro_point(recertify(point, FreshSigningKey(), 2_000_000_000.0))
    rsa = next(s.data for s in point.link_specifiers if s.type == LS_LEGACY_ID)
    ed = next(s.data for s in point.link_specifiers if s.type == LS_ED25519_ID)
    assert relay_keys(encoded) == {(LS_LEGACY_ID, rsa), (LS_ED25519_ID, ed)}
    assert relay_label(encoded) == "$" + rsa.hex()[:12].upper()


def test_bytes_without_link_specifiers_have_no_relay():
    for junk in (b"", b"n1-0", b"introduction-point !!!\n", b"introduction-point AA==\n",
                 b"introduction-point " + base64.b64encode(bytes([1, 0, 6]) + bytes(6)) + b"\n",
                 bytes(range(256))):
        assert relay_keys(junk) is None
    assert relay_label(b"junk") == "?"


def test_two_nodes_on_one_relay_never_share_it_and_both_stay_in():
    a = Contribution("a", {1: [ip_on(1, "a0"), ip_on(2, "a1")]}, {})
    b = Contribution("b", {1: [ip_on(1, "b0"), ip_on(3, "b1")]}, {})
    entries = select_intro_points([a, b], 20)[1]
    assert_one_per_relay(entries)
    assert Counter(n for n, _ in entries) == {"a": 1, "b": 2} or \
        Counter(n for n, _ in entries) == {"a": 2, "b": 1}


def test_a_node_with_alternatives_leaves_the_contested_relay_to_one_without():
    # a's freshest point is on relay 1, the only relay b has: a takes relay 2 instead.
    a = Contribution("a", {1: [ip_on(1, "a0"), ip_on(2, "a1")]}, {ip_on(1, "a0"): 5.0})
    b = Contribution("b", {1: [ip_on(1, "b0")]}, {})
    entries = select_intro_points([a, b], 20)[1]
    assert set(entries) == {("a", ip_on(2, "a1")), ("b", ip_on(1, "b0"))}


def test_one_node_with_two_points_on_one_relay_publishes_one():
    a = Contribution("a", {1: [ip_on(1, "x"), ip_on(1, "y"), ip_on(2, "z")]}, {})
    entries = select_intro_points([a], 20)[1]
    assert len(entries) == 2
    assert_one_per_relay(entries)


def test_a_shared_rsa_id_alone_is_the_same_relay():
    a = Contribution("a", {1: [ip_on(1, "a", ed=False)]}, {})
    b = Contribution("b", {1: [ip_on(1, "b")]}, {})
    assert len(select_intro_points([a, b], 20)[1]) == 1


def test_contests_between_equals_do_not_always_go_to_the_same_node():
    wins = Counter()
    for relay in range(40):
        a = Contribution("a", {1: [ip_on(relay, "a")]}, {})
        b = Contribution("b", {1: [ip_on(relay, "b")]}, {})
        (winner, _), = select_intro_points([a, b], 20)[1]
        wins[winner] += 1
    assert wins["a"] >= 8 and wins["b"] >= 8


def test_an_unchanged_input_gives_the_same_plan():
    contribs = [Contribution(n, {1: [ip_on(r, f"{n}{r}") for r in range(k, k + 4)]}, {})
                for k, n in enumerate("abcde")]
    first = select_intro_points(contribs, 20)
    assert all(select_intro_points(list(reversed(contribs)), 20) == first for _ in range(3))


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.lists(st.integers(0, 12), min_size=0, max_size=6), min_size=1, max_size=8),
    st.integers(1, 20),
)
def test_plan_is_one_per_relay_capped_and_max_min_fair(relays_per_node, cap):
    contribs = [
        Contribution(f"n{k}", {1: [ip_on(r, f"n{k}-{i}") for i, r in enumerate(relays)]}, {})
        for k, relays in enumerate(relays_per_node)
    ]
    entries = select_intro_points(contribs, cap).get(1, ())
    assert len(entries) <= cap
    assert_one_per_relay(entries)
    per_node = Counter(n for n, _ in entries)
    used = {k for keys in relay_of_plan(entries) for k in keys}
    for k, relays in enumerate(relays_per_node):
        node = f"n{k}"
        # Any node still holding a point on an unused relay could have had one more
        # slot: that is only allowed when the cap is full.
        if any(not (relay_keys(ip_on(r, "?")) & used) for r in relays):
            assert len(entries) == cap
            # ... and then it holds at least as many as any other node minus one.
            assert per_node[node] >= max(per_node.values()) - 1


def _perfect_matching_exists(relay_sets: list[set[int]]) -> bool:
    pool = sorted(set().union(*relay_sets))
    return any(all(r in s for r, s in zip(choice, relay_sets, strict=True))
               for choice in itertools.permutations(pool, len(relay_sets)))


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sets(st.integers(0, 5), min_size=1, max_size=3), min_size=2, max_size=5))
def test_every_node_is_served_whenever_relays_can_be_matched(relay_sets):
    contribs = [
        Contribution(f"n{k}", {1: [ip_on(r, f"n{k}-{r}") for r in sorted(relays)]}, {})
        for k, relays in enumerate(relay_sets)
    ]
    entries = select_intro_points(contribs, 20)[1]
    assert_one_per_relay(entries)
    if _perfect_matching_exists([set(s) for s in relay_sets]):
        assert {n for n, _ in entries} == {c.node_id for c in contribs}
