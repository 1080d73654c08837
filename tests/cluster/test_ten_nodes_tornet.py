"""Issue #11: a 10-node cluster (30 intro points): every node answers GETs through the
master address within a bounded number of fresh-circuit tries.

Ten real ``onionmesh run`` nodes with the shipped default timings, each managed tor with
tor's default 3 intro points: 30, more than the 20 one descriptor carries, so the
publisher splits them over ``k`` different descriptors (``publish/spread.py``: 2 here,
each on 3 of the 6 HSDirs a client may fetch from).

How a user's tor reaches a node, and what the test does at each step:

1. it fetches the master descriptor from one of the 6 fetchable HSDirs, chosen at random,
   and keeps it in its cache (until the time period ends; other descriptors of the same
   revision never replace it). So one client only ever reaches the nodes of the one
   descriptor it fetched. The test sweeps the fetchable HSDirs (HSFETCH SERVER=, through
   the session client) and, for each different descriptor served, starts a fresh client
   tor whose first fetch is from an HSDir serving that descriptor (HSFETCH SERVER= on the
   new client, checked against the client's cache): each outcome of that random pick is
   covered once, instead of by luck with many clients.
2. each GET with fresh SOCKS credentials (new circuits, cache kept, never NEWNYM) picks
   one intro point of the cached descriptor uniformly at random (tor's
   ``client_get_random_intro``). A node with ``s`` of the descriptor's ``m`` intro points
   answers a GET with probability ``s / m``, and is missed by ``T`` GETs with probability
   ``(1 - s/m)^T``.

The bound: per descriptor, ``T`` is the least number of answered GETs for which
``sum over its nodes of (1 - s/m)^T <= 1e-4`` (the chance that a working cluster fails
this test). The session network has 10 relays and the publisher puts at most one intro
point per relay in a descriptor, so ``m <= 10`` and ``T <= 110`` (every node with
``s = 1`` of ``m = 10``), while a client needs about ``m * H(m)`` GETs on average (29 for
``m = 10``, 15 for ``m = 6``). Seen: the nodes' 30 intro points sat on 6 to 10 relays
(tor picks intro points only on relays the consensus calls Stable, ``CRN_NEED_UPTIME``;
how many of the young network's 10 are varies), so the 2 descriptors carried 6 to 10
intro points each (``T`` = 61 to 110), and every node of a descriptor had answered after
8 to 60 GETs. Each client GETs until every node of its descriptor answered, at most
``T`` answered GETs; a GET may fail once (it is retried at once with fresh credentials
again, as a user reloads), a GET failing twice fails the test. Every node is in some
descriptor, so all ten nodes answer.

A client's cached descriptor expires at the next time period (8 minutes on the session
network), and a tor fetches for the period of its consensus, which follows the clock by up
to a minute: the test starts a round only with ``PHASE_BUDGET`` left in the period and
once the sweeping client's consensus is in it, seeds each fresh client once its consensus
is in the sweep's period, and fails when a client's cache changed during its GETs unless
the period ended (then the round is run again, once, with new clients in the new period).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from onionmesh.crypto.keys import load_hidden_service_dir
from onionmesh.descriptor.intro import LS_LEGACY_ID
from onionmesh.descriptor.parse import parse_descriptor
from onionmesh.errors import OnionmeshError
from onionmesh.hsdir.timeperiod import (
    fetch_period,
    period_length_minutes,
    period_start,
    rotation_offset_minutes,
    time_period_number,
)
from onionmesh.node.cluster_setup import NodeFiles
from onionmesh.publish.core import plan_targets
from onionmesh.publish.publisher import fetch_consensus
from onionmesh.testnet import SocksError, TorClient, TorNetwork
from onionmesh.testnet.node_cluster import Docs, NodeCluster, summarize
from onionmesh.tor.control import ControlReplyError, TorController
from onionmesh.tor.intro_points import fetch_descriptor, read_own_descriptor
from onionmesh.tor.process import log_tail
from onionmesh.tor.torrc import REND_LOG
from tests.eventually import aeventually

from .helpers import keep_logs, publisher_of

pytestmark = [pytest.mark.tor, pytest.mark.tornet, pytest.mark.slow, pytest.mark.timeout(600)]

NODES = 10
PER_NODE = 3  # tor's HiddenServiceNumIntroductionPoints default
MISS_CHANCE = 1e-4  # allowed chance that a working cluster fails the bound
GET_TIMEOUT = 30.0
# Sweep + fresh clients + their GETs took ~30 s; a round starts only with this much time
# left in the period (its clients' caches expire at its end); one cut short anyway is run
# again in the next period.
PHASE_BUDGET = 75.0
# A client fetches for the period of its consensus' valid-after, which a long-running tor
# (the session client) learns up to ~a minute after the period starts by the clock.
CONSENSUS_CATCH_UP = 90.0
READY_TIMEOUT = 360.0  # 10 managed tors bootstrap and publish on a loaded machine


def tries_bound(slots: dict[str, int], miss_chance: float = MISS_CHANCE) -> int:
    """Least T with sum over nodes of (1 - s/m)^T <= miss_chance (m = all slots)."""
    m = sum(slots.values())
    if len(slots) <= 1:
        return 1
    t = 1
    while sum((1 - s / m) ** t for s in slots.values()) > miss_chance:
        t += 1
    return t


def test_tries_bound_numbers():
    assert tries_bound({f"n{i}": 1 for i in range(6)}) == 61
    assert tries_bound({f"n{i}": 1 for i in range(8)}) == 85
    assert tries_bound({f"n{i}": 1 for i in range(10)}) == 110
    # b (1 of 3 slots) dominates: (2/3)^T + (1/3)^T <= 1e-4
    assert tries_bound({"a": 2, "b": 1}) == math.ceil(math.log(1e-4) / math.log(2 / 3))


def ready(cluster: NodeCluster, docs: Docs) -> bool:
    """Every node answers and agrees on one publisher, which has all 30 intro points in its
    pool, split over 2+ descriptors, published."""
    if set(docs) != set(cluster.nodes):
        return False
    pub = publisher_of(docs)
    if pub is None or any(d.cluster is None or d.cluster.publisher != pub
                          for d in docs.values()):
        return False
    doc = docs[pub]
    if doc.plan is None or doc.publisher is None or not doc.publisher.published:
        return False
    others = [p for n, p in doc.peers.items() if n in cluster.nodes]
    if len(others) != NODES - 1 or any(p.state != "alive" or p.intro_points < 1
                                       for p in others):
        return False
    return (max(doc.plan.offered.values(), default=0) >= NODES * PER_NODE
            and bool(doc.publisher.descriptors)
            and min(doc.publisher.descriptors.values()) >= 2)


@dataclass
class Served:
    """What the fetchable HSDirs of the clients' current period serve."""

    period: int
    texts: dict[str, str]  # HSDir fingerprint -> descriptor text
    keys: dict[str, frozenset[bytes]]  # HSDir fingerprint -> intro keys
    revisions: dict[str, int]
    asked: int = 0  # fetchable HSDirs asked


