"""Issue #11: restricted discovery of the master address, with real tor clients.

One ``onionmesh run`` node (fast timings) whose operator authorized client ``alice`` with
``onionmesh client add`` before starting it; both tests share it.

- A fresh tor client without the key is refused (tor's SOCKS extended error 0xF4, missing
  client authorization) and the descriptor it fetches does not decrypt; the same client
  given alice's key over the control port (ONION_CLIENT_AUTH_ADD) reaches the service.
- As users set it up: a client tor whose ``ClientOnionAuthDir`` holds ``alice.auth_private``
  (the file ``client add --auth-file`` wrote) reaches the master. ``client add bob`` while
  the node runs: the daemon (same PID, no restart) republishes, every HSDir clients fetch
  from serves a descriptor bob's key decrypts, and a new client with bob's file gets in.
  ``client remove bob``: once republished, a new client with bob's file (nothing cached)
  cannot decrypt the descriptor (SOCKS 0xF5, bad client authorization) while alice still
  gets in.
"""

from __future__ import annotations

import asyncio
import base64
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from onionmesh.crypto.keys import load_hidden_service_dir
from onionmesh.descriptor.errors import ClientAuthRequired, DescriptorError
from onionmesh.descriptor.parse import parse_descriptor
from onionmesh.hsdir.timeperiod import fetch_period, period_length_minutes
from onionmesh.node.cluster_setup import NodeFiles
from onionmesh.publish.core import plan_targets
from onionmesh.publish.publisher import fetch_consensus
from onionmesh.testnet import SocksError, TorClient, TorNetwork
from onionmesh.testnet.node_cluster import FAST_PROFILE, NodeCluster
from onionmesh.tor.control import TorController
from onionmesh.tor.intro_points import IntroPointsError, fetch_descriptor
from tests.eventually import aeventually
from tests.node.helpers import onionmesh

from .helpers import config_value, keep_logs, wait_healthy

pytestmark = [pytest.mark.tor, pytest.mark.tornet, pytest.mark.slow]


@dataclass(frozen=True)
class AuthCluster:
    cluster: NodeCluster
    base: Path
    alice_file: Path  # what `client add alice --auth-file` wrote


def _secret_of(auth_file: Path) -> tuple[str, bytes]:
    """(address without .onion, x25519 secret) of one ``.auth_private`` file."""
    address, _, secret_b32 = auth_file.read_text().strip().partition(":descriptor:x25519:")
    return address, base64.b32decode(secret_b32 + "====")


@pytest.fixture(scope="module")
def auth_cluster(tornet: TorNetwork) -> Iterator[AuthCluster]:
    base = Path(tempfile.mkdtemp(prefix="omca-"))
    cluster = NodeCluster(tornet, base, 1, settings=FAST_PROFILE)
    try:
        cluster.create()
        alice_file = base / "alice" / "alice.auth_private"
        alice_file.parent.mkdir(mode=0o700)
        added = onionmesh("client", "add", "alice", "--auth-file", str(alice_file),
                          "-c", str(cluster.nodes["n1"].config_path))
        assert added.returncode == 0, added.stderr
        assert "no daemon runs here" in added.stderr
        cluster.start()
        asyncio.run(wait_healthy(cluster, timeout=180))
        yield AuthCluster(cluster, base, alice_file)
    finally:
        cluster.stop()
        leftovers = cluster.leftover_pids()
        keep_logs(base, tornet.base_dir / "logs-omca")
        shutil.rmtree(base, ignore_errors=True)
        assert not leftovers, f"cluster processes survived teardown: {leftovers}"


async def test_only_an_authorized_client_reaches_the_master(tornet: TorNetwork,
                                                           auth_cluster: AuthCluster):
    cluster = auth_cluster.cluster
    address, secret = _secret_of(auth_cluster.alice_file)
    assert address == cluster.master_address.removesuffix(".onion")
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

        await controller.onion_client_auth_add(address, base64.b64encode(secret).decode())
        response = await client.abrowser_get(cluster.master_address, timeout=60.0)
        assert response.status == 200 and response.text.strip() == "n1"
    finally:
        await controller.close()
        client.process.stop()


async def _served(cluster: NodeCluster, observer: TorClient) -> dict[str, str]:
    """What each HSDir a client may fetch from (the fetchable period's) serves now,
    asked directly (HSFETCH SERVER=) by a tor with no client keys: HSDir -> text or error."""
    master = load_hidden_service_dir(NodeFiles(cluster.nodes["n1"].root).master_dir)
    address = cluster.master_address.removesuffix(".onion")
    controller = await TorController.connect(port=observer.control_port)
    served: dict[str, str] = {}
    try:
        consensus = await fetch_consensus(controller)
        now = time.time()
        target = plan_targets(master, consensus, now)[fetch_period(consensus, now)[0]]
        for hsdir in target.fetchable_hsdirs:
            try:
                served[hsdir] = await fetch_descriptor(controller, address, servers=[hsdir],
                                                       timeout=30.0)
            except IntroPointsError as exc:
                served[hsdir] = f"error: {exc}"
    finally:
        await controller.close()
    return served


