"""Joining through tor (scenario 6) on the private Tor network.

1. As an operator types it: `onionmesh add-node` on n1 of a running cluster (its daemon
   serves its join onion on its own tor), `onionmesh join` on the new machine with the
   token on stdin and a tor client's SOCKS port: the exchange runs only through tor, to
   n1's join onion. The new node's roster file lists every member; once it runs, every
   node has it as a peer, the publisher's plan carries its intro points and so does the
   master descriptor a client fetches from the HSDirs.
2. The inviter (the authority node) is down at first (killed after `add-node`): the
   joiner's attempts fail, it retries, and gets in once the inviter is back.
3. The authority node's join onion is gone from its tor while its daemon runs on: the
   joiner moves on to the token's next bootstrap peer, n2, whose join onion relays the
   request to n1 over the mesh and passes n1's signed answer back; the new node runs and
   is in the master descriptor a client fetches.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from nacl.signing import SigningKey

from onionmesh.config import load_config
from onionmesh.mesh.roster import load_roster
from onionmesh.node.coordination_keys import ensure_join_onion_key
from onionmesh.node.join_tokens import TokenStore, decode_token
from onionmesh.node.keyfiles import load_node_key
from onionmesh.node.membership import tokens_path
from onionmesh.node.testnet_options import network_tor_options
from onionmesh.testnet import TorClient, TorNetwork
from onionmesh.testnet.backend import start_backend_process
from onionmesh.testnet.node_cluster import FAST_PROFILE, ClusterNode, NodeCluster
from onionmesh.tor.control import TorController
from tests.eventually import aeventually
from tests.node.helpers import free_port

from .helpers import healthy_cluster, plan_nodes, publisher_of, wait_node_served

pytestmark = [pytest.mark.tor, pytest.mark.tornet, pytest.mark.slow]


@pytest.fixture(scope="module")
def cluster(tornet: TorNetwork) -> Iterator[NodeCluster]:
    with healthy_cluster(tornet, "omjt-", timeout=180, settings=FAST_PROFILE) as nodes:
        yield nodes


async def _cli(stdin: str, *args: str) -> subprocess.CompletedProcess[str]:
    # The join's own bound: 8 attempts of at most 120 s each would be far longer; one
    # attempt through a warm private network takes seconds, so 240 s is a generous cap.
    return await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "onionmesh.cli", *args], input=stdin,
        capture_output=True, text=True, timeout=240, check=False)


@pytest.mark.timeout(600)
async def test_a_node_joins_through_tor_only_and_is_published(
        cluster: NodeCluster, tornet: TorNetwork, tornet_client: TorClient) -> None:
    n1 = cluster.nodes["n1"]
    issued = await _cli("", "add-node", "-c", str(n1.config_path))
    assert issued.returncode == 0, issued.stderr
    token = issued.stdout.strip()
    join_onion = ensure_join_onion_key(load_config(n1.config_path)).onion_address
    # n1's join onion first, then every member's (each relays to n1).
    assert decode_token(token).bootstrap == _join_onions(cluster, "n1", "n2", "n3")

    node = ClusterNode("n4", cluster.base_dir / "n4",
                       f"127.0.0.1:{free_port(socket.SOCK_DGRAM)}", free_port())
    assert tornet_client.socks_port is not None
    args = ["join", "--dir", str(node.root), "--node-id", "n4", "--listen", node.listen,
            "--no-ntp-check", "--tor-socks", f"127.0.0.1:{tornet_client.socks_port}",
            "--master-key", str(n1.root / "master" / "hs_ed25519_secret_key"),
            "--service-port", f"80 127.0.0.1:{node.backend_port}"]
    for line in network_tor_options(tornet):
        args += ["--tor-option", line]
    started = time.monotonic()
    joined = await _cli(token, *args)
    print(f"join through tor took {time.monotonic() - started:.1f} s")
    assert joined.returncode == 0, joined.stderr
    assert f"attempt 1 through tor to n1 ({join_onion})" in joined.stderr, joined.stderr
    assert "admitted through n1" in joined.stderr, joined.stderr
    # The whole roster, persisted: a restart knows every peer, not only its inviter.
    roster = load_roster(node.root / "roster")
    assert {m.node_id for m in roster.members()} == {"n1", "n2", "n3", "n4"}
    n4_key = load_node_key(load_config(node.config_path)).public_key
    assert roster.key_of("n4") == n4_key

    node.backend = start_backend_process("n4", node.backend_port, node.root / "backend.log")
    cluster.nodes["n4"] = node
    node.start()
    everyone = set(cluster.nodes)
    docs = await cluster.wait_until(
        lambda d: set(d) == everyone and (pub := publisher_of(d)) is not None
        and plan_nodes(d[pub]) == everyone
        and all("n4" in doc.peers for nid, doc in d.items() if nid != "n4"),
        120.0, "n4 joined and published")
    assert {d.master_address for d in docs.values()} == {cluster.master_address}
    # And in the master descriptor a client fetches from the HSDirs (bounded poll).
    address = docs["n4"].node.onion_address.removesuffix(".onion")
    assert await wait_node_served(cluster, tornet_client, "n4", address)


def _join_onions(cluster: NodeCluster, *node_ids: str) -> list[tuple[str, str]]:
    return [(n, ensure_join_onion_key(load_config(cluster.nodes[n].config_path)).onion_address)
            for n in node_ids]


@pytest.mark.timeout(600)
async def test_the_joiner_retries_until_a_downed_inviter_is_back(
        cluster: NodeCluster, tornet: TorNetwork, tornet_client: TorClient) -> None:
    """n1 (the inviter, the only node with the authority key) dies after `add-node`; the
    joiner's attempts fail (its tor still holds n1's join onion descriptor from the test
    before: introduction fails; the other members' join onions relay to n1, which does not
    answer), it retries; n1 comes back on a fresh tor and the joiner gets in (through n1's
    republished join onion or a member relaying to it)."""
    n1 = cluster.nodes["n1"]
    issued = await _cli("", "add-node", "-c", str(n1.config_path))
    assert issued.returncode == 0, issued.stderr
    n1.kill(signal.SIGKILL)  # the machine dies: its tor with it
    assert tornet_client.socks_port is not None
    root = cluster.base_dir / "n5"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "onionmesh.cli", "join", "--dir", str(root), "--node-id", "n5",
        "--listen", f"127.0.0.1:{free_port(socket.SOCK_DGRAM)}", "--no-ntp-check",
        "--tor-socks", f"127.0.0.1:{tornet_client.socks_port}",
        "--attempts", "12", "--backoff-cap", "15", "--attempt-timeout", "30",
        stdin=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.DEVNULL)
    assert proc.stdin is not None and proc.stderr is not None
    proc.stdin.write(issued.stdout.encode())
    proc.stdin.close()
    lines: list[str] = []
    try:
        # Bound: one attempt is at most 30 s (--attempt-timeout; tor keeps trying the dead
        # inviter's cached intro points, so the attempt runs into it), plus margin.
        async with asyncio.timeout(60):
            while not any("attempt 1 to n1 failed" in line for line in lines):
                line = (await proc.stderr.readline()).decode()
                assert line, "join ended early:\n" + "".join(lines)
                lines.append(line)
        n1.start()
        # Bound: n1's restart (tor bootstrap + publish, ~30 s here) plus the backoff
        # schedule (waits 5, 10, then 15 s, +-20 %) and a fresh descriptor fetch.
        async with asyncio.timeout(300):
            rest = await proc.stderr.read()
            await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    out = "".join(lines) + rest.decode()
    print(out)
    assert proc.returncode == 0, out
    assert "join: admitted through n" in out
    roster = load_roster(root / "roster")
    assert {"n1", "n2", "n3", "n5"} <= {m.node_id for m in roster.members()}
    # The sponsor persisted the new member (its core saves the roster file).
    await aeventually(lambda: "n5" in load_roster(n1.root / "roster"), timeout=30,
                      what="n5 in n1's roster file")


async def _drop_join_onion(node: ClusterNode) -> str:
    """Take the node's join onion out of its tor (DEL_ONION, as a tor that lost it would):
    its daemon, its mesh and its instance service run on. Returns the service id."""
    service_id = ensure_join_onion_key(load_config(node.config_path)).onion_address
    service_id = service_id.removesuffix(".onion")
    sock = node.torrc_value("ControlSocket")
    assert sock, f"{node.node_id}'s torrc names no ControlSocket"
    controller = await TorController.connect(socket_path=sock)
    try:
        await controller.del_onion(service_id)
    finally:
        await controller.close()
    return service_id


@pytest.mark.timeout(600)
async def test_a_member_relays_the_join_while_the_authority_join_onion_is_down(
        cluster: NodeCluster, tornet: TorNetwork, tornet_client: TorClient) -> None:
    """Only n1 holds the authority key and the token records. Its join onion is gone from
    its tor (its daemon runs on, on the mesh); the joiner's first attempt, to n1, fails and
    it moves on to n2, the token's next bootstrap peer: n2's join onion relays the request
    over the mesh to n1, which marks the token used on disk and answers; n2 passes the
    signed answer back. The new node is in the roster, runs, and is in the master
    descriptor a client fetches."""
    n1, n2 = cluster.nodes["n1"], cluster.nodes["n2"]
    n2_onion = ensure_join_onion_key(load_config(n2.config_path)).onion_address
    # n2 serves its join onion as a relay (it says so once its tor took it).
    await aeventually(lambda: f"join onion {n2_onion.removesuffix('.onion')}.onion: this node "
                      "relays joins" in n2.log_path.read_text(), timeout=60,
                      what="n2's relaying join onion up")
    issued = await _cli("", "add-node", "-c", str(n1.config_path))
    assert issued.returncode == 0, issued.stderr
    token = decode_token(issued.stdout.strip())
    # By default the token names every member's join onion, n1's first.
    assert token.bootstrap[:3] == _join_onions(cluster, "n1", "n2", "n3"), token.bootstrap
    await _drop_join_onion(n1)

    root = cluster.base_dir / "n6"
    node = ClusterNode("n6", root, f"127.0.0.1:{free_port(socket.SOCK_DGRAM)}", free_port())
    assert tornet_client.socks_port is not None
    args = ["join", "--dir", str(root), "--node-id", "n6", "--listen", node.listen,
            "--no-ntp-check", "--tor-socks", f"127.0.0.1:{tornet_client.socks_port}",
            "--master-key", str(n1.root / "master" / "hs_ed25519_secret_key"),
            "--service-port", f"80 127.0.0.1:{node.backend_port}",
            # Bound per attempt: a tor client that keeps trying the gone onion's cached
            # intro points runs into it; one attempt through n2's relay takes seconds.
            "--attempt-timeout", "30"]
    for line in network_tor_options(tornet):
        args += ["--tor-option", line]
    started = time.monotonic()
    joined = await _cli(issued.stdout, *args)
    print(f"join through the relay took {time.monotonic() - started:.1f} s\n{joined.stderr}")
    assert joined.returncode == 0, joined.stderr
    assert "attempt 1 to n1 failed" in joined.stderr, joined.stderr
    assert "admitted through n2" in joined.stderr, joined.stderr
    # The relay said what it did, and the authority whose request it answered.
    assert "join request for n6 relayed to the authority n1: admitted" in n2.log_path.read_text()
    assert "join request for n6 relayed by n2" in n1.log_path.read_text()
    # `onionmesh status` on each says so (the join onion section).
    n2_doc, n1_doc = n2.status(), n1.status()
    assert n2_doc is not None and n2_doc.join_onion is not None, n2_doc
    assert (n2_doc.join_onion.address, n2_doc.join_onion.role) == (n2_onion, "relays")
    assert n2_doc.join_onion.relayed >= 1, n2_doc.join_onion
    assert n1_doc is not None and n1_doc.join_onion is not None, n1_doc
    assert n1_doc.join_onion.role == "answers" and n1_doc.join_onion.relayed >= 1
    # The authority recorded the token as used on disk.
    used = [r for r in TokenStore(tokens_path(load_config(n1.config_path))).records()
            if r.used_by is not None]
    assert any(r.join_key == bytes(SigningKey(token.join_seed).verify_key) for r in used)
    roster = load_roster(root / "roster")
    assert {"n1", "n2", "n3", "n6"} <= {m.node_id for m in roster.members()}
    assert roster.key_of("n6") == load_node_key(load_config(node.config_path)).public_key

    node.backend = start_backend_process("n6", node.backend_port, root / "backend.log")
    cluster.nodes["n6"] = node
    node.start()
    everyone = set(cluster.nodes)
    docs = await cluster.wait_until(
        lambda d: set(d) == everyone and (pub := publisher_of(d)) is not None
        and plan_nodes(d[pub]) == everyone
        and all("n6" in doc.peers for nid, doc in d.items() if nid != "n6"),
        120.0, "n6 joined through the relay and published")
    address = docs["n6"].node.onion_address.removesuffix(".onion")
    assert await wait_node_served(cluster, tornet_client, "n6", address)