async def sweep(cluster: NodeCluster, client: TorClient) -> Served:
    """HSFETCH SERVER= each fetchable HSDir of the current period through ``client``."""
    master = load_hidden_service_dir(NodeFiles(cluster.nodes["n1"].root).master_dir)
    address = cluster.master_address.removesuffix(".onion")
    controller = await TorController.connect(port=client.control_port)
    try:
        consensus = await fetch_consensus(controller)
        now = time.time()
        period = fetch_period(consensus, now)[0]
        target = plan_targets(master, consensus, now)[period]
        length = period_length_minutes(consensus)
        out = Served(period, {}, {}, {}, len(target.fetchable_hsdirs))
        for hsdir in target.fetchable_hsdirs:
            with contextlib.suppress(OnionmeshError):
                text = await fetch_descriptor(controller, address, servers=[hsdir],
                                              timeout=20.0)
                desc = parse_descriptor(text, address, period_length=length)
                out.texts[hsdir] = text
                out.keys[hsdir] = frozenset(ip.auth_key for ip in desc.intro_points)
                out.revisions[hsdir] = desc.revision_counter
        return out
    finally:
        await controller.close()


def relay_of(ip) -> bytes:
    return next(spec.data for spec in ip.link_specifiers if spec.type == LS_LEGACY_ID)


