"""Join relaying on a running node: the asyncio side of ``mesh.join_relay``.

* ``JoinRelayService`` (every member without the authority key): the answer of its
  join onion. A joiner's request goes to the pure ``JoinRelay``, which decides
  whether to forward it (size, rate, pending bound) and to whom; this shell sends
  it over the mesh transport, waits for the authority's answer (resending and
  giving up when the core says so) and returns it to the join onion stream. An
  empty answer closes the stream: the joiner tries its next bootstrap peer.
* ``RelayAnswerer`` (the node with the authority key): relay datagrams arriving on
  the mesh channel go to the pure ``RelayIntake`` (a roster member signed it
  recently, within its per-relay budget), then to the same ``JoinService`` that
  answers the node's own join onion (token marked used on disk before any answer
  leaves, overall budget); each answer datagram goes back sealed to the relay.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from onionmesh.mesh.join_relay import (
    Forward,
    JoinRelay,
    RelayDone,
    RelayDrop,
    RelayDropReason,
    RelayedJoin,
    RelayExpired,
    RelayIntake,
    relay_id_from,
)
from onionmesh.mesh.roster import Roster
from onionmesh.node.mesh_driver import MeshDriver
from onionmesh.transport.join_onion import JoinAnswer

log = logging.getLogger("onionmesh.join")

# Answers for nothing pending are normal after a resend (every peer may answer once
# more, late): not worth a log line each.
_QUIET = {RelayDropReason.UNKNOWN_RELAY_ID}


class JoinRelayService:
    def __init__(self, relay: JoinRelay, *, peers: Callable[[], Mapping[str, str]],
                 roster: Callable[[], Roster | None], send: Callable[[bytes, str], bool],
                 now: Callable[[], float]) -> None:
        self.relay = relay
        self._peers = peers
        self._roster = roster
        self._send = send
        self._now = now
        self._waiting: dict[int, asyncio.Future[RelayDone]] = {}
        self.relayed = 0
        self.expired = 0

    def _send_all(self, step: Forward) -> None:
        for address in step.targets:
            self._send(step.datagram, address)

    async def answer(self, request: bytes) -> Sequence[bytes]:
        """The join onion's answer: the authority's, or nothing (the stream closes)."""
        step = self.relay.forward(request, self._peers(), self._now())
        if isinstance(step, RelayDrop):
            log.warning("join request on the join onion not relayed: %s (%s)",
                        step.reason, step.detail)
            return []
        relay_id = step.relay_id
        future: asyncio.Future[RelayDone] = asyncio.get_running_loop().create_future()
        self._waiting[relay_id] = future
        log.info("join request for %s relaying to the authority over the mesh (to %d "
                 "member(s))", step.joiner, len(step.targets))
        self._send_all(step)
        try:
            while True:
                due = self.relay.next_due(relay_id)
                if due is None and not future.done():
                    return []  # cancelled under us
                try:
                    timeout = None if due is None else max(0.0, due - self._now())
                    done = await asyncio.wait_for(asyncio.shield(future), timeout)
                except TimeoutError:
                    later = self.relay.due(relay_id, self._now(), self._peers())
                    if isinstance(later, RelayExpired):
                        self.expired += 1
                        log.warning("join request for %s: no answer from the authority over "
                                    "the mesh within %.0f s; the joiner is let go (it tries "
                                    "its next bootstrap peer)", later.joiner, later.waited)
                        return []
                    if later is not None:
                        log.info("join request for %s: no answer yet, sent again to %d "
                                 "member(s)", later.joiner, len(later.targets))
                        self._send_all(later)
                    continue
                self.relayed += 1
                log.info("join request for %s relayed to the authority %s: %s, answer passed "
                         "back", done.joiner, done.authority_node,
                         "admitted" if done.accepted else "refused")
                return done.replies
        finally:
            self.relay.cancel(relay_id)
            self._waiting.pop(relay_id, None)

    def receive(self, data: bytes, addr: str) -> list[bytes]:
        """A relay datagram from the mesh channel (an answer from the authority)."""
        roster = self._roster()
        if roster is None:
            return []
        result = self.relay.receive(data, self._now(), roster)
        if isinstance(result, RelayDrop):
            if result.reason not in _QUIET:
                log.info("join relay datagram from %s dropped: %s (%s)", addr, result.reason,
                         result.detail)
        elif isinstance(result, RelayDone):
            future = self._waiting.get(result.relay_id)
            if future is not None and not future.done():
                future.set_result(result)
        return []


class RelayAnswerer:
    def __init__(self, intake: RelayIntake, handle: Callable[[bytes, str], Sequence[bytes]],
                 roster: Callable[[], Roster | None], now: Callable[[], float]) -> None:
        self.intake = intake
        self._handle = handle
        self._roster = roster
        self._now = now
        self.answered = 0

    def receive(self, data: bytes, addr: str) -> list[bytes]:
        """A relayed join request: the sealed answer datagrams for the relay at ``addr``."""
        roster = self._roster()
        if roster is None:
            return []
        got = self.intake.receive(data, self._now(), roster)
        if isinstance(got, RelayDrop):
            log.warning("relayed join request from %s dropped: %s (%s)", addr, got.reason,
                        got.detail)
            return []
        assert isinstance(got, RelayedJoin)
        log.info("join request for %s relayed by %s", got.joiner or "?", got.relay_node)
        replies = self._handle(got.request, f"{got.relay_node} (relay)")
        self.answered += 1
        now = self._now()
        return [self.intake.seal_reply(got, reply, now) for reply in replies]


class JoinOnionRole(enum.StrEnum):
    ANSWERS = "answers"  # holds the authority key: the sponsor itself
    RELAYS = "relays"  # passes joins on to the node that holds it


@dataclass(frozen=True)
class JoinOnionWiring:
    answer: JoinAnswer  # what the join onion answers a request with
    role: JoinOnionRole
    relay: JoinRelayService | None = None
    answerer: RelayAnswerer | None = None

    @property
    def described(self) -> str:
        return ("answers joins" if self.role is JoinOnionRole.ANSWERS
                else "relays joins to the authority node")

    def status(self, address: str, streams_answered: int) -> dict[str, Any]:
        """The status document's ``join_onion`` section."""
        doc: dict[str, Any] = {"address": address, "role": self.role,
                               "streams_answered": streams_answered}
        if self.relay is not None:
            doc.update(relayed=self.relay.relayed, relay_unanswered=self.relay.expired,
                       relay_not_forwarded=self.relay.relay.refused)
        if self.answerer is not None:
            doc["relayed"] = self.answerer.answered
        return doc


