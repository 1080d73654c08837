"""Torrc lines that put a managed node tor onto a private test network.

For tests and ``make demo``: a node joins a ``TorNetwork`` by carrying the
network's ``DirAuthority`` lines (read from an authority's torrc, which the
harness writes) plus ``TestingTorNetwork 1`` in ``[tor] extra_torrc``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from onionmesh.node.errors import NodeConfigError

# TestingTorNetwork shortens tor's timers to match the network's fast voting.
_TESTING = ("TestingTorNetwork 1",)


def network_tor_options(network: Any) -> list[str]:
    """``extra_torrc`` lines for a node tor on ``network`` (an onionmesh.testnet.TorNetwork)."""
    authorities = getattr(network, "authorities", None)
    if not authorities:
        raise NodeConfigError("the test network has no authorities (is it started?)")
    torrc = Path(authorities[0].data_dir) / "torrc"
    return network_tor_options_from_torrc(torrc)


def network_tor_options_from_torrc(torrc: Path) -> list[str]:
    try:
        lines = torrc.read_text().splitlines()
    except OSError as exc:
        raise NodeConfigError(f"cannot read {torrc}: {exc.strerror}") from None
    dir_auths = [line.strip() for line in lines if line.startswith("DirAuthority ")]
    if not dir_auths:
        raise NodeConfigError(f"{torrc} has no DirAuthority lines")
    return [*_TESTING, *dir_auths]
