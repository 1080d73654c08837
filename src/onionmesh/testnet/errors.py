"""Typed errors of the private Tor network harness."""

from __future__ import annotations

from typing import ClassVar

from onionmesh.errors import OnionmeshError


class TestnetError(OnionmeshError):
    """The private Tor network could not be built, started or used."""

    __test__ = False  # not a pytest test class despite the name


class TestnetTimeout(TestnetError, TimeoutError):
    """A bounded wait of the harness ran out; the message carries the tor log tail."""

    __test__ = False


class PortAllocationError(TestnetError):
    """No free block of loopback ports could be reserved."""


class KeyGenerationError(TestnetError):
    """tor-gencert or ``tor --list-fingerprint`` failed."""


class SocksError(TestnetError):
    """A SOCKS5 request through tor failed; ``code`` is the SOCKS reply code (or None)."""

    # Reply codes tor sends with ExtendedErrors (tor-manual, SocksPort ExtendedErrors).
    MEANINGS: ClassVar[dict[int, str]] = {
        0x01: "general failure",
        0x04: "host unreachable",
        0x05: "connection refused",
        0x06: "TTL expired",
        0xF0: "onion service descriptor can not be found",
        0xF1: "onion service descriptor is invalid",
        0xF2: "onion service introduction failed",
        0xF3: "onion service rendezvous failed",
        0xF4: "onion service missing client authorization",
        0xF5: "onion service wrong client authorization",
        0xF6: "onion service invalid address",
        0xF7: "onion service introduction timed out",
    }

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class StateFileError(TestnetError):
    """The testnet state file is missing or malformed."""


class ClusterError(TestnetError):
    """A process cluster (:mod:`onionmesh.testnet.node_cluster`) could not come up, a node
    died on its own, or a bounded wait for a cluster state ran out."""
