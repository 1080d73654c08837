"""Envelope checks: forged, wrong cluster, replayed, stale, misdirected; restarts accepted."""

from __future__ import annotations

import pytest

from onionmesh.mesh import codec
from onionmesh.mesh.auth import ClusterKey, ReplayGuard, Sealer
from onionmesh.mesh.config import MeshConfig
from onionmesh.mesh.core import MeshCore
from onionmesh.mesh.errors import MeshConfigError, RejectedDatagram
from onionmesh.mesh.identity import PeerSeed
from onionmesh.mesh.messages import Heartbeat, LeaseClaim, Sealed, Signed

from .netloop import SECRET, identity, seed_for

T0 = 1_000.0


def _hb(role: str = "standby", term: int = 0) -> Heartbeat:
    return Heartbeat(role, term, "", 100, True, "a:7000", b"\x00" * 16, 0, b"\x00" * 16, 0)


def _pair() -> MeshCore:
    """Core "b" that knows "a" (with a's pinned public key) and has drained its output."""
    a = identity("a")
    b = MeshCore(MeshConfig(), identity("b"), SECRET, [PeerSeed("a", a.address, a.public_key)], T0)
    b.datagrams_to_send(T0)
    while b.next_event():
        pass
    return b


def _sealer(
    node_id: str = "a", secret: bytes = SECRET, boot: int = 5, seed: bytes | None = None
) -> Sealer:
    return Sealer(node_id, seed or seed_for(node_id), ClusterKey(secret), boot)


def _snapshot(core: MeshCore) -> tuple:
    return (
        dict(core.peers()),
        core.term,
        core.publisher_id,
        core.is_publisher,
        core.publish_plan(),
        core.get_timer(),
    )


def _rejected(core: MeshCore, data: bytes, reason: str, now: float = T0) -> None:
    before = _snapshot(core)
    count = core.rejections[reason]
    core.receive_datagram(data, "evil:1", now)
    assert core.rejections[reason] == count + 1
    ev = core.next_event()
    assert ev is not None and ev.reason == reason
    assert _snapshot(core) == before, "a rejected datagram changed state"
    assert core.datagrams_to_send(now) == []


def test_genuine_heartbeat_is_accepted_and_marks_peer_alive():
    b = _pair()
    b.receive_datagram(_sealer().seal(_hb(), T0, echo=b.challenge), "a:7000", T0)
    assert b.peers()["a"].state == "alive"
    assert not b.rejections


def test_wrong_cluster_secret_is_unknown_cluster():
    b = _pair()
    _rejected(
        b,
        _sealer(secret=b"another-cluster-secret-xxxxxxxx").seal(_hb(), T0, echo=b.challenge),
        "unknown_cluster",
    )


def test_other_key_under_a_pinned_id_is_forged():
    b = _pair()
    impostor = _sealer(seed=b"\x07" * 32)  # holds the cluster secret, not a's node key
    _rejected(b, impostor.seal(_hb("publisher", 99), T0, echo=b.challenge), "forged")


def test_bad_signature_with_valid_cluster_mac_is_forged():
    b = _pair()
    good = codec.decode_sealed(_sealer().seal(_hb(), T0, echo=b.challenge))
    bad_sig = bytes([good.signature[0] ^ 1]) + good.signature[1:]
    key = ClusterKey(SECRET)
    forged = codec.encode(Sealed(1, good.signed, bad_sig, key.tag(good.signed, bad_sig)))
    _rejected(b, forged, "forged")


def test_tampered_body_fails_the_cluster_mac():
    b = _pair()
    data = bytearray(_sealer().seal(_hb(), T0, echo=b.challenge))
    data[20] ^= 0x01
    before = _snapshot(b)
    b.receive_datagram(bytes(data), "evil:1", T0)
    assert sum(b.rejections.values()) == 1
    assert set(b.rejections) <= {"unknown_cluster", "malformed"}
    assert _snapshot(b) == before