async def node_points(cluster: NodeCluster, client: TorClient,
                      docs: Docs) -> dict[str, dict[bytes, bytes]]:
    """Each node's intro points (key -> relay): its own tor's current descriptor and the one
    a client fetches for it now (around a period change the master may carry either)."""
    controller = await TorController.connect(port=client.control_port)
    try:
        length = period_length_minutes(await fetch_consensus(controller))
    finally:
        await controller.close()

    async def one(node_id: str) -> dict[bytes, bytes]:
        address = docs[node_id].node.onion_address.removesuffix(".onion")
        texts = []
        own = await node_controller(cluster, node_id)
        try:
            texts.append(await read_own_descriptor(own, address))
        finally:
            await own.close()
        ctl = await TorController.connect(port=client.control_port)
        try:
            with contextlib.suppress(OnionmeshError):
                texts.append(await fetch_descriptor(ctl, address, timeout=20.0))
        finally:
            await ctl.close()
        return {ip.auth_key: relay_of(ip) for text in texts if text
                for ip in parse_descriptor(text, address, period_length=length).intro_points}

    found = await asyncio.gather(*(one(n) for n in sorted(cluster.nodes)))
    return dict(zip(sorted(cluster.nodes), found, strict=True))


async def node_controller(cluster: NodeCluster, node_id: str) -> TorController:
    sock = cluster.nodes[node_id].torrc_value("ControlSocket")
    assert sock, f"{node_id}'s torrc names no ControlSocket"
    return await TorController.connect(socket_path=sock)


async def settled_descriptors(cluster: NodeCluster, client: TorClient
                              ) -> tuple[Served, dict[str, dict[bytes, bytes]]]:
    """Bounded wait until every fetchable HSDir serves the publisher's current revision and
    every node is in one of the served descriptors; returns them and each node's keys."""
    last: dict[str, str] = {}

    async def settled() -> tuple[Served, dict[str, dict[bytes, bytes]]] | None:
        docs = await asyncio.to_thread(cluster.statuses)
        last["status"] = summarize(docs)
        pub = publisher_of(docs)
        if pub is None or docs[pub].publisher is None:
            return None
        served = await sweep(cluster, client)
        revision = docs[pub].publisher.revisions.get(str(served.period))
        last["served"] = (f"period {served.period}, publisher's revision {revision}, "
                          f"served {served.revisions}")
        if len(served.keys) < served.asked or set(served.revisions.values()) != {revision}:
            return None
        owners = await node_points(cluster, client, docs)
        carried = frozenset().union(*served.keys.values())
        inside = {n for n, k in owners.items() if k.keys() & carried}
        last["nodes"] = f"nodes in a served descriptor: {sorted(inside)}"
        return (served, owners) if inside == set(cluster.nodes) else None

    return await aeventually(
        settled, timeout=120.0, interval=2.0,
        what="every fetchable HSDir serves the current revision, every node in one",
        context=lambda: "\n".join(last.values()))


async def cached_keys(client: TorClient, address: str, length: int) -> frozenset[bytes] | None:
    """The intro keys of the master descriptor in ``client``'s cache (None: none cached)."""
    controller = await TorController.connect(port=client.control_port)
    try:
        try:
            info = await controller.get_info(f"hs/client/desc/id/{address}")
        except ControlReplyError:
            return None  # 551: not in the cache
    finally:
        await controller.close()
    text = next(iter(info.values()), "")
    if not text:
        return None
    desc = parse_descriptor(text, address, period_length=length)
    return frozenset(ip.auth_key for ip in desc.intro_points)


