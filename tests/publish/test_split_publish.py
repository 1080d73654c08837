"""PublishCore with more intro points than one descriptor carries: k descriptors, one per HSDir.

Pure (no tor): the core is fed 30 intro points of 10 nodes and targets with tor's fetch
set (6 of the 8 storing HSDirs); the signer's text names the intro points it was given,
so which HSDir got which descriptor can be read from the posts.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from onionmesh.crypto.keys import Ed25519Identity
from onionmesh.descriptor.intro import LS_ED25519_ID, LS_LEGACY_ID, LinkSpecifier
from onionmesh.publish.core import (
    ObservedDescriptor,
    PeriodTarget,
    PublishCore,
    PublishEventKind,
    Verdict,
)
from onionmesh.publish.spread import assign_hsdirs
from onionmesh.publish.uploads import Post, RetryPolicy
from tests.publish.corekit import T0, targets

MASTER = Ed25519Identity.generate()


def split_targets() -> dict[int, PeriodTarget]:
    """tor's defaults: 2 replicas x (store 4, fetch 3): HSDirs 0-2 and 4-6 are fetchable."""
    out = {}
    for number, target in targets(MASTER).items():
        fetch = (*target.hsdirs[:3], *target.hsdirs[4:7])
        out[number] = replace(target, fetch_hsdirs=fetch)
    return out


TARGETS = split_targets()
FIRST, SECOND = sorted(TARGETS)


@dataclass(frozen=True)
class RelayPoint:
    """An intro point as the core sees it, on a relay (link specifiers, like tor's)."""

    auth_key: bytes
    link_specifiers: tuple[LinkSpecifier, ...]


def on_relay(relay: int, name: str) -> RelayPoint:
    return RelayPoint(name.encode().ljust(32, b"."), (
        LinkSpecifier(LS_LEGACY_ID, hashlib.sha1(b"relay%d" % relay).digest()),
        LinkSpecifier(LS_ED25519_ID, hashlib.sha256(b"relay%d" % relay).digest()),
    ))


def cluster(nodes: int, per_node: int, relays: int = 1000):
    pts, owners = [], []
    for k in range(nodes):
        for i in range(per_node):
            pts.append(on_relay((k * per_node + i) % relays, f"n{k:02d}-{i}"))
            owners.append(f"n{k:02d}")
    return pts, owners


class KeysSigner:
    """The text lists the intro points it carries: "desc <period> <revision> <keys>"."""

    def __init__(self) -> None:
        self.built: list[tuple[int, int, int]] = []

    def build(self, target: PeriodTarget, revision: int, pts: Sequence[RelayPoint],
              now: float) -> str:
        self.built.append((target.number, revision, len(pts)))
        keys = ",".join(p.auth_key.rstrip(b".").decode() for p in pts)
        return f"desc {target.number} {revision} {keys}"

    def forget_periods(self, keep: Iterable[int]) -> None:
        pass


def carried(text: str) -> set[str]:
    return set(text.split()[3].split(","))


def owners_in(text: str) -> set[str]:
    return {key.split("-")[0] for key in carried(text)}


def make(nodes: int = 10, per_node: int = 3, relays: int = 1000):
    signer = KeysSigner()
    core = PublishCore(signer, rng=random.Random(1),
                       retry=RetryPolicy(max_retries=2, base_delay=1.0, max_delay=2.0,
                                         jitter=0.0))
    pts, owners = cluster(nodes, per_node, relays)
    core.set_targets(TARGETS, T0, fetchable=FIRST)
    core.set_intro_points({p: pts for p in TARGETS}, T0, {p: owners for p in TARGETS})
    return core, signer, pts, owners


def drain_posts(core: PublishCore) -> list[Post]:
    posts = []
    while (action := core.next_action()) is not None:
        if isinstance(action, Post):
            posts.append(action)
    return posts


def test_thirty_intro_points_two_descriptors_each_hsdir_gets_one():
    core, signer, pts, owners = make()
    posts = drain_posts(core)
    # Both periods built once each, as two descriptors of one revision.
    assert [(p, n) for p, _, n in signer.built] == [(FIRST, 20), (FIRST, 20),
                                                     (SECOND, 20), (SECOND, 20)]
    assert core.descriptor_counts == {FIRST: 2, SECOND: 2}
    for period, target in TARGETS.items():
        mine = [p for p in posts if p.period == period]
        assert sorted(p.hsdir for p in mine) == sorted(target.hsdirs)  # one post per HSDir
        assert len({p.revision for p in mine}) == 1
        texts = {p.hsdir: p.descriptor for p in mine}
        assert len(set(texts.values())) == 2
        # The fetch set alternates between the two descriptors (3 HSDirs each), the
        # store-only HSDirs too: a client finds either with the same chance.
        expected = assign_hsdirs(target.fetch_hsdirs, target.hsdirs, 2)
        by_text = {text: i for i, text in enumerate(dict.fromkeys(
            texts[h] for h in sorted(expected, key=lambda h: expected[h])))}
        assert {h: by_text[t] for h, t in texts.items()} == expected
        for text in set(texts.values()):
            assert len(carried(text)) == 20
            assert owners_in(text) == set(owners)  # 10 nodes: each in both, 2 slots
        assert set().union(*map(carried, texts.values())) == {
            p.auth_key.rstrip(b".").decode() for p in pts}  # all 30 used
    built = [e for e in iter(core.next_event, None) if e.kind is PublishEventKind.BUILT]
    assert [e.descriptors for e in built] == [2, 2]
    assert "in 2 descriptors of 20/20 for different HSDirs" in built[0].message


