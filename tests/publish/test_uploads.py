"""Unit tests of the pure per-HSDir upload tracker."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from onionmesh.errors import OnionmeshError
from onionmesh.publish.errors import UploadPlanError
from onionmesh.publish.uploads import (
    TIMEOUT,
    UPLOAD_REJECTED,
    RetryPolicy,
    UploadStatus,
    UploadTracker,
)

A, B, C, D = ("A" * 40, "B" * 40, "C" * 40, "D" * 40)
P1, P2 = 100, 101
BL1, BL2 = "blinded-first", "blinded-second"


def tracker(**kw) -> UploadTracker:
    policy = RetryPolicy(
        **{"max_retries": 3, "base_delay": 2.0, "max_delay": 60.0, "jitter": 0.25,
           "upload_timeout": 30.0, **kw}
    )
    return UploadTracker(policy, random.Random(7))


def test_posts_every_hsdir_once_with_one_upload_in_flight_per_hsdir():
    t = tracker()
    t.set_descriptor(P1, BL1, "desc-1", 10, [A, B, C], now=0)
    t.set_descriptor(P2, BL2, "desc-2", 20, [B, C, D], now=0)
    first = t.poll(0)
    # B and C are shared: only the first period's post goes out for them.
    assert sorted((p.period, p.hsdir) for p in first) == [(P1, A), (P1, B), (P1, C), (P2, D)]
    assert all(p.attempt == 1 for p in first)
    assert t.poll(0) == []  # nothing new until results arrive
    assert t.on_uploaded(B, now=0.2) == P1
    second = t.poll(0.2)
    assert [(p.period, p.hsdir, p.descriptor, p.revision) for p in second] == [
        (P2, B, "desc-2", 20)
    ]
    for h in (A, C, D):
        t.on_uploaded(h, now=0.3)
    assert not t.complete()
    assert [(p.period, p.hsdir) for p in t.poll(0.3)] == [(P2, C)]
    t.on_uploaded(B, now=0.4)
    t.on_uploaded(C, now=0.4)
    assert t.complete(P1) and t.complete(P2) and t.complete()
    assert t.settled()
    assert t.health[B].successes == 2 and t.health[B].failures == 0


def test_failed_hsdir_is_retried_after_backoff_and_others_are_not_reposted():
    t = tracker()
    t.set_descriptor(P1, BL1, "d", 1, [A, B, C], now=0)
    t.poll(0)
    t.on_uploaded(A, 0.1)
    t.on_uploaded(B, 0.1)
    assert t.on_failed(C, BL1, "UNEXPECTED_ERROR", now=0.2) == P1
    [state] = [s for s in t.states(P1) if s.hsdir == C]
    assert state.status is UploadStatus.PENDING and state.last_reason == "UNEXPECTED_ERROR"
    # 2 s base delay with +-25 % jitter.
    assert 0.2 + 1.5 <= state.next_attempt_at <= 0.2 + 2.5
    assert t.poll(state.next_attempt_at - 0.01) == []
    retry = t.poll(state.next_attempt_at)
    assert [(p.hsdir, p.attempt) for p in retry] == [(C, 2)]
    assert t.with_status(P1, UploadStatus.UPLOADED) == {A, B}
    t.on_uploaded(C, state.next_attempt_at + 0.1)
    assert t.complete(P1)
    assert t.health[C].failures == 1 and t.health[C].last_reason == "UNEXPECTED_ERROR"


def test_backoff_grows_exponentially_and_gives_up_after_max_retries():
    t = tracker(max_retries=3, jitter=0.0)
    t.set_descriptor(P1, BL1, "d", 1, [A], now=0)
    now, delays, attempts = 0.0, [], []
    while True:
        posts = t.poll(now)
        if not posts:
            break
        attempts.append(posts[0].attempt)
        t.on_failed(A, BL1, "QUERY_REJECTED", now)
        [state] = t.states(P1)
        if state.status is UploadStatus.FAILED:
            break
        delays.append(state.next_attempt_at - now)
        now = state.next_attempt_at
    assert attempts == [1, 2, 3, 4]  # first attempt + 3 retries
    assert delays == [2.0, 4.0, 8.0]
    assert t.states(P1)[0].status is UploadStatus.FAILED
    assert t.settled() and not t.complete()
    assert t.next_wakeup() is None
    assert t.retry_failed(P1, now) == [A]
    assert [p.attempt for p in t.poll(now)] == [1]


def test_backoff_is_capped_and_jitter_comes_from_the_injected_rng():
    policy = RetryPolicy(base_delay=2.0, max_delay=5.0, jitter=0.5)
    assert policy.backoff(10, random.Random(1)) <= 7.5
    assert policy.backoff(1, random.Random(3)) == policy.backoff(1, random.Random(3))
    values = {policy.backoff(1, random.Random(s)) for s in range(20)}
    assert len(values) > 1 and all(1.0 <= v <= 3.0 for v in values)


def test_timeout_counts_as_failure_and_is_retried():
    t = tracker(upload_timeout=30.0, jitter=0.0)
    t.set_descriptor(P1, BL1, "d", 1, [A, B], now=0)
    t.poll(0)
    t.on_uploaded(A, 0.1)
    assert t.next_wakeup() == 30.0
    assert t.poll(29.9) == []
    assert t.poll(30.0) == []  # timed out, retry scheduled 2 s later
    [state] = [s for s in t.states(P1) if s.hsdir == B]
    assert state.status is UploadStatus.PENDING and state.last_reason == TIMEOUT
    assert t.drain_timeouts() == [(P1, B)] and t.drain_timeouts() == []
    assert [(p.hsdir, p.attempt) for p in t.poll(32.0)] == [(B, 2)]


def test_rejection_after_an_earlier_attempt_of_the_same_revision_is_success():
    t = tracker(jitter=0.0)
    t.set_descriptor(P1, BL1, "d", 1, [A], now=0)
    t.poll(0)
    t.poll(30.0)  # first attempt timed out (but did land on the HSDir)
    t.poll(32.0)  # second attempt
    assert t.on_failed(A, BL1, UPLOAD_REJECTED, 32.2) == P1
    assert t.complete(P1)


def test_rejection_on_first_attempt_needs_a_newer_revision_for_that_hsdir_only():
    t = tracker()
    t.set_descriptor(P1, BL1, "d1", 1, [A, B], now=0)
    t.poll(0)
    t.on_uploaded(A, 0.1)
    t.on_failed(B, BL1, UPLOAD_REJECTED, 0.1)
    assert t.with_status(P1, UploadStatus.REJECTED) == {B}
    assert t.poll(100) == []  # same bytes are never re-posted
    t.set_descriptor(P1, BL1, "d2", 2, [A, B], now=1.0, content_changed=False)
    posts = t.poll(1.0)
    assert [(p.hsdir, p.revision, p.descriptor) for p in posts] == [(B, 2, "d2")]


def test_new_content_reposts_everywhere_and_stale_results_are_ignored():
    t = tracker()
    t.set_descriptor(P1, BL1, "d1", 1, [A, B], now=0)
    t.poll(0)
    t.on_uploaded(A, 0.1)
    t.set_descriptor(P1, BL1, "d2", 2, [A, B], now=0.5)
    # B's post of revision 1 is still in flight: revision 2 waits for it.
    assert [(p.hsdir, p.revision) for p in t.poll(0.5)] == [(A, 2)]
    assert t.on_uploaded(B, 0.6) is None  # the answer is about revision 1
    assert [(p.hsdir, p.revision) for p in t.poll(0.6)] == [(B, 2)]


def test_hsdir_set_change_posts_only_to_new_hsdirs():
    t = tracker()
    t.set_descriptor(P1, BL1, "d", 1, [A, B], now=0)
    t.poll(0)
    t.on_uploaded(A, 0.1)
    t.on_uploaded(B, 0.1)
    t.set_hsdirs(P1, [B, C], now=5)
    assert [p.hsdir for p in t.poll(5)] == [C]
    assert t.hsdirs(P1) == {B, C}


def test_failure_for_another_descriptor_does_not_touch_the_post_in_flight():
    t = tracker()
    t.set_descriptor(P1, BL1, "d", 1, [A], now=0)
    t.poll(0)
    assert t.on_failed(A, "someone-else", "UPLOAD_REJECTED", 0.1) is None
    assert t.on_failed(D, BL1, "UPLOAD_REJECTED", 0.1) is None
    assert t.states(P1)[0].status is UploadStatus.POSTED


def test_dropped_period_frees_its_hsdirs():
    t = tracker()
    t.set_descriptor(P1, BL1, "d", 1, [A], now=0)
    t.poll(0)
    t.drop_period(P1)
    t.set_descriptor(P2, BL2, "d2", 5, [A], now=1)
    assert t.poll(1) == []  # A still busy with the dropped period's post
    assert t.on_failed(A, BL1, "UNEXPECTED_ERROR", 1.1) is None
    assert [(p.period, p.hsdir) for p in t.poll(1.1)] == [(P2, A)]


@pytest.mark.parametrize(
    "kwargs",
    [{"max_retries": -1}, {"base_delay": 0}, {"max_delay": 1, "base_delay": 2},
     {"jitter": 1.0}, {"upload_timeout": 0}],
)
def test_bad_retry_settings_are_typed_errors(kwargs):
    with pytest.raises(UploadPlanError):
        RetryPolicy(**kwargs)


def test_bad_plans_are_typed_errors():
    t = tracker()
    with pytest.raises(UploadPlanError, match="40 hex"):
        t.set_descriptor(P1, BL1, "d", 1, ["not-a-fingerprint"], now=0)
    t.set_descriptor(P1, BL1, "d", 5, [A], now=0)
    with pytest.raises(UploadPlanError, match="must increase"):
        t.set_descriptor(P1, BL1, "d", 5, [A], now=0)
    with pytest.raises(UploadPlanError, match="period 7"):
        t.set_hsdirs(7, [A], now=0)
    assert issubclass(UploadPlanError, OnionmeshError)


def test_same_seed_replays_the_same_schedule():
    def run(seed: int) -> list[float]:
        t = UploadTracker(RetryPolicy(jitter=0.5), random.Random(seed))
        t.set_descriptor(P1, BL1, "d", 1, [A, B, C], now=0)
        t.poll(0)
        for h in (A, B, C):
            t.on_failed(h, BL1, "X", 0)
        return [s.next_attempt_at for s in t.states(P1)]

    assert run(42) == run(42)
    assert run(42) != run(43)


events = st.lists(
    st.tuples(
        st.sampled_from(["poll", "ok", "fail", "reject", "newrev", "hsdirs"]),
        st.sampled_from([A, B, C, D]),
        st.floats(min_value=0, max_value=40),
    ),
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(events)
def test_property_never_two_posts_in_flight_to_one_hsdir(evts):
    t = tracker(max_retries=2)
    t.set_descriptor(P1, BL1, "d1", 1, [A, B, C], now=0)
    t.set_descriptor(P2, BL2, "d2", 1, [B, C, D], now=0)
    now, rev = 0.0, 1
    busy: dict[str, float] = {}  # HSDir -> when its post in flight was sent
    for kind, h, dt in evts:
        now += dt
        if kind == "poll":
            posts = t.poll(now)
            assert len({p.hsdir for p in posts}) == len(posts)
            for p in posts:
                # Only a post whose result arrived or that timed out frees its HSDir.
                assert p.hsdir not in busy or now - busy[p.hsdir] >= t.policy.upload_timeout
                assert p.attempt <= 1 + t.policy.max_retries
                busy[p.hsdir] = now
        elif kind == "ok":
            t.on_uploaded(h, now)
            busy.pop(h, None)
        elif kind in ("fail", "reject"):
            reason = UPLOAD_REJECTED if kind == "reject" else "X"
            for bl in (BL1, BL2):
                t.on_failed(h, bl, reason, now)
            if h not in t.in_flight():
                busy.pop(h, None)
        elif kind == "newrev":
            rev += 1
            t.set_descriptor(P1, BL1, f"d{rev}", rev, [A, B, C], now, content_changed=False)
        else:
            t.set_hsdirs(P2, sorted({B, C, D} - {h}), now)
        posted = [s.hsdir for s in t.states() if s.status is UploadStatus.POSTED]
        assert len(posted) == len(set(posted))
