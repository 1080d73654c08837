"""MeshConfig: the timing and size knobs of the mesh core.

Defaults are the ``[resilience]`` ones of docs/scenarios.md
(``dead_threshold = 3``, ``removal_grace_period = 30``). Every value is
validated on construction so a bad operator value fails at start-up, not
hours later inside a timer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from onionmesh.mesh.errors import MeshConfigError
from onionmesh.tor_limits import MAX_INTRO_POINTS


@dataclass(frozen=True)
class MeshConfig:
    """Timing (seconds) and limits shared by every node of a cluster."""

    heartbeat_interval: float = 5.0
    dead_threshold: int = 3  # missed heartbeats before a peer is DEAD
    removal_grace_period: float = 30.0  # after DEAD, before its intro points leave the plan
    lease_duration: float = 15.0  # publisher lease, renewed by each publisher heartbeat
    lease_grace: float = 2.0  # extra wait after lease expiry before a standby claims
    min_publish_interval: float = 10.0  # at most one PublishRequested per this interval
    refresh_interval: float = 3600.0  # periodic republish of an unchanged plan
    # Accepted |sender timestamp - our clock|: bounds how long a captured datagram is
    # worth anything (replays are refused by (boot, seq) and the echo, see auth.py).
    # Wide, so a peer with a wrong clock is still heard and the median can catch it.
    datagram_max_age: float = 300.0
    max_intro_points: int = MAX_INTRO_POINTS  # tor clients reject descriptors with more
    # Flap damping: a peer that came back `flap_threshold` times within
    # `flap_window` seconds must stay up `flap_hold` seconds before its intro
    # points re-enter the plan, so a bouncing node cannot cause a republish storm.
    flap_window: float = 300.0
    flap_threshold: int = 3
    flap_hold: float = 60.0
    # A node answers a digest mismatch (intro points or membership) at most once
    # per this many seconds per peer, so a lossy link cannot amplify traffic.
    resend_interval: float = 2.0
    # A heartbeat counts as missed only this fraction of an interval after it
    # was due, so ordinary network delay does not make every peer "suspect".
    heartbeat_slack: float = 0.25

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise MeshConfigError(f"MeshConfig.{f.name} must be a number, got {value!r}")
            if not math.isfinite(value) or value <= 0:
                raise MeshConfigError(f"MeshConfig.{f.name} must be finite and > 0, got {value}")
        for name in ("dead_threshold", "max_intro_points", "flap_threshold"):
            if not isinstance(getattr(self, name), int):
                raise MeshConfigError(f"MeshConfig.{name} must be an integer")
        if self.heartbeat_slack >= 1:
            raise MeshConfigError("MeshConfig.heartbeat_slack must be a fraction < 1")
        if self.max_intro_points > MAX_INTRO_POINTS:
            raise MeshConfigError(f"MeshConfig.max_intro_points must be <= {MAX_INTRO_POINTS} "
                                  "(tor's client limit)")
        if self.lease_duration <= self.heartbeat_interval:
            raise MeshConfigError(
                "MeshConfig.lease_duration must exceed heartbeat_interval, or every lease "
                "would expire between two renewals"
            )
