"""A one-slot model of the HSDirs, for the publishers' conflict detection.

Every ``PublishRequested`` is an upload; the HSDirs keep the latest one (tor
keeps the descriptor with the highest revision, and a later upload has a
higher revision). Tor is reachable from every node whatever the mesh
partitions are, so a publisher cut off from the cluster still uploads. Half
a heartbeat after its own upload, a publisher's shell fetches the descriptor
back; if the latest upload is not its own it reports it with
``report_foreign_descriptor`` (revision, intro-point count), which is what
drives the "prefer the node with the most intro points" rule (docs/scenarios.md §7).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Upload:
    """One descriptor upload as the HSDirs saw it."""

    node: int
    incarnation: int
    revision: int
    intro_count: int
    at: float


class HsdirModel:
    """The latest descriptor on the HSDirs and the revision counter."""

    def __init__(self) -> None:
        self.latest: Upload | None = None
        self.uploads = 0

    def upload(self, node: int, incarnation: int, intro_count: int, at: float) -> Upload:
        """Record an upload; it becomes what clients fetch."""
        self.uploads += 1
        self.latest = Upload(node, incarnation, self.uploads, intro_count, at)
        return self.latest

    def foreign_for(self, node: int, incarnation: int) -> Upload | None:
        """The latest upload if it is not this node incarnation's own, else None."""
        latest = self.latest
        if latest is None or (latest.node, latest.incarnation) == (node, incarnation):
            return None
        return latest
