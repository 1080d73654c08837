"""Unit tests of the pure republish policy."""

from __future__ import annotations

import pytest

from onionmesh.publish.errors import UploadPlanError
from onionmesh.publish.republish import (
    Action,
    Built,
    Reason,
    RepublishPolicy,
    Wanted,
)

IK1 = frozenset({b"intro-a", b"intro-b"})
IK2 = frozenset({b"intro-a", b"intro-c"})
H1 = frozenset({"A" * 40, "B" * 40})
H2 = frozenset({"A" * 40, "C" * 40})
POLICY = RepublishPolicy(descriptor_lifetime=3600, refresh_after=1200, min_interval=1.0)


def plan(*items):
    return {w.period: w for w in items}


def test_first_build_for_both_periods():
    wanted = plan(Wanted(1, IK1, H1), Wanted(2, IK2, H2))
    decisions = POLICY.decide(wanted, {}, now=0)
    assert [(d.period, d.action, d.reason) for d in decisions] == [
        (1, Action.BUILD, Reason.NEW_PERIOD),
        (2, Action.BUILD, Reason.NEW_PERIOD),
    ]


def test_nothing_to_do_when_built_matches():
    wanted = plan(Wanted(1, IK1, H1))
    built = {1: Built(1, IK1, H1, built_at=0)}
    assert POLICY.decide(wanted, built, now=10) == []
    assert POLICY.next_check(wanted, built, now=10) == 1200


def test_intro_change_rebuilds_with_new_content():
    wanted = plan(Wanted(1, IK2, H1))
    built = {1: Built(1, IK1, H1, built_at=0)}
    [d] = POLICY.decide(wanted, built, now=5)
    assert (d.action, d.reason, d.content_changed) == (Action.BUILD, Reason.INTRO_CHANGED, True)


def test_rebuild_waits_out_min_interval_so_revisions_differ():
    wanted = plan(Wanted(1, IK2, H1))
    built = {1: Built(1, IK1, H1, built_at=100.0)}
    assert POLICY.decide(wanted, built, now=100.5) == []
    assert POLICY.next_check(wanted, built, now=100.5) == 101.0
    assert [d.reason for d in POLICY.decide(wanted, built, now=101.0)] == [Reason.INTRO_CHANGED]


def test_hsdir_change_only_retargets():
    wanted = plan(Wanted(1, IK1, H2))
    built = {1: Built(1, IK1, H1, built_at=0)}
    [d] = POLICY.decide(wanted, built, now=5)
    assert (d.action, d.reason) == (Action.RETARGET, Reason.HSDIRS_CHANGED)


def test_refresh_before_lifetime_runs_out():
    wanted = plan(Wanted(1, IK1, H1))
    built = {1: Built(1, IK1, H1, built_at=0)}
    assert POLICY.decide(wanted, built, now=1199) == []
    [d] = POLICY.decide(wanted, built, now=1200)
    assert (d.action, d.reason, d.content_changed) == (Action.BUILD, Reason.REFRESH, True)


def test_rejection_rebuilds_same_content():
    wanted = plan(Wanted(1, IK1, H1))
    built = {1: Built(1, IK1, H1, built_at=0)}
    [d] = POLICY.decide(wanted, built, now=3, rejected={1})
    assert (d.action, d.reason, d.content_changed) == (Action.BUILD, Reason.REJECTED, False)


def test_rotation_drops_old_period_and_builds_new_one():
    wanted = plan(Wanted(2, IK1, H1), Wanted(3, IK1, H2))
    built = {1: Built(1, IK1, H1, 0), 2: Built(2, IK1, H1, 0)}
    decisions = POLICY.decide(wanted, built, now=10)
    assert [(d.period, d.action) for d in decisions] == [(1, Action.DROP), (3, Action.BUILD)]


def test_no_intro_points_means_no_build():
    assert POLICY.decide(plan(Wanted(1, frozenset(), H1)), {}, now=0) == []


@pytest.mark.parametrize(
    "kwargs",
    [{"refresh_after": 0}, {"refresh_after": 100, "descriptor_lifetime": 100},
     {"min_interval": 0.5}],
)
def test_bad_policy_is_a_typed_error(kwargs):
    with pytest.raises(UploadPlanError):
        RepublishPolicy(**kwargs)
