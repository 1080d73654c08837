"""PublishCore, the sans-IO publish decisions: builds, retries, refresh, conflict checks."""

from __future__ import annotations

import random

import pytest

from onionmesh.crypto.keys import Ed25519Identity
from onionmesh.publish.core import (
    Fetch,
    ObservedDescriptor,
    PublishCore,
    PublishEventKind,
    PublishTiming,
    Role,
    Verdict,
)
from onionmesh.publish.errors import UploadPlanError
from onionmesh.publish.uploads import Post, RetryPolicy, UploadStatus
from tests.publish.corekit import T0, TextSigner, points, targets

MASTER = Ed25519Identity.generate()
TARGETS = targets(MASTER)
FIRST, SECOND = sorted(TARGETS)


def make(timing: PublishTiming | None = None, **kw) -> tuple[PublishCore, TextSigner]:
    signer = TextSigner()
    core = PublishCore(signer, timing=timing or PublishTiming(), rng=random.Random(1),
                       retry=kw.pop("retry", RetryPolicy(max_retries=1, base_delay=1.0,
                                                         max_delay=2.0, jitter=0.0)), **kw)
    return core, signer


def drain(core: PublishCore) -> tuple[list[Post], list[Fetch]]:
    posts, fetches = [], []
    while (action := core.next_action()) is not None:
        (posts if isinstance(action, Post) else fetches).append(action)
    return posts, fetches


def events(core: PublishCore) -> list:
    out = []
    while (ev := core.next_event()) is not None:
        out.append(ev)
    return out


def start(core: PublishCore, pts=None, now: float = T0) -> tuple[list[Post], list[Fetch]]:
    core.set_targets(TARGETS, now, fetchable=FIRST)
    core.set_intro_points({p: pts or points("a", "b", "c") for p in TARGETS}, now)
    return drain(core)


def accept_all(core: PublishCore, posts: list[Post], now: float) -> None:
    for post in posts:
        core.on_uploaded(post.hsdir, now)


def test_builds_both_periods_and_posts_one_per_hsdir_at_a_time():
    core, signer = make()
    posts, fetches = start(core)
    assert [b[0] for b in signer.built] == [FIRST, SECOND]
    # Shared HSDirs would get one post at a time; these sets are disjoint: 16 posts.
    assert len(posts) == 16 and len({(p.period, p.hsdir) for p in posts}) == 16
    assert fetches == [Fetch(FIRST, TARGETS[FIRST].hsdirs[0], "check")]
    accept_all(core, posts, T0 + 1)
    assert core.published()
    kinds = [e.kind for e in events(core)]
    assert kinds.count(PublishEventKind.BUILT) == 2
    assert kinds.count(PublishEventKind.UPLOADED) == 16


def test_refresh_interval_controls_the_rebuild():
    core, signer = make(PublishTiming(refresh_interval=600.0))
    posts, _ = start(core)
    accept_all(core, posts, T0 + 1)
    assert core.get_timer() is not None and core.get_timer() <= T0 + 600
    core.handle_timer(T0 + 599)
    assert len(signer.built) == 2
    core.handle_timer(T0 + 600)
    assert len(signer.built) == 4  # both periods rebuilt, not after the default hour
    posts, _ = drain(core)
    assert len(posts) == 16  # content unchanged but the lifetime restarts everywhere


def test_refresh_interval_must_be_below_the_lifetime():
    with pytest.raises(UploadPlanError):
        make(PublishTiming(refresh_interval=4 * 3600.0))


def test_failed_hsdir_is_retried_then_gives_up_then_is_revived():
    core, _ = make(PublishTiming(revive_interval=100.0))
    posts, _ = start(core)
    victim = next(p for p in posts if p.period == FIRST)
    accept_all(core, [p for p in posts if p is not victim], T0)
    core.on_hs_desc_failed(victim.hsdir, victim.blinded_id, "UPLOAD_FAILED", T0 + 0.5)
    core.handle_timer(T0 + 2)  # backoff 1 s, no jitter
    retry, _ = drain(core)
    assert [(p.hsdir, p.attempt) for p in retry if p.period == FIRST] == [(victim.hsdir, 2)]
    core.on_hs_desc_failed(victim.hsdir, victim.blinded_id, "UPLOAD_FAILED", T0 + 3)
    assert victim.hsdir in core.tracker.with_status(FIRST, UploadStatus.FAILED)
    core.handle_timer(T0 + 99)
    assert not [p for p in drain(core)[0] if p.hsdir == victim.hsdir]
    core.handle_timer(T0 + 100)
    revived = [p for p in drain(core)[0] if p.hsdir == victim.hsdir]
    assert len(revived) == 1
    kinds = [e.kind for e in events(core)]
    assert PublishEventKind.HSDIRS_REVIVED in kinds


