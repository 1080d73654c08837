"""Election scenarios on a tiny deterministic network: leases, step-down, conflicts, restarts."""

from __future__ import annotations

from onionmesh.mesh.config import MeshConfig
from onionmesh.mesh.election import Election, conflict_key, rank_key
from onionmesh.mesh.events import BecamePublisher, ConflictDetected, SteppedDown

from .netloop import Net, identity

CFG = MeshConfig()  # heartbeat 5 s, lease 15 s, grace 2 s
LISTEN = CFG.lease_duration + CFG.lease_grace


def _cluster(names="abc", priorities=None, intro=3, **kw) -> Net:
    net = Net(CFG, **kw)
    priorities = priorities or {}
    for n in names:
        net.add(identity(n, priorities.get(n, 100)))
    for n in names:
        net.cores[n].set_local_intro_points(
            {1: [f"{n}-{i}".encode() for i in range(intro)]}, net.local(n)
        )
        net.flush(n)
    return net


def _watch_single_publisher(net: Net, until: float, step: float = 0.5) -> int:
    """Run to ``until`` checking there is never more than one publisher; return max seen."""
    most = 0
    while net.now < until:
        net.run_until(net.now + step)
        most = max(most, len(net.publishers()))
    return most


def test_rank_and_conflict_keys_are_total_and_deterministic():
    assert sorted([(100, "b"), (200, "c"), (100, "a")], key=lambda c: rank_key(*c)) == [
        (200, "c"),
        (100, "a"),
        (100, "b"),
    ]
    assert conflict_key(9, 1, 100, "z") > conflict_key(6, 5, 200, "a")  # intro points first
    assert conflict_key(6, 2, 100, "z") > conflict_key(6, 1, 200, "a")  # then term
    assert conflict_key(6, 2, 100, "a") > conflict_key(6, 2, 100, "b")  # then smaller id


def test_cold_start_elects_the_highest_priority_after_listening():
    net = _cluster("abc", {"b": 150})
    assert _watch_single_publisher(net, 60) == 1
    assert net.publishers() == ["b"]
    (t,) = net.times("b", BecamePublisher)
    assert t >= LISTEN  # nobody claims before one lease period of listening
    assert all(c.publisher_id == "b" for c in net.cores.values())


def test_equal_priorities_pick_the_smallest_node_id():
    net = _cluster("cab")
    net.run_until(60)
    assert net.publishers() == ["a"]


def test_lease_expiry_takeover_not_before_lease_plus_grace_on_the_standbys_clock():
    net = _cluster("abc", {"a": 200, "b": 150}, delay=0.01)
    net.run_until(40)
    assert net.publishers() == ["a"]
    kill_at = net.now
    net.kill("a")
    net.run_until(kill_at + 60)
    assert net.publishers() == ["b"]
    (t,) = net.times("b", BecamePublisher)
    # the last renewal b heard was at most one heartbeat before the kill
    assert kill_at - CFG.heartbeat_interval + LISTEN <= t <= kill_at + LISTEN + 0.5
    assert net.cores["c"].publisher_id == "b"
    assert net.cores["b"].term == 2


def test_non_eligible_nodes_never_publish():
    net = Net(CFG)
    net.add(identity("a", eligible=False))
    net.add(identity("b", 50))
    net.run_until(40)
    assert net.publishers() == ["b"]
    net.kill("b")
    net.run_until(200)
    assert net.publishers() == []


def test_partition_heal_leaves_one_publisher_that_carries_everyone():
    # d has the best priority, so after the split the minority elects d with a
    # higher term. On heal each publisher counts the other's plan only up to the
    # intro points it has verified itself (a liar cannot win by claiming a big
    # count); once both hold every set the counts tie and the newer term wins.
    net = _cluster("abcde", {"a": 150, "d": 120})
    net.run_until(40)
    assert net.publishers() == ["a"]
    net.partition("abc", "de")
    net.run_until(120)
    assert net.publishers() == ["a", "d"]  # each side serves itself during the split
    assert net.cores["d"].term > net.cores["a"].term
    heal_at = net.now
    net.heal()
    net.run_until(heal_at + 3 * CFG.heartbeat_interval)
    (winner,) = net.publishers()
    loser = "a" if winner == "d" else "d"
    (down,) = [e for e in net.events[loser] if isinstance(e, SteppedDown)]
    assert down.new_publisher == winner
    assert [e for e in net.events[loser] if isinstance(e, ConflictDetected)]
    # converged: no flapping for several lease periods, everyone follows the winner,
    # whose plan carries every node's intro points
    assert _watch_single_publisher(net, net.now + 5 * CFG.lease_duration) == 1
    assert net.publishers() == [winner]
    assert all(c.publisher_id == winner for c in net.cores.values())
    plan = net.cores[winner].publish_plan()
    assert {n for n, _ in plan.intro_points[1]} == set("abcde")


