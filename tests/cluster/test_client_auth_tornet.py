"""Issue #11: restricted discovery of the master address, with real tor clients.

One ``onionmesh run`` node (fast timings) whose operator authorized client ``alice`` with
``onionmesh client add``. A fresh tor client without the key is refused (tor's SOCKS
extended error 0xF4, missing client authorization) and the descriptor it fetches does not
decrypt; the same client given alice's key (the ``.auth_private`` line ``client add``
wrote, handed to tor with ONION_CLIENT_AUTH_ADD, what ``ClientOnionAuthDir`` does at
startup) reaches the service.
"""

from __future__ import annotations

import base64
import shutil
import tempfile
from pathlib import Path

import pytest

from onionmesh.descriptor.errors import ClientAuthRequired
from onionmesh.descriptor.parse import parse_descriptor
from onionmesh.hsdir.timeperiod import period_length_minutes
from onionmesh.publish.publisher import fetch_consensus
from onionmesh.testnet import SocksError, TorNetwork
from onionmesh.testnet.node_cluster import FAST_PROFILE, NodeCluster
from onionmesh.tor.control import TorController
from onionmesh.tor.intro_points import fetch_descriptor
from tests.node.helpers import onionmesh

from .helpers import wait_healthy

pytestmark = [pytest.mark.tor, pytest.mark.tornet, pytest.mark.slow]


async def test_only_an_authorized_client_reaches_the_master(tornet: TorNetwork):
    base = Path(tempfile.mkdtemp(prefix="omca-"))
    cluster = NodeCluster(tornet, base, 1, settings=FAST_PROFILE)
    try:
        cluster.create()
        auth_file = base / "alice.auth_private"
        added = onionmesh("client", "add", "alice", "--auth-file", str(auth_file),
                          "-c", str(cluster.nodes["n1"].config_path))
        assert added.returncode == 0, added.stderr
        address, _, secret_b32 = auth_file.read_text().strip().partition(":descriptor:x25519:")
        assert address == cluster.master_address.removesuffix(".onion")
        secret = base64.b32decode(secret_b32 + "====")
        cluster.start()
        await wait_healthy(cluster, timeout=180)

        client = await tornet.aadd_client("authclient")
        controller = await TorController.connect(port=client.control_port)
        try:
            with pytest.raises(SocksError) as refused:
                await client.abrowser_get(cluster.master_address, timeout=60.0)
            assert refused.value.code == 0xF4, refused.value  # missing client authorization

            length = period_length_minutes(await fetch_consensus(controller))
            text = await fetch_descriptor(controller, cluster.master_address, timeout=30.0)
            with pytest.raises(ClientAuthRequired):
                parse_descriptor(text, cluster.master_address, period_length=length)
            readable = parse_descriptor(text, cluster.master_address, period_length=length,
                                        client_secret_key=secret)
            assert readable.intro_points

            await controller.onion_client_auth_add(address,
                                                   base64.b64encode(secret).decode())
            response = await client.abrowser_get(cluster.master_address, timeout=60.0)
            assert response.status == 200 and response.text.strip() == "n1"
        finally:
            await controller.close()
            client.process.stop()
    finally:
        cluster.stop()
        leftovers = cluster.leftover_pids()
        shutil.rmtree(base, ignore_errors=True)
        assert not leftovers
