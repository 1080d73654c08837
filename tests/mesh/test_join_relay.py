"""The sans-IO join relay: a member passes a joiner's request to the authority node and
its signed answer back, bounded, and cannot admit, forge or flood."""

from __future__ import annotations

import hashlib

import pytest

from onionmesh.mesh import join as J
from onionmesh.mesh import join_relay as R
from onionmesh.mesh.errors import MeshConfigError
from onionmesh.mesh.join import Joiner, JoinError, JoinSponsor
from onionmesh.mesh.join_relay import (
    Forward,
    JoinRelay,
    RelayDone,
    RelayDrop,
    RelayDropReason,
    RelayedJoin,
    RelayExpired,
    RelayIntake,
    RelayLimits,
)
from onionmesh.mesh.roster import AuthorityKey, MemberEntry, Revocation, Roster
from tests.mesh.test_join import AUTH, NOW, SECRET, Tokens, pub, seed

PEERS = {"a": "10.0.0.1:7000", "b": "10.0.0.2:7000", "c": "10.0.0.3:7000"}


def roster() -> Roster:
    r = Roster(AUTH.public_key)
    for name in ("a", "b", "c"):
        r.merge_entry(AUTH.sign_entry(MemberEntry(name, pub(name), True, 1)))
    return r


def joiner(join_seed: bytes, node: str = "n", now: float = NOW) -> Joiner:
    return Joiner(join_seed, AUTH.public_key, node, seed(node), now,
                  entropy=seed("entropy" + node).ljust(64, b"x"))


class Authority:
    """Node "a": the intake, the sponsor and its token records (in memory)."""

    def __init__(self, r: Roster) -> None:
        self.roster = r
        self.tokens = Tokens()
        self.sponsor = JoinSponsor(AUTH, r, SECRET)
        self.intake = RelayIntake("a", seed("a"))
        self.admitted: list[str] = []

    def receive(self, datagram: bytes, now: float) -> list[bytes]:
        got = self.intake.receive(datagram, now, self.roster)
        if isinstance(got, RelayDrop):
            return []
        decision = self.sponsor.handle(got.request, now, self.tokens.grants.get, b"\x09" * 32)
        self.tokens.apply(decision)
        if decision.accepted is not None:
            self.admitted.append(got.joiner)
            self.roster.merge_entry(decision.accepted)  # as the daemon's core does
        return [self.intake.seal_reply(got, reply, now) for reply in decision.replies]


def relay(**kw: object) -> JoinRelay:
    return JoinRelay("b", seed("b"), first_id=7, **kw)  # type: ignore[arg-type]


def test_a_joiner_is_admitted_through_a_relay_and_verifies_the_answer() -> None:
    r = roster()
    auth, rel = Authority(r), relay()
    j = joiner(auth.tokens.issue("t1", may_publish=True))
    step = rel.forward(j.request(), PEERS, NOW)
    assert isinstance(step, Forward) and step.joiner == "n"
    # It does not know the authority yet: every other member, never itself.
    assert step.targets == (PEERS["a"], PEERS["c"])
    done = None
    for answer in auth.receive(step.datagram, NOW + 1):
        assert done is None
        done = rel.receive(answer, NOW + 1, r)
    assert isinstance(done, RelayDone) and done.accepted and done.authority_node == "a"
    result = None
    for reply in done.replies:
        result = j.receive(reply, NOW + 1)
    assert result is not None and result.cluster_secret == SECRET
    assert auth.admitted == ["n"] and rel.pending == 0
    # Learned: the next request goes to the authority only.
    j2 = joiner(auth.tokens.issue("t2"), node="m")
    step2 = rel.forward(j2.request(), PEERS, NOW + 2)
    assert isinstance(step2, Forward) and step2.targets == (PEERS["a"],)


