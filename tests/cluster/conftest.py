"""The cluster under test: three ``onionmesh run`` processes on the session's private network.

One cluster per module (starting three managed tors costs ~15 s); every test first waits
until it is healthy again (all three running, one publisher, all intro points published),
so a test that fails does not leave the next one a broken cluster without saying so.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from onionmesh.testnet import TorNetwork
from onionmesh.testnet.node_cluster import FAST_PROFILE, NodeCluster

from .helpers import healthy_cluster

# n3 runs with clock_check = "warn" so the clock-skew test can show both configured
# behaviours (n1/n2 keep the default "refuse").
NODE_SETTINGS = {"n3": {"resilience": {"clock_check": "warn"}}}


@pytest.fixture(scope="module")
def cluster(tornet: TorNetwork) -> Iterator[NodeCluster]:
    with healthy_cluster(tornet, "omcl-", timeout=180, settings=FAST_PROFILE,
                         node_settings=NODE_SETTINGS) as nodes:
        yield nodes
