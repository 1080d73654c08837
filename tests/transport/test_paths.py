"""Path selection (sans-IO): WireGuard first, tor on failure, back with backoff and jitter."""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from onionmesh.transport.frames import (
    Frame,
    FrameError,
    FrameKind,
    StreamDecoder,
    decode_frame,
    stream_encode,
)
from onionmesh.transport.paths import (
    FellBackToTor,
    Path,
    PathConfig,
    PathConfigError,
    PathSelector,
    SendAck,
    SendProbe,
    WireGuardDown,
    WireGuardRestored,
)

CFG = PathConfig(probe_interval=1.0, fallback_after=3.0, probe_timeout=1.0, backoff_cap=16.0,
                 jitter=0.2, tor_round_trip_budget=2.0)


class Net:
    """Two selectors and a network whose WireGuard can be blocked; tor always delivers."""

    def __init__(self, config: PathConfig = CFG, seed: int = 1) -> None:
        self.now = 1000.0
        self.a = PathSelector(config, self.now, random.Random(seed))
        self.b = PathSelector(config, self.now, random.Random(seed + 1))
        self.a.set_peers(["b"], self.now)
        self.b.set_peers(["a"], self.now)
        self.wg_blocked = False
        self.events: list[tuple[float, str, object]] = []
        self.wg_probe_times: list[float] = []

    def step(self, until: float, dt: float = 0.05) -> None:
        while self.now < until:
            self.now = round(self.now + dt, 6)
            for name, me, other, other_name in (("a", self.a, self.b, "b"),
                                                ("b", self.b, self.a, "a")):
                timer = me.get_timer()
                if timer is not None and self.now >= timer:
                    me.handle_timer(self.now)
                for action in me.actions():
                    if (isinstance(action, SendProbe) and name == "a"
                            and action.path is Path.WIREGUARD):
                        self.wg_probe_times.append(self.now)
                    if action.path is Path.WIREGUARD and self.wg_blocked:
                        continue
                    if isinstance(action, SendProbe):
                        other.probe_received(name, action.nonce, action.path)
                    elif isinstance(action, SendAck):
                        other.ack_received(name, action.nonce, action.path, self.now)
                # acks produced by the other side answer at once (zero-latency network)
                for action in other.actions():
                    if action.path is Path.WIREGUARD and self.wg_blocked:
                        continue
                    if isinstance(action, SendAck):
                        me.ack_received(other_name, action.nonce, action.path, self.now)
                    else:
                        me.probe_received(other_name, action.nonce, action.path)
                        for ack in me.actions():
                            other.ack_received(name, ack.nonce, ack.path, self.now)
                for event in me.events():
                    self.events.append((self.now, name, event))


def test_healthy_tunnel_stays_on_wireguard() -> None:
    net = Net()
    net.step(1060)
    assert net.events == []
    assert net.a.path_for("b") is Path.WIREGUARD and net.b.path_for("a") is Path.WIREGUARD
    status = net.a.status(net.now)["b"]
    assert status["path"] == "wireguard" and status["fallback_since"] is None
    assert status["rtt_wireguard"] == 0.0


def test_blocked_tunnel_falls_back_within_bound_and_returns() -> None:
    net = Net()
    net.step(1010)
    blocked_at = net.now
    net.wg_blocked = True
    net.step(1030)
    falls = [(t, who) for t, who, e in net.events if isinstance(e, FellBackToTor)]
    assert {who for _, who in falls} == {"a", "b"}
    for t, _ in falls:
        # no ACK for fallback_after, counted from the last ACK (<= one probe before the block)
        assert t - blocked_at <= CFG.fallback_after + CFG.probe_interval
    assert net.a.path_for("b") is Path.TOR
    assert net.a.status(net.now)["b"]["fallback_since"] == falls[0][0]
    assert net.a.status(net.now)["b"]["rtt_tor"] is not None  # tor probed while on it
    assert not any(isinstance(e, WireGuardRestored) for _, _, e in net.events)
    net.wg_blocked = False
    unblocked_at = net.now
    net.step(1100)
    restored = [(t, e) for t, who, e in net.events if isinstance(e, WireGuardRestored)]
    assert len(restored) == 2
    for t, event in restored:
        assert t - unblocked_at <= CFG.backoff_cap * (1 + CFG.jitter) + 0.1
        assert event.after > 0
    assert net.a.path_for("b") is Path.WIREGUARD
    assert net.a.status(net.now)["b"]["fallbacks"] == 1


