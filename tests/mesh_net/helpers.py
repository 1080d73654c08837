"""Shared steps of the DaemonLab tests: intro keys as the node's tor and a client see them."""

from __future__ import annotations

import contextlib

from onionmesh.errors import OnionmeshError
from onionmesh.testnet import TorClient
from onionmesh.testnet.daemonlab import DaemonLab
from onionmesh.testnet.nodes import run_coroutine
from onionmesh.tor.control import TorController
from tests.cluster.helpers import descriptor_intro_keys, fetched_intro_keys


async def own_intro_keys(lab: DaemonLab, index: int) -> set[bytes]:
    """The intro keys of the descriptor host ``index``'s tor holds now for its node."""
    doc = lab.status(index)
    assert doc is not None and doc.node.onion_address, f"n{index} reports no onion address"
    controller = await TorController.connect(port=lab.hosts[index].tor.control_port)
    return await descriptor_intro_keys(controller, doc.node.onion_address)


async def node_intro_keys(lab: DaemonLab, index: int, client: TorClient) -> set[bytes]:
    """The node's intro keys in both its descriptors: its tor's current one and the one a
    client fetches now (around a period start the master carries either)."""
    keys = await own_intro_keys(lab, index)
    doc = lab.status(index)
    if doc is not None and doc.node.onion_address:
        with contextlib.suppress(OnionmeshError):
            keys |= await fetched_intro_keys(client, doc.node.onion_address)
    return keys


def served_keys(lab: DaemonLab, client: TorClient) -> set[bytes]:
    """The intro keys of the master descriptor ``client`` fetches from the HSDirs now."""
    return run_coroutine(fetched_intro_keys(client, lab.master_address), timeout=60)


def node_served(lab: DaemonLab, index: int, client: TorClient) -> bool:
    """Some of node ``index``'s intro points are in the master descriptor ``client``
    fetches from the HSDirs now (HSFETCH: a real fetch, not the client's cache)."""
    keys = run_coroutine(node_intro_keys(lab, index, client), timeout=90)
    try:
        served = served_keys(lab, client)
    except OnionmeshError:  # a fetch tor did not launch (HSDirs "recently asked"): again
        return False
    return bool(keys & served)
