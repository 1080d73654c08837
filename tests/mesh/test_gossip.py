"""Gossip discovery completes the mesh; operator removal sticks."""

from __future__ import annotations

from onionmesh.mesh.config import MeshConfig
from onionmesh.mesh.core import MeshCore
from onionmesh.mesh.events import PeerDiscovered, PeerRemoved
from onionmesh.mesh.identity import PeerSeed

from .netloop import SECRET, Net, identity

CFG = MeshConfig()


def _chain(n: int) -> Net:
    """Node k knows only node k-1 at start."""
    net = Net(CFG)
    names = [f"n{k:02d}" for k in range(n)]
    for k, name in enumerate(names):
        net.add(identity(name), bootstrap=names[max(0, k - 1) : k])
    return net


def _full_mesh(net: Net) -> bool:
    names = set(net.cores)
    return all(
        {p for p, v in c.peers().items() if v.state == "alive"} == names - {n}
        for n, c in net.cores.items()
    )


def test_a_chain_becomes_a_full_mesh_within_a_few_heartbeats():
    net = _chain(8)
    assert not _full_mesh(net)
    net.run_until(3 * CFG.heartbeat_interval)
    assert _full_mesh(net)
    # only first-contact handshakes were refused (see auth.py), nothing else
    assert all(set(c.rejections) <= {"unverified"} for c in net.cores.values())


def test_bootstrap_by_address_only_learns_the_id():
    net = Net(CFG)
    net.add(identity("a"))
    b = identity("b")
    net.identities["b"] = b
    net.skew["b"] = 0.0
    net.events["b"] = []
    net.cores["b"] = MeshCore(CFG, b, SECRET, [PeerSeed(None, "a:7000")], 0.0)
    net.flush("b")
    net.run_until(12)
    assert net.cores["b"].peers()["a"].state == "alive"
    assert net.cores["a"].peers()["b"].state == "alive"


def test_removed_peer_stays_removed_despite_gossip_and_its_own_messages():
    net = _chain(4)
    net.run_until(20)
    assert _full_mesh(net)
    a = net.cores["n00"]
    a.remove_peer("n03", net.local("n00"))
    net.flush("n00")
    assert any(isinstance(e, PeerRemoved) for e in net.events["n00"])
    discovered_before = len(net.of("n00", PeerDiscovered))
    net.run_until(80)
    assert "n03" not in a.peers()
    assert a.rejections["removed"] > 0  # n03 keeps talking, n00 keeps refusing
    assert len(net.of("n00", PeerDiscovered)) == discovered_before  # gossip did not re-add it
    # the others still see n03 (the operator removed it on n00 only)
    assert net.cores["n01"].peers()["n03"].state == "alive"


def test_gossip_traffic_settles_once_views_agree():
    net = _chain(6)
    net.run_until(30)
    sent_before = len(net.sent)
    net.run_until(30 + 10 * CFG.heartbeat_interval)
    per_node_per_beat = (len(net.sent) - sent_before) / 6 / 10
    # Each heartbeat (sent twice, see MeshCore.handle_timer) to each of the 5 peers,
    # nothing else.
    assert per_node_per_beat == 2 * 5


def test_a_peer_added_at_runtime_joins_and_a_removed_one_stays_out():
    from onionmesh.mesh.config import MeshConfig
    from onionmesh.mesh.identity import PeerSeed

    from .netloop import Net, identity

    net = Net(MeshConfig())
    net.add(identity("a"), bootstrap=[])
    net.add(identity("b"), bootstrap=[])
    net.run_until(10)
    assert "b" not in net.cores["a"].peers()
    a = net.cores["a"]
    a.add_peer(PeerSeed(None, "b:7000", None), net.local("a"))
    net.flush("a")
    net.run_until(20)
    assert a.peers()["b"].state == "alive"
    a.remove_peer("b", net.local("a"))
    a.add_peer(PeerSeed("b", "b:7000", None), net.local("a"))
    net.flush("a")
    net.run_until(40)
    assert "b" not in a.peers()
