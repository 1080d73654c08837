"""An insider who holds one node's disk and memory.

As the node itself it seals through the captured core (``MeshCore.seal``: the node's
boot, its sequence counter, which the thief shares like anyone holding its memory, and
the challenges it has learnt). Under any other id it signs with the stolen node key and
cluster secret, built from the public ``Sealer`` and ``ClusterKey``.
"""

from __future__ import annotations

from onionmesh.mesh.auth import ClusterKey, Sealer
from onionmesh.mesh.messages import Message

from .netloop import SECRET, Net


class Thief:
    def __init__(self, net: Net, node_id: str) -> None:
        self.net = net
        self.node_id = node_id
        self._sealers: dict[str, Sealer] = {}

    def seal(self, body: Message, dst: str, as_id: str | None = None,
             echo: bytes | None = None) -> bytes:
        """``body`` for ``dst``, signed with the stolen key as ``as_id`` (default: the
        node itself), echoing ``echo`` (default: the challenge the node learnt)."""
        core = self.net.cores[self.node_id]
        now = self.net.local(self.node_id)
        if as_id is None or as_id == self.node_id:
            return core.seal(body, dst, now, echo)
        sealer = self._sealers.get(as_id)
        if sealer is None or sealer.boot != core.boot_id:
            seed = self.net.identities[self.node_id].signing_seed
            sealer = Sealer(as_id, seed, ClusterKey(SECRET), core.boot_id)
            self._sealers[as_id] = sealer
        if echo is None:
            echo = core.known_challenges().get(dst, b"")
        return sealer.seal(body, now, dst, echo)
