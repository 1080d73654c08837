"""More than 20 intro points: different descriptors per HSDir, fair, valid, every node served."""

from __future__ import annotations

import itertools
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from onionmesh.mesh.relay import relay_keys
from onionmesh.publish.spread import (
    assign_hsdirs,
    client_distribution,
    descriptor_count,
    split_descriptors,
)
from tests.mesh.test_plan_relays import ip_on

FETCH = [f"F{i}" for i in range(6)]  # tor's defaults: 2 replicas x hsdir_spread_fetch 3
STORE = [*FETCH[:3], "S1", *FETCH[3:], "S2"]  # ... x hsdir_spread_store 4


def cluster(nodes: int, per_node: int, relays: int = 1000) -> dict[str, list[bytes]]:
    relay_ids = itertools.count()
    return {f"n{k:02d}": [ip_on(next(relay_ids) % relays, f"n{k}-{i}") for i in range(per_node)]
            for k in range(nodes)}


def check_valid(descriptors) -> None:
    for entries in descriptors:
        assert 1 <= len(entries) <= 20
        relays = [relay_keys(ip) for _, ip in entries]
        assert all(not (a & b) for a, b in itertools.combinations(relays, 2))


def test_twenty_or_fewer_is_one_descriptor_everywhere():
    per_node = cluster(6, 3)
    count = descriptor_count(18, len(FETCH))
    assert count == 1
    [only] = split_descriptors(per_node, count)
    assert len(only) == 18
    assert set(assign_hsdirs(FETCH, STORE, count).values()) == {0}


def test_ten_nodes_with_thirty_intro_points_every_node_in_every_descriptor():
    per_node = cluster(10, 3)
    count = descriptor_count(30, len(FETCH))
    assert count == 2
    descriptors = split_descriptors(per_node, count)
    check_valid(descriptors)
    for entries in descriptors:
        assert Counter(n for n, _ in entries) == dict.fromkeys(per_node, 2)
    used = {ip for entries in descriptors for _, ip in entries}
    assert used == {ip for points in per_node.values() for ip in points}  # all 30 used
    assignment = assign_hsdirs(FETCH, STORE, count)
    assert set(assignment) == set(STORE)
    assert Counter(assignment[h] for h in FETCH) == {0: 3, 1: 3}
    shares = client_distribution(descriptors, assignment, FETCH)
    assert shares == pytest.approx(dict.fromkeys(per_node, 0.1))


def test_more_nodes_than_a_descriptor_holds_every_node_is_somewhere():
    per_node = cluster(25, 3)
    count = descriptor_count(75, len(FETCH))
    assert count == 6  # ceil(75 / 20) = 4, rounded up to a divisor of the 6 fetchable HSDirs
    descriptors = split_descriptors(per_node, count)
    check_valid(descriptors)
    assert {n for entries in descriptors for n, _ in entries} == set(per_node)
    shares = client_distribution(descriptors, assign_hsdirs(FETCH, STORE, count), FETCH)
    assert set(shares) == set(per_node)
    assert sum(shares.values()) == pytest.approx(1.0)
    # 6 descriptors of 20 slots for 25 nodes: 120 / 25 slots each, shares within 1.25x.
    assert max(shares.values()) / min(shares.values()) <= 1.25 + 1e-9


def test_the_count_never_exceeds_the_fetchable_hsdirs_and_divides_them():
    assert descriptor_count(500, 6) == 6
    assert descriptor_count(0, 6) == 1
    assert [descriptor_count(n, 6) for n in (20, 21, 41, 61, 81)] == [1, 2, 3, 6, 6]
    assert descriptor_count(41, 5) == 5

def test_seven_nodes_get_equal_slots_in_both_descriptors():
    per_node = cluster(7, 3)
    descriptors = split_descriptors(per_node, descriptor_count(21, len(FETCH)))
    for entries in descriptors:
        assert Counter(n for n, _ in entries) == dict.fromkeys(per_node, 2)
    shares = client_distribution(descriptors, assign_hsdirs(FETCH, STORE, 2), FETCH)
    assert shares == pytest.approx(dict.fromkeys(per_node, 1 / 7))
    with pytest.raises(ValueError):
        split_descriptors({}, 0)


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 40), st.integers(1, 5), st.integers(3, 200))
def test_every_descriptor_valid_fair_and_every_node_served(nodes, per_node, relays):
    points = cluster(nodes, per_node, relays)
    total = nodes * per_node
    count = descriptor_count(total, len(FETCH))
    descriptors = split_descriptors(points, count)
    check_valid(descriptors)
    served = {n for entries in descriptors for n, _ in entries}
    if relays >= nodes:  # each node has a relay nobody else needs in some descriptor
        assert served == set(points)
    if relays >= total:  # no shared relays: every node gets the same share, +-1
        for entries in descriptors:
            per = Counter(n for n, _ in entries)
            if len(per) == nodes:
                assert max(per.values()) - min(per.values()) <= 1