def join_onion_answer(driver: MeshDriver, node_id: str, node_seed: bytes, *,
                      now: Callable[[], float], max_age: float) -> JoinOnionWiring:
    """What this node's join onion answers with, wired to its mesh driver. With a join
    handler (the authority key): the sponsor itself, and relayed requests from the mesh
    go to it too; without: a relay to the node that has it."""
    handler = driver.join_handler

    def roster() -> Roster | None:
        return driver.core.roster

    if handler is not None:
        answerer = RelayAnswerer(RelayIntake(node_id, node_seed, max_age=max_age), handler,
                                 roster, now)
        driver.relay_handler = answerer.receive

        async def answer_here(data: bytes) -> Sequence[bytes]:
            replies = handler(data, "join onion")
            driver.flush()  # an admitted node's entry is gossiped at once
            return replies

        return JoinOnionWiring(answer_here, JoinOnionRole.ANSWERS, answerer=answerer)

    def peers() -> dict[str, str]:
        return {nid: view.address for nid, view in driver.core.peers().items()}

    def send(data: bytes, address: str) -> bool:
        return driver.transport is not None and driver.transport.send(data, address)

    relay = JoinRelayService(
        JoinRelay(node_id, node_seed, first_id=relay_id_from(os.urandom(16)), max_age=max_age),
        peers=peers, roster=roster, send=send, now=now)
    driver.relay_handler = relay.receive
    return JoinOnionWiring(relay.answer, JoinOnionRole.RELAYS, relay=relay)
