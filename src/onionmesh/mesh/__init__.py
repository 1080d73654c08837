"""The sans-IO coordination core: messages, membership, election and the publish plan.

No sockets, clocks, threads or randomness: a shell (or the simulator) feeds a
``MeshCore`` datagrams, timer ticks and local intro points with its own
``now``, and drains datagrams to send, events to log and the next timer.

Where to look:

=================  ==========================================================
config.py          MeshConfig: intervals, thresholds, limits (validated)
identity.py        NodeIdentity (who this node is), PeerSeed (bootstrap peers)
roster.py          the signed roster: authority-signed member entries and
                   revocations, merge rules, 0600 files (docs/security.md)
join.py            the join exchange as pure sponsor/joiner state machines
messages.py        the versioned wire schema (msgspec Structs, msgpack arrays)
codec.py           strict decoding and the 60,000-byte datagram limit
auth.py            cluster MAC, ed25519 signatures, replay windows, timestamp
                   window, the per-boot challenge/echo handshake
intro.py           intro-point sets: validation and digest
handshake.py       the challenge each peer must echo (first contact, restarts)
membership.py      where peers become suspect and are declared DEAD; removal
                   grace, recovery, flap damping
election.py        leases, terms, who may claim when, conflict resolution
plan.py            which intro points are published, and the publish rate limit
vocabulary.py      the enums: peer states, roles, outcomes, reject reasons, triggers
events.py          what the core reports, with the log lines of docs/scenarios.md
core.py            MeshCore: wires the above together, gossip, intro exchange,
                   roster mode and the bounds on what any peer can make it do
=================  ==========================================================
"""

from onionmesh.mesh.config import MeshConfig
from onionmesh.mesh.core import MeshCore
from onionmesh.mesh.errors import MeshConfigError, MeshError, RejectedDatagram
from onionmesh.mesh.identity import NodeIdentity, PeerSeed
from onionmesh.mesh.intro import IntroSetsError
from onionmesh.mesh.membership import PeerView
from onionmesh.mesh.plan import PublishPlan

__all__ = [
    "IntroSetsError",
    "MeshConfig",
    "MeshConfigError",
    "MeshCore",
    "MeshError",
    "NodeIdentity",
    "PeerSeed",
    "PeerView",
    "PublishPlan",
    "RejectedDatagram",
]
