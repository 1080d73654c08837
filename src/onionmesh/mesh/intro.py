"""Intro-point sets: validation against the wire limits, and their digest.

A node's intro points are opaque bytes (the shell's encoding of tor's intro
point), grouped per time period because tor keeps one set per descriptor.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

from onionmesh.mesh.errors import MeshError
from onionmesh.mesh.messages import MAX_INTRO_POINT_BYTES, MAX_INTRO_POINTS_PER_SET, MAX_PERIODS

EMPTY_DIGEST = hashlib.blake2b(b"", digest_size=16, person=b"onionmesh-intro").digest()


class IntroSetsError(MeshError):
    """Intro-point sets the wire format cannot carry."""


def intro_digest(sets: Mapping[int, Sequence[bytes]]) -> bytes:
    """A 16-byte digest of intro-point sets, independent of dict order."""
    h = hashlib.blake2b(digest_size=16, person=b"onionmesh-intro")
    for period in sorted(sets):
        points = sets[period]
        if not points:
            continue
        h.update(period.to_bytes(4, "big") + len(points).to_bytes(2, "big"))
        for ip in points:
            h.update(len(ip).to_bytes(4, "big") + ip)
    return h.digest()


def check_intro_sets(sets: Mapping[int, Sequence[bytes]]) -> dict[int, tuple[bytes, ...]]:
    """Validate local intro-point sets; return them without empty periods."""
    clean: dict[int, tuple[bytes, ...]] = {}
    for period, points in sets.items():
        if isinstance(period, bool) or not isinstance(period, int) or not 0 <= period < 2**32:
            raise IntroSetsError(f"time period must be a 32-bit unsigned int: {period!r}")
        pts = tuple(points)
        if len(pts) > MAX_INTRO_POINTS_PER_SET:
            raise IntroSetsError(
                f"period {period}: {len(pts)} intro points > {MAX_INTRO_POINTS_PER_SET}"
            )
        for ip in pts:
            if not isinstance(ip, bytes) or not 1 <= len(ip) <= MAX_INTRO_POINT_BYTES:
                raise IntroSetsError(
                    f"period {period}: an intro point must be 1..{MAX_INTRO_POINT_BYTES} bytes"
                )
        if pts:
            clean[period] = pts
    if len(clean) > MAX_PERIODS:
        raise IntroSetsError(f"{len(clean)} time periods > {MAX_PERIODS}")
    return clean
