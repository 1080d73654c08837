"""The daemon's part of the signed roster: persist it when the core changes it, answer
joins when this node holds the authority key, and apply the operator's statements.

* ``RosterChanged`` from the core (gossip, a join, a revocation): the roster file
  is rewritten (0600, atomic), so a restart never brings a revoked key back.
* ``join_handler()``: the sponsor shell (``JoinService``) for the mesh driver,
  which hands it every join datagram arriving on the coordination port; the
  admitted entry goes into the core, which applies and gossips it.
* ``apply_request``: the ``roster`` command of the status socket
  (``onionmesh remove-node``): statements verified by the core like gossip.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from onionmesh.clock import Clock
from onionmesh.config import Config
from onionmesh.mesh.core import MeshCore
from onionmesh.mesh.roster import RosterError, SignedEntry, save_roster
from onionmesh.node.join_service import JoinService
from onionmesh.node.join_tokens import TokenStore
from onionmesh.node.membership import make_sponsor, parse_statements_request, tokens_path

log = logging.getLogger(__name__)


class RosterKeeper:
    def __init__(self, config: Config, core: MeshCore, clock: Clock,
                 flush: Callable[[], None]) -> None:
        assert core.roster is not None and config.membership.roster_path is not None
        self.config = config
        self.core = core
        self.clock = clock
        self.flush = flush
        self.path = config.membership.roster_path
        self.save_failures = 0

    def persist(self) -> None:
        assert self.core.roster is not None
        try:
            save_roster(self.path, self.core.roster)
        except RosterError as exc:
            self.save_failures += 1
            log.error("cannot save the roster (it stays in memory): %s", exc)

    def join_handler(self) -> Callable[[bytes, str], list[bytes]] | None:
        """The join answerer, or None when this node has no authority key."""
        if self.config.membership.authority_key_path is None:
            return None
        assert self.core.roster is not None
        service = JoinService(make_sponsor(self.config, self.core.roster),
                              TokenStore(tokens_path(self.config)), self.clock.now,
                              self._admitted)
        return service.handle

    def _admitted(self, entry: SignedEntry) -> None:
        refused = self.core.add_roster_statements([entry], [], self.clock.now())
        if refused:
            log.error("join: the core refused the new entry: %s", ", ".join(refused))

    async def apply_request(self, request: dict[str, Any]) -> Mapping[str, Any]:
        try:
            entries, revocations = parse_statements_request(request)
        except ValueError as exc:
            return {"error": str(exc)}
        refused = self.core.add_roster_statements(entries, revocations, self.clock.now())
        self.flush()
        self.persist()
        roster = self.core.roster
        assert roster is not None
        return {"refused": refused, "members": len(roster),
                "revoked": len(roster.revoked_keys())}
