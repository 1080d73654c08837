"""The adversary: forged and replayed datagrams built from what it overheard.

It only ever replays datagrams that the same incarnation of the same
receiver already accepted (replaying a datagram the network lost, or one sent
before the receiver restarted, would be a legitimate late delivery, and one
rejected for its timestamp may legitimately become valid later if its
sender's clock was ahead: neither is a replay the receiver can recognise).
Forgeries are mutations of overheard datagrams, random bytes,
oversized blobs, and well-formed messages from rogue cores that do not hold
the cluster secret (one of them also claims a real node's id).
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass

KINDS = (
    "replay",
    "replay_spoofed",
    "bitflip",
    "truncate",
    "extend",
    "garbage",
    "oversized",
    "empty",
    "rogue",
)


@dataclass(frozen=True)
class Overheard:
    """A datagram ``dst`` (at incarnation ``incarnation``) accepted from ``src_addr``."""

    dst: int
    incarnation: int
    payload: bytes
    src_addr: str


class Adversary:
    """Keeps a bounded sample of overheard traffic and turns it into attacks."""

    ADDRESS = "adversary.sim:6666"

    def __init__(self, rng: random.Random, memory: int = 256) -> None:
        self._rng = rng
        self._heard: deque[Overheard] = deque(maxlen=memory)

    def overhear(self, item: Overheard) -> None:
        """Remember an accepted datagram (the adversary taps every link)."""
        self._heard.append(item)

    def pick_replay(self, incarnations: dict[int, int]) -> Overheard | None:
        """A remembered datagram whose receiver is still the same incarnation."""
        fresh = [h for h in self._heard if incarnations.get(h.dst) == h.incarnation]
        return self._rng.choice(fresh) if fresh else None

    def mutate(self, kind: str, payload: bytes) -> bytes:
        """A forged variant of ``payload`` for the mutation kinds."""
        rng = self._rng
        if kind == "bitflip" and payload:
            data = bytearray(payload)
            for _ in range(rng.randint(1, 3)):
                i = rng.randrange(len(data))
                data[i] ^= 1 << rng.randrange(8)
            return bytes(data)
        if kind == "truncate" and len(payload) > 1:
            return payload[: rng.randrange(1, len(payload))]
        if kind == "extend":
            return payload + rng.randbytes(rng.randint(1, 64))
        if kind == "oversized":
            return payload + rng.randbytes(200_000)
        if kind == "empty":
            return b""
        return rng.randbytes(rng.randint(1, 1500))