def _readable(text: str, address: str, length: int, secret: bytes) -> bool:
    try:
        return bool(parse_descriptor(text, address, period_length=length,
                                     client_secret_key=secret).intro_points)
    except DescriptorError:
        return False


async def _wait_every_hsdir(cluster: NodeCluster, observer: TorClient, what: str,
                            timeout: float, *, readable: list[bytes],
                            unreadable: list[bytes]) -> None:
    """Bounded: every fetchable HSDir serves a descriptor the ``readable`` keys decrypt
    and the ``unreadable`` ones do not."""
    address = cluster.master_address
    controller = await TorController.connect(port=observer.control_port)
    try:
        length = period_length_minutes(await fetch_consensus(controller))
    finally:
        await controller.close()
    last: dict[str, str] = {}

    async def done() -> bool:
        served = await _served(cluster, observer)
        last.clear()
        for hsdir, text in served.items():
            ok = [_readable(text, address, length, k) for k in readable]
            no = [_readable(text, address, length, k) for k in unreadable]
            last[hsdir] = text[:60] if text.startswith("error") else f"readable {ok} {no}"
        return bool(served) and all(
            not text.startswith("error")
            and all(_readable(text, address, length, k) for k in readable)
            and not any(_readable(text, address, length, k) for k in unreadable)
            for text in served.values())

    await aeventually(done, timeout=timeout, interval=1.0, what=what,
                      context=lambda: f"per HSDir (readable keys, unreadable keys): {last}")


async def test_clients_added_and_removed_live_through_client_auth_dirs(
        tornet: TorNetwork, tornet_client: TorClient, auth_cluster: AuthCluster):
    cluster = auth_cluster.cluster
    node = cluster.nodes["n1"]
    config = str(node.config_path)
    _, alice = _secret_of(auth_cluster.alice_file)
    pids = (node.pid, node.tor_pid())
    # SIGHUP -> rebuild within the publish rate limit, then HSPOST to every HSDir and the
    # HSDirs' answers: the same 30 s margin the cluster tests give one republish.
    bound = config_value(cluster, "publishing", "min_publish_interval") + 30.0
    started = time.monotonic()
    clients: list[TorClient] = []
    try:
        # As users set it up: alice's .auth_private in the client's ClientOnionAuthDir.
        with_alice = await tornet.aadd_client(
            "authdiralice", client_auth_dir=auth_cluster.alice_file.parent)
        clients.append(with_alice)
        response = await with_alice.abrowser_get(cluster.master_address, timeout=60.0)
        assert response.status == 200 and response.text.strip() == "n1"

        # `client add bob` on the running node: it republishes at once, no restart.
        bob_file = auth_cluster.base / "bob" / "bob.auth_private"
        bob_file.parent.mkdir(mode=0o700)
        added = onionmesh("client", "add", "bob", "--auth-file", str(bob_file), "-c", config)
        assert added.returncode == 0, added.stderr
        assert f"the running daemon (pid {node.pid}) republishes" in added.stderr, added.stderr
        _, bob = _secret_of(bob_file)
        await aeventually(lambda: "SIGHUP: authorized clients changed (+bob" in
                          node.log_path.read_text(errors="replace"), timeout=30.0,
                          what="the daemon's reload line")
        log = node.log_path.read_text(errors="replace")
        assert "readable only by 2 authorized client(s)" in log
        assert bob_file.read_text().strip().rpartition(":")[2] not in log  # no secret logged
        await _wait_every_hsdir(cluster, tornet_client, "bob's key decrypts on every HSDir",
                                bound, readable=[alice, bob], unreadable=[])
        with_bob = await tornet.aadd_client("authdirbob", client_auth_dir=bob_file.parent)
        clients.append(with_bob)
        response = await with_bob.abrowser_get(cluster.master_address, timeout=60.0)
        assert response.status == 200 and response.text.strip() == "n1"

        # `client remove bob`: a new client with his key (nothing cached) is refused.
        # (Bob, not alice: the module's other test needs alice, in either order.)
        removed = onionmesh("client", "remove", "bob", "-c", config)
        assert removed.returncode == 0, removed.stderr
        await _wait_every_hsdir(cluster, tornet_client, "bob's key decrypts nowhere",
                                bound, readable=[alice], unreadable=[bob])
        assert "readable only by 1 authorized client(s)" in node.log_path.read_text(
            errors="replace")
        late = await tornet.aadd_client("authdirlate", client_auth_dir=bob_file.parent)
        clients.append(late)
        with pytest.raises(SocksError) as refused:
            await late.abrowser_get(cluster.master_address, timeout=60.0)
        assert refused.value.code == 0xF5, refused.value  # bad client authorization
        response = await with_alice.abrowser_get(cluster.master_address, timeout=60.0)
        assert response.status == 200 and response.text.strip() == "n1"

        assert (node.pid, node.tor_pid()) == pids, "the daemon or its tor was restarted"
        assert node.running()
        print(f"live add/remove with ClientOnionAuthDir clients: "
              f"{time.monotonic() - started:.0f} s")
    finally:
        for client in clients:
            client.process.stop()
