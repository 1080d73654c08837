"""The clock offset from the live peers' median, and the verdict built on it."""

from __future__ import annotations

import pytest

from onionmesh.clock import ClockBasis, ClockVerdict, assess_clock
from onionmesh.mesh.clock_offset import ClockSample, live_offsets, median_offset

NOW = 1_800_000_000.0
WINDOW = {"consensus_valid_after": NOW - 1800, "consensus_valid_until": NOW + 3 * 3600}


def test_sample_offset_is_how_far_our_clock_is_ahead() -> None:
    assert ClockSample(sent_at=100.0, received_at=100.2).offset == pytest.approx(0.2)
    assert ClockSample(sent_at=220.0, received_at=100.0).offset == -120.0


def test_no_peer_gives_no_median() -> None:
    assert median_offset([]) is None


def test_a_tie_trusts_our_own_side() -> None:
    # Two clocks that disagree: neither can be told wrong, so neither holds back.
    assert median_offset([-120.0]) == 0.0
    assert median_offset([120.0]) == 0.0
    # Half the clocks disagree (ours and one peer against two): still our side.
    assert median_offset([0.2, 120.0, 120.0]) == pytest.approx(0.2)
    # Three peers agreeing against us: the median is theirs.
    assert median_offset([120.0, 120.0, 120.0]) == 120.0


def test_a_lying_peer_among_honest_ones_moves_nobody() -> None:
    honest = [0.1, -0.2, 0.05]
    assert abs(median_offset([*honest, 3600.0]) or 0) < 0.2
    assert abs(median_offset([*honest, -3600.0]) or 0) < 0.2
    # The skewed node itself, seen from its side: every honest clock is 120 s behind.
    assert median_offset([120.0, 120.1, 119.9]) == pytest.approx(120.0, abs=0.1)


def test_only_live_peers_with_a_sample_count() -> None:
    samples = {"a": ClockSample(10.0, 10.5), "b": ClockSample(10.0, 70.0),
               "c": ClockSample(5.0, 5.0)}
    assert live_offsets(samples, ["a", "c", "d"]) == {"a": 0.5, "c": 0.0}


def test_verdict_from_the_peers_median_inside_the_consensus_window() -> None:
    # 120 s ahead is inside the consensus window: only the peers can catch it.
    alone = assess_clock(NOW + 120, kernel_synced=True, **WINDOW)
    assert alone.verdict is ClockVerdict.OK and alone.basis is ClockBasis.CONSENSUS
    skewed = assess_clock(NOW + 120, kernel_synced=True, peer_offsets=[120.0, 120.0],
                          skew_tolerance=10.0, **WINDOW)
    assert skewed.verdict is ClockVerdict.BAD
    assert skewed.basis is ClockBasis.PEERS and skewed.peers == 2
    assert skewed.offset_hint == pytest.approx(120.0)
    assert not skewed.outside_window
    assert "120.0 s ahead of the median of 2 live peer(s)" in skewed.message
    # An honest node seeing that skewed peer and one honest peer stays OK.
    honest = assess_clock(NOW, kernel_synced=True, peer_offsets=[-120.0, 0.1],
                          skew_tolerance=10.0, **WINDOW)
    assert honest.verdict is ClockVerdict.OK and honest.basis is ClockBasis.PEERS


def test_verdict_behind_and_within_tolerance() -> None:
    behind = assess_clock(NOW, kernel_synced=True, peer_offsets=[-30.0, -30.0],
                          skew_tolerance=10.0)
    assert behind.verdict is ClockVerdict.BAD and "behind the median" in behind.message
    close = assess_clock(NOW, kernel_synced=True, peer_offsets=[9.0, 9.5], skew_tolerance=10.0)
    assert close.verdict is ClockVerdict.OK


def test_one_peer_far_off_holds_nobody_back() -> None:
    mine = assess_clock(NOW, kernel_synced=True, peer_offsets=[-120.0], skew_tolerance=10.0)
    theirs = assess_clock(NOW, kernel_synced=True, peer_offsets=[120.0], skew_tolerance=10.0)
    assert mine.verdict is theirs.verdict is ClockVerdict.OK
    assert mine.basis is ClockBasis.PEERS and mine.peers == 1


def test_the_window_still_applies_with_peers() -> None:
    # A whole cluster can be wrong together: hours off is still refused.
    result = assess_clock(NOW + 5 * 3600, kernel_synced=True, peer_offsets=[0.0, 0.0], **WINDOW)
    assert result.verdict is ClockVerdict.BAD and result.outside_window
    assert result.basis is ClockBasis.PEERS


def test_alone_without_consensus_only_the_kernel_speaks() -> None:
    result = assess_clock(NOW, kernel_synced=False)
    assert result.basis is ClockBasis.NONE and result.verdict is ClockVerdict.WARN
