"""onionmesh: a self-healing load balancer for Tor v3 onion services."""

__version__ = "0.1.0"
