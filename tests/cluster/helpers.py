"""Shared steps of the cluster tests: health, timing bounds, descriptors seen by a client."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from onionmesh.descriptor.parse import parse_descriptor
from onionmesh.errors import OnionmeshError
from onionmesh.hsdir.timeperiod import period_length_minutes
from onionmesh.publish.publisher import fetch_consensus
from onionmesh.status_document import StatusDocument
from onionmesh.testnet import SocksError, TorClient, TorNetwork
from onionmesh.testnet.node_cluster import Docs, NodeCluster
from onionmesh.tor.control import TorController
from onionmesh.tor.intro_points import fetch_descriptor
from tests.eventually import aeventually


@contextlib.contextmanager
def healthy_cluster(tornet: TorNetwork, prefix: str, *, timeout: float,
                    **options: Any) -> Iterator[NodeCluster]:
    """Three ``onionmesh run`` nodes on the session network, healthy before the first test.

    ``options`` go to :class:`NodeCluster` (settings, standbys, legacy, ...). Every process
    is stopped by PID afterwards, and one that survives fails the module.
    """
    # A short base path: each node's tor control socket must fit in sun_path (108 bytes).
    base = Path(tempfile.mkdtemp(prefix=prefix))
    nodes = NodeCluster(tornet, base, 3, **options)
    try:
        nodes.create()
        nodes.start()
        asyncio.run(wait_healthy(nodes, timeout=timeout))
        yield nodes
    finally:
        nodes.stop()
        leftovers = nodes.leftover_pids()
        keep_logs(base, tornet.base_dir / f"logs-{prefix.rstrip('-')}")
        shutil.rmtree(base, ignore_errors=True)
        assert not leftovers, f"cluster processes survived teardown: {leftovers}"


def keep_logs(base: Path, into: Path) -> None:
    """Copy the cluster's logs (daemons, their tors, backends) next to the network's own,
    where pytest keeps them after the run, so a failure can be read afterwards."""
    for log in base.rglob("*.log"):
        target = into / log.relative_to(base)
        target.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(OSError):
            shutil.copyfile(log, target)


def config_value(cluster: NodeCluster, section: str, key: str) -> float:
    from onionmesh.config import load_config

    config = load_config(cluster.nodes["n1"].config_path)
    return float(getattr(getattr(config, section), key))


def removal_bound(cluster: NodeCluster) -> float:
    """The configured bound for a dead node's intro points to leave the descriptor:
    detection (dead_threshold heartbeats) + removal grace + one republish with uploads."""
    return removal_bound_of(cluster.nodes["n1"].config_path)


def removal_bound_of(config_path: Path) -> float:
    """``removal_bound`` from one node's config file (all nodes share the timing keys)."""
    from onionmesh.config import load_config

    config = load_config(config_path)
    heartbeat = float(config.coordination.heartbeat_interval)
    dead = float(config.resilience.dead_threshold)
    grace = float(config.resilience.removal_grace_period)
    return dead * heartbeat + grace + 30.0  # 30 s: build + HSPOST + HSDir answers


def takeover_bound(cluster: NodeCluster) -> float:
    """lease + grace (when a standby may claim) + a margin for the publish itself."""
    lease = config_value(cluster, "coordination", "lease_duration")
    grace = config_value(cluster, "coordination", "lease_grace")
    return lease + grace + 5.0


def publisher_of(docs: Docs) -> str | None:
    pubs = [nid for nid, d in docs.items() if d.is_publisher]
    return pubs[0] if len(pubs) == 1 else None


def plan_nodes(doc: StatusDocument) -> set[str]:
    """Nodes whose intro points the publisher's plan carries."""
    return doc.carried_nodes()


def healthy(cluster: NodeCluster, docs: Docs) -> bool:
    """All nodes answer, agree on one publisher, which publishes every node's intro points
    and has had its descriptor accepted."""
    if set(docs) != set(cluster.nodes):
        return False
    pub = publisher_of(docs)
    if pub is None:
        return False
    if any(d.cluster is None or d.cluster.publisher != pub for d in docs.values()):
        return False
    return plan_nodes(docs[pub]) == set(cluster.nodes) and docs[pub].descriptor_age is not None


