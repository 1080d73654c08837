"""The simulated network: per-link loss, delay, duplication, reordering and partitions.

Links are directed (``src -> dst`` node indices) so asymmetric partitions are
just one blocked direction. Every random draw comes from the run's single
``random.Random``; the order of draws is fixed by the order of sends, so the
network is deterministic from the seed.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass

from onionmesh.sim.errors import ScenarioError


@dataclass(frozen=True)
class LinkProfile:
    """How one directed link treats datagrams.

    ``loss`` and ``duplicate`` are probabilities; a duplicate is a second copy
    with its own delay. ``reorder`` is the probability that a copy gets an
    extra delay of up to ``reorder_extra`` seconds, which overtakes later sends.
    """

    loss: float = 0.0
    delay_min: float = 0.002
    delay_max: float = 0.050
    duplicate: float = 0.0
    reorder: float = 0.0
    reorder_extra: float = 0.5

    def __post_init__(self) -> None:
        for name in ("loss", "duplicate", "reorder"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ScenarioError(f"link {name} must be a probability in [0, 1], got {value}")
        if not 0.0 <= self.delay_min <= self.delay_max:
            raise ScenarioError(
                f"link delays must satisfy 0 <= delay_min <= delay_max, got "
                f"{self.delay_min}..{self.delay_max}"
            )
        if self.reorder_extra < 0:
            raise ScenarioError(f"link reorder_extra must be >= 0, got {self.reorder_extra}")

    @property
    def worst_delay(self) -> float:
        """The longest a delivered copy can take on this link."""
        return self.delay_max + (self.reorder_extra if self.reorder > 0 else 0.0)


CLEAN = LinkProfile()


class Network:
    """Directed links between node indices, with partitions layered on top."""

    def __init__(self, rng: random.Random, clean: LinkProfile = CLEAN) -> None:
        self._rng = rng
        self.clean = clean
        self._default = clean
        self._links: dict[tuple[int, int], LinkProfile] = {}
        self._blocked: set[tuple[int, int]] = set()

    # -- faults ---------------------------------------------------------------
    def degrade(self, profile: LinkProfile, links: Iterable[tuple[int, int]] | None = None) -> None:
        """Apply ``profile`` to the given directed links, or to every link if None."""
        if links is None:
            self._default = profile
            self._links.clear()
        else:
            for link in links:
                self._links[link] = profile

    def block(self, src: int, dst: int) -> None:
        """Drop everything sent from ``src`` to ``dst`` (one direction only)."""
        self._blocked.add((src, dst))

    def partition(self, groups: list[list[int]]) -> None:
        """Split nodes into groups that cannot reach each other (both directions)."""
        for i, group in enumerate(groups):
            for other in groups[i + 1 :]:
                for a in group:
                    for b in other:
                        self._blocked.add((a, b))
                        self._blocked.add((b, a))

    def isolate(self, node: int, nodes: Iterable[int]) -> None:
        """Cut ``node`` off from every other node in both directions."""
        for other in nodes:
            if other != node:
                self._blocked.add((node, other))
                self._blocked.add((other, node))

    def heal(self) -> None:
        """Remove every partition and degradation: back to the clean profile."""
        self._blocked.clear()
        self._links.clear()
        self._default = self.clean

    # -- queries ----------------------------------------------------------------
    @property
    def is_clean(self) -> bool:
        """True when no partition or degradation is in force."""
        return not self._blocked and not self._links and self._default == self.clean

    def reachable(self, src: int, dst: int) -> bool:
        """Whether ``src -> dst`` is not blocked by a partition."""
        return (src, dst) not in self._blocked

    def profile(self, src: int, dst: int) -> LinkProfile:
        """The profile currently applied to ``src -> dst``."""
        return self._links.get((src, dst), self._default)

    def delays(self, src: int, dst: int) -> list[float]:
        """Delays of the copies of one datagram sent ``src -> dst`` (empty if lost)."""
        if (src, dst) in self._blocked:
            return []
        prof = self.profile(src, dst)
        rng = self._rng
        if prof.loss and rng.random() < prof.loss:
            return []
        copies = 2 if prof.duplicate and rng.random() < prof.duplicate else 1
        out = []
        for _ in range(copies):
            delay = rng.uniform(prof.delay_min, prof.delay_max)
            if prof.reorder and rng.random() < prof.reorder:
                delay += rng.uniform(0.0, prof.reorder_extra)
            out.append(delay)
        return out
