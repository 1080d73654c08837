"""The master descriptor itself: fair intro-point merge, revision counter, tor-compatible build.

Pure functions (no I/O) used by the publisher shell.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from onionmesh.crypto.blinding import BlindedKey
from onionmesh.crypto.keys import Ed25519Identity
from onionmesh.descriptor.build import build_descriptor
from onionmesh.descriptor.intro import IntroPoint
from onionmesh.hsdir.revision import revision_counter

MAX_INTRO_POINTS = 20  # tor clients reject descriptors with more

IntroSource = Callable[[int], Sequence[IntroPoint]]  # period number -> intro points


def merge_intro_points(
    per_node: Sequence[Sequence[IntroPoint]], limit: int = MAX_INTRO_POINTS
) -> list[IntroPoint]:
    """Round-robin over nodes so every node gets a fair share of the ``limit`` slots."""
    merged: list[IntroPoint] = []
    seen: set[bytes] = set()
    queues = [list(points) for points in per_node]
    while len(merged) < limit and any(queues):
        for queue in queues:
            while queue:
                point = queue.pop(0)
                if point.auth_key not in seen:
                    seen.add(point.auth_key)
                    merged.append(point)
                    break
            if len(merged) >= limit:
                break
    return merged


def revision_for(blinded: BlindedKey, srv_start: int, now: float, last: int | None) -> int:
    """tor's time-based revision counter, forced above ``last`` (never reused)."""
    value = revision_counter(blinded, srv_start, now)
    return value if last is None or value > last else last + 1


def build_master_descriptor(master: Ed25519Identity, period: int, period_length: int,
                            revision: int, points: Sequence[IntroPoint], *, now: float,
                            lifetime_minutes: int) -> str:
    """``build_descriptor`` for a master: no client auth, our lifetime.

    tor clients refuse the whole descriptor (BAD_DESC, "Descriptor client authorization
    section can't be decoded") unless every auth-client entry carries a 16-byte cookie
    (HS_DESC_ENCRYPED_COOKIE_LEN); tests/publish/test_master_descriptor.py checks that.
    """
    return build_descriptor(master, period, period_length, revision, points, now=now,
                            lifetime_minutes=lifetime_minutes)
