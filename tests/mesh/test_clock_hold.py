"""A node whose clock is off the cluster's median never claims the lease (real MeshCores).

The test plays the daemon's shell (node/daemon.py ``_hold_for_clock``): every half
heartbeat each core's peer offsets go through ``assess_clock`` and a problem holds
its claims. The datagram window (``datagram_max_age``, 300 s by default) is wider
than the signing tolerance, so the peers keep hearing the skewed node.
"""

from __future__ import annotations

from onionmesh.clock import ClockBasis, ClockVerdict, assess_clock
from onionmesh.mesh.clock_offset import median_offset
from onionmesh.mesh.config import MeshConfig
from onionmesh.mesh.events import BecamePublisher, SteppedDown
from onionmesh.mesh.membership import ALIVE
from onionmesh.mesh.vocabulary import Role, StepDownCause

from .netloop import Net, identity

CFG = MeshConfig()
SKEW_TOLERANCE = 10.0


def _run_with_clock_checks(net: Net, until: float) -> None:
    step = CFG.heartbeat_interval / 2
    while net.now < until:
        net.run_until(min(until, net.now + step))
        for node_id, core in net.cores.items():
            result = assess_clock(net.local(node_id), kernel_synced=True,
                                  peer_offsets=list(core.peer_clock_offsets().values()),
                                  skew_tolerance=SKEW_TOLERANCE)
            core.hold_claims(None if result.verdict is ClockVerdict.OK else result.message,
                             net.local(node_id))
            net.flush(node_id)


def _cluster(skew: float) -> Net:
    net = Net(CFG)
    # "a" ranks first: without the clock check it is the publisher.
    for n in "abc":
        net.add(identity(n, 150 if n == "a" else 100), skew=skew if n == "a" else 0.0)
    return net


def test_the_skewed_node_would_publish_without_the_check() -> None:
    net = _cluster(120.0)
    net.run_until(40)
    assert net.publishers() == ["a"]


def test_a_node_120_s_ahead_never_claims_and_stays_a_standby() -> None:
    net = _cluster(120.0)
    _run_with_clock_checks(net, 40)
    assert net.of("a", BecamePublisher) == []
    assert len(net.publishers()) == 1 and net.publishers()[0] in "bc"
    a = net.cores["a"]
    assert a.claim_hold is not None and "s ahead of the median of 2 live peer(s)" in a.claim_hold
    for peer in "bc":
        rec = net.cores[peer].membership.peers["a"]
        assert rec.state == ALIVE and rec.role is Role.STANDBY
        # The honest nodes' own medians stay near zero despite the skewed peer.
        offsets = net.cores[peer].peer_clock_offsets()
        assert offsets["a"] < -119
        assert abs(median_offset(offsets.values()) or 0) < 1
    # The publisher dies: two clocks 120 s apart remain and neither can be told wrong
    # (a tie trusts each node's own side), so the check no longer holds "a" back.
    (publisher,) = net.publishers()
    net.kill(publisher)
    _run_with_clock_checks(net, 120)
    assert net.cores["a"].claim_hold is None
    assert len(net.publishers()) == 1


def test_a_publisher_whose_clock_goes_bad_steps_down() -> None:
    net = _cluster(0.0)
    _run_with_clock_checks(net, 40)
    assert net.publishers() == ["a"]
    # The clock drifts while the node runs (slowly: a sudden step looks like a pause).
    for _ in range(10):
        net.skew["a"] += 3.0
        _run_with_clock_checks(net, net.now + CFG.heartbeat_interval / 2)
    _run_with_clock_checks(net, net.now + 20)
    assert "a" not in net.publishers() and len(net.publishers()) == 1
    (down,) = net.of("a", SteppedDown)
    assert down.cause is StepDownCause.CLOCK
    # The clock is fixed: the node may claim again (it ranks first, it wins back).
    for _ in range(10):
        net.skew["a"] -= 3.0
        _run_with_clock_checks(net, net.now + CFG.heartbeat_interval / 2)
    _run_with_clock_checks(net, net.now + 60)
    assert net.cores["a"].claim_hold is None
    assert len(net.publishers()) == 1


def test_one_peer_or_none() -> None:
    alone = Net(CFG)
    alone.add(identity("a"), skew=120.0)
    _run_with_clock_checks(alone, 40)
    # Alone: no median; the (here absent) consensus window decides, so it publishes.
    assert alone.publishers() == ["a"]
    assert alone.cores["a"].peer_clock_offsets() == {}
    result = assess_clock(alone.local("a"), kernel_synced=True, peer_offsets=())
    assert result.basis is ClockBasis.NONE
    pair = Net(CFG)
    pair.add(identity("a", 150), skew=120.0)
    pair.add(identity("b"))
    _run_with_clock_checks(pair, 40)
    # Two clocks 120 s apart: a tie, nobody is held back (documented limit).
    assert pair.publishers() == ["a"]
    assert all(c.claim_hold is None for c in pair.cores.values())