def test_timeouts_count_toward_the_failure_streak():
    core, _ = make(PublishTiming(failure_streak=2),
                   retry=RetryPolicy(max_retries=3, base_delay=1.0, max_delay=1.0, jitter=0.0,
                                     upload_timeout=10.0))
    posts, _ = start(core)
    victim = posts[0]
    accept_all(core, posts[1:], T0)
    core.handle_timer(T0 + 10)  # timeout 1
    drain(core)
    core.handle_timer(T0 + 11)
    drain(core)
    core.handle_timer(T0 + 21)  # timeout 2
    streaks = [e for e in events(core) if e.kind is PublishEventKind.FAILURE_STREAK]
    assert [(e.hsdir, e.streak) for e in streaks] == [(victim.hsdir, 2)]
    assert "failed 2 uploads in a row (last: TIMEOUT)" in streaks[0].message


def test_own_current_older_and_foreign_are_told_apart():
    core, _signer = make()
    posts, _ = start(core)
    accept_all(core, posts, T0)
    revision = core.tracker.revision(FIRST)
    keys = frozenset(p.auth_key for p in points("a", "b", "c"))
    assert core.classify(ObservedDescriptor(FIRST, revision, keys)) is Verdict.OWN_CURRENT
    assert core.classify(ObservedDescriptor(FIRST, revision - 5, keys)) is Verdict.OWN_OLDER
    assert core.classify(ObservedDescriptor(FIRST, revision + 1, keys)) is Verdict.FOREIGN
    other = frozenset(p.auth_key for p in points("x"))
    assert core.classify(ObservedDescriptor(FIRST, revision, other)) is Verdict.FOREIGN


def test_foreign_descriptor_raises_conflict_and_supersedes_it_everywhere():
    core, _signer = make()
    posts, fetches = start(core)
    accept_all(core, posts, T0)
    events(core)
    ours = core.tracker.revision(FIRST)
    foreign = ObservedDescriptor(FIRST, ours + 1000, frozenset(p.auth_key for p in points("x")))
    core.on_fetched(fetches[0].hsdir, foreign, T0 + 5)
    (conflict,) = [e for e in events(core) if e.kind is PublishEventKind.CONFLICT]
    assert conflict.foreign is not None
    assert (conflict.foreign.revision, conflict.foreign.intro_count) == (ours + 1000, 1)
    assert conflict.foreign.hsdirs == (fetches[0].hsdir,)
    assert "foreign master descriptor" in conflict.message
    posts, _ = drain(core)
    # Both periods rebuilt above the foreign revision, posted to every HSDir again.
    assert core.tracker.revision(FIRST) > ours + 1000
    assert {p.period for p in posts} == {FIRST, SECOND} and len(posts) == 16


def test_a_core_told_to_step_down_sends_none_of_its_queued_posts():
    """The mesh decides after the CONFLICT event: when the other publisher sees more intro
    points this node steps down, and the rebuild the core queued at once must not go out
    (it would overwrite the winner's descriptor on every HSDir)."""
    core, _signer = make()
    posts, fetches = start(core)
    accept_all(core, posts, T0)
    events(core)
    ours = core.tracker.revision(FIRST)
    more = frozenset(p.auth_key for p in points("v", "w", "x", "y", "z"))
    core.on_fetched(fetches[0].hsdir, ObservedDescriptor(FIRST, ours + 1000, more), T0 + 5)
    kinds = [e.kind for e in events(core)]
    assert PublishEventKind.CONFLICT in kinds and PublishEventKind.BUILT in kinds
    rebuilt = {p: core.tracker.revision(p) for p in (FIRST, SECOND)}
    assert rebuilt[FIRST] > ours + 1000
    core.set_role(Role.STANDBY, T0 + 5)  # what the shell does when the mesh steps down
    posts, _ = drain(core)
    assert posts == []
    (dropped,) = [e for e in events(core) if e.kind is PublishEventKind.POSTS_DROPPED]
    assert dropped.message == (
        f"no longer publishing: 16 upload(s) not sent (period {FIRST} revision "
        f"{rebuilt[FIRST]}, period {SECOND} revision {rebuilt[SECOND]})")
    assert core.get_timer() is not None and not drain(core)[0]  # it only checks from now on