def test_a_member_without_the_key_cannot_answer_for_the_authority() -> None:
    """A seized member signs a perfect-looking envelope; its accept is not signed by the
    authority key, so the relay drops it and the joiner is never fed it."""
    r = roster()
    auth, rel = Authority(r), relay()
    j = joiner(auth.tokens.issue("t1"))
    step = rel.forward(j.request(), PEERS, NOW)
    assert isinstance(step, Forward)
    rogue_authority = AuthorityKey(b"\x08" * 32)
    rogue = JoinSponsor(rogue_authority, Roster(rogue_authority.public_key), SECRET)
    decision = rogue.handle(j.request(), NOW, auth.tokens.grants.get, b"\x01" * 32)
    got = RelayedJoin("b", step.relay_id, j.request(), "n")
    forged = RelayIntake("c", seed("c")).seal_reply(got, decision.replies[0], NOW)
    dropped = rel.receive(forged, NOW, r)
    assert isinstance(dropped, RelayDrop)
    assert dropped.reason is RelayDropReason.UNVERIFIED_ANSWER
    assert rel.pending == 1  # still waiting for the real answer


def test_envelopes_from_outside_the_roster_or_stale_or_tampered_are_dropped() -> None:
    r = roster()
    auth = Authority(r)
    j = joiner(auth.tokens.issue("t1"))
    outsider = JoinRelay("x", seed("x"), first_id=1)
    step = outsider.forward(j.request(), PEERS, NOW)
    assert isinstance(step, Forward)
    got = auth.intake.receive(step.datagram, NOW, r)
    assert isinstance(got, RelayDrop) and got.reason is RelayDropReason.NOT_A_MEMBER
    # A member's envelope, replayed long after.
    step = relay().forward(j.request(), PEERS, NOW)
    assert isinstance(step, Forward)
    got = auth.intake.receive(step.datagram, NOW + 301, r)
    assert isinstance(got, RelayDrop) and got.reason is RelayDropReason.STALE
    # One byte flipped in the signed part.
    bad = bytearray(step.datagram)
    bad[-80] ^= 1
    got = auth.intake.receive(bytes(bad), NOW, r)
    assert isinstance(got, RelayDrop)
    assert got.reason in (RelayDropReason.BAD_SIGNATURE, RelayDropReason.MALFORMED)
    for junk in (b"", b"OMR1", b"OMR1\x92\xc4\x00", b"OMR1" + b"\xff" * 70_000):
        assert isinstance(auth.intake.receive(junk, NOW, r), RelayDrop)
        assert isinstance(relay().receive(junk, NOW, r), RelayDrop)
    # A revoked member's envelope.
    r.merge_revocation(AUTH.sign_revocation(Revocation("b", pub("b"), 2)))
    step = relay().forward(j.request(), PEERS, NOW)
    assert isinstance(step, Forward)
    got = auth.intake.receive(step.datagram, NOW, r)
    assert isinstance(got, RelayDrop) and got.reason is RelayDropReason.NOT_A_MEMBER


def test_a_refusal_is_passed_back_and_ends_the_request() -> None:
    r = roster()
    auth, rel = Authority(r), relay()
    j = joiner(seed("unknown-token"))
    step = rel.forward(j.request(), PEERS, NOW)
    assert isinstance(step, Forward)
    answers = auth.receive(step.datagram, NOW)
    assert len(answers) == 1
    done = rel.receive(answers[0], NOW, r)
    assert isinstance(done, RelayDone) and not done.accepted
    with pytest.raises(JoinError) as refused:
        j.receive(done.replies[0], NOW)
    assert refused.value.reason is J.JoinProblem.REFUSED
    assert auth.admitted == [] and rel.pending == 0


