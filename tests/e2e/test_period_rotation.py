"""The master stays reachable across a time-period rotation of the test network (8 min)."""

from __future__ import annotations

import pytest

from tests.eventually import aeventually

from .helpers import deploy_master, nodes_answering

pytestmark = [pytest.mark.tor, pytest.mark.tornet, pytest.mark.slow]

ROTATION_TIMEOUT = 11 * 60  # one 8-minute period + consensus lag + margin


@pytest.mark.timeout(1500)
async def test_master_reachable_across_time_period_rotation(tornet):
    dep = await deploy_master(tornet, "h8rot")
    try:
        pub = dep.publisher
        await pub.wait_published(timeout=120)
        before = sorted(pub.targets)
        response = await dep.client.ahttp_get(dep.master.onion_address, timeout=30,
                                              retry_for=60)
        assert response.status == 200

        # Bounded poll on a real condition: the publisher's first descriptor moved on.
        await aeventually(lambda: min(pub.targets) > before[0], timeout=ROTATION_TIMEOUT,
                          interval=5, what=f"rotation past period {before[0]}")
        after = sorted(pub.targets)
        assert after[0] > before[0] and after != before
        builds = pub.builds
        # The new period's descriptor is on every responsible HSDir (a build for it happened).
        await pub.wait_published(timeout=180, min_builds=builds)
        assert set(pub.tracker.periods()) == set(after)
        assert before[0] not in pub.tracker.periods()  # the old period was dropped

        # This test is about the publisher's own rotation (targets, builds, drops), so it
        # makes the client fetch afresh; clients that keep their cache across the rotation
        # are tests/cluster/test_default_timings.py.
        await dep.client.anewnym()
        names = {n.name for n in dep.nodes}
        seen = await nodes_answering(dep.client, dep.master.onion_address, names)
        assert seen == names
    finally:
        await dep.close()