def test_rejection_fetches_and_classifies_instead_of_a_blind_new_revision():
    core, signer = make()
    posts, fetches = start(core)
    first = [p for p in posts if p.period == FIRST]
    accept_all(core, [p for p in posts if p not in first[:1]], T0)
    core.on_fetched(fetches[0].hsdir, None, T0, problem="unrelated")  # free the fetch slot
    builds = len(signer.built)
    core.on_hs_desc_failed(first[0].hsdir, first[0].blinded_id, "UPLOAD_REJECTED", T0 + 1)
    _, fetched = drain(core)
    assert fetched == [Fetch(FIRST, first[0].hsdir, "rejected")]
    assert len(signer.built) == builds  # no blind rebuild
    # It holds our own current revision (an earlier timed-out post landed): settled.
    keys = frozenset(p.auth_key for p in points("a", "b", "c"))
    core.on_fetched(first[0].hsdir, ObservedDescriptor(FIRST, first[0].revision, keys), T0 + 2)
    assert core.published() and len(signer.built) == builds


def test_rejection_in_the_unfetchable_period_builds_a_newer_revision():
    core, _signer = make()
    posts, _ = start(core)
    second = [p for p in posts if p.period == SECOND]
    accept_all(core, [p for p in posts if p is not second[0]], T0)
    core.on_hs_desc_failed(second[0].hsdir, second[0].blinded_id, "UPLOAD_REJECTED", T0 + 2)
    posts, _ = drain(core)
    assert core.tracker.revision(SECOND) > second[0].revision
    assert [p.hsdir for p in posts] == [second[0].hsdir]  # only where it is missing


def test_stale_copy_is_reposted():
    core, _ = make()
    posts, fetches = start(core)
    accept_all(core, posts, T0)
    revision = core.tracker.revision(FIRST)
    keys = frozenset(p.auth_key for p in points("a", "b", "c"))
    core.on_fetched(fetches[0].hsdir, ObservedDescriptor(FIRST, revision - 10, keys), T0 + 1)
    posts, _ = drain(core)
    assert [(p.hsdir, p.revision) for p in posts] == [(fetches[0].hsdir, revision)]


def test_checks_rotate_through_the_fetchable_period_at_the_configured_rates():
    core, _ = make(PublishTiming(check_interval=30.0, standby_check_interval=120.0))
    posts, fetches = start(core)
    accept_all(core, posts, T0)
    asked = [f.hsdir for f in fetches]
    now = T0
    for _ in range(9):
        core.on_fetch_failed(asked[-1], "NOT_FOUND", now)
        now = core.get_timer()
        core.handle_timer(now)
        asked.extend(f.hsdir for f in drain(core)[1])
    hsdirs = TARGETS[FIRST].hsdirs
    assert asked[:8] == list(hsdirs) and asked[8] == hsdirs[0]
    assert now == pytest.approx(T0 + 9 * 30.0)
    core.on_fetch_failed(asked[-1], "NOT_FOUND", now)
    core.set_role(Role.STANDBY, now)
    assert core.tracker.periods() == []
    core.on_fetch_failed(drain(core)[1][0].hsdir, "NOT_FOUND", now)
    assert core.get_timer() == pytest.approx(now + 120.0)


def test_standby_flags_intro_points_the_cluster_never_had():
    core, _ = make(role=Role.STANDBY)
    core.set_targets(TARGETS, T0, fetchable=FIRST)
    core.set_intro_points({FIRST: points("a", "b")}, T0)
    _, fetches = drain(core)
    assert core.tracker.periods() == []  # a standby never uploads
    keys = frozenset(p.auth_key for p in points("a", "b"))
    assert core.classify(ObservedDescriptor(FIRST, 5, keys)) is Verdict.OWN_OLDER
    stray = frozenset(p.auth_key for p in points("z"))
    core.on_fetched(fetches[0].hsdir, ObservedDescriptor(FIRST, 5, stray), T0 + 1)
    # Gossip may lag the publisher: first a second look, 30 s later, at another HSDir.
    assert PublishEventKind.CONFLICT not in [e.kind for e in events(core)]
    assert core.get_timer() == pytest.approx(T0 + 31)
    core.handle_timer(T0 + 31)
    _, again = drain(core)
    assert again[0].hsdir != fetches[0].hsdir
    core.on_fetched(again[0].hsdir, ObservedDescriptor(FIRST, 5, stray), T0 + 32)
    assert [e.kind for e in events(core)][-1] is PublishEventKind.CONFLICT
    assert drain(core) == ([], [])  # reported only: the publisher supersedes it


