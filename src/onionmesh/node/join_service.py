"""The sponsor side of the join exchange: a running node that holds the authority key.

``JoinService.handle(data, addr)`` takes one join datagram, whatever carried it
(UDP on the coordination port, this node's join onion, or another member's join
onion relaying it over the mesh: node/join_relay_service.py), and returns the
datagrams to send back to the same place. The decisions are the pure
``mesh.join.JoinSponsor``'s; this shell only adds what needs I/O or a clock:

* the token bookkeeping (``TokenStore``): a token is marked used on disk
  *before* the answer leaves, so it is single-use across crashes; if that
  write fails the request is refused;
* an overall budget of requests per second, so a flood of join datagrams
  costs a bounded number of signature checks;
* the new member's entry goes to ``on_admitted`` (the daemon merges it into
  its core, which persists and gossips it).

Refusals are logged with their reason here, on the sponsor; the joiner is
told nothing about why (an unknown, used and expired token look the same).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

from onionmesh.mesh.join import JoinSponsor, TokenGrant, is_join_datagram
from onionmesh.mesh.roster import SignedEntry
from onionmesh.node.join_tokens import TokenStore, TokenStoreError

log = logging.getLogger(__name__)

MAX_REQUESTS_PER_SECOND = 20


class JoinService:
    def __init__(self, sponsor: JoinSponsor, tokens: TokenStore, now: Callable[[], float],
                 on_admitted: Callable[[SignedEntry], None],
                 max_per_second: int = MAX_REQUESTS_PER_SECOND) -> None:
        self.sponsor = sponsor
        self.tokens = tokens
        self.now = now
        self.on_admitted = on_admitted
        self.max_per_second = max_per_second
        self._second = 0
        self._count = 0
        self.admitted = 0
        self.refused = 0
        self.dropped = 0

    def _grant(self, join_key: bytes) -> TokenGrant | None:
        try:
            return self.tokens.grant(join_key)
        except TokenStoreError as exc:
            log.error("join: %s; refusing join requests until it is fixed", exc)
            return None

    def handle(self, data: bytes, addr: str) -> list[bytes]:
        """Answer one join datagram (never raises for bad input)."""
        if not is_join_datagram(data):
            return []
        now = self.now()
        second = int(now)
        if second != self._second:
            self._second, self._count = second, 0
        self._count += 1
        if self._count > self.max_per_second:
            self.dropped += 1
            return []
        decision = self.sponsor.handle(data, now, grant_for=self._grant,
                                       entropy=os.urandom(32))
        if decision.accepted is None:
            if decision.refused is not None:
                self.refused += 1
                log.info("join request from %s refused: %s", addr, decision.refused)
            return decision.replies
        assert decision.join_key is not None and decision.request_digest is not None
        try:
            recorded = self.tokens.mark_used(decision.join_key, decision.request_digest, now)
        except TokenStoreError as exc:
            log.error("join: %s; refusing the request (the token stays unused)", exc)
            return []
        if not recorded:  # another request used the token between check and write
            self.refused += 1
            log.info("join request from %s refused: used_token", addr)
            return []
        self.admitted += 1
        self.on_admitted(decision.accepted)
        log.info("join: admitted a node from %s", addr)
        return decision.replies
