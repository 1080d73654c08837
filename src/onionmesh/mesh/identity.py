"""What a node is (NodeIdentity) and how a peer is first named (PeerSeed)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from nacl.signing import SigningKey

from onionmesh.mesh.errors import MeshConfigError

NODE_ID_RE = re.compile(r"[a-z0-9._-]{1,64}")
MAX_ADDRESS_LEN = 255


def check_node_id(node_id: object) -> str:
    """Return ``node_id`` if it is 1..64 chars of ``[a-z0-9._-]``, else raise."""
    if not isinstance(node_id, str) or not NODE_ID_RE.fullmatch(node_id):
        raise MeshConfigError(f"node id must be 1..64 chars of [a-z0-9._-], got {node_id!r}")
    return node_id


@dataclass(frozen=True)
class NodeIdentity:
    """A node's name, signing key, election priority and reachable address."""

    node_id: str
    signing_seed: bytes = field(repr=False)  # secret: never in reprs or logs
    priority: int = 100  # higher wins the election
    eligible: bool = True  # holds the master key, may publish
    address: str = ""  # where peers reach it ("host:port")

    def __post_init__(self) -> None:
        check_node_id(self.node_id)
        if not isinstance(self.signing_seed, bytes) or len(self.signing_seed) != 32:
            raise MeshConfigError("NodeIdentity.signing_seed must be 32 bytes")
        if isinstance(self.priority, bool) or not isinstance(self.priority, int):
            raise MeshConfigError("NodeIdentity.priority must be an integer")
        if not 0 <= self.priority < 2**31:
            raise MeshConfigError(f"NodeIdentity.priority out of range: {self.priority}")
        if len(self.address) > MAX_ADDRESS_LEN:
            raise MeshConfigError("NodeIdentity.address is longer than 255 characters")

    @property
    def public_key(self) -> bytes:
        """The 32-byte ed25519 public key peers pin for this node."""
        return bytes(SigningKey(self.signing_seed).verify_key)


@dataclass(frozen=True)
class PeerSeed:
    """A bootstrap peer: its address, and optionally its id and public key.

    With a public key, the peer's messages must verify under it; without one
    the key is pinned on first contact (any sender must hold the cluster
    secret anyway, see auth.py).
    """

    node_id: str | None
    address: str
    public_key: bytes | None = None

    def __post_init__(self) -> None:
        if self.node_id is not None:
            check_node_id(self.node_id)
        if not self.address or len(self.address) > MAX_ADDRESS_LEN:
            raise MeshConfigError("PeerSeed.address must be 1..255 characters")
        if self.public_key is not None and len(self.public_key) != 32:
            raise MeshConfigError("PeerSeed.public_key must be 32 bytes")
