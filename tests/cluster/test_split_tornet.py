"""Issue #11: more than 20 intro points, published as different descriptors on different HSDirs.

Three real ``onionmesh run`` nodes on the session network, each tor keeping 7 intro points
(``HiddenServiceNumIntroductionPoints 7`` through ``[tor] extra_torrc``): 21, more than one
descriptor carries. The publisher builds two descriptors; asked directly (HSFETCH
SERVER=), the HSDirs clients fetch from serve both, each valid with at most 20 intro points
and never two on one relay, and every node is in one of them.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import pytest

from onionmesh.crypto.keys import load_hidden_service_dir
from onionmesh.descriptor.intro import LS_LEGACY_ID
from onionmesh.descriptor.parse import parse_descriptor
from onionmesh.errors import OnionmeshError
from onionmesh.hsdir.timeperiod import fetch_period, period_length_minutes
from onionmesh.node.cluster_setup import NodeFiles
from onionmesh.node.testnet_options import network_tor_options
from onionmesh.publish.core import plan_targets
from onionmesh.publish.publisher import fetch_consensus
from onionmesh.testnet import TorClient, TorNetwork
from onionmesh.testnet.node_cluster import FAST_PROFILE, NodeCluster
from onionmesh.tor.control import TorController
from onionmesh.tor.intro_points import fetch_descriptor

from .helpers import fetched_intro_keys, wait_healthy

pytestmark = [pytest.mark.tor, pytest.mark.tornet, pytest.mark.slow, pytest.mark.timeout(600)]

PER_NODE = 7


async def sweep(cluster: NodeCluster, client: TorClient) -> dict[str, object]:
    """Every fetchable HSDir of the client's current period: what it serves (or why not)."""
    master = load_hidden_service_dir(NodeFiles(cluster.nodes["n1"].root).master_dir)
    address = cluster.master_address.removesuffix(".onion")
    controller = await TorController.connect(port=client.control_port)
    try:
        consensus = await fetch_consensus(controller)
        now = time.time()
        target = plan_targets(master, consensus, now)[fetch_period(consensus, now)[0]]
        length = period_length_minutes(consensus)
        served: dict[str, object] = {}
        for hsdir in target.fetchable_hsdirs:
            try:
                text = await fetch_descriptor(controller, address, servers=[hsdir],
                                              timeout=30.0)
                served[hsdir] = parse_descriptor(text, address, period_length=length)
            except OnionmeshError as exc:
                served[hsdir] = str(exc)
        return served
    finally:
        await controller.close()


async def test_more_than_20_intro_points_different_hsdirs_serve_different_descriptors(
        tornet: TorNetwork, tornet_client: TorClient):
    base = Path(tempfile.mkdtemp(prefix="omsplit-"))
    extra = [*network_tor_options(tornet), f"HiddenServiceNumIntroductionPoints {PER_NODE}"]
    cluster = NodeCluster(tornet, base, 3,
                          settings={**FAST_PROFILE, "tor": {"extra_torrc": extra}})
    started = time.monotonic()
    try:
        cluster.create()
        cluster.start()
        await wait_healthy(cluster, timeout=300)

        def split(docs) -> bool:
            pubs = [d for d in docs.values() if d is not None and d.publisher is not None]
            return len(pubs) == 1 and pubs[0].publisher.published and bool(
                pubs[0].publisher.descriptors) and min(
                pubs[0].publisher.descriptors.values()) >= 2

        docs = await cluster.wait_until(split, 240, "a published split into 2+ descriptors")
        [pub] = [d for d in docs.values() if d is not None and d.publisher is not None]
        revisions = pub.publisher.revisions
        # Each node's descriptor as a client fetches it now (the period the sweep asks for).
        own = {node_id: await fetched_intro_keys(tornet_client, doc.node.onion_address)
               for node_id, doc in docs.items()}
        assert sum(len(v) for v in own.values()) > 20, {n: len(v) for n, v in own.items()}

        served = {}
        for _ in range(6):  # bounded: until every fetchable HSDir has the current revision
            served = await sweep(cluster, tornet_client)
            if all(not isinstance(d, str) and d.revision_counter == revisions.get(
                    str(d.period_number)) for d in served.values()):
                break
        assert all(not isinstance(d, str) for d in served.values()), served
        sets = {frozenset(ip.auth_key for ip in d.intro_points) for d in served.values()}
        assert len(sets) >= 2, "every fetchable HSDir serves the same descriptor"
        for desc in served.values():
            assert 1 <= len(desc.intro_points) <= 20
            relays = [next(s.data for s in ip.link_specifiers if s.type == LS_LEGACY_ID)
                      for ip in desc.intro_points]
            assert len(relays) == len(set(relays)), "two intro points on one relay"
        carried = frozenset().union(*sets)
        print(f"split test: own {[len(v) for v in own.values()]}, descriptors served "
              f"{sorted(len(x) for x in sets)}, {len(served)} fetchable HSDirs")
        assert {n for n, keys in own.items() if keys & carried} == set(own)
    finally:
        cluster.stop()
        leftovers = cluster.leftover_pids()
        shutil.rmtree(base, ignore_errors=True)
        print(f"split test: {time.monotonic() - started:.0f} s")
        assert not leftovers
