"""Clock validation against the kernel NTP status and the consensus window."""

from onionmesh.clock import Clock, ClockVerdict, assess_clock, kernel_ntp_synchronized

VA, VU = 1_700_000_000.0, 1_700_000_000.0 + 3 * 3600


def test_inside_the_window_with_ntp_is_ok():
    result = assess_clock(VA + 100, kernel_synced=True, consensus_valid_after=VA,
                          consensus_valid_until=VU)
    assert result.verdict is ClockVerdict.OK
    assert result.message == "clock OK"


def test_clock_behind_the_consensus_is_bad_and_says_by_how_much():
    result = assess_clock(VA - 600, kernel_synced=True, consensus_valid_after=VA,
                          consensus_valid_until=VU, tolerance=30)
    assert result.verdict is ClockVerdict.BAD
    assert result.offset_hint == -600
    assert "600 s behind" in result.message


def test_clock_ahead_of_the_consensus_is_bad():
    result = assess_clock(VU + 120, kernel_synced=True, consensus_valid_after=VA,
                          consensus_valid_until=VU, tolerance=30)
    assert result.verdict is ClockVerdict.BAD
    assert "past the consensus valid-until" in result.message


def test_tolerance_is_respected_at_the_edges():
    inside = assess_clock(VA - 29, kernel_synced=True, consensus_valid_after=VA,
                          consensus_valid_until=VU, tolerance=30)
    outside = assess_clock(VA - 31, kernel_synced=True, consensus_valid_after=VA,
                           consensus_valid_until=VU, tolerance=30)
    assert inside.verdict is ClockVerdict.OK
    assert outside.verdict is ClockVerdict.BAD


def test_unsynchronised_kernel_alone_is_a_warning_not_a_refusal():
    result = assess_clock(VA + 1, kernel_synced=False, consensus_valid_after=VA,
                          consensus_valid_until=VU)
    assert result.verdict is ClockVerdict.WARN
    assert "not NTP-synchronised" in result.message
    unknown = assess_clock(VA + 1, kernel_synced=None)
    assert unknown.verdict is ClockVerdict.WARN


def test_bad_window_and_unsynced_kernel_stays_bad_with_both_reasons():
    result = assess_clock(VA - 1000, kernel_synced=False, consensus_valid_after=VA,
                          consensus_valid_until=VU)
    assert result.verdict is ClockVerdict.BAD
    assert len(result.reasons) == 2


def test_kernel_status_reads_on_linux():
    assert kernel_ntp_synchronized() in (True, False)


def test_offset_clock_is_shifted():
    a, b = Clock(0.0).now(), Clock(3600.0).now()
    assert 3599.0 < b - a < 3601.0