async def wait_healthy(cluster: NodeCluster, timeout: float = 120.0) -> Docs:
    for node in cluster.nodes.values():
        if not node.running():
            node.start()
    return await cluster.wait_until(lambda d: healthy(cluster, d), timeout, "healthy cluster")


def uploads_after(doc: StatusDocument, since: float) -> tuple[int, int]:
    """(accepted, failed) HSDir results recorded after the wall-clock time ``since``."""
    return doc.uploads_since(since)


async def fetched_intro_keys(client: TorClient, address: str, *,
                             timeout: float = 30.0) -> set[bytes]:
    """HSFETCH ``address`` (the master or a node) through ``client`` and return the
    verified descriptor's intro keys, as a client fetches them now."""
    controller = await TorController.connect(port=client.control_port)
    try:
        length = period_length_minutes(await fetch_consensus(controller))
        text = await fetch_descriptor(controller, address, timeout=timeout)
    finally:
        await controller.close()
    desc = parse_descriptor(text, address, period_length=length)
    return {ip.auth_key for ip in desc.intro_points}


@dataclass
class GetLog:
    """Outcome of GETs made while something happens to the cluster."""

    answered: list[str] = field(default_factory=list)
    first_try_failures: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


async def get_master(client: TorClient, master: str, log: GetLog) -> None:
    """One GET as a browser makes it (fresh circuits, descriptor cache kept, no NEWNYM);
    if it fails, one reload like a user's, recorded in ``log``."""
    try:
        response = await client.abrowser_get(master, "/", timeout=30.0)
    except SocksError as exc:
        log.first_try_failures.append(str(exc))
        try:
            response = await client.abrowser_get(master, "/", timeout=30.0)
        except SocksError as exc2:
            log.failures.append(str(exc2))
            return
    assert response.status == 200
    log.answered.append(response.text.strip())


async def gets_until(client: TorClient, master: str, done: asyncio.Event, log: GetLog,
                     limit: float, every: float = 3.0) -> None:
    """GET the master (new circuits each time, cache kept) until ``done`` is set or
    ``limit`` s passed, one GET per ``every`` seconds at most."""
    end = time.monotonic() + limit
    while not done.is_set() and time.monotonic() < end:
        began = time.monotonic()
        await get_master(client, master, log)
        await asyncio.sleep(max(0.0, began + every - time.monotonic()))  # GET pacing


async def descriptor_intro_keys(controller: TorController, address: str) -> set[bytes]:
    """The intro keys of the descriptor of ``address`` that this tor serves now (its
    own service's current one); closes ``controller``."""
    from onionmesh.tor.intro_points import read_own_descriptor

    try:
        length = period_length_minutes(await fetch_consensus(controller))
        text = await read_own_descriptor(controller, address)
    finally:
        await controller.close()
    if not text:
        return set()
    desc = parse_descriptor(text, address, period_length=length)
    return {ip.auth_key for ip in desc.intro_points}


async def own_intro_keys(cluster: NodeCluster, node_id: str, address: str) -> set[bytes]:
    """The intro keys of the descriptor the node's own tor holds now (its current one)."""
    sock = cluster.nodes[node_id].torrc_value("ControlSocket")
    assert sock, f"{node_id}'s torrc names no ControlSocket"
    return await descriptor_intro_keys(await TorController.connect(socket_path=sock), address)


async def wait_node_served(cluster: NodeCluster, client: TorClient, node_id: str,
                           address: str, timeout: float = 90.0) -> set[bytes]:
    """Bounded poll until the master descriptor a client fetches carries some of the node's
    intro points (its descriptors, as clients and its own tor see them, are re-read each
    round: a node's tor rotates intro points and the plan follows a few seconds later).
    Returns the node's keys."""

    async def keys_if_served() -> set[bytes] | None:
        keys = await own_intro_keys(cluster, node_id, address)
        with contextlib.suppress(OnionmeshError):
            keys |= await fetched_intro_keys(client, address)
        try:  # a fetch tor never launches (every HSDir "recently asked") is tried again
            served = await fetched_intro_keys(client, cluster.master_address, timeout=10.0)
        except OnionmeshError:
            return None
        return keys if keys & served else None

    return await aeventually(keys_if_served, timeout=timeout, interval=1.0,
                             what=f"{node_id}'s intro points served")
