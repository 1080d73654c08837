"""Time periods, SRV runs and the first/second descriptor (vectors from tor's test_hs_common.c)."""

from __future__ import annotations

import calendar
import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from onionmesh.hsdir.consensus import Consensus
from onionmesh.hsdir.errors import StaleConsensusError, TimePeriodError
from onionmesh.hsdir.timeperiod import (
    descriptor_periods,
    disaster_srv,
    fetch_period,
    in_period_between_tp_and_srv,
    period_length_minutes,
    period_start,
    previous_srv_run_start,
    rotation_offset_minutes,
    srv_run_start,
    time_period_number,
)


def ts(*parts: int) -> int:
    return calendar.timegm((*parts, 0, 0, 0)[:6])


def consensus_at(
    valid_after: int,
    *,
    vi: int = 3600,
    params: dict[str, int] | None = None,
    srv_current: bytes | None = b"C" * 32,
    srv_previous: bytes | None = b"P" * 32,
) -> Consensus:
    return Consensus(
        valid_after=valid_after,
        fresh_until=valid_after + vi,
        valid_until=valid_after + 3 * vi,
        voting_interval=vi,
        params=params or {},
        srv_current=srv_current,
        srv_previous=srv_previous,
        relays=(),
    )


# tor test_time_period: the prop224 [TIME-PERIODS] example.
def test_tor_time_period_vectors():
    t = ts(2016, 4, 13, 11, 0, 0)
    assert time_period_number(t, 1440) == 16903
    assert time_period_number(t + 3599, 1440) == 16903
    assert period_start(16903 + 1, 1440) == ts(2016, 4, 13, 12, 0, 0)
    assert time_period_number(t + 3600, 1440) == 16904
    assert period_start(16904 + 1, 1440) == ts(2016, 4, 14, 12, 0, 0)
    # tor test_blinding_basics
    assert time_period_number(ts(1973, 5, 20, 1, 50, 33), 1440) == 1234


# tor test_start_time_of_next_time_period, TestingTorNetwork with a 10 s voting interval.
def test_tor_testing_network_period_vectors():
    c = consensus_at(ts(2016, 4, 13, 0, 0, 0), vi=10)
    length = period_length_minutes(c)
    offset = rotation_offset_minutes(c)
    assert (length, offset) == (4, 2)
    for now, expected in [
        (ts(2016, 4, 13, 0, 0, 0), ts(2016, 4, 13, 0, 2, 0)),
        (ts(2016, 4, 13, 0, 2, 0), ts(2016, 4, 13, 0, 6, 0)),
    ]:
        n = time_period_number(now, length, rotation_offset=offset)
        assert period_start(n + 1, length, rotation_offset=offset) == expected


def test_period_length_real_and_testing():
    assert period_length_minutes(consensus_at(ts(2026, 1, 1, 0, 0, 0))) == 1440
    # docs/testnet.md §4: 20 s voting interval -> 8 minute periods; never hard-code 1440.
    assert period_length_minutes(consensus_at(ts(2026, 1, 1, 0, 0, 0), vi=20)) == 8
    assert (
        period_length_minutes(consensus_at(ts(2026, 1, 1, 0, 0, 0), vi=20), testing=False) == 1440
    )
    real = consensus_at(ts(2026, 1, 1, 0, 0, 0), params={"hsdir_interval": 120})
    assert period_length_minutes(real) == 120
    assert period_length_minutes(consensus_at(0 + 86400, params={"hsdir_interval": 5})) == 30
    assert period_length_minutes(consensus_at(86400, params={"hsdir_interval": 10**6})) == 14400
    # a test network ignores the parameter, as tor does
    assert period_length_minutes(consensus_at(86400, vi=20, params={"hsdir_interval": 120})) == 8


# tor test_time_between_tp_and_srv (1985 vectors, one-hour voting interval).
@pytest.mark.parametrize(
    ("valid_after", "expected"),
    [
        (ts(1985, 10, 26, 0, 0, 0), False),
        (ts(1985, 10, 26, 11, 0, 0), False),
        (ts(1985, 10, 26, 12, 0, 0), True),
        (ts(1985, 10, 26, 23, 0, 0), True),
        (ts(1985, 10, 27, 0, 0, 0), False),
    ],
)
def test_tor_between_tp_and_srv_vectors(valid_after, expected):
    assert in_period_between_tp_and_srv(consensus_at(valid_after)) is expected