def test_reprobing_backs_off_exponentially_with_jitter() -> None:
    net = Net()
    net.step(1005)
    net.wg_blocked = True
    net.step(1200)
    fell = next(t for t, who, e in net.events if who == "a" and isinstance(e, FellBackToTor))
    probes = [t for t in net.wg_probe_times if t >= fell]
    gaps = [b - a for a, b in itertools.pairwise(probes)]
    assert len(gaps) >= 5
    for i, gap in enumerate(gaps):
        base = min(CFG.backoff_cap, CFG.probe_interval * 2 ** i)
        assert base * (1 - CFG.jitter) - 0.1 <= gap <= base * (1 + CFG.jitter) + 0.1, (i, gaps)
    assert len({round(g, 2) for g in gaps if g > 15}) > 1  # jitter: capped gaps differ


def test_fallback_disabled_reports_once_and_stays() -> None:
    net = Net(PathConfig(probe_interval=1.0, fallback_after=3.0, fallback_enabled=False))
    net.step(1005)
    net.wg_blocked = True
    net.step(1060)
    assert net.a.path_for("b") is Path.WIREGUARD
    downs = [e for _, who, e in net.events if who == "a"]
    assert len(downs) == 1 and isinstance(downs[0], WireGuardDown)
    assert "tor fallback disabled" in downs[0].message


def test_stale_handshake_falls_back_early() -> None:
    sel = PathSelector(PathConfig(probe_interval=1.0, fallback_after=30.0), 0.0,
                       random.Random(3))
    sel.set_peers(["b"], 0.0)
    sel.handle_timer(0.0)
    (probe,) = sel.actions()
    sel.ack_received("b", probe.nonce, Path.WIREGUARD, 0.01)
    sel.handshake_seen("b", 200.0, stale=True)
    sel.handle_timer(1.0)
    sel.handle_timer(2.5)
    assert sel.events() == []  # the last ACK is recent enough
    sel.handle_timer(3.5)  # probe_interval + probe_timeout without an ACK, long before 30 s
    events = sel.events()
    assert len(events) == 1 and isinstance(events[0], FellBackToTor)
    assert "handshake stale" in events[0].reason
    assert sel.status(3.5)["b"]["last_handshake_age"] == 200.0


def test_acks_that_prove_nothing_are_ignored() -> None:
    sel = PathSelector(CFG, 0.0, random.Random(4))
    sel.set_peers(["b"], 0.0)
    sel.handle_timer(0.0)
    (probe,) = sel.actions()
    sel.ack_received("b", b"x" * 8, Path.WIREGUARD, 0.1)  # unknown nonce
    sel.ack_received("b", probe.nonce, Path.TOR, 0.1)  # came back on another path
    sel.ack_received("zz", probe.nonce, Path.WIREGUARD, 0.1)  # not a peer
    assert sel.peers["b"].last_wg_ack is None
    sel.probe_received("zz", b"n" * 8, Path.WIREGUARD)
    sel.probe_received("b", b"short", Path.WIREGUARD)
    assert sel.actions() == []
    sel.probe_received("b", b"n" * 8, Path.TOR)
    assert sel.actions() == [SendAck("b", Path.TOR, b"n" * 8)]


def test_roster_changes() -> None:
    sel = PathSelector(CFG, 0.0)
    sel.set_peers(["b", "c"], 0.0)
    sel.set_peers(["c", "d"], 1.0)
    assert set(sel.peers) == {"c", "d"} and sel.path_for("unknown") is Path.WIREGUARD


def test_timings_account_for_tor_round_trip() -> None:
    default = PathConfig.for_heartbeat(5.0, 16.25)
    default.check_timing(16.25)
    assert default.fallback_after + default.probe_interval + default.tor_round_trip_budget < 16.25
    fast = PathConfig.for_heartbeat(1.0, 3.25)
    fast.check_timing(3.25)
    with pytest.raises(PathConfigError, match="dead after 5 s"):
        PathConfig(fallback_after=3.0, probe_interval=1.0, tor_round_trip_budget=2.0) \
            .check_timing(5.0)
    PathConfig(fallback_enabled=False, fallback_after=100).check_timing(5.0)
    with pytest.raises(PathConfigError, match="jitter"):
        PathConfig(jitter=1.5)
    with pytest.raises(PathConfigError, match="probe_interval"):
        PathConfig(probe_interval=0)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["timer", "ack", "probe", "block", "hs",
                                                          "heard"]),
                          st.floats(0, 5), st.booleans()), max_size=80), st.booleans())
