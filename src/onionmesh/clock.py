"""Clock validation: is this node's clock good enough to sign descriptors?

A wrong clock breaks an onion service quietly: descriptor-signing certs expire
early or start in the future, revision counters (seconds since the SRV run
started) go backwards so HSDirs refuse uploads, and the node picks the wrong
time period. So the clock is checked on startup and before signing
(docs/scenarios.md §8).

Three signals are used:

* the kernel's NTP discipline status (``adjtimex``): "synchronised" means an
  NTP daemon is steering the clock. Containers and test machines often have
  none, so an unsynchronised kernel clock alone is only a warning;
* the tor consensus: its ``valid-after``..``valid-until`` window was signed by
  the directory authorities, so a local clock outside that window (plus the
  tolerance) is wrong, whatever NTP says. On the real network that window is
  hours wide, so it only catches gross errors;
* the cluster's peers: the median of the live peers' clocks and ours
  (``onionmesh.mesh.clock_offset``), checked to ``[resilience]
  clock_skew_tolerance``: this is what catches a clock minutes off. Peers keep
  hearing a node whose clock is off by up to ``[coordination]
  datagram_max_age`` (300 s, at least 3x the tolerance), so it is caught by
  them; a node alone (no live peer) falls back to the consensus window, which
  always applies as well; the assessment says which check judged the offset
  (``ClockBasis``). One tolerance, ``[resilience] clock_skew_tolerance``, is
  used for both the peers' median and the edges of the consensus window.

``assess_clock`` is pure; ``kernel_ntp_synchronized`` is the only I/O here.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

from onionmesh.mesh.clock_offset import median_offset

# struct timex from <sys/timex.h>; only `status` is read, the rest is sized
# generously so the kernel never writes past the buffer.
_STA_UNSYNC = 0x0040
_TIME_ERROR = 5


class _Timex(ctypes.Structure):
    _fields_ = [
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("_rest", ctypes.c_byte * 256),
    ]


def kernel_ntp_synchronized() -> bool | None:
    """True/False from the kernel's NTP status; None where it cannot be read."""
    if os.name != "posix":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        timex = _Timex()  # modes = 0: read only
        state = libc.adjtimex(ctypes.byref(timex))
    except (OSError, AttributeError):
        return None
    if state < 0:
        return None
    return state != _TIME_ERROR and not timex.status & _STA_UNSYNC


class ClockVerdict(Enum):
    OK = "ok"
    WARN = "warn"      # doubtful but usable (for example no NTP daemon, consensus agrees)
    BAD = "bad"        # outside the consensus window: signing would produce refused descriptors


class ClockBasis(Enum):
    """Which check judged the clock's offset."""

    PEERS = "peers_median"          # the median of the live peers' clocks and ours
    CONSENSUS = "consensus_window"  # alone: tor's consensus validity window
    NONE = "none"                   # alone and no consensus yet: only the kernel status


@dataclass(frozen=True)
class ClockAssessment:
    verdict: ClockVerdict
    reasons: tuple[str, ...]
    offset_hint: float | None = None  # seconds our clock is ahead (+) or behind (-)
    basis: ClockBasis = ClockBasis.NONE
    peers: int = 0  # live peers whose clocks went into the median
    outside_window: bool = False  # outside tor's consensus window (a gross error)

    @property
    def message(self) -> str:
        if not self.reasons:
            return "clock OK"
        return "; ".join(self.reasons)


def assess_clock(
    now: float,
    *,
    kernel_synced: bool | None,
    consensus_valid_after: float | None = None,
    consensus_valid_until: float | None = None,
    tolerance: float = 30.0,
    peer_offsets: Sequence[float] = (),
    skew_tolerance: float = 30.0,
) -> ClockAssessment:
    """Judge ``now`` against the kernel NTP status and either the live peers' clocks
    (``peer_offsets``: seconds our clock is ahead of each; median within
    ``skew_tolerance``) or, with no live peer, the consensus validity window."""
    reasons: list[str] = []
    verdict = ClockVerdict.OK
    offset: float | None = None
    basis = ClockBasis.NONE
    outside_window = False
    cluster_offset = median_offset(peer_offsets)
    if cluster_offset is not None:
        basis, offset = ClockBasis.PEERS, cluster_offset
        if abs(cluster_offset) > skew_tolerance:
            verdict = ClockVerdict.BAD
            side = "ahead of" if cluster_offset > 0 else "behind"
            reasons.append(
                f"clock is {abs(cluster_offset):.1f} s {side} the median of "
                f"{len(peer_offsets)} live peer(s) (tolerance {skew_tolerance:g} s)"
            )
    # The window always applies (a whole cluster can be wrong together); it names
    # the basis only for a node alone.
    if consensus_valid_after is not None and consensus_valid_until is not None:
        if basis is ClockBasis.NONE:
            basis = ClockBasis.CONSENSUS
        if now < consensus_valid_after - tolerance:
            offset = now - consensus_valid_after if offset is None else offset
            verdict, outside_window = ClockVerdict.BAD, True
            reasons.append(
                f"clock is {-offset:.0f} s behind the consensus valid-after time "
                f"(tolerance {tolerance:g} s)"
            )
        elif now > consensus_valid_until + tolerance:
            offset = now - consensus_valid_until if offset is None else offset
            verdict, outside_window = ClockVerdict.BAD, True
            reasons.append(
                f"clock is {offset:.0f} s past the consensus valid-until time "
                f"(tolerance {tolerance:g} s): clock ahead, or tor's consensus is stale"
            )
    if kernel_synced is False:
        reasons.append("kernel reports the clock is not NTP-synchronised")
        if verdict is ClockVerdict.OK:
            verdict = ClockVerdict.WARN
    elif kernel_synced is None:
        reasons.append("NTP synchronisation status unavailable")
        if verdict is ClockVerdict.OK:
            verdict = ClockVerdict.WARN
    return ClockAssessment(verdict=verdict, reasons=tuple(reasons), offset_hint=offset,
                           basis=basis, peers=len(peer_offsets), outside_window=outside_window)


@dataclass(frozen=True)
class Clock:
    """Wall clock with an optional fixed offset.

    The offset exists for tests of clock-skew handling (one node's process runs
    with a shifted clock); production code leaves it at 0.
    """

    offset: float = 0.0

    def now(self) -> float:
        return time.time() + self.offset
