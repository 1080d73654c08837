"""A private Tor network on loopback, for tests and the demo.

Entry points: :class:`TorNetwork` (start/stop, ``add_client``, ``add_onion_service``,
``consensus_text``), :func:`http_get_via_socks`, the backend in ``onionmesh.testnet.backend``
and the ``onionmesh testnet up|down|status`` command (``onionmesh.testnet.command``).
"""

from onionmesh.testnet.errors import (
    KeyGenerationError,
    PortAllocationError,
    SocksError,
    StateFileError,
    TestnetError,
    TestnetTimeout,
)
from onionmesh.testnet.network import TorNetwork, authorities_for_hsdirs
from onionmesh.testnet.nodes import ServiceInstance, TorClient, TorNode
from onionmesh.testnet.socks import HttpResponse, http_get_via_socks, http_get_via_socks_async

__all__ = [
    "HttpResponse",
    "KeyGenerationError",
    "PortAllocationError",
    "ServiceInstance",
    "SocksError",
    "StateFileError",
    "TestnetError",
    "TestnetTimeout",
    "TorClient",
    "TorNetwork",
    "TorNode",
    "authorities_for_hsdirs",
    "http_get_via_socks",
    "http_get_via_socks_async",
]
