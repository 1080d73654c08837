"""The publish plan: 20-cap fairness, freshest first, immediacy, removal timing, rate limit."""

from __future__ import annotations

import itertools
from collections import Counter

from onionmesh.mesh.config import MeshConfig
from onionmesh.mesh.events import PublishRequested
from onionmesh.mesh.plan import (
    Contribution,
    PublishPlan,
    PublishScheduler,
    select_intro_points,
    select_offered,
)
from onionmesh.mesh.vocabulary import PublishTrigger

from .netloop import Net, identity

CFG = MeshConfig()


def _contrib(node: str, n: int, period: int = 1, t0: float = 0.0) -> Contribution:
    ips = [f"{node}-{i}".encode() for i in range(n)]
    return Contribution(node, {period: ips}, {ip: t0 + i for i, ip in enumerate(ips)})


def test_cap_of_20_is_shared_fairly_across_nodes():
    contribs = [_contrib(f"n{k}", 5) for k in range(8)]  # 40 candidates
    plan = select_intro_points(contribs, 20)
    per_node = Counter(node for node, _ in plan[1])
    assert len(plan[1]) == 20
    assert set(per_node) == {f"n{k}" for k in range(8)}
    assert max(per_node.values()) - min(per_node.values()) <= 1


def test_more_than_a_descriptor_holds_keeps_the_whole_pool_for_the_split():
    # 8 nodes x 5 = 40: the plan keeps one descriptor's fair 20 and, for the publisher's
    # split over several descriptors, all 40 (fair up to 20 x MAX_SPLIT = 120).
    contribs = [_contrib(f"n{k}", 5) for k in range(8)]
    pool = select_offered(contribs, 20)[1]
    assert len(pool) == 40 and Counter(n for n, _ in pool) == {f"n{k}": 5 for k in range(8)}
    assert select_offered([_contrib(f"n{k}", 5) for k in range(4)], 20) == {}  # 20 fit
    big = select_offered([_contrib(f"n{k:02d}", 20) for k in range(10)], 20)[1]
    per_node = Counter(n for n, _ in big)
    assert len(big) == 120 and set(per_node.values()) == {12}


def test_a_change_beyond_the_twentieth_point_is_a_new_plan():
    net = _cluster("abc")
    net.run_until(52.5)
    for name in "abc":
        net.cores[name].set_local_intro_points(
            {1: [f"{name}-{i}".encode() for i in range(8)]}, net.local(name))
        net.flush(name)
    net.run_until(net.now + CFG.min_publish_interval + 1)
    plan = net.cores["a"].publish_plan()
    assert len(plan.intro_points[1]) == 20 and len(plan.offered[1]) == 24
    assert plan.message.endswith("; 24 offered, split over several descriptors")
    t0 = net.now
    net.cores["c"].set_local_intro_points(
        {1: [*(f"c-{i}".encode() for i in range(7)), b"c-new"]}, net.local("c"))
    net.flush("c")
    net.run_until(t0 + CFG.min_publish_interval + 1)
    last_t, last = _published(net, "a")[-1]
    assert last_t > t0 and ("c", b"c-new") in last.plan.offered[1]


def test_small_nodes_keep_all_their_points_when_others_are_large():
    contribs = [_contrib("big", 20), _contrib("small", 2)]
    per_node = Counter(n for n, _ in select_intro_points(contribs, 20)[1])
    assert per_node == {"small": 2, "big": 18}


def test_freshest_intro_points_are_chosen_first():
    contribs = [_contrib(f"n{k}", 6, t0=100.0 * k) for k in range(5)]
    plan = select_intro_points(contribs, 10)  # 2 per node
    for k in range(5):
        chosen = {ip for node, ip in plan[1] if node == f"n{k}"}
        assert chosen == {f"n{k}-5".encode(), f"n{k}-4".encode()}  # largest first_seen


def test_each_period_is_selected_separately():
    a = Contribution("a", {1: [b"a1"], 2: [b"a2", b"a2b"]}, {})
    b = Contribution("b", {2: [b"b2"]}, {})
    plan = select_intro_points([a, b], 20)
    assert plan == {1: (("a", b"a1"),), 2: (("a", b"a2"), ("b", b"b2"), ("a", b"a2b"))}


def test_plan_message_uses_the_designs_words():
    plan = PublishPlan(3, 7, {1: tuple(("a", bytes([i])) for i in range(6))}, 9)
    assert plan.message == "Publishing updated descriptor with 6 intro points (was 9)"


def test_scheduler_coalesces_requests_into_one_per_window():
    s = PublishScheduler(min_interval=10.0, refresh_interval=3600.0)
    s.request(PublishTrigger.NEW_PLAN)
    assert s.due(0.0) == (PublishTrigger.NEW_PLAN, "")
    s.published(0.0)
    for t in range(1, 10):
        s.request(PublishTrigger.MEMBERSHIP_CHANGE, f"+n{t}")
        assert s.due(float(t)) is None
    assert s.next_deadline() == 10.0
    assert s.due(10.0) == (PublishTrigger.MEMBERSHIP_CHANGE, "+n1")
    s.published(10.0)
    assert s.due(20.0) is None
    assert s.due(3610.0) == (PublishTrigger.PERIODIC_REFRESH, "")


def _published(net: Net, node: str) -> list[tuple[float, PublishRequested]]:
    return [(t, e) for t, n, e in net.timeline if n == node and isinstance(e, PublishRequested)]


