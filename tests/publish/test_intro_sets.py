"""Pure bookkeeping of a node's intro-point sets (one per time period) and the merge."""

from __future__ import annotations

import pytest

from onionmesh.crypto.keys import Ed25519Identity
from onionmesh.descriptor.intro import IntroPoint, LinkSpecifier
from onionmesh.tor.intro_points import IntroPointsError, IntroSet, NodeIntroSets

ADDR = Ed25519Identity.from_seed(b"\x01" * 32).onion_address.removesuffix(".onion")


def ip(n: int) -> IntroPoint:
    return IntroPoint((LinkSpecifier(2, bytes([n]) * 20),), bytes([n]) * 32,
                      n.to_bytes(2, "big") * 16, bytes([n]) * 32)


def iset(period: int, revision: int, *ns: int, at: float = 0.0) -> IntroSet:
    return IntroSet(ADDR, period, b"b" * 32, revision, tuple(ip(n) for n in ns), "own", at)


def test_new_set_and_rotation_are_changes_but_a_reupload_is_not():
    sets = NodeIntroSets(ADDR + ".onion")
    assert sets.update(iset(10, 1, 1, 2, 3)) is True
    assert sets.update(iset(10, 2, 1, 2, 3)) is False  # newer revision, same intro points
    assert sets.for_period(10).revision == 2
    assert sets.update(iset(10, 3, 4, 5, 6)) is True  # tor rotated them
    assert sets.update(iset(10, 1, 7)) is False  # an older revision is ignored
    assert sets.for_period(10).key == iset(0, 0, 4, 5, 6).key


def test_each_period_keeps_its_own_set_and_falls_back_to_the_newest():
    sets = NodeIntroSets(ADDR)
    sets.update(iset(10, 1, 1, 2))
    sets.update(iset(11, 1, 3, 4))
    assert sets.for_period(10).key != sets.for_period(11).key
    assert sets.best_for(10).period_number == 10
    assert sets.best_for(12).period_number == 11  # unknown period: newest set
    sets.update(iset(9, 1))  # an empty set is never offered
    assert sets.best_for(9).period_number == 11
    sets.prune([11])
    assert sets.periods() == [11]


def test_sets_of_another_node_are_refused():
    other = Ed25519Identity.from_seed(b"\x02" * 32).onion_address.removesuffix(".onion")
    sets = NodeIntroSets(other)
    with pytest.raises(IntroPointsError):
        sets.update(iset(1, 1, 1))
