"""Moving a running cluster made before the signed roster to it, then removing a node.

Three ``onionmesh run`` processes on the private Tor network, made as ``init``/``join`` made
them before rosters (no roster, keys pinned in the config). The operator follows
docs/operator.md ("Moving a cluster made before the signed roster") through the CLI: reads
each node's key with ``keys check``, runs ``roster init`` on n1, copies the roster and
restarts the nodes one at a time. After every restart: one publisher, every node's intro
points published, the same master address, and a tor client (fresh SOCKS credentials per
request) gets an answer from it. Then ``remove-node n3`` on the running cluster: n1 and n2
drop n3 within a heartbeat and keep refusing it after a restart, while n3 keeps sending.
Then a new node joins through ``add-node``/``join`` against n1's running daemon, and the
cluster secret is rotated (``rotate-secret``) on the running nodes. One cluster for all four
(about 130 s with the network's start).
"""

from __future__ import annotations

import asyncio
import re
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest

from onionmesh.config import load_config
from onionmesh.node.testnet_options import network_tor_options
from onionmesh.testnet import TorClient, TorNetwork
from onionmesh.testnet.backend import start_backend_process
from onionmesh.testnet.node_cluster import FAST_PROFILE, ClusterNode, NodeCluster
from tests.node.helpers import free_port

from .helpers import (
    GetLog,
    config_value,
    get_master,
    healthy_cluster,
    plan_nodes,
    publisher_of,
    wait_healthy,
)

pytestmark = [pytest.mark.tor, pytest.mark.tornet, pytest.mark.slow]


@pytest.fixture(scope="module")
def legacy_cluster(tornet: TorNetwork) -> Iterator[NodeCluster]:
    with healthy_cluster(tornet, "omup-", timeout=180, settings=FAST_PROFILE, legacy=True) as nodes:
        yield nodes


async def _cli(*args: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "onionmesh.cli", *args, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, f"onionmesh {' '.join(args)}: {err.decode()}"
    return out.decode() + err.decode()


async def _serves(client: TorClient, master: str) -> None:
    log = GetLog()
    await get_master(client, master, log)
    assert log.answered and not log.failures, log.failures


async def test_a_running_cluster_moves_to_the_roster_node_by_node(
    legacy_cluster: NodeCluster, tornet_client: TorClient
):
    cluster = legacy_cluster
    master = cluster.master_address
    docs = await wait_healthy(cluster)
    assert {d.master_address for d in docs.values()} == {master}
    for node in cluster.nodes.values():
        assert load_config(node.config_path).membership.roster_path is None  # made before
    await _serves(tornet_client, master)

    keys = {}
    for node_id in ("n2", "n3"):
        out = await _cli("keys", "check", "-c", str(cluster.nodes[node_id].config_path))
        match = re.search(r"public key ([0-9a-f]{64})", out)
        assert match, out
        keys[node_id] = match.group(1)
    n1 = cluster.nodes["n1"]
    await _cli("roster", "init", "-c", str(n1.config_path), "--member", f"n2={keys['n2']}",
               "--member", f"n3={keys['n3']}")
    for node_id in ("n2", "n3"):
        target = cluster.nodes[node_id].root / "roster"
        shutil.copyfile(n1.root / "roster", target)
        target.chmod(0o600)

    for node_id in ("n3", "n2", "n1"):  # the publisher (n1 has the top priority) last
        node = cluster.nodes[node_id]
        extra = '\n[membership]\nroster_path = "roster"\n'
        if node_id == "n1":
            extra += 'authority_key_path = "authority_key"\n'
        node.config_path.write_text(node.config_path.read_text() + extra)
        await _cli("keys", "check", "-c", str(node.config_path))
        node.kill(signal.SIGTERM)
        node.start()
        docs = await wait_healthy(cluster, timeout=120)
        assert len(cluster.publishers(docs)) == 1
        assert {d.master_address for d in docs.values()} == {master}  # the same address
        await _serves(tornet_client, master)
    for node in cluster.nodes.values():
        assert load_config(node.config_path).membership.roster_path is not None


async def test_a_removed_node_is_refused_everywhere_within_a_heartbeat_and_after_restarts(
    legacy_cluster: NodeCluster, tornet_client: TorClient
):
    cluster = legacy_cluster
    if load_config(cluster.nodes["n1"].config_path).membership.roster_path is None:
        pytest.fail("needs the cluster moved to the roster by the previous test")
    await wait_healthy(cluster)
    heartbeat = config_value(cluster, "coordination", "heartbeat_interval")
    out = await _cli("remove-node", "-c", str(cluster.nodes["n1"].config_path), "n3")
    assert "running daemon applied" in out

    def n3_gone(docs: dict) -> bool:
        return all(nid in docs and "n3" not in docs[nid].peers
                   for nid in ("n1", "n2"))

    def members(docs: dict) -> dict:
        # n3 holds the master key (the harness gives it to every node), so alone it
        # publishes its own intro points: the captured-publisher case of docs/security.md.
        # What is checked here is that the cluster refuses it.
        return {nid: d for nid, d in docs.items() if nid in ("n1", "n2")}

    # Gossip reaches n2 with n1's next datagram: one heartbeat, plus a poll period.
    docs = await cluster.wait_until(n3_gone, heartbeat + 1.0, "n3 dropped by n1 and n2")
    assert cluster.nodes["n3"].running()  # n3 is still up and sending: refused, not silent
    docs = await cluster.wait_until(
        lambda d: n3_gone(d) and (pub := publisher_of(members(d))) is not None
        and plan_nodes(d[pub]) == {"n1", "n2"}, 30.0, "a plan without n3")
    for nid in ("n1", "n2"):
        assert "n3" not in docs[nid].intro_points

    # A restart does not bring n3 back (the revocation is in every roster file).
    n2 = cluster.nodes["n2"]
    n2.kill(signal.SIGTERM)
    n2.start()
    docs = await cluster.wait_until(
        lambda d: n3_gone(d) and (pub := publisher_of(members(d))) is not None
        and plan_nodes(d[pub]) == {"n1", "n2"}, 90.0, "n2 back, n3 still refused")
    # An observation window, not a wait for readiness: n3 keeps sending all this time.
    await asyncio.sleep(3 * heartbeat)
    docs = await asyncio.to_thread(cluster.statuses)
    assert n3_gone(docs)
    await _serves(tornet_client, cluster.master_address)
    cluster.nodes["n3"].stop()  # the removed node is gone for good


async def test_a_node_joins_through_the_running_sponsor_and_serves(
    legacy_cluster: NodeCluster, tornet: TorNetwork, tornet_client: TorClient
):
    """`add-node` on n1, `join` of a new machine over UDP against n1's running daemon (token
    on stdin), `run` it: every running node takes the new member, the publisher carries its
    intro points. The same token a second time is refused."""
    cluster = legacy_cluster
    if load_config(cluster.nodes["n1"].config_path).membership.roster_path is None:
        pytest.fail("needs the cluster moved to the roster by the first test")
    n1 = cluster.nodes["n1"]
    issued = await _cli_with_stdin("", "add-node", "-c", str(n1.config_path))
    assert issued.returncode == 0, issued.stderr
    token = issued.stdout.strip()
    assert token.startswith("onionmesh-join-2.")
    node = ClusterNode("n4", cluster.base_dir / "n4",
                       f"127.0.0.1:{free_port(socket.SOCK_DGRAM)}", free_port())
    args = ["join", "--via", "direct", "--dir", str(node.root), "--node-id", "n4",
            "--listen", node.listen,
            "--no-ntp-check", "--master-key", str(n1.root / "master" / "hs_ed25519_secret_key"),
            "--service-port", f"80 127.0.0.1:{node.backend_port}"]
    for line in network_tor_options(tornet):
        args += ["--tor-option", line]
    joined = await _cli_with_stdin(token, *args)
    assert joined.returncode == 0, joined.stderr
    refused = await _cli_with_stdin(token, "join", "--via", "direct",
                                    "--dir", str(cluster.base_dir / "n5"),
                                    "--node-id", "n5", "--listen", "127.0.0.1:9")
    assert refused.returncode != 0 and "refused" in refused.stderr
    assert not (cluster.base_dir / "n5").exists()

    node.backend = start_backend_process("n4", node.backend_port, node.root / "backend.log")
    cluster.nodes["n4"] = node
    node.start()
    running = {nid for nid, n in cluster.nodes.items() if n.running()}
    assert "n4" in running and "n3" not in running
    docs = await cluster.wait_until(
        lambda d: set(d) == running and (pub := publisher_of(d)) is not None
        and plan_nodes(d[pub]) == running
        and all("n4" in doc.peers for nid, doc in d.items() if nid != "n4"),
        120.0, "n4 joined and published")
    assert {d.master_address for d in docs.values()} == {cluster.master_address}
    await _serves(tornet_client, cluster.master_address)


async def _cli_with_stdin(stdin: str, *args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "onionmesh.cli", *args], input=stdin,
        capture_output=True, text=True, timeout=90, check=False)