async def client_period(client: TorClient) -> int:
    """The time period ``client``'s tor fetches descriptors for now (its consensus')."""
    controller = await TorController.connect(port=client.control_port)
    try:
        return fetch_period(await fetch_consensus(controller), time.time())[0]
    finally:
        await controller.close()


async def in_period(client: TorClient, period: int) -> None:
    """Bounded wait until ``client``'s consensus puts it in ``period``."""

    async def there() -> bool:
        return await client_period(client) >= period

    await aeventually(there, timeout=CONSENSUS_CATCH_UP, interval=2.0,
                      what=f"{client.name}'s consensus reaches period {period}")


async def seed(client: TorClient, address: str, hsdirs: list[str]) -> None:
    """The client's first fetch of the master descriptor, from one of ``hsdirs`` (the next
    one if an HSDir does not answer)."""
    controller = await TorController.connect(port=client.control_port)
    try:
        for hsdir in hsdirs:
            with contextlib.suppress(OnionmeshError):
                await fetch_descriptor(controller, address, servers=[hsdir], timeout=20.0)
                return
        raise AssertionError(f"{client.name}: none of {hsdirs} served the master descriptor")
    finally:
        await controller.close()


@dataclass
class ClientRun:
    """One fresh client tor holding one of the descriptors, and its GETs."""

    client: TorClient
    keys: frozenset[bytes]  # the descriptor it caches
    slots: dict[str, int]  # node -> its intro points in that descriptor
    bound: int
    answered: list[str] = field(default_factory=list)
    retried: int = 0
    period_rolled: bool = False
    tries_to_all: int | None = None  # answered GETs until every node had answered
    seconds: float = 0.0


class CacheChanged(AssertionError):
    pass


async def browse(run: ClientRun, master: str, address: str, length: int,
                 clock: tuple[int, int], period: int) -> None:
    """GET (fresh credentials each) until every node of the descriptor answered or the
    bound is reached; after each GET the client must still hold its descriptor."""
    began = time.monotonic()
    wanted = set(run.slots)
    while len(run.answered) < run.bound and not wanted <= set(run.answered):
        try:
            response = await run.client.abrowser_get(master, timeout=GET_TIMEOUT)
        except SocksError:
            run.retried += 1
            try:
                response = await run.client.abrowser_get(master, timeout=GET_TIMEOUT)
            except SocksError as exc:
                raise AssertionError(
                    f"{run.client.name}: GET failed twice ({exc}) after "
                    f"{len(run.answered)} answers; its tor's rend log:\n"
                    f"{log_tail(run.client.data_dir / REND_LOG, 40)}") from exc
        assert response.status == 200
        run.answered.append(response.text.strip())
        if wanted <= set(run.answered):
            run.tries_to_all = len(run.answered)
        cached = await cached_keys(run.client, address, length)
        if cached != run.keys:
            if time_period_number(time.time(), clock[0], rotation_offset=clock[1]) != period:
                run.period_rolled = True
                return
            raise CacheChanged(
                f"{run.client.name}: its cached master descriptor changed in period "
                f"{period} after {len(run.answered)} GETs (all its intro points failed?); "
                f"rend log:\n{log_tail(run.client.data_dir / REND_LOG, 40)}")
    run.seconds = time.monotonic() - began


