"""What the simulator needs from a mesh core, and how it builds one.

The simulator only talks to cores through :class:`CoreLike` (the sans-IO API
of ``onionmesh.mesh.MeshCore``) and builds them through a
:class:`CoreFactory`. The default factory imports ``onionmesh.mesh`` lazily so
the engine itself can be tested against a fake core without the real one.
Events are recognised by their class name (``PublishRequested``,
``MessageRejected``...), which keeps the engine independent of the core's
import paths.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from nacl.signing import SigningKey


class CoreLike(Protocol):
    """The sans-IO mesh core API the simulator drives."""

    def receive_datagram(self, data: bytes, addr: str, now: float) -> None: ...
    def handle_timer(self, now: float) -> None: ...
    def set_local_intro_points(self, sets: Mapping[int, Sequence[bytes]], now: float) -> None: ...
    def remove_peer(self, node_id: str, now: float) -> None: ...
    def report_foreign_descriptor(self, revision: int, intro_count: int, now: float) -> None: ...
    def shutdown(self, now: float) -> None: ...
    def get_timer(self) -> float | None: ...
    def datagrams_to_send(self, now: float) -> list[tuple[bytes, str]]: ...
    def next_event(self) -> Any | None: ...
    @property
    def is_publisher(self) -> bool: ...
    @property
    def publisher_id(self) -> str | None: ...
    def publish_plan(self) -> Any | None: ...
    def peers(self) -> Mapping[str, Any]: ...


@dataclass(frozen=True)
class Timing:
    """The config values the invariants are derived from (seconds)."""

    heartbeat_interval: float
    dead_threshold: int
    removal_grace_period: float
    lease_duration: float
    lease_grace: float
    min_publish_interval: float
    datagram_max_age: float
    max_intro_points: int

    @classmethod
    def from_config(cls, config: Any) -> Timing:
        """Read the timing fields off any config object with the contract's names."""
        return cls(
            heartbeat_interval=float(config.heartbeat_interval),
            dead_threshold=int(config.dead_threshold),
            removal_grace_period=float(config.removal_grace_period),
            lease_duration=float(config.lease_duration),
            lease_grace=float(config.lease_grace),
            min_publish_interval=float(config.min_publish_interval),
            datagram_max_age=float(config.datagram_max_age),
            max_intro_points=int(config.max_intro_points),
        )


@dataclass(frozen=True)
class NodeSpec:
    """Everything the simulator knows about one node's identity."""

    node_id: str
    signing_seed: bytes
    priority: int
    eligible: bool
    address: str

    @property
    def public_key(self) -> bytes:
        """The node's ed25519 public key (derived, never stored)."""
        return bytes(SigningKey(self.signing_seed).verify_key)

    def __repr__(self) -> str:
        # The seed is a secret in real deployments: keep it out of reprs and traces.
        return (
            f"NodeSpec(node_id={self.node_id!r}, priority={self.priority}, "
            f"eligible={self.eligible}, address={self.address!r})"
        )


class CoreFactory(Protocol):
    """Builds cores for the simulator (real MeshCore or a test fake)."""

    config: Any

    def make_core(
        self,
        spec: NodeSpec,
        cluster_secret: bytes,
        bootstrap: Sequence[NodeSpec],
        now: float,
    ) -> CoreLike: ...


class MeshCoreFactory:
    """Builds real ``onionmesh.mesh.MeshCore`` instances.

    With ``roster=True`` (profile ``fast-roster``) the cores run in roster mode: ``prepare``
    (called by the simulation once it knows every node) has an authority derived
    from the cluster secret sign an entry for each node (may publish = eligible),
    and every core of that cluster starts with a copy of that roster. A core made
    with another cluster secret (the adversary's rogues) gets none.
    """

    def __init__(self, config: Any = None, *, roster: bool = False, **overrides: Any) -> None:
        from onionmesh.mesh import config as mesh_config

        if config is None:
            config = mesh_config.MeshConfig(**overrides)
        self.config = config
        self.use_roster = roster
        self._roster: tuple[bytes, Any] | None = None  # (cluster secret, Roster)

    def prepare(self, specs: Sequence[NodeSpec], cluster_secret: bytes) -> None:
        """Sign the cluster's roster (deterministic: no randomness consumed)."""
        if not self.use_roster:
            return
        from onionmesh.mesh import roster as mesh_roster

        authority = mesh_roster.AuthorityKey(
            hashlib.blake2b(cluster_secret, digest_size=32, person=b"sim-authority").digest()
        )
        roster = mesh_roster.Roster(authority.public_key)
        for spec in specs:
            roster.merge_entry(authority.sign_entry(mesh_roster.MemberEntry(
                spec.node_id, spec.public_key, spec.eligible, 1)))
        self._roster = (cluster_secret, roster)

    def make_core(
        self,
        spec: NodeSpec,
        cluster_secret: bytes,
        bootstrap: Sequence[NodeSpec],
        now: float,
    ) -> CoreLike:
        from onionmesh.mesh import core as mesh_core
        from onionmesh.mesh import identity as mesh_identity

        identity = mesh_identity.NodeIdentity(
            node_id=spec.node_id,
            signing_seed=spec.signing_seed,
            priority=spec.priority,
            eligible=spec.eligible,
            address=spec.address,
        )
        seeds = [
            mesh_identity.PeerSeed(node_id=b.node_id, address=b.address, public_key=b.public_key)
            for b in bootstrap
        ]
        roster = None
        if self._roster is not None and self._roster[0] == cluster_secret:
            roster = self._roster[1].copy()
        return mesh_core.MeshCore(self.config, identity, cluster_secret, seeds, now, roster=roster)


def event_name(event: Any) -> str:
    """The class name the simulator dispatches on."""
    return type(event).__name__


def _plan_view(plan: Any) -> Any:
    if plan is None:
        return None
    points = {
        int(period): tuple((str(n), bytes(ip)) for n, ip in entries)
        for period, entries in sorted(plan.intro_points.items())
    }
    return (getattr(plan, "term", None), getattr(plan, "generation", None), points)


def state_digest(core: CoreLike) -> str:
    """A digest of everything observable about a core's state.

    Uses the core's own ``state_digest()`` when it has one, otherwise hashes
    the public views (role, term, publisher, plan, peers, next timer).
    """
    own = getattr(core, "state_digest", None)
    if callable(own):
        value = own()
        return value.hex() if isinstance(value, bytes) else str(value)
    peers = core.peers()
    view = (
        bool(core.is_publisher),
        getattr(core, "term", None),
        core.publisher_id,
        _plan_view(core.publish_plan()),
        tuple(sorted((str(k), repr(v)) for k, v in peers.items())),
        core.get_timer(),
    )
    return hashlib.sha256(repr(view).encode()).hexdigest()
