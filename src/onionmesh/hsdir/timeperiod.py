"""Time periods and shared random values (rend-spec-v3 [TIME-PERIODS], [PUB-SHAREDRANDOM]).

Everything follows tor's own arithmetic (hs_common.c, shared_random_client.c,
nodelist.c ``node_set_hsdir_index``) rather than the prose of the spec, so
that the HSDirs we compute are the ones tor clients look at:

* The voting interval is ``fresh_until - valid_after`` of the consensus.
* An SRV protocol run is 24 voting intervals; a phase is 12. The time
  period rotation offset is one phase (12 h on the real network).
* The time period length is 24 voting intervals on a TestingTorNetwork
  (8 minutes with a 20 s interval) and the ``hsdir_interval`` consensus
  parameter (default 1440, clamped to 30..14400 minutes) otherwise. We
  cannot see a torrc, so a network whose voting interval is not one hour
  is taken to be a test network (both rules give 1440 for one hour).
* The period number counts from the consensus ``valid_after``, not the
  wall clock, exactly as tor does when it has a live consensus.
* Between a new time period and the next SRV (12:00-24:00 UTC on the real
  network) the first descriptor belongs to the previous period; otherwise
  to the current one. The second descriptor is always one period later.
  The first uses the previous SRV, the second the current SRV; a missing
  SRV is replaced by the disaster SRV of that descriptor's period.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from onionmesh.hsdir.consensus import Consensus
from onionmesh.hsdir.errors import StaleConsensusError, TimePeriodError

__all__ = [
    "REASONABLY_LIVE_SECONDS",
    "DescriptorPeriod",
    "descriptor_periods",
    "disaster_srv",
    "fetch_period",
    "in_period_between_tp_and_srv",
    "period_length_minutes",
    "period_start",
    "previous_srv_run_start",
    "rotation_offset_minutes",
    "srv_run_start",
    "time_period_number",
]

# SHARED_RANDOM_N_ROUNDS and SHARED_RANDOM_N_PHASES in tor.
_ROUNDS_PER_PHASE = 12
_PHASES_PER_RUN = 2
_REAL_NETWORK_VOTING_INTERVAL = 3600
# HS_TIME_PERIOD_LENGTH_DEFAULT / _MIN / _MAX (minutes).
_PERIOD_LENGTH_DEFAULT = 1440
_PERIOD_LENGTH_MIN = 30
_PERIOD_LENGTH_MAX = 14400
# tor's networkstatus_consensus_reasonably_live window.
REASONABLY_LIVE_SECONDS = 24 * 3600


@dataclass(frozen=True)
class DescriptorPeriod:
    """Where and how one of a service's two descriptors is published.

    ``srv_start`` is the start of the SRV protocol run whose value the
    descriptor is placed with; tor's revision counter counts seconds from
    it (the previous run for the first descriptor, the current run for the
    second).
    """

    is_first: bool
    period_number: int
    period_length: int
    srv: bytes
    srv_start: int


def _is_testing(consensus: Consensus, testing: bool | None) -> bool:
    if testing is not None:
        return testing
    return consensus.voting_interval != _REAL_NETWORK_VOTING_INTERVAL


def period_length_minutes(consensus: Consensus, *, testing: bool | None = None) -> int:
    """The time period length in minutes (1440 on the real network).

    ``testing=None`` infers a TestingTorNetwork from a voting interval other
    than one hour; pass a bool to override.
    """
    if _is_testing(consensus, testing):
        length = _ROUNDS_PER_PHASE * _PHASES_PER_RUN * consensus.voting_interval // 60
        if length < 1:
            raise TimePeriodError(
                f"voting interval of {consensus.voting_interval} s gives a time period under "
                "one minute"
            )
        return length
    return consensus.param(
        "hsdir_interval", _PERIOD_LENGTH_DEFAULT, _PERIOD_LENGTH_MIN, _PERIOD_LENGTH_MAX
    )


def rotation_offset_minutes(consensus: Consensus) -> int:
    """The time period rotation offset: one SRV phase (12 voting intervals), in minutes."""
    return _ROUNDS_PER_PHASE * consensus.voting_interval // 60


def _offset(period_length: int, rotation_offset: int | None) -> int:
    if period_length < 1:
        raise TimePeriodError(f"period length must be at least one minute, got {period_length}")
    # The phase is half the SRV run, and the period is one run on test networks
    # and 1440 = 2 * 720 on the real one, so half the length is tor's offset.
    return period_length // 2 if rotation_offset is None else rotation_offset


def time_period_number(
    now: float, period_length: int, *, rotation_offset: int | None = None
) -> int:
    """The time period number at ``now`` (unix seconds) for a length in minutes.

    ``rotation_offset`` is in minutes; by default half the length, which is
    tor's value for the real network and for test networks.
    """
    offset = _offset(period_length, rotation_offset)
    minutes = int(now) // 60
    if minutes <= offset:
        raise TimePeriodError("time is before the first time period")
    return (minutes - offset) // period_length


def period_start(
    period_number: int, period_length: int, *, rotation_offset: int | None = None
) -> int:
    """Unix time at which time period ``period_number`` starts."""
    offset = _offset(period_length, rotation_offset)
    if period_number < 0:
        raise TimePeriodError("period number must not be negative")
    return (period_number * period_length + offset) * 60


def disaster_srv(period_number: int, period_length: int) -> bytes:
    """SHA3-256("shared-random-disaster" | INT_8(period_length) | INT_8(period_number))."""
    if not (0 <= period_number < 2**64 and 0 < period_length < 2**64):
        raise TimePeriodError("period number and length must fit in 64 bits")
    return hashlib.sha3_256(
        b"shared-random-disaster"
        + period_length.to_bytes(8, "big")
        + period_number.to_bytes(8, "big")
    ).digest()


def srv_run_start(consensus: Consensus) -> int:
    """Start of the current SRV protocol run.

    tor's sr_state_get_start_time_of_current_protocol_run: the consensus
    valid-after minus the rounds already elapsed in this 24-round run.
    """
    interval = consensus.voting_interval
    rounds = _ROUNDS_PER_PHASE * _PHASES_PER_RUN
    slot = (consensus.valid_after // interval) % rounds
    return consensus.valid_after - slot * interval


def previous_srv_run_start(consensus: Consensus) -> int:
    """Start of the previous SRV protocol run."""
    run_length = _ROUNDS_PER_PHASE * _PHASES_PER_RUN * consensus.voting_interval
    return srv_run_start(consensus) - run_length


def in_period_between_tp_and_srv(consensus: Consensus, *, testing: bool | None = None) -> bool:
    """True between a new time period and the next SRV (12:00-24:00 UTC on the real network)."""
    length = period_length_minutes(consensus, testing=testing)
    offset = rotation_offset_minutes(consensus)
    run_start = srv_run_start(consensus)
    # tor: hs_get_start_time_of_next_time_period(srv_start), with the phase in seconds.
    next_tp = time_period_number(run_start, length, rotation_offset=offset) + 1
    tp_start = next_tp * length * 60 + _ROUNDS_PER_PHASE * consensus.voting_interval
    return not run_start <= consensus.valid_after < tp_start


def _check_live(consensus: Consensus, now: float) -> None:
    if not (
        consensus.valid_after - REASONABLY_LIVE_SECONDS
        <= now
        <= consensus.valid_until + REASONABLY_LIVE_SECONDS
    ):
        raise StaleConsensusError(
            f"consensus valid {consensus.valid_after}..{consensus.valid_until} is not reasonably "
            f"live at {int(now)} (24 h window)"
        )


def _srv_or_disaster(value: bytes | None, period_number: int, period_length: int) -> bytes:
    return value if value is not None else disaster_srv(period_number, period_length)


def descriptor_periods(
    consensus: Consensus, now: float, *, testing: bool | None = None
) -> list[DescriptorPeriod]:
    """The first and second descriptor's period, SRV and revision-counter base.

    Raises :class:`StaleConsensusError` if the consensus is not reasonably
    live at ``now`` (tor does not place descriptors with such a consensus).
    """
    _check_live(consensus, now)
    length = period_length_minutes(consensus, testing=testing)
    offset = rotation_offset_minutes(consensus)
    current = time_period_number(consensus.valid_after, length, rotation_offset=offset)
    if in_period_between_tp_and_srv(consensus, testing=testing):
        first_tp, second_tp = current - 1, current
    else:
        first_tp, second_tp = current, current + 1
    return [
        DescriptorPeriod(
            is_first=True,
            period_number=first_tp,
            period_length=length,
            srv=_srv_or_disaster(consensus.srv_previous, first_tp, length),
            srv_start=previous_srv_run_start(consensus),
        ),
        DescriptorPeriod(
            is_first=False,
            period_number=second_tp,
            period_length=length,
            srv=_srv_or_disaster(consensus.srv_current, second_tp, length),
            srv_start=srv_run_start(consensus),
        ),
    ]


def fetch_period(
    consensus: Consensus, now: float, *, testing: bool | None = None
) -> tuple[int, bytes]:
    """(period number, SRV) a tor client uses to fetch a descriptor right now."""
    _check_live(consensus, now)
    length = period_length_minutes(consensus, testing=testing)
    offset = rotation_offset_minutes(consensus)
    current = time_period_number(consensus.valid_after, length, rotation_offset=offset)
    if in_period_between_tp_and_srv(consensus, testing=testing):
        return current, _srv_or_disaster(consensus.srv_current, current, length)
    return current, _srv_or_disaster(consensus.srv_previous, current, length)
