"""Membership timelines with explicit ``now``: suspect, dead, removal grace, recovery, damping."""

from __future__ import annotations

from onionmesh.mesh.config import MeshConfig
from onionmesh.mesh.events import PeerDamped, PeerDead, PeerRecovered, PeerSuspect
from onionmesh.mesh.membership import Membership

CFG = MeshConfig(
    heartbeat_interval=5.0,
    dead_threshold=3,
    removal_grace_period=30.0,
    flap_window=300.0,
    flap_threshold=3,
    flap_hold=60.0,
)
SLACK = CFG.heartbeat_slack * CFG.heartbeat_interval


def _table():
    m = Membership(CFG)
    rec = m.add("x", "x:1", None)
    assert rec is not None
    rec.set_intro_points({1: [b"i1", b"i2", b"i3"]}, 0.0)
    m.heard(rec, 0.0)
    return m, rec


def test_missed_heartbeats_count_down_then_dead():
    m, rec = _table()
    assert m.tick(5.0 + SLACK - 0.01) == ([], False)  # first heartbeat only late, not missed
    ev, _ = m.tick(5.0 + SLACK)
    assert ev == [PeerSuspect("x", 1, 2)] and rec.state == "suspect"
    assert ev[0].message == "Peer x missed 1 heartbeat, 2 more until dead"
    ev, _ = m.tick(10.0 + SLACK)
    assert ev[0].message == "Peer x missed 2 heartbeats, 1 more until dead"
    assert m.tick(14.0)[0] == []  # no duplicate events
    ev, changed = m.tick(15.0 + SLACK)
    assert ev == [PeerDead("x", 3)] and changed and rec.state == "dead"
    assert ev[0].message == "Peer x declared DEAD, removing 3 intro points"


def test_dead_peer_intro_points_leave_after_the_removal_grace():
    m, rec = _table()
    dead_at = 15.0 + SLACK
    m.tick(dead_at)
    assert m.contributes(rec, dead_at + 29.9)
    assert m.next_deadline() == dead_at + 30.0
    _, changed = m.tick(dead_at + 30.0)
    assert changed and not m.contributes(rec, dead_at + 30.0) and rec.intro_count == 0
    assert m.next_deadline() is None


def test_late_tick_reports_everything_at_once_with_exact_dead_time():
    m, rec = _table()
    ev, changed = m.tick(100.0)
    assert ev == [PeerDead("x", 3)]
    assert rec.dead_since == 15.0 + SLACK  # not the late tick time
    assert changed and rec.intro_count == 0  # the grace is over too


def test_heartbeat_resets_the_countdown():
    m, rec = _table()
    m.tick(10.0 + SLACK)
    assert rec.state == "suspect"
    assert m.heard(rec, 12.0) == []  # suspect -> alive is not a recovery
    assert rec.state == "alive"
    ev, _ = m.tick(17.0 + SLACK)
    assert ev == [PeerSuspect("x", 1, 2)]


def test_recovery_and_flap_damping():
    m, rec = _table()
    t = 0.0
    damped = []
    for _ in range(3):
        t += 20.0
        m.tick(t)
        assert rec.state == "dead"
        ev = m.heard(rec, t)
        assert ev[0] == PeerRecovered("x")
        assert ev[0].message == "Peer x came back! Adding to mesh"
        damped += [e for e in ev if isinstance(e, PeerDamped)]
    assert damped == [PeerDamped("x", t + 60.0)]  # third recovery within the window
    assert not m.contributes(rec, t + 1)
    assert m.next_deadline() <= t + 60.0
    m.heard(rec, t + 59.0)
    _, changed = m.tick(t + 60.0)
    assert changed and m.contributes(rec, t + 60.0)


def test_recoveries_outside_the_window_do_not_damp():
    m, rec = _table()
    t = 0.0
    for _ in range(4):
        t += 200.0  # at most two recoveries in any 300 s window
        m.tick(t)
        ev = m.heard(rec, t)
        assert not any(isinstance(e, PeerDamped) for e in ev)


def test_unknown_peer_never_times_out_and_removed_peer_cannot_be_readded():
    m = Membership(CFG)
    m.add("y", "y:1", None)
    assert m.tick(1e6) == ([], False) and m.peers["y"].state == "unknown"
    m.remove("y")
    assert m.add("y", "y:1", None) is None and "y" not in m.peers


def test_pause_moves_every_live_timeline_by_the_gap():
    """Silence we could not hear (SIGSTOP) is no evidence: nobody dies of it."""
    m, rec = _table()
    m.resume_after_pause(60.0)
    assert m.tick(60.0)[0] == [] and rec.state == "alive"
    ev, _ = m.tick(60.0 + 15.0 + SLACK)
    assert ev == [PeerDead("x", 3)]  # dies on the usual schedule counted from the wake-up