def test_the_relay_forwards_only_single_bounded_join_requests() -> None:
    r = roster()
    auth, rel = Authority(r), relay()
    j = joiner(auth.tokens.issue("t1"))
    accept = auth.sponsor.handle(j.request(), NOW, auth.tokens.grants.get, b"\x09" * 32)
    for data, reason in [
        (b"hello", RelayDropReason.NOT_A_REQUEST),
        (accept.replies[0], RelayDropReason.OVERSIZED if len(accept.replies[0]) > 2048
         else RelayDropReason.NOT_A_REQUEST),
        (J.encode_message(J.JoinRefused()), RelayDropReason.NOT_A_REQUEST),
        (b"OMJ1" + b"\x00" * 3000, RelayDropReason.OVERSIZED),
    ]:
        step = rel.forward(data, PEERS, NOW)
        assert isinstance(step, RelayDrop) and step.reason is reason, (data[:8], step)
    step = rel.forward(j.request(), {"b": PEERS["b"]}, NOW)  # only itself
    assert isinstance(step, RelayDrop) and step.reason is RelayDropReason.NO_PEERS
    assert rel.forwarded == 0


def test_rate_and_pending_bounds_hold_a_flood_to_a_trickle() -> None:
    rel = relay(limits=RelayLimits(rate=1.0, burst=3, max_pending=100))
    requests = [joiner(seed(f"t{i}"), node=f"n{i}").request() for i in range(50)]
    sent = [isinstance(rel.forward(q, PEERS, NOW), Forward) for q in requests]
    assert sent.count(True) == 3  # the burst
    later = [isinstance(rel.forward(q, PEERS, NOW + 10.5), Forward) for q in requests]
    assert later.count(True) == 3  # refilled to the burst, not past it
    drop = rel.forward(requests[0], PEERS, NOW + 10.5)
    assert isinstance(drop, RelayDrop) and drop.reason is RelayDropReason.RATE_LIMITED
    busy = relay(limits=RelayLimits(rate=100.0, burst=100, max_pending=2))
    outcomes = [busy.forward(q, PEERS, NOW) for q in requests[:3]]
    assert [type(o) for o in outcomes] == [Forward, Forward, RelayDrop]
    assert isinstance(outcomes[2], RelayDrop)
    assert outcomes[2].reason is RelayDropReason.TOO_MANY_PENDING
    assert isinstance(outcomes[0], Forward)
    busy.cancel(outcomes[0].relay_id)  # the joiner's stream went away
    assert isinstance(busy.forward(requests[3], PEERS, NOW), Forward)


def test_the_authority_takes_a_bounded_number_per_relay_each_second() -> None:
    r = roster()
    intake = RelayIntake("a", seed("a"), limits=RelayLimits(per_relay_per_second=5))
    flood = relay(limits=RelayLimits(rate=100.0, burst=100, max_pending=100))
    other = JoinRelay("c", seed("c"), first_id=1)
    requests = [joiner(seed(f"t{i}"), node=f"n{i}").request() for i in range(8)]
    steps = [flood.forward(q, PEERS, NOW) for q in requests]
    got = [intake.receive(s.datagram, NOW, r) for s in steps if isinstance(s, Forward)]
    assert sum(isinstance(g, RelayedJoin) for g in got) == 5
    assert isinstance(got[-1], RelayDrop) and got[-1].reason is RelayDropReason.RATE_LIMITED
    step = other.forward(requests[0], PEERS, NOW)  # another relay has its own budget
    assert isinstance(step, Forward)
    assert isinstance(intake.receive(step.datagram, NOW, r), RelayedJoin)
    step = flood.forward(requests[0], PEERS, NOW + 1)
    assert isinstance(step, Forward)
    assert isinstance(intake.receive(step.datagram, NOW + 1, r), RelayedJoin)
    # The authority does not answer a request it relayed to itself.
    own = JoinRelay("a", seed("a"), first_id=1).forward(requests[1], PEERS, NOW + 2)
    assert isinstance(own, Forward)
    assert isinstance(intake.receive(own.datagram, NOW + 2, r), RelayDrop)


