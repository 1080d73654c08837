"""Deterministic simulation of many mesh cores over a simulated clock and network.

Entry points: :func:`run_seed` (one run), :func:`soak` / :func:`soak_jobs`
(many), :class:`Simulation` (step a run yourself with ``begin`` and
``run_until``), and the command line ``python -m onionmesh.sim run|soak``.
See docs/simulation.md.
"""

from onionmesh.sim.coreapi import CoreFactory, CoreLike, MeshCoreFactory, NodeSpec, Timing
from onionmesh.sim.errors import InvariantViolation, ScenarioError, SimulationError
from onionmesh.sim.runner import PROFILES, RunResult, run_seed, soak, soak_jobs
from onionmesh.sim.scenario import SimParams
from onionmesh.sim.simulation import Simulation

__all__ = [
    "PROFILES",
    "CoreFactory",
    "CoreLike",
    "InvariantViolation",
    "MeshCoreFactory",
    "NodeSpec",
    "RunResult",
    "ScenarioError",
    "SimParams",
    "Simulation",
    "SimulationError",
    "Timing",
    "run_seed",
    "soak",
    "soak_jobs",
]