def test_duplicate_is_replayed():
    b = _pair()
    data = _sealer().seal(_hb(), T0, echo=b.challenge)
    b.receive_datagram(data, "a:7000", T0)
    b.datagrams_to_send(T0)
    while b.next_event():
        pass
    _rejected(b, data, "replayed", T0 + 1)


def test_stale_and_future_timestamps_are_refused():
    b = _pair()
    tol = MeshConfig().datagram_max_age
    s = _sealer()
    _rejected(b, s.seal(_hb(), T0 - tol - 1, echo=b.challenge), "stale")
    _rejected(b, s.seal(_hb(), T0 + tol + 1, echo=b.challenge), "stale")
    b.receive_datagram(
        s.seal(_hb(), T0 + tol - 1, echo=b.challenge), "a:7000", T0
    )  # inside the window
    assert b.peers()["a"].state == "alive"


def test_restarted_sender_is_accepted_and_its_old_boot_is_replayed():
    b = _pair()
    old, new = _sealer(boot=5), _sealer(boot=3)  # its clock was stepped back: smaller id
    old_msgs = [old.seal(_hb(), T0, echo=b.challenge) for _ in range(3)]
    b.receive_datagram(old_msgs[0], "a:7000", T0)
    b.receive_datagram(
        new.seal(_hb(), T0 + 1, echo=b.challenge), "a:7000", T0 + 1
    )  # seq restarts at 1
    assert not b.rejections
    b.datagrams_to_send(T0 + 1)
    while b.next_event():
        pass
    _rejected(b, old_msgs[1], "replayed", T0 + 2)


def test_reordered_datagrams_within_the_window_are_accepted_once():
    g = ReplayGuard()
    for seq in (5, 3, 4, 1):
        g.commit(g.check("a", 1, seq))
    for seq in (3, 5):
        with pytest.raises(RejectedDatagram):
            g.check("a", 1, seq)
    g.commit(g.check("a", 1, 200))
    with pytest.raises(RejectedDatagram):  # fell out of the 64-message window
        g.check("a", 1, 2)


def test_unicast_to_another_node_is_misdirected():
    b = _pair()
    _rejected(b, _sealer().seal(_hb(), T0, to="c", echo=b.challenge), "misdirected")


def test_own_id_is_refused():
    b = _pair()
    _rejected(b, _sealer("b").seal(_hb(), T0, echo=b.challenge), "own_id")


def test_replayed_lease_claim_does_not_change_the_publisher():
    b = _pair()
    s = _sealer()
    claim = s.seal(LeaseClaim(7, 100, 3), T0, echo=b.challenge)
    b.receive_datagram(claim, "a:7000", T0)
    assert b.publisher_id == "a" and b.term == 7
    b.datagrams_to_send(T0)
    while b.next_event():
        pass
    _rejected(b, claim, "replayed", T0 + 3)


def test_cluster_secret_never_appears_in_reprs():
    key = ClusterKey(SECRET)
    assert SECRET.hex() not in repr(key) and "redacted" in repr(key)
    ident = identity("a")
    assert ident.signing_seed.hex() not in repr(ident)
    assert repr(ident.signing_seed) not in repr(ident)
    with pytest.raises(MeshConfigError):
        ClusterKey(b"short")


def _unverified(core: MeshCore, data: bytes, now: float = T0) -> list[Signed]:
    """Deliver ``data``, check it was refused as unverified without changing any view,
    and return what the core sent in reply (decoded)."""
    before = _snapshot(core)
    count = core.rejections["unverified"]
    core.receive_datagram(data, "evil:1", now)
    assert core.rejections["unverified"] == count + 1
    ev = core.next_event()
    assert ev is not None and ev.reason == "unverified" and core.next_event() is None
    assert _snapshot(core) == before, "an unverified datagram changed state"
    return [
        codec.decode_signed(codec.decode_sealed(d).signed) for d, _ in core.datagrams_to_send(now)
    ]


