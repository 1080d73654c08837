"""Issue #11: two nodes whose intro points share relays, on a network of only 4 relays.

Each node's tor picks 3 intro points among the 4 relays, so the two nodes share at least
two relays (3 + 3 > 4). A tor client reaches only the first intro point of a descriptor on
a given relay, so the master descriptor must never carry two on one relay; and both nodes
must still get clients. The network is this module's own (the session network has 10).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from onionmesh.descriptor.intro import LS_LEGACY_ID
from onionmesh.descriptor.parse import parse_descriptor
from onionmesh.hsdir.timeperiod import period_length_minutes
from onionmesh.publish.publisher import fetch_consensus
from onionmesh.testnet import SocksError, TorNetwork
from onionmesh.testnet.node_cluster import FAST_PROFILE, NodeCluster
from onionmesh.tor.control import TorController
from onionmesh.tor.intro_points import fetch_descriptor

from .helpers import wait_healthy
from .test_intro_health import own_intro_points

pytestmark = [pytest.mark.tor, pytest.mark.tornet, pytest.mark.slow]

MAX_TRIES = 30  # browser-like GETs until both nodes answered


@pytest.fixture(scope="module")
def small_net(tmp_path_factory) -> Iterator[TorNetwork]:
    network = TorNetwork(tmp_path_factory.mktemp("tornet4"), 4)
    network.start()
    try:
        yield network
    finally:
        network.stop()
        assert not network.leftover_pids()


def relay(ip) -> bytes:
    return next(s.data for s in ip.link_specifiers if s.type == LS_LEGACY_ID)


async def test_descriptor_never_has_two_intro_points_on_one_relay_and_both_nodes_answer(
        small_net: TorNetwork):
    base = Path(tempfile.mkdtemp(prefix="omsr-"))
    cluster = NodeCluster(small_net, base, 2, settings=FAST_PROFILE)
    client = await small_net.aadd_client("srclient")
    try:
        cluster.create()
        cluster.start()
        docs = await wait_healthy(cluster, timeout=240)
        own = {}
        for node_id, doc in docs.items():
            address = doc.node.onion_address.removesuffix(".onion")
            own[node_id] = await own_intro_points(cluster, node_id, address)
        shared = {relay(ip) for ip in own["n1"]} & {relay(ip) for ip in own["n2"]}
        assert shared, "the nodes' intro points share no relay: the test shows nothing"

        controller = await TorController.connect(port=client.control_port)
        try:
            length = period_length_minutes(await fetch_consensus(controller))
            text = await fetch_descriptor(controller, cluster.master_address, timeout=30.0)
        finally:
            await controller.close()
        served = parse_descriptor(text, cluster.master_address, period_length=length)
        relays = [relay(ip) for ip in served.intro_points]
        assert len(relays) == len(set(relays)), "two intro points on one relay"
        owners = {node_id for node_id, points in own.items()
                  for ip in points if ip.auth_key in {p.auth_key for p in served.intro_points}}
        assert owners == {"n1", "n2"}

        answered, retried = set(), 0
        for _ in range(MAX_TRIES):
            try:
                response = await client.abrowser_get(cluster.master_address, timeout=30.0)
            except SocksError:
                retried += 1
                response = await client.abrowser_get(cluster.master_address, timeout=30.0)
            assert response.status == 200
            answered.add(response.text.strip())
            if answered == {"n1", "n2"}:
                break
        assert answered == {"n1", "n2"}, answered
    finally:
        cluster.stop()
        leftovers = cluster.leftover_pids()
        shutil.rmtree(base, ignore_errors=True)
        assert not leftovers
