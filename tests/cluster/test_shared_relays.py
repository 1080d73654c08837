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
from onionmesh.errors import OnionmeshError
from onionmesh.testnet import SocksError, TorNetwork
from onionmesh.testnet.node_cluster import FAST_PROFILE, NodeCluster
from tests.eventually import aeventually

from .helpers import keep_logs, wait_healthy
from .test_intro_health import node_keys, own_intro_points, served_intro_points

pytestmark = [pytest.mark.tor, pytest.mark.tornet, pytest.mark.slow]

MAX_TRIES = 30  # browser-like GETs until both nodes answered
SERVED_BOUND = 120.0  # a publish (fast profile) plus the bridge window after a period start


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

        # Judged against both descriptors each node's tor has (its current one and the
        # one a client fetches now): around a period start the master carries either.
        addresses = {n: d.node.onion_address.removesuffix(".onion") for n, d in docs.items()}
        duplicated: list[int] = []

        async def both_nodes_served() -> bool:
            try:
                served = await served_intro_points(client, cluster.master_address)
            except OnionmeshError:  # this HSDir has none yet: ask again
                return False
            relays = [relay(ip) for ip in served]
            duplicated.append(len(relays) - len(set(relays)))
            keys = {ip.auth_key for ip in served}
            owners = {n for n, address in addresses.items()
                      if keys & await node_keys(cluster, client, n, address)}
            return owners == {"n1", "n2"}

        await aeventually(both_nodes_served, timeout=SERVED_BOUND, interval=5.0,
                          what="the served master descriptor carries both nodes")
        assert not any(duplicated), f"two intro points on one relay: {duplicated}"

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
        keep_logs(base, small_net.base_dir / "logs-omsr")
        shutil.rmtree(base, ignore_errors=True)
        assert not leftovers