def test_standby_forgets_a_suspicion_that_gossip_explains():
    core, _ = make(role=Role.STANDBY)
    core.set_targets(TARGETS, T0, fetchable=FIRST)
    core.set_intro_points({FIRST: points("a")}, T0)
    _, fetches = drain(core)
    newer = frozenset(p.auth_key for p in points("a", "b"))
    core.on_fetched(fetches[0].hsdir, ObservedDescriptor(FIRST, 5, newer), T0 + 1)
    core.set_intro_points({FIRST: points("a", "b")}, T0 + 2)  # the heartbeat arrives
    core.handle_timer(T0 + 31)
    _, again = drain(core)
    core.on_fetched(again[0].hsdir, ObservedDescriptor(FIRST, 6, newer), T0 + 32)
    assert PublishEventKind.CONFLICT not in [e.kind for e in events(core)]


def test_fetch_timeout_frees_the_slot():
    core, _ = make(PublishTiming(fetch_timeout=20.0))
    _, _fetches = start(core)
    core.handle_timer(T0 + 20)
    assert any(e.kind is PublishEventKind.FETCH_FAILED and "TIMEOUT" in e.message
               for e in events(core))


def test_failed_passes_in_a_row_are_one_event_and_recovery_another():
    core, _ = make(PublishTiming(failure_streak=3))
    start(core)
    events(core)
    for _ in range(5):
        core.on_pass_failed("ClockRefused: clock is 200 s ahead of its peers", T0)
    (streak,) = [e for e in events(core) if e.kind is PublishEventKind.SIGNING_FAILURES]
    assert streak.message == ("Descriptors not signed or published: 3 publish passes failed "
                              "in a row (last: ClockRefused: clock is 200 s ahead of its peers)")
    core.on_pass_succeeded()
    (back,) = events(core)
    assert back.message == "Publish passes work again after 5 failures"
    core.on_pass_succeeded()
    assert events(core) == []


def test_rebuilding_the_fetchable_period_reposts_the_other_one_everywhere():
    # A healed partition's loser (or a stray) may have put a higher revision on the
    # HSDirs of both periods. Our rebuild of the fetchable period silently replaces the
    # only copy a check could have seen, so the unfetchable one must be replaced too.
    core, signer = make()
    posts, _ = start(core)
    accept_all(core, posts, T0)
    second = core.tracker.revision(SECOND)
    events(core)
    core.set_intro_points({FIRST: points("a", "b", "d"), SECOND: points("a", "b", "c")},
                          T0 + 10)
    posts, _ = drain(core)
    assert [b[0] for b in signer.built[-2:]] == [FIRST, SECOND]
    assert core.tracker.revision(SECOND) > second
    assert sorted(p.hsdir for p in posts if p.period == SECOND) == sorted(TARGETS[SECOND].hsdirs)
    built = [e.message for e in events(core) if e.kind is PublishEventKind.BUILT]
    assert any(f"period {SECOND}" in m and "(with-fetchable-period)" in m for m in built)


def test_the_other_period_follows_once_the_build_interval_allows():
    core, signer = make(min_build_interval=5.0)
    posts, _ = start(core)
    accept_all(core, posts, T0)
    core.set_intro_points({FIRST: points("a", "b", "c"), SECOND: points("a", "b", "x")},
                          T0 + 10)
    core.set_intro_points({FIRST: points("a", "b", "y"), SECOND: points("a", "b", "x")},
                          T0 + 12)
    assert signer.built[-1][0] == FIRST  # SECOND was built 2 s ago: not yet
    second = core.tracker.revision(SECOND)
    timer = core.get_timer()
    assert timer is not None and timer <= T0 + 15
    core.handle_timer(T0 + 15)
    assert signer.built[-1][0] == SECOND and core.tracker.revision(SECOND) > second


def test_rebuilding_only_the_unfetchable_period_leaves_the_fetchable_one():
    # The fetchable period's copies are what the checks look at: leave them in place.
    core, signer = make()
    posts, _ = start(core)
    accept_all(core, posts, T0)
    builds = len(signer.built)
    core.set_intro_points({FIRST: points("a", "b", "c"), SECOND: points("a", "b", "z")},
                          T0 + 10)
    assert [b[0] for b in signer.built[builds:]] == [SECOND]