def test_resend_then_give_up_on_the_core_schedule() -> None:
    r = roster()
    auth = Authority(r)
    rel = relay(limits=RelayLimits(resend_after=5.0, answer_timeout=12.0))
    j = joiner(auth.tokens.issue("t1"))
    step = rel.forward(j.request(), PEERS, NOW)
    assert isinstance(step, Forward)
    assert rel.next_due(step.relay_id) == NOW + 5.0
    again = rel.due(step.relay_id, NOW + 5.0, PEERS)
    assert isinstance(again, Forward) and again.targets == (PEERS["a"], PEERS["c"])
    assert again.datagram != step.datagram  # fresh timestamp
    assert rel.next_due(step.relay_id) == NOW + 10.0
    assert isinstance(rel.due(step.relay_id, NOW + 10.0, PEERS), Forward)
    assert rel.next_due(step.relay_id) == NOW + 12.0
    expired = rel.due(step.relay_id, NOW + 12.0, PEERS)
    assert isinstance(expired, RelayExpired) and expired.joiner == "n"
    assert rel.pending == 0 and rel.next_due(step.relay_id) is None
    # The late answer of a resend is for nothing pending now.
    late = [rel.receive(a, NOW + 13, r) for a in auth.receive(again.datagram, NOW + 13)]
    assert all(isinstance(x, RelayDrop) and x.reason is RelayDropReason.UNKNOWN_RELAY_ID
               for x in late)


def test_duplicate_answers_after_a_resend_complete_the_request_once() -> None:
    r = roster()
    auth, rel = Authority(r), relay()
    j = joiner(auth.tokens.issue("t1"))
    step = rel.forward(j.request(), PEERS, NOW)
    assert isinstance(step, Forward)
    first = auth.receive(step.datagram, NOW)
    again = rel.due(step.relay_id, NOW + 5, PEERS)
    assert isinstance(again, Forward)
    second = auth.receive(again.datagram, NOW + 5)  # the same request: answered again
    assert len(first) == len(second) >= 2
    outcomes = [rel.receive(first[0], NOW + 5, r), rel.receive(second[0], NOW + 5, r),
                *(rel.receive(a, NOW + 5, r) for a in second[1:])]
    done = [o for o in outcomes if isinstance(o, RelayDone)]
    assert len(done) == 1 and done[0].accepted
    assert auth.admitted == ["n", "n"]  # the sponsor recognises its own earlier answer
    result = None
    for reply in done[0].replies:
        result = j.receive(reply, NOW + 5)
    assert result is not None


def test_limits_are_checked() -> None:
    with pytest.raises(MeshConfigError):
        RelayLimits(rate=0)
    with pytest.raises(MeshConfigError):
        RelayLimits(resend_after=40.0, answer_timeout=30.0)


def test_relay_ids_of_two_boots_differ() -> None:
    ids = {R.relay_id_from(hashlib.sha256(bytes([i])).digest()) for i in range(50)}
    assert len(ids) == 50


def test_a_resend_answered_after_the_roster_changed_completes_with_the_newer_answer() -> None:
    r = roster()
    auth, rel = Authority(r), relay()
    j = joiner(auth.tokens.issue("t1"))
    step = rel.forward(j.request(), PEERS, NOW)
    assert isinstance(step, Forward)
    first = auth.receive(step.datagram, NOW)
    assert rel.receive(first[0], NOW, r) is None  # its accept arrives, its chunks are lost
    r.merge_entry(AUTH.sign_entry(MemberEntry("d", pub("d"), False, 2)))  # someone else
    again = rel.due(step.relay_id, NOW + 5, PEERS)
    assert isinstance(again, Forward)
    outcomes = [rel.receive(a, NOW + 5, r) for a in auth.receive(again.datagram, NOW + 5)]
    done = outcomes[-1]
    assert isinstance(done, RelayDone) and done.accepted
    result = None
    for reply in done.replies:
        result = j.receive(reply, NOW + 5)
    assert result is not None and "d" in result.roster
