"""Multi-core scenarios: duplication, asymmetric partitions, flapping peers, injected traffic."""

from __future__ import annotations

import itertools
import random

from onionmesh.mesh.config import MeshConfig
from onionmesh.mesh.events import PeerDamped, PeerDead, PublishRequested

from .netloop import Net, identity

CFG = MeshConfig()


def _cluster(names: str, net: Net, intro: int = 3) -> Net:
    for n in names:
        net.add(identity(n, 200 if n == "a" else 100))
    for n in names:
        net.cores[n].set_local_intro_points(
            {1: [f"{n}-{i}".encode() for i in range(intro)]}, net.local(n)
        )
        net.flush(n)
    return net


def _views(net: Net) -> dict:
    return {
        n: (c.is_publisher, c.publisher_id, c.term, {p: v.state for p, v in c.peers().items()})
        for n, c in net.cores.items()
    }


def test_duplicated_delivery_changes_nothing_but_the_replay_counter():
    plain = _cluster("abcd", Net(CFG))
    dup = _cluster("abcd", Net(CFG, duplicate=True))
    plain.run_until(60)
    dup.run_until(60)
    assert _views(dup) == _views(plain)
    assert all(c.rejections["replayed"] > 0 for c in dup.cores.values())
    assert (
        dup.cores["a"].publish_plan().intro_points == plain.cores["a"].publish_plan().intro_points
    )


def test_independent_loss_is_no_death():
    """10 % of all datagrams lost, independently, for two hours (the slow-network
    scenario's loss): nobody is declared dead and the publisher never changes. With one
    datagram per heartbeat, three losses in a row (1e-3) killed a peer 8 to 10 times in
    such a run; each heartbeat goes out twice, so it takes six (1e-6)."""
    net = _cluster("abc", Net(CFG))
    net.run_until(40)
    assert net.publishers() == ["a"]
    rng = random.Random(20261207)  # seeded: the same losses every run
    net.lose = lambda src, dst: rng.random() < 0.1
    net.run_until(40 + 7200)
    assert not any(net.of(n, PeerDead) for n in "abc")
    assert net.publishers() == ["a"]
    assert {c.term for c in net.cores.values()} == {net.cores["a"].term}


def test_asymmetric_partition_then_heal_leaves_one_publisher():
    net = _cluster("abc", Net(CFG))
    net.run_until(40)
    assert net.publishers() == ["a"]
    # a can still send, but hears nobody: b and c keep following a
    net.blocked |= {("b", "a"), ("c", "a")}
    net.run_until(100)
    assert net.cores["b"].publisher_id == "a" and net.cores["c"].publisher_id == "a"
    # now the other way round: nobody hears a, b takes over
    net.heal()
    net.blocked |= {("a", "b"), ("a", "c")}
    net.run_until(160)
    assert "b" in net.publishers()
    net.heal()
    net.run_until(160 + 3 * CFG.lease_duration)
    assert len(net.publishers()) == 1
    pub = net.publishers()[0]
    assert all(c.publisher_id == pub for c in net.cores.values())


def test_flapping_peer_is_damped_and_cannot_cause_a_republish_storm():
    net = _cluster("abc", Net(CFG))
    net.run_until(40)
    t = 40.0
    for _ in range(5):  # c goes away long enough to be declared dead, then returns
        net.partition(["c"], ["a", "b"])
        t += 25
        net.run_until(t)
        net.heal()
        t += 8
        net.run_until(t)
    damped = net.of("a", PeerDamped)
    assert damped and damped[0].node_id == "c"
    pubs = [tt for tt, n, e in net.timeline if n == "a" and isinstance(e, PublishRequested)]
    gaps = [b - a for a, b in itertools.pairwise(pubs)]
    assert all(g >= CFG.min_publish_interval for g in gaps)


def test_injected_garbage_and_replays_change_no_view():
    net = _cluster("abc", Net(CFG))
    net.run_until(40)
    # delivered (sent over a second ago) and accepted by b
    captured = [d for t, src, dst, d in net.sent if dst == "b" and t < net.now - 1][-5:]
    before = _views(net)
    rejected_before = sum(net.cores["b"].rejections.values())
    for data in [*captured, b"", b"\x90" * 9, captured[0][:-1] + b"\x00"]:
        net.inject("b", data)
    net.run_until(net.now)  # deliver the injections only
    assert _views(net) == before
    assert sum(net.cores["b"].rejections.values()) == rejected_before + 8
    assert net.cores["b"].rejections["replayed"] == 5