def test_twenty_or_fewer_is_one_descriptor_for_every_hsdir():
    core, signer, _, _ = make(nodes=6, per_node=3)
    posts = drain_posts(core)
    assert [(p, n) for p, _, n in signer.built] == [(FIRST, 18), (SECOND, 18)]
    assert core.descriptor_counts == {FIRST: 1, SECOND: 1}
    assert len({p.descriptor for p in posts if p.period == FIRST}) == 1


def test_more_nodes_than_slots_every_node_is_in_some_descriptor():
    core, _, _, owners = make(nodes=25, per_node=3)
    posts = [p for p in drain_posts(core) if p.period == FIRST]
    texts = {p.descriptor for p in posts}
    assert core.descriptor_counts[FIRST] == 6  # ceil(75 / 20) = 4 -> a divisor of 6
    assert len(texts) == 6
    assert all(len(carried(t)) <= 20 for t in texts)
    assert set().union(*map(owners_in, texts)) == set(owners)
    fetched = {p.descriptor for p in posts if p.hsdir in TARGETS[FIRST].fetch_hsdirs}
    assert fetched == texts  # every descriptor is on a fetchable HSDir


def test_shared_relays_one_intro_point_per_relay_in_every_descriptor():
    # 10 nodes x 3 intro points on only 10 relays (the private test network): each
    # descriptor holds at most one intro point per relay, every node is in one.
    core, _, pts, owners = make(nodes=10, per_node=3, relays=10)
    relay_of = {p.auth_key.rstrip(b".").decode(): p.link_specifiers[0].data for p in pts}
    texts = {p.descriptor for p in drain_posts(core) if p.period == FIRST}
    assert len(texts) == 2
    for text in texts:
        relays = [relay_of[k] for k in carried(text)]
        assert len(relays) == len(set(relays)) <= 10
    assert set().union(*map(owners_in, texts)) == set(owners)


def test_retries_send_each_hsdir_its_own_descriptor():
    core, _, _, _ = make()
    posts = [p for p in drain_posts(core) if p.period == FIRST]
    first = {p.hsdir: p.descriptor for p in posts}
    victim = posts[0].hsdir
    core.on_upload_failed(victim, TARGETS[FIRST].blinded_id, "TIMEOUT", T0 + 1)
    for post in posts[1:]:
        core.on_uploaded(post.hsdir, T0 + 1)
    retried = []
    for t in (T0 + 3, T0 + 6):
        core.handle_timer(t)
        retried += [p for p in drain_posts(core) if p.period == FIRST]
    retry = [p for p in retried if p.hsdir == victim]
    assert retry and all(p.descriptor == first[victim] for p in retry)
    assert retry[0].attempt == 2
    # The other descriptor never went to the victim.
    assert {p.descriptor for p in retried} == {first[victim]}


def test_every_descriptor_of_the_revision_is_own_not_foreign():
    core, _, _, _ = make()
    posts = [p for p in drain_posts(core) if p.period == FIRST]
    revision = posts[0].revision
    sets = core.descriptors_of(FIRST, revision)
    assert len(sets) == 2
    for keys in sets:
        assert core.classify(ObservedDescriptor(FIRST, revision, keys)) is Verdict.OWN_CURRENT
    # A mix of both is no descriptor we built.
    mixed = frozenset(sorted(sets[0])[:10]) | frozenset(sorted(sets[1])[:10])
    assert core.classify(ObservedDescriptor(FIRST, revision, mixed)) is Verdict.FOREIGN
    assert core.intro_keys_of(FIRST, revision) == sets[0] | sets[1]
    for post in posts:
        keys = core.intro_keys_at(FIRST, revision, post.hsdir)
        assert keys in sets and carried(post.descriptor) == {
            k.rstrip(b".").decode() for k in keys}
    # After a rebuild, either old descriptor is an older one of ours.
    pts, owners = cluster(10, 3)
    pts = [*pts[:-1], on_relay(999, "n09-9")]
    core.set_intro_points({p: pts for p in TARGETS}, T0 + 5, {p: owners for p in TARGETS})
    drain_posts(core)
    assert core.tracker.revision(FIRST) > revision
    for keys in sets:
        assert core.classify(ObservedDescriptor(FIRST, revision, keys)) is Verdict.OWN_OLDER


def test_a_point_beyond_the_twentieth_changing_rebuilds():
    core, signer, pts, owners = make()
    for post in drain_posts(core):
        core.on_uploaded(post.hsdir, T0 + 1)
    before = len(signer.built)
    pts = [*pts[:-1], on_relay(777, "n09-7")]
    core.set_intro_points({p: pts for p in TARGETS}, T0 + 5, {p: owners for p in TARGETS})
    posts = drain_posts(core)
    assert len(signer.built) == before + 4 and posts
    assert any("n09-7" in carried(p.descriptor) for p in posts)


def test_new_hsdirs_of_a_split_period_rebuild_with_a_new_assignment():
    core, signer, _, _ = make()
    posts = drain_posts(core)
    for post in posts:
        core.on_uploaded(post.hsdir, T0 + 1)
    drain_posts(core)
    target = TARGETS[FIRST]
    moved = (*target.hsdirs[1:], "F" * 40)
    retargeted = {**TARGETS, FIRST: replace(target, hsdirs=moved,
                                            fetch_hsdirs=(*moved[:3], *moved[4:7]))}
    built = len(signer.built)
    core.set_targets(retargeted, T0 + 30, fetchable=FIRST)
    posts = [p for p in drain_posts(core) if p.period == FIRST]
    assert len(signer.built) == built + 2  # the split period, as two descriptors again
    expected = assign_hsdirs(retargeted[FIRST].fetch_hsdirs, moved, 2)
    assert {p.hsdir for p in posts} == set(moved)
    index = {}
    for post in posts:
        index.setdefault(post.descriptor, expected[post.hsdir])
        assert index[post.descriptor] == expected[post.hsdir]
