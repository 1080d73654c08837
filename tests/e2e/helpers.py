"""Shared pieces of the end-to-end tests: a master served by node instances, published by us."""

from __future__ import annotations

import asyncio
import contextlib
import random
from dataclasses import dataclass, field

from onionmesh.crypto.keys import Ed25519Identity
from onionmesh.descriptor.intro import IntroPoint
from onionmesh.hsdir.timeperiod import period_length_minutes
from onionmesh.mesh.plan import Contribution, select_intro_points
from onionmesh.node.publishing import decode_intro_point, encode_intro_point
from onionmesh.publish.period_sets import sets_for_master_period
from onionmesh.publish.publisher import Publisher, fetch_consensus
from onionmesh.tor.control import TorController
from onionmesh.tor.intro_points import NodeIntroWatcher
from onionmesh.tor_limits import MAX_INTRO_POINTS
from tests.eventually import aeventually


def selected_intro_points(sets: list, period: int) -> list[IntroPoint]:
    """The master's intro points for ``period`` from the nodes' sets (IntroSet or None),
    chosen by the mesh's own selector as the daemon does."""
    contributions = [
        Contribution(f"n{i:03d}", {period: [encode_intro_point(p) for p in s.intro_points]}, {})
        for i, s in enumerate(sets) if s is not None
    ]
    chosen = select_intro_points(contributions, MAX_INTRO_POINTS).get(period, ())
    return [decode_intro_point(data) for _, data in chosen]


@dataclass
class MasterDeployment:
    """Node instances + one publisher tor running onionmesh's Publisher for ``master``."""

    master: Ed25519Identity
    nodes: list  # ServiceInstance
    client: object  # TorClient (also the publisher's tor)
    publisher: Publisher
    watchers: list[NodeIntroWatcher]
    controllers: list[TorController] = field(default_factory=list)
    tasks: list[asyncio.Task] = field(default_factory=list)

    def intro_source(self, period: int) -> list[IntroPoint]:
        """The production rule (``publish.period_sets``): each node's set for exactly
        ``period``, or the previous period's as a bridge while no node's is known."""
        periods = {q for w in self.watchers for q in w.sets.periods()}
        chosen = {q: selected_intro_points([w.sets.for_period(q) for w in self.watchers], q)
                  for q in periods}
        found = sets_for_master_period(period, chosen)
        return list(found[1]) if found is not None else []

    async def close(self) -> None:
        await self.publisher.stop()
        for task in self.tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for ctl in self.controllers:
            await ctl.close()


async def deploy_master(tornet, prefix: str, n_nodes: int = 2, *, seed: int = 1,
                        retry=None) -> MasterDeployment:
    """Start ``n_nodes`` Onionbalance-style instances of a fresh master and publish it."""
    master = Ed25519Identity.generate()
    nodes = [
        await tornet.aadd_onion_service(f"{prefix}node{i}", ob_master=master.onion_address)
        for i in range(n_nodes)
    ]
    client = await tornet.aadd_client(f"{prefix}client")
    pub_ctl = await TorController.connect(port=client.control_port)
    node_ctls = [await TorController.connect(port=n.control_port) for n in nodes]
    consensus = await fetch_consensus(pub_ctl)
    length = period_length_minutes(consensus)
    watchers = [
        NodeIntroWatcher(n.onion_address, period_length=lambda: length, own=ctl,
                         fetcher=pub_ctl)
        for n, ctl in zip(nodes, node_ctls, strict=True)
    ]
    publisher = Publisher(pub_ctl, master, lambda p: [], rng=random.Random(seed),
                          retry=retry)
    deployment = MasterDeployment(master, nodes, client, publisher, watchers,
                                  [pub_ctl, *node_ctls])
    publisher.intro_source = deployment.intro_source
    async def all_exposed() -> bool:
        for w in watchers:
            await w.poll_once()
        return all(any(w.sets.for_period(q).intro_points for q in w.sets.periods())
                   for w in watchers)

    await aeventually(all_exposed, timeout=30, interval=1.0,
                      what="every node's intro points readable")
    for w in watchers:
        w.on_change = publisher.intro_points_changed
        deployment.tasks.append(asyncio.create_task(w.run(5.0)))
    await publisher.start()
    return deployment


async def nodes_answering(client, hostname: str, want: set[str], max_gets: int = 12) -> set[str]:
    """GET the master repeatedly (NEWNYM between, tor rate-limits it to 10 s) until every
    name in ``want`` answered or ``max_gets`` GETs were made; returns the names seen."""
    seen: set[str] = set()
    for _ in range(max_gets):
        response = await client.ahttp_get(hostname, "/", timeout=30.0, retry_for=60.0)
        assert response.status == 200
        seen.add(response.text.strip())
        if seen >= want:
            break
        # These tests check what the publisher uploads, so each GET fetches afresh;
        # caching clients are tests/cluster/test_default_timings.py.
        await client.anewnym()
    return seen