def test_first_word_of_a_new_boot_is_unverified_and_gets_one_hello():
    b = _pair()
    s = _sealer()
    # no echo (first contact): nothing applied, one heartbeat back echoing a's challenge
    (hello,) = _unverified(b, s.seal(_hb("publisher", 5), T0))
    assert hello.to == "a" and hello.echo == s.challenge and hello.body.role == "standby"
    # the same boot again, or with a wrong echo: refused, and nothing sent
    assert _unverified(b, s.seal(_hb("publisher", 5), T0, echo=b"\x01" * 16)) == []
    assert _unverified(b, s.seal(_hb(), T0)) == []
    assert b.publisher_id is None and b.peers()["a"].state == "unknown"
    # b's regular heartbeat also echoes a's challenge
    b.handle_timer(T0 + MeshConfig().heartbeat_interval)
    out = b.datagrams_to_send(T0 + 5)
    signed = [codec.decode_signed(codec.decode_sealed(d).signed) for d, addr in out]
    assert [x.echo for x in signed if x.to == "a"] == [s.challenge]
    # a answers with the echo: now accepted
    b.receive_datagram(s.seal(_hb("publisher", 5), T0 + 5, echo=b.challenge), "a:7000", T0 + 5)
    assert b.publisher_id == "a"


def test_replay_to_a_restarted_receiver_is_refused():
    """A datagram the old core accepted is worthless to the new core (same identity)."""
    a = identity("a")
    seeds = [PeerSeed("a", a.address, a.public_key)]
    b1 = MeshCore(MeshConfig(), identity("b"), SECRET, seeds, T0)
    captured = _sealer().seal(_hb("publisher", 9), T0 + 1, echo=b1.challenge)
    b1.receive_datagram(captured, "a:7000", T0 + 1)
    assert b1.publisher_id == "a"
    b2 = MeshCore(MeshConfig(), identity("b"), SECRET, seeds, T0 + 2)  # restart
    b2.datagrams_to_send(T0 + 2)
    assert b2.challenge != b1.challenge
    # inside the timestamp window, but it cannot echo b2's challenge: refused; the
    # only effect is one hello to the genuine a, which a real a answers
    replies = _unverified(b2, captured, T0 + 3)
    assert [(r.to, r.echo) for r in replies] == [("a", _sealer().challenge)]
    assert _unverified(b2, captured, T0 + 4) == []  # a second replay gets nothing
    assert b2.publisher_id is None


def test_challenges_differ_per_boot_and_node():
    from onionmesh.mesh.auth import boot_challenge

    assert boot_challenge(seed_for("a"), 1) != boot_challenge(seed_for("a"), 2)
    assert boot_challenge(seed_for("a"), 1) != boot_challenge(seed_for("b"), 1)


def test_replay_guard_retires_every_earlier_boot():
    g = ReplayGuard()
    for boot in (10, 4, 7):
        assert g.commit(g.check("a", boot, 1)) is True
    for boot in (10, 4):
        with pytest.raises(RejectedDatagram) as exc:
            g.check("a", boot, 99)
        assert exc.value.reason == "replayed"
    assert g.commit(g.check("a", 7, 2)) is False


def test_intro_points_of_a_restart_with_a_smaller_boot_id_are_applied():
    from onionmesh.mesh.intro import intro_digest
    from onionmesh.mesh.messages import IntroPoints

    b = _pair()
    old, new = _sealer(boot=50), _sealer(boot=7)
    for _ in range(5):
        old.seal(_hb(), T0, echo=b.challenge)  # advance the old boot's sequence numbers
    sets_old, sets_new = {1: [b"old-ip"]}, {1: [b"new-ip"]}
    b.receive_datagram(
        old.seal(IntroPoints(intro_digest(sets_old), sets_old), T0, echo=b.challenge), "a:1", T0
    )
    assert b.membership.peers["a"].intro_sets == {1: (b"old-ip",)}
    b.receive_datagram(
        new.seal(IntroPoints(intro_digest(sets_new), sets_new), T0 + 1, echo=b.challenge),
        "a:1",
        T0 + 1,
    )
    assert b.membership.peers["a"].intro_sets == {1: (b"new-ip",)}
