"""Carrying the join exchange through tor, for ``onionmesh join`` (the joiner's side).

The decisions are pure: ``mesh.join.Joiner`` (the exchange) and
``mesh.join_attempts.JoinAttempts`` (which bootstrap peer when, backoff with jitter,
when to give up). This shell only does what they say: for each ``Attempt`` it opens
a stream to that peer's join onion through the given tor SOCKS port with the
attempt's fresh credentials (a fresh circuit: tor's IsolateSOCKSAuth), sends the
request as one JOIN frame, and feeds the JOIN frames that come back to the
``Joiner``; it sleeps through ``Wait`` and raises ``JoinGaveUp`` naming every
failure on ``GiveUp``.

The request is resent unchanged while it is younger than half the sponsor's
datagram window, so an answer lost on the way is answered again (the sponsor
recognises the request that used the token); after that a fresh request is made.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from collections.abc import Callable

from onionmesh.mesh.join import Joiner, JoinError, JoinProblem, JoinResult
from onionmesh.mesh.join_attempts import (
    Attempt,
    AttemptOutcome,
    GiveUp,
    GiveUpReason,
    JoinAttempts,
)
from onionmesh.node.join_udp import JoinFailed
from onionmesh.transport.frames import Frame, FrameError, FrameKind, StreamDecoder, stream_encode
from onionmesh.transport.join_onion import JOIN_PORT
from onionmesh.transport.socks import SocksFailure, socks_open

log = logging.getLogger("onionmesh.join")


class JoinGaveUp(JoinFailed):
    """The join through tor did not complete: ``reason`` says which way."""

    def __init__(self, message: str, reason: GiveUpReason) -> None:
        super().__init__(message)
        self.reason = reason


class _Outcome(Exception):
    def __init__(self, outcome: AttemptOutcome, detail: str) -> None:
        super().__init__(detail)
        self.outcome = outcome
        self.detail = detail


async def join_over_tor(joiner: Joiner, attempts: JoinAttempts, socks: tuple[str, int] | str,
                        *, max_age: float, clock: Callable[[], float] = time.time,
                        draw: Callable[[], float] = random.random) -> JoinResult:
    """Run the exchange through tor until one bootstrap peer admits this node."""
    while True:
        now = clock()
        action = attempts.next_action(now, draw())
        if isinstance(action, GiveUp):
            raise JoinGaveUp(action.message, action.reason)
        if not isinstance(action, Attempt):  # Wait
            log.info("join: every bootstrap peer failed; next round in %.0f s",
                     action.until - now)
            await asyncio.sleep(max(0.0, action.until - now))
            continue
        if now - joiner.requested_at > max_age / 2:
            joiner = joiner.renewed(now, entropy=os.urandom(64))
        log.info("join: attempt %d through tor to %s (%s)", action.number,
                 action.peer.node_id, action.peer.onion)
        try:
            result = await _attempt(joiner, action, socks, clock)
        except _Outcome as failed:
            log.info("join: attempt %d to %s failed: %s: %s", action.number,
                     action.peer.node_id, failed.outcome, failed.detail)
            attempts.attempt_failed(clock(), failed.outcome, failed.detail)
            continue
        attempts.attempt_succeeded(clock())
        log.info("join: admitted through %s", action.peer.node_id)
        return result


async def _attempt(joiner: Joiner, attempt: Attempt, socks: tuple[str, int] | str,
                   clock: Callable[[], float]) -> JoinResult:
    remaining = attempt.deadline - clock()
    if remaining <= 0:
        raise _Outcome(AttemptOutcome.TIMED_OUT, "no time left before the deadline")
    try:
        async with asyncio.timeout(remaining):
            try:
                reader, writer = await socks_open(
                    socks, attempt.peer.onion, JOIN_PORT, username=attempt.socks_username,
                    password=attempt.socks_password, timeout=remaining)
            except SocksFailure as exc:
                raise _Outcome(AttemptOutcome.UNREACHABLE, str(exc)) from None
            try:
                writer.write(stream_encode(Frame(FrameKind.JOIN, joiner.request())))
                await writer.drain()
                decoder = StreamDecoder()
                while True:
                    data = await reader.read(65536)
                    if not data:
                        raise _Outcome(AttemptOutcome.UNREACHABLE,
                                       "the join stream closed before a complete answer")
                    for frame in decoder.feed(data):
                        if frame.kind is not FrameKind.JOIN:
                            continue
                        result = joiner.receive(frame.payload, clock())
                        if result is not None:
                            return result
            finally:
                writer.close()
    except TimeoutError:
        raise _Outcome(AttemptOutcome.TIMED_OUT,
                       f"no complete answer within {remaining:.0f} s") from None
    except JoinError as exc:
        if exc.reason is JoinProblem.REFUSED:
            raise _Outcome(AttemptOutcome.REFUSED, exc.detail) from None
        raise _Outcome(AttemptOutcome.BAD_ANSWER, str(exc)) from None
    except (OSError, FrameError) as exc:
        raise _Outcome(AttemptOutcome.UNREACHABLE, f"the join stream broke: {exc}") from None
