"""Typed errors of the mesh core.

Bad peer input never escapes ``MeshCore.receive_datagram`` as an exception:
the core catches these, counts ``reason`` and emits ``MessageRejected``.
They are raised directly only by the constructors of configuration and
identity objects, where a programming or operator error must be loud.
"""

from onionmesh.errors import OnionmeshError
from onionmesh.mesh.vocabulary import RejectReason


class MeshError(OnionmeshError):
    """Base class of every mesh-core error."""


class MeshConfigError(MeshError):
    """A MeshConfig or NodeIdentity value is out of range."""


class RejectedDatagram(MeshError):
    """A received datagram was refused; ``reason`` is the counter key."""

    def __init__(self, reason: RejectReason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