def test_heal_with_equal_intro_counts_is_decided_by_term():
    net = _cluster("abcd", {"a": 150, "c": 120})
    net.run_until(40)
    net.partition("ab", "cd")
    net.run_until(120)
    assert net.publishers() == ["a", "c"]
    net.heal()
    assert _watch_single_publisher(net, net.now + 3 * CFG.lease_duration, 1.0) <= 2
    assert net.publishers() == ["c"]  # equal counts (6 and 6): higher term wins


def test_restarted_node_does_not_steal_the_lease():
    net = _cluster("abc", {"a": 100, "b": 150})
    net.run_until(40)
    assert net.publishers() == ["b"]
    net.kill("c")
    net.run_until(45)
    # c comes back with a better priority than the healthy publisher b
    net.identities["c"] = identity("c", 300)
    net.restart("c")
    assert _watch_single_publisher(net, 200) == 1
    assert net.publishers() == ["b"]
    assert net.times("c", BecamePublisher) == []


def test_restarted_publisher_waits_and_cluster_keeps_one_publisher():
    net = _cluster("abc", {"a": 150})
    net.run_until(40)
    net.kill("a")
    net.run_until(41)
    a2 = net.restart("a")
    assert not a2.is_publisher
    assert _watch_single_publisher(net, 150) == 1
    assert len(net.publishers()) == 1


def test_shutdown_releases_the_lease_for_a_fast_takeover():
    net = _cluster("abc", {"a": 200, "b": 150})
    net.run_until(40)
    t0 = net.now
    net.cores["a"].shutdown(net.local("a"))
    net.flush("a")
    assert [type(e) for e in net.events["a"][-1:]] == [SteppedDown]
    net.run_until(t0 + 30)
    (t,) = net.times("b", BecamePublisher)
    assert t < t0 + CFG.heartbeat_interval + CFG.lease_grace + 0.5  # not a full lease
    assert net.publishers() == ["b"]


def test_skewed_clocks_within_tolerance_elect_and_take_over():
    net = Net(CFG)
    for n, skew in (("a", 0.0), ("b", 14.0), ("c", -14.0)):
        net.add(identity(n, 150 if n == "a" else 100), skew=skew)
    net.run_until(40)
    assert net.publishers() == ["a"]
    assert all(set(c.rejections) <= {"unverified"} for c in net.cores.values())
    net.kill("a")
    net.run_until(100)
    assert net.publishers() == ["b"]


def test_foreign_descriptor_with_more_intro_points_makes_us_step_down():
    net = _cluster("abc", {"a": 150})
    net.run_until(40)
    a = net.cores["a"]
    a.report_foreign_descriptor(revision=99, intro_count=15, now=net.local("a"))
    net.flush("a")
    assert not a.is_publisher
    assert isinstance(net.events["a"][-2], ConflictDetected)
    assert net.events["a"][-2].resolution == "step_down"
    t0 = net.now
    hold = 2 * CFG.lease_duration
    net.run_until(t0 + hold - 0.5)
    # the whole cluster yields to the foreign publisher for two lease periods...
    assert net.publishers() == []
    assert all(c.publisher_id is None for c in net.cores.values())
    # ...then elects again as usual
    net.run_until(t0 + hold + 10)
    assert net.publishers() == ["a"]
    assert all(t > t0 + hold - 0.5 for t in net.times("a", BecamePublisher)[1:])


def test_foreign_descriptor_with_fewer_intro_points_starts_a_new_term():
    net = _cluster("abc", {"a": 150})
    net.run_until(40)
    a = net.cores["a"]
    term = a.term
    a.report_foreign_descriptor(revision=99, intro_count=2, now=net.local("a"))
    net.run_until(net.now + 1)
    assert a.is_publisher and a.term == term + 1
    assert net.cores["b"].term == term + 1


def test_one_foreign_revision_found_on_several_hsdirs_is_one_conflict():
    net = _cluster("abc", {"a": 150})
    net.run_until(40)
    a = net.cores["a"]
    term = a.term
    for _ in range(5):  # the same copy, reported by the checks of five HSDirs
        a.report_foreign_descriptor(revision=99, intro_count=2, now=net.local("a"))
    net.run_until(net.now + 1)
    assert a.is_publisher and a.term == term + 1
    assert sum(isinstance(e, ConflictDetected) for e in net.events["a"]) == 1
    # Another foreign revision is another conflict.
    a.report_foreign_descriptor(revision=100, intro_count=2, now=net.local("a"))
    net.run_until(net.now + 1)
    assert a.term == term + 2


