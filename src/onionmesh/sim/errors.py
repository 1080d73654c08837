"""Typed errors of the simulator.

A bad scenario parameter raises :class:`ScenarioError`; a core that breaks a
mesh invariant during a run raises :class:`InvariantViolation`, which carries
what is needed to replay the run (seed and node count).
"""

from __future__ import annotations

from onionmesh.errors import OnionmeshError


class SimulationError(OnionmeshError):
    """Base class of every error the simulator raises."""


class ScenarioError(SimulationError):
    """A simulation parameter (node count, duration, seed range...) is invalid."""


class InvariantViolation(SimulationError):
    """A mesh core broke one of the invariants the simulator checks.

    ``invariant`` names the rule, ``at`` is the simulated time in seconds and
    ``detail`` says what was observed. The runner adds the seed and node count
    so the message can be turned into a one-line replay command.
    """

    def __init__(self, invariant: str, at: float, detail: str) -> None:
        self.invariant = invariant
        self.at = at
        self.detail = detail
        super().__init__(f"invariant {invariant!r} violated at t={at:.3f}s: {detail}")
