"""The join relay's asyncio shells with an in-process mesh: the relay's join onion answer
waits for the authority's answer, resends, gives up, and logs each step; the authority's
answerer runs the same JoinService (token marked used on disk) as its own join onion."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from nacl.signing import SigningKey

from onionmesh.mesh.join import JoinSponsor
from onionmesh.mesh.join_relay import JoinRelay, RelayIntake, RelayLimits
from onionmesh.node.join_relay_service import JoinRelayService, RelayAnswerer
from onionmesh.node.join_service import JoinService
from onionmesh.node.join_tokens import TokenStore
from tests.mesh.test_join import AUTH, NOW, SECRET, seed
from tests.mesh.test_join_relay import PEERS, joiner, roster

ADDR_A, ADDR_B = PEERS["a"], PEERS["b"]


class Mesh:
    """Node a (authority) and node b (relay) on a loop-driven mesh that may lose all."""

    def __init__(self, tmp_path: Path, limits: RelayLimits | None = None) -> None:
        self.roster = roster()
        self.now = NOW
        self.tokens = TokenStore(tmp_path / "tokens")
        self.service = JoinService(JoinSponsor(AUTH, self.roster, SECRET), self.tokens,
                                   lambda: self.now, self.roster.merge_entry)
        self.answerer = RelayAnswerer(RelayIntake("a", seed("a")), self.service.handle,
                                      lambda: self.roster, lambda: self.now)
        self.relay = JoinRelayService(
            JoinRelay("b", seed("b"), first_id=1, limits=limits), peers=lambda: PEERS,
            roster=lambda: self.roster, send=self.send, now=lambda: self.now)
        self.lossy = False
        self.sent: list[str] = []

    def send(self, data: bytes, address: str) -> bool:
        self.sent.append(address)
        if self.lossy or address != ADDR_A:
            return True  # lost / a member without the key drops it unread
        loop = asyncio.get_running_loop()
        for reply in self.answerer.receive(data, ADDR_B):
            loop.call_soon(self.relay.receive, reply, ADDR_A)
        return True

    def token(self, name: str) -> bytes:
        join_seed = seed(name)
        self.tokens.issue(bytes(SigningKey(join_seed).verify_key), NOW - 10, 3600,
                          may_publish=False)
        return join_seed


async def test_the_relay_passes_the_authority_answer_back(tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.INFO)
    mesh = Mesh(tmp_path)
    j = joiner(mesh.token("t1"), node="n4")
    replies = await mesh.relay.answer(j.request())
    result = None
    for reply in replies:
        result = j.receive(reply, NOW)
    assert result is not None and "n4" in mesh.roster
    assert [r.used_by is not None for r in mesh.tokens.records()] == [True]  # on disk
    assert "join request for n4 relayed by b" in caplog.text
    assert "join request for n4 relayed to the authority a: admitted" in caplog.text
    assert mesh.relay.relayed == 1 and mesh.relay.relay.pending == 0


async def test_a_silent_authority_lets_the_joiner_go(tmp_path: Path, caplog) -> None:
    """Nothing comes back: the relay resends on the core's schedule, then answers nothing
    (the joiner's stream closes and it tries its next bootstrap peer)."""
    caplog.set_level(logging.INFO)
    mesh = Mesh(tmp_path, RelayLimits(resend_after=0.05, answer_timeout=0.2))
    mesh.lossy = True
    j = joiner(mesh.token("t1"))
    loop = asyncio.get_running_loop()
    started = loop.time()

    async def tick() -> None:  # the node clock follows the loop's
        while True:
            mesh.now = NOW + loop.time() - started
            await asyncio.sleep(0.01)

    ticker = asyncio.create_task(tick())
    try:
        assert await asyncio.wait_for(mesh.relay.answer(j.request()), 5) == []
    finally:
        ticker.cancel()
    assert len(mesh.sent) >= 4  # the first send to a and c, then resends
    assert "no answer from the authority over the mesh" in caplog.text
    assert mesh.relay.expired == 1 and mesh.relay.relay.pending == 0


async def test_junk_on_the_join_onion_is_not_relayed(tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.INFO)
    mesh = Mesh(tmp_path)
    assert await mesh.relay.answer(b"OMJ1 not a request") == []
    assert mesh.sent == []
    assert "not relayed: not_a_request" in caplog.text
