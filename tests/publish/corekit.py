"""Pure fixtures for PublishCore tests and the simulator: targets, intro points, a signer."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from onionmesh.crypto.blinding import blind_identity
from onionmesh.crypto.keys import Ed25519Identity
from onionmesh.hsdir.timeperiod import DescriptorPeriod
from onionmesh.publish.core import PeriodTarget

LENGTH = 1440
T0 = 1_700_000_000.0


@dataclass(frozen=True)
class Point:
    auth_key: bytes


def points(*names: str) -> list[Point]:
    return [Point(name.encode().ljust(32, b".")) for name in names]


def hsdirs(prefix: str, n: int = 8) -> tuple[str, ...]:
    return tuple(f"{prefix}{i:02X}".ljust(40, "0").upper() for i in range(n))


def targets(master: Ed25519Identity, first: int = 19700,
            dirs: dict[int, tuple[str, ...]] | None = None) -> dict[int, PeriodTarget]:
    out = {}
    for number, is_first in ((first, True), (first + 1, False)):
        period = DescriptorPeriod(is_first, number, LENGTH, b"\0" * 32, int(T0) - 3600)
        chosen = (dirs or {}).get(number) or hsdirs("A" if is_first else "B")
        out[number] = PeriodTarget(period, blind_identity(master, number, LENGTH), chosen)
    return out


class TextSigner:
    """A stand-in for the tor-format builder: the text names period, revision, keys."""

    def __init__(self) -> None:
        self.built: list[tuple[int, int, int]] = []

    def build(self, target: PeriodTarget, revision: int, pts: Sequence[Point],
              now: float) -> str:
        self.built.append((target.number, revision, len(pts)))
        return f"desc {target.number} {revision} {len(pts)}"

    def forget_periods(self, keep: Iterable[int]) -> None:
        pass