def test_invariants_under_any_input_order(ops: list[tuple[str, float, bool]],
                                          enabled: bool) -> None:
    sel = PathSelector(PathConfig(probe_interval=1.0, fallback_after=3.0,
                                  fallback_enabled=enabled), 0.0, random.Random(0))
    sel.set_peers(["b"], 0.0)
    now = 0.0
    for op, dt, flag in ops:
        now += dt
        if op == "timer":
            sel.handle_timer(now)
        elif op == "ack":
            for action in sel.actions():
                if isinstance(action, SendProbe) and flag:
                    sel.ack_received("b", action.nonce, action.path, now)
        elif op == "probe":
            sel.probe_received("b", bytes(8), Path.TOR if flag else Path.WIREGUARD)
        elif op == "hs":
            sel.handshake_seen("b", dt * 100, flag)
        elif op == "heard":
            sel.wireguard_heard("b" if flag else "zz", now)
        peer = sel.peers["b"]
        assert (peer.path is Path.TOR) == (peer.fallback_since is not None)
        assert enabled or peer.path is Path.WIREGUARD
        assert len(peer.outstanding) <= 16
        assert peer.backoff <= sel.config.backoff_cap
        timer = sel.get_timer()
        assert timer is not None


def test_frames_roundtrip_and_reject_garbage() -> None:
    for frame in (Frame(FrameKind.MESH, b"\x94abc"), Frame(FrameKind.PROBE, bytes(8)),
                  Frame(FrameKind.ACK, b"12345678")):
        assert decode_frame(frame.encode()) == frame
    for bad, problem in ((b"", "empty frame"), (b"\x07x", "unknown frame type 7"),
                         (b"\x01abc", "PROBE frame must carry 8"), (b"\x00", "empty MESH")):
        with pytest.raises(FrameError, match=problem):
            decode_frame(bad)
    with pytest.raises(FrameError, match="over"):
        Frame(FrameKind.MESH, bytes(70000)).encode()
    decoder = StreamDecoder()
    wire = b"".join(stream_encode(f) for f in (Frame(FrameKind.MESH, b"hello"),
                                               Frame(FrameKind.PROBE, bytes(8))))
    got = []
    for i in range(len(wire)):  # byte by byte: frames split anywhere
        got += decoder.feed(wire[i:i + 1])
    assert [f.kind for f in got] == [FrameKind.MESH, FrameKind.PROBE]
    with pytest.raises(FrameError, match="zero-length"):
        StreamDecoder().feed(b"\x00\x00")


def test_an_ack_later_than_the_probe_timeout_is_a_lost_probe() -> None:
    """Latency past the tolerance: every WireGuard ACK comes back after ``probe_timeout``
    (here 5 s, past ``fallback_after``). Such an ACK answers a probe already counted as
    lost: the peer falls back to tor and stays there while the latency lasts (before, the
    late ACKs moved it back to WireGuard, which then carried the mesh 5 s late); the RTT
    still shows the latency; once ACKs are timely again the peer returns."""
    sel = PathSelector(CFG, 0.0, random.Random(5))
    sel.set_peers(["b"], 0.0)
    due: list[tuple[float, bytes]] = []
    events: list[object] = []
    latency = CFG.fallback_after + 2.0
    now = 0.0
    while now < 60.0:
        if now >= 40.0:
            latency = 0.1
        now = round(now + 0.05, 6)
        timer = sel.get_timer()
        if timer is not None and now >= timer:
            sel.handle_timer(now)
        for action in sel.actions():
            if isinstance(action, SendProbe):
                if action.path is Path.WIREGUARD:
                    due.append((now + latency, action.nonce))
                else:  # tor answers in time
                    sel.ack_received("b", action.nonce, Path.TOR, now + 0.5)
        for at, nonce in [d for d in due if d[0] <= now]:
            due.remove((at, nonce))
            sel.ack_received("b", nonce, Path.WIREGUARD, now)
        events.extend((now, e) for e in sel.events())
        if 10.0 <= now < 40.0:
            assert sel.path_for("b") is Path.TOR, (now, events)
            slow_rtt = sel.peers["b"].rtt[Path.WIREGUARD]
    kinds = [type(e).__name__ for _, e in events]
    assert kinds == ["FellBackToTor", "WireGuardRestored"], events
    assert events[0][0] <= CFG.fallback_after + 0.1
    assert 40.0 < events[1][0] < 40.0 + CFG.backoff_cap * (1 + CFG.jitter) + 1
    assert slow_rtt > CFG.probe_timeout  # the status shows the latency