def test_standby_election_unit_claim_times():
    e = Election(CFG, "b", 100, True, now=0.0)
    assert e.claim_at([]) == LISTEN  # restart: listen first
    e.on_publisher("a", 3, 100, 6, 0, now=5.0)
    assert e.publisher_id == "a" and e.term == 3
    assert e.claim_at([(100, "a")]) == 5.0 + LISTEN  # b ranks after a, but a is the leader
    assert e.claim_at([(100, "a"), (150, "z")]) == 5.0 + LISTEN + CFG.lease_duration
    assert e.claim(30.0) == 4 and e.is_publisher


def test_a_standby_that_leaves_cleanly_is_dropped_at_once_and_can_return():
    from onionmesh.mesh.events import PeerDead, PeerLeft, PeerRecovered

    net = _cluster("abc", {"a": 200, "b": 150})
    net.run_until(40)
    assert net.publishers() == ["a"]

    def planned(node: str) -> set[str]:
        plan = net.cores["a"].publish_plan()
        assert plan is not None
        return {owner for owner, _ in plan.intro_points.get(1, ())} & {node}

    assert planned("c") == {"c"}
    t0 = net.now
    net.cores["c"].shutdown(net.local("c"))
    net.flush("c")
    net.kill("c")
    net.run_until(t0 + 1)
    # Gone from the plan within a second, not dead_threshold heartbeats + the grace.
    assert planned("c") == set()
    assert net.cores["a"].peers()["c"].state == "dead"
    left = [e for e in net.events["a"] if isinstance(e, PeerLeft)]
    assert [(e.node_id, e.intro_count) for e in left] == [("c", 3)]
    assert left[0].message == "Peer c left the mesh (clean shutdown), removing 3 intro points"
    assert not [e for e in net.events["a"] if isinstance(e, PeerDead)]
    # It comes back like any recovered peer, and its intro points return.
    net.restart("c")
    net.cores["c"].set_local_intro_points({1: [b"c-new"]}, net.local("c"))
    net.flush("c")
    net.run_until(net.now + 30)
    assert [e.node_id for e in net.events["a"] if isinstance(e, PeerRecovered)] == ["c"]
    assert planned("c") == {"c"}
    assert net.publishers() == ["a"]


def test_a_forged_or_replayed_leave_changes_nothing():
    net = _cluster("abc")
    net.run_until(40)
    net.cores["c"].shutdown(net.local("c"))
    leaves = net.cores["c"].datagrams_to_send(net.local("c"))
    net.kill("c")
    assert leaves
    # Deliver c's goodbye to a only after c restarted: a new boot makes it a replay.
    net.restart("c")
    net.run_until(net.now + 20)
    a = net.cores["a"]
    before, rejected = a.peers()["c"].state, sum(a.rejections.values())
    to_a = [data for data, addr in leaves if addr == "a:7000"]
    assert to_a
    for data in to_a:
        a.receive_datagram(data, "c:7000", net.local("a"))
        a.receive_datagram(data[:-1] + bytes([data[-1] ^ 1]), "c:7000", net.local("a"))
    assert a.peers()["c"].state == before == "alive"
    assert sum(a.rejections.values()) == rejected + 2 * len(to_a)


def test_woken_publisher_steps_down_only_when_its_lease_may_have_lapsed():
    short = Election(CFG, "a", 100, True, 0.0)
    short.claim(0.0)
    assert not short.resume_after_pause(12.0, 12.0, 6.0) and short.is_publisher
    long = Election(CFG, "a", 100, True, 0.0)
    long.claim(0.0)
    assert long.resume_after_pause(60.0, 60.0, 6.0) and not long.is_publisher
    # It claims nothing while it listens for a heartbeat round.
    assert long.free_at() is not None and long.free_at() >= 66.0


def test_woken_standby_moves_the_leaders_renewal_and_holds_off():
    e = Election(CFG, "b", 100, True, 0.0)
    e.on_publisher("a", 1, 100, 3, 0, 10.0)
    assert not e.resume_after_pause(60.0, 70.0, 6.0)
    assert e.leader is not None and e.leader.renewed_at == 70.0
    assert e.free_at() == 70.0 + LISTEN



def test_the_start_up_listen_window_counts_from_the_transport_being_up():
    """A start that spends a while before it can hear (WireGuard set-up, the coordination
    onion) still listens a full lease + grace once datagrams can reach it."""
    from onionmesh.mesh.core import MeshCore

    from .netloop import SECRET

    core = MeshCore(CFG, identity("b"), SECRET, [], 100.0)
    assert core.election.free_at() == 100.0 + LISTEN
    core.transport_up(104.0)
    assert core.election.free_at() == 104.0 + LISTEN
    claimed = None
    while claimed is None:
        now = core.get_timer()
        assert now is not None and now < 200
        core.handle_timer(now)
        claimed = now if core.is_publisher else None
    assert claimed == 104.0 + LISTEN  # nobody heard: alone, it claims, no earlier
    core.transport_up(50.0)  # never moves the window back
    assert core.election.started_at == 104.0