def test_srv_run_start_matches_tor_doc_example():
    # shared_random_client.c: valid-after 23/06/2017 23:00:00 -> run started 00:00:00.
    c = consensus_at(ts(2017, 6, 23, 23, 0, 0))
    assert srv_run_start(c) == ts(2017, 6, 23, 0, 0, 0)
    assert previous_srv_run_start(c) == ts(2017, 6, 22, 0, 0, 0)
    testnet = consensus_at(ts(2017, 6, 23, 23, 3, 20), vi=20)
    # 480 s runs aligned on multiples of 480 s since the epoch
    assert srv_run_start(testnet) == testnet.valid_after // 480 * 480
    assert previous_srv_run_start(testnet) == srv_run_start(testnet) - 480


@pytest.mark.parametrize(
    ("valid_after", "first", "second"),
    [
        (ts(2016, 4, 13, 11, 0, 0), 16903, 16904),  # after SRV#N, before TP#N
        (ts(2016, 4, 13, 13, 0, 0), 16903, 16904),  # after TP#N, before SRV#N+1
        (ts(2016, 4, 13, 23, 0, 0), 16903, 16904),
        (ts(2016, 4, 14, 1, 0, 0), 16904, 16905),  # after SRV#N+1
    ],
)
def test_descriptor_periods_positions(valid_after, first, second):
    c = consensus_at(valid_after)
    d1, d2 = descriptor_periods(c, valid_after + 60)
    assert (d1.is_first, d2.is_first) == (True, False)
    assert (d1.period_number, d2.period_number) == (first, second)
    assert d1.srv == b"P" * 32 and d2.srv == b"C" * 32
    assert d1.period_length == d2.period_length == 1440
    day = valid_after // 86400 * 86400
    assert d2.srv_start == day and d1.srv_start == day - 86400


def _srv_for_run(run_start: int) -> bytes:
    return hashlib.sha256(b"srv-%d" % run_start).digest()


def _live_consensus(valid_after: int, vi: int = 3600) -> Consensus:
    """A consensus whose SRVs change every protocol run, as on the real network."""
    probe = consensus_at(valid_after, vi=vi)
    run = srv_run_start(probe)
    return consensus_at(
        valid_after,
        vi=vi,
        srv_current=_srv_for_run(run),
        srv_previous=_srv_for_run(run - 24 * vi),
    )


EARLY_IN_SRV_TO_TP = ts(2016, 4, 14, 1, 0, 0)
LATE_IN_SRV_TO_TP = ts(2016, 4, 13, 11, 0, 0)
EARLY_IN_TP_TO_SRV = ts(2016, 4, 13, 13, 0, 0)
LATE_IN_TP_TO_SRV = ts(2016, 4, 13, 23, 0, 0)


# tor test_client_service_hsdir_set_sync scenarios a-f: a client at time C fetches
# the descriptor the service at time S placed (first or second) with the same
# period and SRV.
@pytest.mark.parametrize(
    ("service_at", "client_at", "client_fetches_second"),
    [
        (LATE_IN_SRV_TO_TP, LATE_IN_SRV_TO_TP, False),
        (LATE_IN_TP_TO_SRV, LATE_IN_TP_TO_SRV, True),
        (LATE_IN_SRV_TO_TP, EARLY_IN_TP_TO_SRV, True),
        (EARLY_IN_TP_TO_SRV, LATE_IN_SRV_TO_TP, False),
        (EARLY_IN_SRV_TO_TP, LATE_IN_TP_TO_SRV, False),
        (LATE_IN_TP_TO_SRV, EARLY_IN_SRV_TO_TP, True),
    ],
)
def test_client_and_service_agree(service_at, client_at, client_fetches_second):
    service = descriptor_periods(_live_consensus(service_at), service_at + 600)
    client = fetch_period(_live_consensus(client_at), client_at + 600)
    placed = service[1] if client_fetches_second else service[0]
    assert client == (placed.period_number, placed.srv)