def _cluster(names: str, intro: int = 3) -> Net:
    net = Net(CFG, delay=0.02)
    for n in names:
        net.add(identity(n, 200 if n == "a" else 100))
    for n in names:
        net.cores[n].set_local_intro_points(
            {1: [f"{n}-{i}".encode() for i in range(intro)]}, net.local(n)
        )
        net.flush(n)
    net.run_until(40)
    assert net.publishers() == ["a"]
    return net


def test_intro_rotation_reaches_the_plan_immediately_not_on_the_next_heartbeat():
    net = _cluster("abc")
    net.run_until(52.5)  # mid-way between heartbeats, and the rate-limit window is open
    t0 = net.now
    net.cores["b"].set_local_intro_points({1: [b"b-new", b"b-1", b"b-2"]}, net.local("b"))
    net.flush("b")
    net.run_until(t0 + 0.1)
    plan = net.cores["a"].publish_plan()
    assert ("b", b"b-new") in plan.intro_points[1] and ("b", b"b-0") not in plan.intro_points[1]
    last_t, last = _published(net, "a")[-1]
    assert last_t <= t0 + 0.1 and ("b", b"b-new") in last.plan.intro_points[1]
    assert last.trigger is PublishTrigger.INTRO_POINT_ROTATION


def test_rate_limit_coalesces_churn_and_publishes_the_latest_plan():
    net = _cluster("abc")
    net.run_until(60)
    before = len(_published(net, "a"))
    t0 = net.now
    for k in range(20):  # 20 rotations in 4 s
        net.cores["c"].set_local_intro_points({1: [f"c-rot{k}".encode()]}, net.local("c"))
        net.flush("c")
        net.run_until(net.now + 0.2)
    net.run_until(t0 + 2 * CFG.min_publish_interval + 1)
    pubs = _published(net, "a")[before:]
    times = [t for t, _ in pubs]
    assert all(b - a >= CFG.min_publish_interval for a, b in itertools.pairwise(times))
    assert len(pubs) <= 2
    assert ("c", b"c-rot19") in pubs[-1][1].plan.intro_points[1]
    assert all(ip != b"c-rot18" for _, ip in pubs[-1][1].plan.intro_points[1])
    gens = [e.plan.generation for _, e in pubs]
    assert gens == sorted(set(gens))


def test_dead_nodes_points_leave_the_plan_within_the_bound():
    net = _cluster("abc")
    net.run_until(60)
    kill_at = net.now
    net.kill("c")
    bound = CFG.dead_threshold * CFG.heartbeat_interval + CFG.removal_grace_period
    net.run_until(kill_at + bound + CFG.heartbeat_interval)
    assert all(n != "c" for n, _ in net.cores["a"].publish_plan().intro_points[1])
    pubs = _published(net, "a")
    t_removed, ev = pubs[-1]
    assert t_removed <= kill_at + bound + CFG.heartbeat_interval
    assert ev.plan.count == 6 and ev.plan.previous_count == 9
    assert ev.message == (
        "Publishing updated descriptor with 6 intro points (was 9) (membership change: -c)"
    )


def test_recovered_peer_is_refetched_and_returns_to_the_plan():
    net = _cluster("abc")
    net.partition(["c"], ["a", "b"])
    net.run_until(120)
    assert all(n != "c" for n, _ in net.cores["a"].publish_plan().intro_points[1])
    net.heal()
    net.run_until(121 + 3 * CFG.heartbeat_interval)
    msgs = [e.message for e in net.events["a"]]
    assert "Peer c came back! Adding to mesh" in msgs
    assert "Re-fetching intro points from recovered peer" in msgs
    # c elected itself during the split; whichever of a and c publishes after the
    # heal (see test_election) carries c's intro points again.
    (pub,) = net.publishers()
    assert sum(1 for n, _ in net.cores[pub].publish_plan().intro_points[1] if n == "c") == 3


def test_restarted_peer_stale_points_are_dropped_until_it_resends():
    net = _cluster("abc")
    net.run_until(60)
    net.kill("c")
    net.run_until(62)
    net.restart("c")  # new boot, its shell has not set intro points yet
    net.run_until(62 + CFG.heartbeat_interval + 1)  # the handshake takes <= one heartbeat
    plan = net.cores["a"].publish_plan()
    assert all(n != "c" for n, _ in plan.intro_points[1])
    net.cores["c"].set_local_intro_points({1: [b"c-fresh"]}, net.local("c"))
    net.flush("c")
    net.run_until(net.now + 1)
    assert ("c", b"c-fresh") in net.cores["a"].publish_plan().intro_points[1]


def test_standbys_have_no_plan_and_an_empty_plan_is_never_published():
    net = Net(CFG)
    net.add(identity("a", 200))
    net.add(identity("b"))
    net.run_until(60)
    assert net.publishers() == ["a"]
    assert net.cores["b"].publish_plan() is None
    assert _published(net, "a") == []
    net.cores["b"].set_local_intro_points({7: [b"x"]}, net.local("b"))
    net.flush("b")
    net.run_until(61)
    assert [e.plan.intro_points for _, e in _published(net, "a")] == [{7: (("b", b"x"),)}]


def test_periodic_refresh_republishes_an_unchanged_plan():
    cfg = MeshConfig(refresh_interval=100.0)
    net = Net(cfg)
    net.add(identity("a", 200))
    net.cores["a"].set_local_intro_points({1: [b"a"]}, 0.0)
    net.run_until(300)
    pubs = _published(net, "a")
    assert [e.trigger for _, e in pubs[1:]] == [PublishTrigger.PERIODIC_REFRESH] * (len(pubs) - 1)
    assert len(pubs) >= 3 and len({e.plan.generation for _, e in pubs}) == 1
