"""The join attempt schedule (sans-IO): order of peers, backoff with jitter, giving up."""

from __future__ import annotations

import pytest

from onionmesh.mesh.errors import MeshConfigError
from onionmesh.mesh.join_attempts import (
    Attempt,
    AttemptOutcome,
    BootstrapPeer,
    GiveUp,
    GiveUpReason,
    JoinAttempts,
    JoinRetryConfig,
    Wait,
)

INVITER = BootstrapPeer("n1", "a" * 56 + ".onion")
ALT = BootstrapPeer("n2", "b" * 56 + ".onion")


def plan(*peers: BootstrapPeer, expires: float = 10_000.0, **config: float) -> JoinAttempts:
    return JoinAttempts(peers or (INVITER, ALT), expires, JoinRetryConfig(**config), "tag")


def attempt(p: JoinAttempts, now: float, draw: float = 0.5) -> Attempt:
    action = p.next_action(now, draw)
    assert isinstance(action, Attempt), action
    return action


def test_an_expired_token_gives_up_before_any_attempt() -> None:
    p = plan(expires=100.0)
    action = p.next_action(100.0, 0.5)
    assert isinstance(action, GiveUp) and action.reason is GiveUpReason.EXPIRED
    assert "nothing was sent" in action.message and "add-node" in action.message
    assert p.next_action(101.0, 0.5) == action  # and stays given up


def test_the_inviter_first_then_the_alternative_at_once() -> None:
    p = plan()
    first = attempt(p, 0.0)
    assert first.peer == INVITER and first.number == 1 and first.deadline == 120.0
    assert p.next_action(1.0, 0.5) is first  # still running until reported
    p.attempt_failed(30.0, AttemptOutcome.UNREACHABLE, "SOCKS reply 0xF2")
    second = attempt(p, 30.0)
    assert second.peer == ALT and second.number == 2


def test_every_attempt_gets_fresh_socks_credentials() -> None:
    p = plan(attempts=6, backoff_base=1.0, backoff_cap=1.0)
    seen = set()
    now = 0.0
    for _ in range(6):
        action = p.next_action(now, 0.5)
        if isinstance(action, Wait):
            now = action.until
            action = p.next_action(now, 0.5)
        assert isinstance(action, Attempt)
        seen.add((action.socks_username, action.socks_password))
        p.attempt_failed(now, AttemptOutcome.TIMED_OUT, "no answer")
    assert len(seen) == 6


@pytest.mark.parametrize("draw", [0.0, 0.5, 0.999])
def test_backoff_after_each_round_doubles_to_the_cap_with_jitter(draw: float) -> None:
    p = plan(attempts=12, backoff_base=5.0, backoff_cap=20.0, jitter=0.2)
    now = 0.0
    waits = []
    for _ in range(12):
        action = p.next_action(now, draw)
        if isinstance(action, Wait):
            waits.append(action.until - now)
            assert p.next_action(now + 0.1, 0.3) == action  # the wait is fixed once drawn
            now = action.until
            action = p.next_action(now, draw)
        assert isinstance(action, Attempt)
        p.attempt_failed(now, AttemptOutcome.UNREACHABLE, "down")
    factor = 1 + 0.2 * (2 * draw - 1)
    assert waits == pytest.approx([5 * factor, 10 * factor, 20 * factor, 20 * factor,
                                   20 * factor])
    final = p.next_action(now, draw)
    assert isinstance(final, GiveUp) and final.reason is GiveUpReason.EXHAUSTED
    assert "12 attempts" in final.message
    assert "attempt 1 to n1" in final.message and "attempt 12 to n2" in final.message


def test_a_refusal_is_final_and_names_the_peer() -> None:
    p = plan()
    attempt(p, 0.0)
    p.attempt_failed(5.0, AttemptOutcome.REFUSED, "refused")
    action = p.next_action(5.0, 0.5)
    assert isinstance(action, GiveUp) and action.reason is GiveUpReason.REFUSED
    assert "n1" in action.message and INVITER.onion in action.message


def test_a_bad_answer_moves_on_to_the_next_peer() -> None:
    p = plan()
    attempt(p, 0.0)
    p.attempt_failed(1.0, AttemptOutcome.BAD_ANSWER, "not signed by the authority")
    assert attempt(p, 1.0).peer == ALT


def test_no_attempt_past_the_expiry_and_deadlines_stop_at_it() -> None:
    p = plan(expires=100.0, attempts=10, backoff_base=50.0, backoff_cap=50.0, jitter=0.0)
    a = attempt(p, 0.0)
    p.attempt_failed(10.0, AttemptOutcome.UNREACHABLE, "down")
    b = attempt(p, 10.0)
    assert b.deadline == 100.0 and a.deadline == 100.0
    p.attempt_failed(60.0, AttemptOutcome.UNREACHABLE, "down")
    action = p.next_action(60.0, 0.5)  # the wait would end at 110 > expiry
    assert isinstance(action, GiveUp) and action.reason is GiveUpReason.EXPIRED
    assert "n1" in action.message and "n2" in action.message


def test_success_ends_the_schedule() -> None:
    p = plan()
    attempt(p, 0.0)
    p.attempt_succeeded(3.0)
    assert p.admitted_by == INVITER
    with pytest.raises(MeshConfigError):
        p.next_action(3.0, 0.5)
    with pytest.raises(MeshConfigError):
        p.attempt_failed(3.0, AttemptOutcome.TIMED_OUT, "late")


def test_a_peer_named_twice_is_tried_once_per_round() -> None:
    p = plan(INVITER, ALT, BootstrapPeer("n1-again", INVITER.onion))
    assert p.peers == (INVITER, ALT)


@pytest.mark.parametrize("bad", [
    {"attempts": 0}, {"backoff_base": 0.0}, {"backoff_base": 10.0, "backoff_cap": 5.0},
    {"jitter": 1.0}, {"attempt_timeout": 0.5},
])
def test_bad_settings_are_refused_by_name(bad: dict[str, float]) -> None:
    with pytest.raises(MeshConfigError, match="join"):
        JoinRetryConfig(**bad)  # type: ignore[arg-type]


def test_no_peers_is_refused() -> None:
    with pytest.raises(MeshConfigError, match="bootstrap peer"):
        JoinAttempts((), 100.0, JoinRetryConfig(), "tag")
