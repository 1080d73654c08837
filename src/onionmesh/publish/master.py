"""The master descriptor itself: fair intro-point merge, revision counter, tor-compatible build.

Pure functions (no I/O) used by the publisher shell.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from onionmesh.crypto.blinding import BlindedKey
from onionmesh.crypto.keys import Ed25519Identity
from onionmesh.descriptor import layers as _desc_layers
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


# tor's auth-client entries carry a 16-byte encrypted cookie (HS_DESC_ENCRYPED_COOKIE_LEN,
# hs_descriptor.h) and tor clients reject a descriptor whose entries do not decode to
# exactly that ("Descriptor client authorization section can't be decoded", BAD_DESC).
_TOR_COOKIE_LEN = 16


def build_master_descriptor(master: Ed25519Identity, period: int, period_length: int,
                            revision: int, points: Sequence[IntroPoint], *, now: float,
                            lifetime_minutes: int) -> str:
    """``build_descriptor`` for a master without client auth, with tor-sized fake clients.

    WORKAROUND: onionmesh.descriptor.layers (as of 49406b3) sizes the fake auth-client
    cookies with COOKIE_LEN = 32, which tor clients refuse. Until that is fixed there,
    the constant is set to tor's 16 for the duration of this synchronous call (no client
    auth here, so only the fake entries read it); a no-op once it equals tor's value.
    """
    original = getattr(_desc_layers, "COOKIE_LEN", _TOR_COOKIE_LEN)
    if original != _TOR_COOKIE_LEN:
        _desc_layers.COOKIE_LEN = _TOR_COOKIE_LEN
    try:
        return build_descriptor(master, period, period_length, revision, points, now=now,
                                lifetime_minutes=lifetime_minutes)
    finally:
        if original != _TOR_COOKIE_LEN:
            _desc_layers.COOKIE_LEN = original