async def test_the_cluster_secret_is_rotated_without_downtime(
    legacy_cluster: NodeCluster, tornet_client: TorClient
):
    """`rotate-secret` begin on n1 (its file copied to the others, `reload` there), commit on
    every node, finish on every node, on the running nodes: after every step each running
    node sees every other alive, one publisher, and the master address answers."""
    cluster = legacy_cluster
    running = {nid: n for nid, n in cluster.nodes.items() if n.running()}
    assert len(running) >= 2
    heartbeat = config_value(cluster, "coordination", "heartbeat_interval")
    first = next(iter(running))
    old = (running[first].root / "cluster_secret").read_bytes()

    def all_alive(docs: dict) -> bool:
        return set(docs) == set(running) and len(cluster.publishers(docs)) == 1 and all(
            set(doc.peers) >= set(running) - {nid}
            and all(doc.peers[p].state == "alive" for p in set(running) - {nid})
            for nid, doc in docs.items())

    async def settled(step: str) -> None:
        # Two heartbeats at this step: a refused MAC would show as a suspect peer.
        await asyncio.sleep(2 * heartbeat)  # an observation window, not a readiness wait
        await cluster.wait_until(all_alive, 2 * heartbeat, f"everyone alive after {step}")

    await _cli("rotate-secret", "begin", "-c", str(running[first].config_path))
    staged = (running[first].root / "cluster_secret").read_bytes()
    for nid, node in running.items():
        if nid != first:
            (node.root / "cluster_secret").write_bytes(staged)
            await _cli("rotate-secret", "reload", "-c", str(node.config_path))
    await settled("begin")
    for step in ("commit", "finish"):
        for node in running.values():
            await _cli("rotate-secret", step, "-c", str(node.config_path))
            await settled(f"{step} on {node.node_id}")
    new = (running[first].root / "cluster_secret").read_bytes()
    assert new != old and len(new.split()) == 1
    assert {(n.root / "cluster_secret").read_bytes() for n in running.values()} == {new}
    await _serves(tornet_client, cluster.master_address)
