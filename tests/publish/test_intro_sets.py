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


def test_each_period_keeps_its_own_set_and_another_period_gets_none():
    sets = NodeIntroSets(ADDR)
    sets.update(iset(10, 1, 1, 2))
    sets.update(iset(11, 1, 3, 4))
    assert sets.for_period(10).key != sets.for_period(11).key
    assert sets.for_period(12) is None  # never another period's intro points
    sets.prune([11])
    assert sets.periods() == [11]


def test_sets_of_another_node_are_refused():
    other = Ed25519Identity.from_seed(b"\x02" * 32).onion_address.removesuffix(".onion")
    sets = NodeIntroSets(other)
    with pytest.raises(IntroPointsError):
        sets.update(iset(1, 1, 1))


def test_master_period_takes_exact_sets_and_bridges_only_an_unknown_period():
    from onionmesh.publish.period_sets import sets_for_master_period

    sets = {10: ("a",), 11: ("b",)}
    assert sets_for_master_period(10, sets) == (10, ("a",))
    assert sets_for_master_period(11, sets) == (11, ("b",))
    assert sets_for_master_period(12, sets) == (11, ("b",))  # bridge: nobody's 12 known
    assert sets_for_master_period(9, sets) is None  # never a later period's set
    assert sets_for_master_period(13, sets) is None
    assert sets_for_master_period(12, {11: ("b",), 12: ()}) == (11, ("b",))  # empty = unknown


def test_upload_matcher_names_the_blinded_key_of_each_accepted_upload():
    from onionmesh.tor.control_protocol import HsDescEvent
    from onionmesh.tor.upload_events import Uploaded, UploadMatcher

    def ev(action: str, hsdir: str | None, key: str | None = None,
           address: str = ADDR) -> HsDescEvent:
        return HsDescEvent(action, address, "UNKNOWN", hsdir, key, None, None, None)

    m = UploadMatcher(ADDR + ".onion")
    assert m.observe(ev("UPLOAD", "A" * 40, "key1")) is None
    assert m.observe(ev("UPLOAD", "B" * 40, "key2")) is None
    assert m.observe(ev("UPLOADED", "B" * 40)) == Uploaded(ADDR, "B" * 40, "key2")
    assert m.observe(ev("UPLOADED", "B" * 40)) is None  # one UPLOADED per UPLOAD
    assert m.observe(ev("FAILED", "A" * 40)) is None
    assert m.observe(ev("UPLOADED", "A" * 40)) is None  # the failed one is forgotten
    assert m.observe(ev("UPLOAD", "C" * 40, "k", address="b" * 56)) is None  # other service
    assert m.observe(ev("UPLOADED", "C" * 40, address="b" * 56)) is None