async def test_ten_nodes_each_answer_through_the_master(tornet: TorNetwork,
                                                        tornet_client: TorClient):
    base = Path(tempfile.mkdtemp(prefix="omten-"))
    cluster = NodeCluster(tornet, base, NODES)  # the shipped default timings
    started = time.monotonic()
    try:
        cluster.create()
        cluster.start()
        await cluster.wait_until(lambda d: ready(cluster, d), READY_TIMEOUT,
                                        "10 nodes, 30 intro points split and published")
        ready_after = time.monotonic() - started
        master = cluster.master_address
        address = master.removesuffix(".onion")
        controller = await TorController.connect(port=tornet_client.control_port)
        try:
            consensus = await fetch_consensus(controller)
        finally:
            await controller.close()
        length = period_length_minutes(consensus)
        clock = (length, rotation_offset_minutes(consensus))

        runs: list[ClientRun] = []
        phases: list[str] = []
        for attempt in range(2):
            # Room for a whole round before the clients' caches expire at the period end.
            now = time.time()
            period = time_period_number(now, clock[0], rotation_offset=clock[1])
            end = period_start(period + 1, clock[0], rotation_offset=clock[1])
            if end - now < PHASE_BUDGET:
                await asyncio.sleep(end - now + 1.0)  # until the period's end, by the clock
                period += 1
            # The sweep's client and the fresh ones must fetch for one period.
            await in_period(tornet_client, period)
            if end - now < PHASE_BUDGET:
                phases.append(f"waited {time.time() - now:.0f} s for the next period")
            mark = time.monotonic()

            served, owners = await settled_descriptors(cluster, tornet_client)
            phases.append(f"served descriptors settled in {time.monotonic() - mark:.0f} s")
            mark = time.monotonic()
            descriptors: dict[frozenset[bytes], list[str]] = {}
            for hsdir, keys in served.keys.items():
                descriptors.setdefault(keys, []).append(hsdir)
            assert len(descriptors) >= 2, "every fetchable HSDir serves the same descriptor"
            relay = {k: r for points in owners.values() for k, r in points.items()}
            for keys in descriptors:
                assert len({relay[k] for k in keys}) == len(keys), "two intro points on a relay"
            phases.append(f"the nodes' descriptors (current and fetched) hold "
                          f"{len(relay)} intro points on {len(set(relay.values()))} relays; "
                          f"master descriptors of {[len(k) for k in descriptors]}")

            runs, late = [], False
            for index, (keys, hsdirs) in enumerate(descriptors.items()):
                slots = {n: len(k.keys() & keys) for n, k in owners.items() if k.keys() & keys}
                assert sum(slots.values()) == len(keys), (
                    "an intro point of the served descriptor belongs to no node", slots)
                client = await tornet.aadd_client(f"i11ten{attempt}d{index}")
                await in_period(client, served.period)
                if await client_period(client) != served.period:
                    late = True  # the period ended while the round was being set up
                    break
                await seed(client, address, hsdirs)
                assert await cached_keys(client, address, length) == keys, (
                    f"{client.name}: HSFETCH from one of {hsdirs} did not leave that "
                    "descriptor in its cache")
                runs.append(ClientRun(client, keys, slots, tries_bound(slots)))
            phases.append(f"{len(runs)} clients started and seeded in "
                          f"{time.monotonic() - mark:.0f} s")
            if not late:
                await asyncio.gather(*(browse(r, master, address, length, clock,
                                              served.period) for r in runs))
                if not any(r.period_rolled for r in runs):
                    break
            print(f"ten-node test: period {served.period} ended during round {attempt}; "
                  "again in the new period")
        else:
            pytest.fail("two rounds in a row were cut by a period change")

        for run in runs:
            per_node = {n: run.answered.count(n) for n in sorted(run.slots)}
            print(f"ten-node test: {run.client.name}: descriptor of {len(run.keys)} intro "
                  f"points, slots {run.slots}, bound {run.bound}, answered {per_node} in "
                  f"{len(run.answered)} GETs ({run.retried} retried), every node after "
                  f"{run.tries_to_all}, {run.seconds:.0f} s")
            assert set(run.answered) <= set(run.slots), (run.answered, run.slots)
            assert run.tries_to_all is not None, (
                f"{run.client.name}: nodes {sorted(set(run.slots) - set(run.answered))} "
                f"never answered in {run.bound} GETs ({per_node})")
        answered = set().union(*(set(r.answered) for r in runs))
        assert answered == set(cluster.nodes), sorted(set(cluster.nodes) - answered)
        print(f"ten-node test: ready after {ready_after:.0f} s; {'; '.join(phases)}")
    finally:
        cluster.stop()
        leftovers = cluster.leftover_pids()
        keep_logs(base, tornet.base_dir / "logs-omten")
        shutil.rmtree(base, ignore_errors=True)
        print(f"ten-node test: {time.monotonic() - started:.0f} s")
        assert not leftovers
