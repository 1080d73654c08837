"""End to end: a master address published only by onionmesh, reached by a real tor client."""

from __future__ import annotations

import pytest

from onionmesh.descriptor.parse import parse_descriptor
from onionmesh.publish.uploads import UploadStatus
from onionmesh.tor.intro_points import fetch_descriptor

from .helpers import deploy_master, nodes_answering

pytestmark = [pytest.mark.tor, pytest.mark.tornet]


async def test_master_published_by_onionmesh_serves_both_nodes(tornet):
    dep = await deploy_master(tornet, "h8e2e")
    try:
        await dep.publisher.wait_published(timeout=120)
        pub = dep.publisher
        # Both descriptors, each on every responsible HSDir, nothing left pending.
        assert len(pub.targets) == 2
        for period, target in pub.targets.items():
            assert pub.tracker.with_status(period, UploadStatus.UPLOADED) == set(target.hsdirs)

        # What the HSDirs serve decodes with our verifier and carries both nodes' intro points.
        text = await fetch_descriptor(dep.controllers[0], dep.master.onion_address)
        desc = parse_descriptor(text, dep.master.onion_address,
                                period_length=next(iter(pub.targets.values()))
                                .period.period_length)
        node_keys = [
            {ip.auth_key for s in (w.sets.for_period(p) for p in w.sets.periods()) if s
             for ip in s.intro_points}
            for w in dep.watchers
        ]
        served = {ip.auth_key for ip in desc.intro_points}
        assert all(served & keys for keys in node_keys)

        names = {n.name for n in dep.nodes}
        seen = await nodes_answering(dep.client, dep.master.onion_address, names)
        assert seen == names
    finally:
        await dep.close()
