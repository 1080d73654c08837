"""Issue #11: restricted discovery of the master address, with real tor clients.

Two ``onionmesh run`` nodes (fast timings) whose operator authorized client ``alice``
before starting them, as docs/operator.md says: ``onionmesh client add alice --auth-file``
on n1, the same public key with ``--public-key`` on n2 (whichever publishes must have
it); both tests share the cluster.

- A fresh tor client without the key is refused (tor's SOCKS extended error 0xF4, missing
  client authorization) and the descriptor it fetches does not decrypt; the same client
  given alice's key over the control port (ONION_CLIENT_AUTH_ADD) reaches the service.
- As users set it up: a client tor whose ``ClientOnionAuthDir`` holds ``alice.auth_private``
  (the file ``client add --auth-file`` wrote) reaches the master. ``client add bob`` on
  every node while they run: the daemons (same PIDs, no restart) reload, the publisher
  republishes, every HSDir clients fetch from serves a descriptor bob's key decrypts, and
  a new client with bob's file gets in.
  ``client remove bob`` on every node: once republished, a new client with bob's file
  (nothing cached) cannot decrypt the descriptor (SOCKS 0xF5, bad client authorization)
  while alice still gets in.
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

NODES = ("n1", "n2")


@dataclass(frozen=True)
class AuthCluster:
    cluster: NodeCluster
    base: Path
    alice_file: Path  # what `client add alice --auth-file` wrote


def _secret_of(auth_file: Path) -> tuple[str, bytes]:
    """(address without .onion, x25519 secret) of one ``.auth_private`` file."""
    address, _, secret_b32 = auth_file.read_text().strip().partition(":descriptor:x25519:")
    return address, base64.b32decode(secret_b32 + "====")


def add_everywhere(cluster: NodeCluster, name: str, auth_file: Path) -> list[str]:
    """``client add`` on n1 (a new keypair, the secret to ``auth_file``), then the same
    public key on every other node; each command's stderr."""
    nodes = sorted(cluster.nodes)
    first = onionmesh("client", "add", name, "--auth-file", str(auth_file),
                      "-c", str(cluster.nodes[nodes[0]].config_path))
    assert first.returncode == 0, first.stderr
    public = first.stderr.split("(descriptor:x25519:", 1)[1].split(")", 1)[0]
    out = [first.stderr]
    for node_id in nodes[1:]:
        other = onionmesh("client", "add", name, "--public-key", public,
                          "-c", str(cluster.nodes[node_id].config_path))
        assert other.returncode == 0, other.stderr
        out.append(other.stderr)
    return out


@pytest.fixture(scope="module")
def auth_cluster(tornet: TorNetwork) -> Iterator[AuthCluster]:
    base = Path(tempfile.mkdtemp(prefix="omca-"))
    cluster = NodeCluster(tornet, base, 2, settings=FAST_PROFILE)
    try:
        cluster.create()
        alice_file = base / "alice" / "alice.auth_private"
        alice_file.parent.mkdir(mode=0o700)
        for stderr in add_everywhere(cluster, "alice", alice_file):
            assert "no daemon runs here" in stderr
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
        assert response.status == 200 and response.text.strip() in NODES
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
    nodes = [cluster.nodes[n] for n in NODES]
    _, alice = _secret_of(auth_cluster.alice_file)
    pids = [(node.pid, node.tor_pid()) for node in nodes]
    # SIGHUP -> rebuild within the publish rate limit, then HSPOST to every HSDir and the
    # HSDirs' answers: the same 30 s margin the cluster tests give one republish.
    bound = config_value(cluster, "publishing", "min_publish_interval") + 30.0
    started = time.monotonic()
    clients: list[TorClient] = []

    async def reloaded(change: str, readers: int) -> None:
        """Every daemon logged the reload (its log line names the clients it now has)."""
        for node in nodes:
            await aeventually(lambda node=node: f"SIGHUP: authorized clients changed ({change}"
                              in node.log_path.read_text(errors="replace"), timeout=30.0,
                              what=f"{node.node_id}'s reload line")
            assert f"readable only by {readers} authorized client(s)" in \
                node.log_path.read_text(errors="replace")
        # `onionmesh status` on each node: the same key set everywhere.
        docs = [await asyncio.to_thread(node.status) for node in nodes]
        shown = [(d.restricted_discovery.clients, d.restricted_discovery.fingerprint)
                 for d in docs if d is not None and d.restricted_discovery is not None]
        assert len(shown) == len(nodes) and len(set(shown)) == 1, shown
        assert shown[0][0] == readers

    try:
        # As users set it up: alice's .auth_private in the client's ClientOnionAuthDir.
        with_alice = await tornet.aadd_client(
            "authdiralice", client_auth_dir=auth_cluster.alice_file.parent)
        clients.append(with_alice)
        response = await with_alice.abrowser_get(cluster.master_address, timeout=60.0)
        assert response.status == 200 and response.text.strip() in NODES

        # `client add bob` on every running node: it applies at once, no restart.
        bob_file = auth_cluster.base / "bob" / "bob.auth_private"
        bob_file.parent.mkdir(mode=0o700)
        for node, stderr in zip(nodes, add_everywhere(cluster, "bob", bob_file), strict=True):
            assert f"the running daemon (pid {node.pid}) republishes" in stderr, stderr
        _, bob = _secret_of(bob_file)
        await reloaded("+bob", 2)
        secret_b32 = bob_file.read_text().strip().rpartition(":")[2]
        assert not any(secret_b32 in n.log_path.read_text(errors="replace") for n in nodes)
        await _wait_every_hsdir(cluster, tornet_client, "bob's key decrypts on every HSDir",
                                bound, readable=[alice, bob], unreadable=[])
        with_bob = await tornet.aadd_client("authdirbob", client_auth_dir=bob_file.parent)
        clients.append(with_bob)
        response = await with_bob.abrowser_get(cluster.master_address, timeout=60.0)
        assert response.status == 200 and response.text.strip() in NODES

        # `client remove bob` on every node: a new client with his key (nothing cached)
        # is refused. (Bob, not alice: the module's other test needs alice, in any order.)
        for node in nodes:
            removed = onionmesh("client", "remove", "bob", "-c", str(node.config_path))
            assert removed.returncode == 0, removed.stderr
        await reloaded("-bob", 1)
        await _wait_every_hsdir(cluster, tornet_client, "bob's key decrypts nowhere",
                                bound, readable=[alice], unreadable=[bob])
        late = await tornet.aadd_client("authdirlate", client_auth_dir=bob_file.parent)
        clients.append(late)
        with pytest.raises(SocksError) as refused:
            await late.abrowser_get(cluster.master_address, timeout=60.0)
        assert refused.value.code == 0xF5, refused.value  # bad client authorization
        response = await with_alice.abrowser_get(cluster.master_address, timeout=60.0)
        assert response.status == 200 and response.text.strip() in NODES

        # Every node's conflict checks read the cluster's restricted descriptors.
        assert not any("ClientAuthRequired" in n.log_path.read_text(errors="replace")
                       for n in nodes)
        assert [(n.pid, n.tor_pid()) for n in nodes] == pids, "a daemon or tor restarted"
        assert all(n.running() for n in nodes)
        print(f"live add/remove with ClientOnionAuthDir clients: "
              f"{time.monotonic() - started:.0f} s")
    finally:
        for client in clients:
            client.process.stop()
