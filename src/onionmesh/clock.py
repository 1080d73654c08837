"""Clock validation: is this node's clock good enough to sign descriptors?

A wrong clock breaks an onion service quietly: descriptor-signing certs expire
early or start in the future, revision counters (seconds since the SRV run
started) go backwards so HSDirs refuse uploads, and the node picks the wrong
time period. So the clock is checked on startup and before signing
(docs/scenarios.md §8).

Two independent signals are used:

* the kernel's NTP discipline status (``adjtimex``): "synchronised" means an
  NTP daemon is steering the clock. Containers and test machines often have
  none, so an unsynchronised kernel clock alone is only a warning;
* the tor consensus: its ``valid-after``..``valid-until`` window was signed by
  the directory authorities, so a local clock outside that window (plus the
  tolerance) is wrong, whatever NTP says.

``assess_clock`` is pure; ``kernel_ntp_synchronized`` is the only I/O here.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import time
from dataclasses import dataclass
from enum import Enum

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


@dataclass(frozen=True)
class ClockAssessment:
    verdict: ClockVerdict
    reasons: tuple[str, ...]
    offset_hint: float | None = None  # seconds our clock is ahead (+) or behind (-) the window

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
) -> ClockAssessment:
    """Judge ``now`` against the kernel NTP status and a consensus validity window."""
    reasons: list[str] = []
    verdict = ClockVerdict.OK
    offset: float | None = None
    if consensus_valid_after is not None and consensus_valid_until is not None:
        if now < consensus_valid_after - tolerance:
            offset = now - consensus_valid_after
            verdict = ClockVerdict.BAD
            reasons.append(
                f"clock is {-offset:.0f} s behind the consensus valid-after time "
                f"(tolerance {tolerance:g} s)"
            )
        elif now > consensus_valid_until + tolerance:
            offset = now - consensus_valid_until
            verdict = ClockVerdict.BAD
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
    return ClockAssessment(verdict=verdict, reasons=tuple(reasons), offset_hint=offset)


@dataclass(frozen=True)
class Clock:
    """Wall clock with an optional fixed offset.

    The offset exists for tests of clock-skew handling (one node's process runs
    with a shifted clock); production code leaves it at 0.
    """

    offset: float = 0.0

    def now(self) -> float:
        return time.time() + self.offset
