"""The two worst insider attacks against three real ``onionmesh run`` nodes (issue 9).

n1 and n2 may publish; n3 joined without the master key, so its roster entry may not.
The attacker seizes n3: it stops n3's daemon, takes n3's node key, cluster secret and
roster from its disk, and runs its own mesh core as n3 on n3's coordination port (so it
completes the handshake like any restarted node). Through it, it sends

* claims and heartbeats with term 2^63-1 (before the fix: every later claim overflowed
  the wire's term limit, every node rejected every heartbeat, all peers "dead"), and
* claims with the highest priority and plan count 2^32-1 (before: the real publisher
  stepped down and everyone followed the impostor, so nobody published),

for several heartbeat intervals. n1 and n2 must be undisturbed: the same publisher, both
alive to each other, terms unchanged, every honest intro point still in the plan, and the
attack counted as refused (``term_overflow`` / ``ineligible``).
"""

from __future__ import annotations

import asyncio
import select
import socket
import time
from collections.abc import Iterator

import pytest

from onionmesh.config import load_config
from onionmesh.mesh.core import MeshCore
from onionmesh.mesh.identity import NodeIdentity
from onionmesh.mesh.messages import Heartbeat, LeaseClaim, Message
from onionmesh.node.settings import mesh_config, peer_seeds
from onionmesh.node.startup import check_keys
from onionmesh.testnet import TorNetwork
from onionmesh.testnet.node_cluster import FAST_PROFILE, NodeCluster

from .helpers import healthy_cluster, plan_nodes, publisher_of, wait_healthy

pytestmark = [pytest.mark.tor, pytest.mark.tornet, pytest.mark.slow]

HONEST = ("n1", "n2")


@pytest.fixture(scope="module")
def thief_cluster(tornet: TorNetwork) -> Iterator[NodeCluster]:
    with healthy_cluster(tornet, "omin-", timeout=180, settings=FAST_PROFILE,
                         standbys=("n3",)) as nodes:
        yield nodes


class Injector:
    """The attacker's copy of n3: a real MeshCore with n3's stolen keys, on n3's port."""

    def __init__(self, cluster: NodeCluster) -> None:
        node = cluster.nodes["n3"]
        config = load_config(node.config_path)
        keys = check_keys(config)  # what the attacker reads off n3's disk
        assert keys.master is None and keys.roster is not None
        assert not keys.roster.may_publish("n3")
        host, _, port = node.listen.rpartition(":")
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, int(port)))
        identity = NodeIdentity("n3", keys.node.seed or b"", 100, eligible=False,
                                address=node.listen)
        self.core = MeshCore(mesh_config(config), identity, keys.cluster_secret,
                             peer_seeds(config), time.time(), roster=keys.roster)
        self.addresses = {nid: n.listen for nid, n in cluster.nodes.items()}

    def close(self) -> None:
        self.sock.close()

    def _flush(self) -> None:
        for data, addr in self.core.datagrams_to_send(time.time()):
            host, _, port = addr.rpartition(":")
            self.sock.sendto(data, (host, int(port)))
        while self.core.next_event() is not None:
            pass

    def pump(self, seconds: float) -> None:
        """Run the stolen core honestly for a while (bounded)."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            timer = self.core.get_timer()
            wait = left if timer is None else max(0.0, min(left, timer - time.time()))
            ready, _, _ = select.select([self.sock], [], [], wait)
            if ready:
                data, (host, port) = self.sock.recvfrom(65536)
                self.core.receive_datagram(data, f"{host}:{port}", time.time())
            timer = self.core.get_timer()
            if timer is not None and time.time() >= timer:
                self.core.handle_timer(time.time())
            self._flush()

    def knows(self, node_id: str) -> bool:
        return bool(self.core.known_challenges().get(node_id))

    def send(self, body: Message) -> None:
        """Seal ``body`` as n3 (its key, its boot, the challenge each target expects)."""
        for nid in HONEST:
            data = self.core.seal(body, nid, time.time())
            host, _, port = self.addresses[nid].rpartition(":")
            self.sock.sendto(data, (host, int(port)))


def _heartbeat(role: str, term: int, plan_count: int) -> Heartbeat:
    return Heartbeat(role=role, term=term, leader="n3", priority=2**31 - 1, eligible=True,
                     address="", intro_digest=bytes(16), intro_count=0,
                     members_digest=bytes(16), plan_count=plan_count)


async def test_stolen_standby_cannot_overflow_terms_or_claim(thief_cluster: NodeCluster):
    cluster = thief_cluster
    docs = await wait_healthy(cluster)
    pub = publisher_of(docs)
    assert pub in HONEST  # n3 may not publish
    term = docs[pub].cluster.term
    honest_plan = plan_nodes(docs[pub]) & set(HONEST)
    assert honest_plan == set(HONEST)
    hb = load_config(cluster.nodes["n1"].config_path).coordination.heartbeat_interval

    cluster.nodes["n3"].kill()  # seized: the attacker has its disk, not the daemon
    injector = Injector(cluster)
    try:
        await asyncio.to_thread(injector.pump, 3 * hb)
        assert all(injector.knows(n) for n in HONEST), "the stolen core did not handshake"
        attacks: list[Message] = [
            LeaseClaim(2**63 - 1, 2**31 - 1, 0),
            _heartbeat("publisher", 2**63 - 1, 0),
            _heartbeat("standby", 2**63 - 1, 0),
            LeaseClaim(term + 1, 2**31 - 1, 2**32 - 1),
            _heartbeat("publisher", term + 1, 2**32 - 1),
        ]
        end = time.monotonic() + 6 * hb
        while time.monotonic() < end:
            for body in attacks:
                injector.send(body)
            await asyncio.to_thread(injector.pump, hb / 2)
        docs = cluster.statuses()
    finally:
        injector.close()
    for nid in HONEST:
        doc = docs[nid]
        assert doc.cluster is not None and doc.cluster.publisher == pub, (nid, doc.cluster)
        assert doc.cluster.term == term, (nid, doc.cluster.term, term)
        other = "n2" if nid == "n1" else "n1"
        assert doc.peers[other].state == "alive", (nid, doc.peers[other])
        assert doc.rejected_messages.get("term_overflow", 0) >= 6, doc.rejected_messages
        assert doc.rejected_messages.get("ineligible", 0) >= 6, doc.rejected_messages
    assert docs[pub].is_publisher
    assert plan_nodes(docs[pub]) >= honest_plan