def test_testnet_rotation_every_eight_minutes():
    base = ts(2026, 11, 24, 5, 0, 0) // 480 * 480  # an SRV run start
    seen = []
    for step in range(0, 48):  # 16 minutes of 20 s consensuses
        va = base + 20 * step
        c = _live_consensus(va, vi=20)
        d1, d2 = descriptor_periods(c, va)
        assert d1.period_length == 8
        assert d2.period_number == d1.period_number + 1
        assert d1.srv_start == srv_run_start(c) - 480
        seen.append(d1.period_number)
        client = fetch_period(c, va)
        assert client in ((d1.period_number, d1.srv), (d2.period_number, d2.srv))
    assert len(set(seen)) == 2  # rotated once in 16 minutes ...
    assert seen.count(seen[0]) == 24  # ... after exactly 8 minutes


def test_disaster_srv_matches_onionbalance():
    from onionbalance.hs_v3.consensus import Consensus as ObConsensus

    ob = ObConsensus(do_refresh_consensus=False)
    for period in (1, 2, 16903, 116909):
        assert disaster_srv(period, 1440) == ob._get_disaster_srv(period)
    assert disaster_srv(5, 1440) != disaster_srv(6, 1440)
    assert disaster_srv(5, 1440) != disaster_srv(5, 8)


def test_missing_srvs_fall_back_to_disaster_srv():
    va = ts(2016, 4, 13, 13, 0, 0)
    c = consensus_at(va, srv_current=None, srv_previous=None)
    d1, d2 = descriptor_periods(c, va)
    assert d1.srv == disaster_srv(d1.period_number, 1440)
    assert d2.srv == disaster_srv(d2.period_number, 1440)
    assert fetch_period(c, va) == (16904, disaster_srv(16904, 1440))


def test_stale_consensus_is_refused():
    va = ts(2016, 4, 13, 13, 0, 0)
    c = consensus_at(va)
    descriptor_periods(c, c.valid_until + 24 * 3600)  # still reasonably live
    with pytest.raises(StaleConsensusError, match="not reasonably live"):
        descriptor_periods(c, c.valid_until + 24 * 3600 + 1)
    with pytest.raises(StaleConsensusError):
        fetch_period(c, va - 24 * 3600 - 1)


def test_time_period_errors():
    with pytest.raises(TimePeriodError):
        time_period_number(60, 1440)  # before the first period (tor asserts)
    with pytest.raises(TimePeriodError):
        time_period_number(10**9, 0)
    with pytest.raises(TimePeriodError):
        period_start(-1, 1440)
    with pytest.raises(TimePeriodError):
        disaster_srv(-1, 1440)
    with pytest.raises(TimePeriodError):
        period_length_minutes(consensus_at(86400, vi=2))


@settings(max_examples=300, deadline=None)
@given(
    st.integers(min_value=1, max_value=10**7),
    st.sampled_from([4, 8, 10, 30, 120, 1440, 14400]),
)
def test_period_start_and_number_round_trip(number, length):
    start = period_start(number, length)
    assert time_period_number(start, length) == number
    assert time_period_number(start - 1, length) == number - 1
    assert time_period_number(start + length * 60 - 1, length) == number


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=2 * 86400, max_value=2**34), st.sampled_from([10, 20, 30, 3600]))
def test_descriptor_periods_invariants(valid_after, vi):
    valid_after = valid_after // vi * vi  # consensuses start on the voting schedule
    c = _live_consensus(valid_after, vi=vi)
    d1, d2 = descriptor_periods(c, valid_after)
    length = period_length_minutes(c)
    current = time_period_number(valid_after, length, rotation_offset=rotation_offset_minutes(c))
    assert d2.period_number == d1.period_number + 1
    assert current in (d1.period_number, d2.period_number)
    assert d1.srv == c.srv_previous and d2.srv == c.srv_current
    assert d1.srv_start < d2.srv_start <= valid_after