def _on_tor_after_long_backoff(seed: int = 6) -> tuple[PathSelector, float, list[float]]:
    """A selector whose peer b went silent at 0 and is on tor, backed off to the cap."""
    sel = PathSelector(CFG, 0.0, random.Random(seed))
    sel.set_peers(["b"], 0.0)
    probes: list[float] = []
    now = 0.0
    while now < 120.0:
        now = round(now + 0.05, 6)
        timer = sel.get_timer()
        if timer is not None and now >= timer:
            sel.handle_timer(now)
        probes += [now for a in sel.actions()
                   if isinstance(a, SendProbe) and a.path is Path.WIREGUARD]
    assert sel.path_for("b") is Path.TOR and sel.peers["b"].backoff == CFG.backoff_cap
    sel.events()
    return sel, now, probes


def test_a_peer_delivering_over_wireguard_again_is_reprobed_at_once() -> None:
    """Its daemon restarted (or its port unblocked): the first frame it sends over
    WireGuard makes us probe at once rather than after up to ``backoff_cap``, and the
    ACK brings it back to WireGuard; the backoff starts over if that probe is lost."""
    sel, now, _ = _on_tor_after_long_backoff()
    assert sel.get_timer() is not None and sel.peers["b"].next_wg_probe > now + 1
    sel.wireguard_heard("b", now)
    (probe,) = [a for a in sel.actions() if a.path is Path.WIREGUARD]
    assert isinstance(probe, SendProbe)
    assert sel.peers["b"].next_wg_probe <= now + CFG.probe_interval * (1 + CFG.jitter)
    sel.ack_received("b", probe.nonce, Path.WIREGUARD, now + 0.01)
    (restored,) = sel.events()
    assert isinstance(restored, WireGuardRestored) and sel.path_for("b") is Path.WIREGUARD

    sel, now, _ = _on_tor_after_long_backoff()
    sel.wireguard_heard("b", now)  # this probe is lost: the next one a backoff step later
    assert len(sel.actions()) == 1
    assert sel.peers["b"].backoff == CFG.probe_interval


def test_steady_wireguard_frames_prompt_no_probes_beyond_the_backoff() -> None:
    """Our WireGuard to b is lost while b's to us delivers steadily: one prompted probe
    at the first frame after the fallback, then only the backoff's."""
    sel = PathSelector(CFG, 0.0, random.Random(8))
    sel.set_peers(["b"], 0.0)
    probes: list[float] = []
    now = 0.0
    while now < 200.0:
        now = round(now + 0.05, 6)
        if round(now * 20) % 10 == 0:  # a frame from b over WireGuard every 0.5 s
            sel.wireguard_heard("b", now)
        timer = sel.get_timer()
        if timer is not None and now >= timer:
            sel.handle_timer(now)
        probes += [now for a in sel.actions()
                   if isinstance(a, SendProbe) and a.path is Path.WIREGUARD]
    fell = sel.peers["b"].fallback_since
    assert sel.path_for("b") is Path.TOR and fell is not None
    after = [t for t in probes if t >= fell]
    # at the fallback, one prompted by b's next frame, then a doubling backoff to the cap
    assert after[1] - after[0] <= 0.5 + 0.05, after
    gaps = [b - a for a, b in itertools.pairwise(after[1:])]
    assert len(gaps) >= 6
    for i, gap in enumerate(gaps):
        base = min(CFG.backoff_cap, CFG.probe_interval * 2 ** i)
        assert base * (1 - CFG.jitter) - 0.1 <= gap <= base * (1 + CFG.jitter) + 0.1, (i, after)
    sel.wireguard_heard("zz", now)  # not a peer: nothing
    assert sel.actions() == []
