"""The operator side of the signed roster: the node's roster and authority files, the
sponsor for join answers, revocations, and moving a running cluster to the roster.

The roster itself (entries, revocations, merge rules) is ``mesh.roster``; the
join exchange is ``mesh.join``. This module is where they meet the node's
config and files:

* ``load_node_roster``: the roster a node runs with, fully re-verified, and
  this node's own entry checked against its node key;
* ``make_sponsor``: the join answerer of a node holding the authority key;
* ``revoke``: ``onionmesh remove-node``: an authority-signed revocation,
  handed to the running daemon (which applies it at once, persists it and
  gossips it) or, when none runs, merged into the roster file;
* ``sign_addresses``: ``onionmesh roster set-address``: a member's entry re-signed
  with its WireGuard endpoint and tunnel mesh address (for entries made without
  them), handed to the daemon or merged into the file like a revocation;
* ``create_roster``: ``onionmesh roster init``: a roster for a cluster made
  before rosters existed, from the operator's list of node keys.

Statements travel to the daemon over its status socket (0600, local) as
msgpack, base64-encoded in the JSON request; the daemon verifies each one
under the authority key like any gossip.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec

from onionmesh.config import Config
from onionmesh.mesh.join import JoinSponsor
from onionmesh.mesh.roster import (
    AuthorityKey,
    MemberEntry,
    Revocation,
    Roster,
    RosterError,
    SignedEntry,
    SignedRevocation,
    load_authority_key,
    load_roster,
    save_authority_key,
    save_roster,
    split_host_port,
)
from onionmesh.node.errors import KeyCheckError, NodeConfigError, SetupError
from onionmesh.node.keyfiles import load_cluster_secret, load_node_key, state_dir

ROSTER_COMMAND = "roster"


def tokens_path(config: Config) -> Path:
    return Path(config.membership.join_tokens_path or state_dir(config) / "join_tokens")


def load_node_roster(config: Config, node_key: bytes) -> Roster | None:
    """The configured roster (None: not moved to the roster yet); KeyCheckError if it is
    damaged, of another authority, or does not hold this node under its key."""
    membership = config.membership
    if membership.roster_path is None:
        return None
    try:
        roster = load_roster(membership.roster_path)
        if membership.authority_key_path is not None:
            authority = load_authority_key(membership.authority_key_path)
            if authority.public_key != roster.authority_key:
                raise KeyCheckError("roster", f"{membership.authority_key_path} is not the "
                                              "authority key the roster names")
    except RosterError as exc:
        raise KeyCheckError("roster", exc.detail) from None
    if roster.key_of(config.node_id) != node_key:
        raise KeyCheckError(
            "roster", f"{membership.roster_path} does not list node {config.node_id} with "
                      "this node's key (removed, or a roster of another cluster)"
        )
    return roster


def load_authority(config: Config) -> AuthorityKey:
    path = config.membership.authority_key_path
    if path is None:
        raise SetupError(
            "this node does not hold the authority key ([membership] authority_key_path); "
            "run the command on the node that does"
        )
    try:
        return load_authority_key(path)
    except RosterError as exc:
        raise KeyCheckError("authority-key", exc.detail) from None


def make_sponsor(config: Config, roster: Roster) -> JoinSponsor:
    """The join answerer for a node with the authority key (it boxes the cluster secret)."""
    return JoinSponsor(load_authority(config), roster, load_cluster_secret(config),
                       max_age=config.coordination.datagram_max_age)


# -- statements over the status socket ------------------------------------------------

_entries = msgspec.msgpack.Decoder(list[SignedEntry])
_revocations = msgspec.msgpack.Decoder(list[SignedRevocation])


def statements_request(entries: Sequence[SignedEntry] = (),
                       revocations: Sequence[SignedRevocation] = ()) -> dict[str, Any]:
    def b64(items: Sequence[Any]) -> str:
        return base64.b64encode(msgspec.msgpack.encode(list(items))).decode()

    return {"command": ROSTER_COMMAND, "entries": b64(entries), "revocations": b64(revocations)}


def parse_statements_request(
    request: dict[str, Any],
) -> tuple[list[SignedEntry], list[SignedRevocation]]:
    """ValueError for anything malformed (the daemon answers it as an error)."""
    try:
        entries = _entries.decode(base64.b64decode(str(request.get("entries", "")),
                                                   validate=True))
        revocations = _revocations.decode(base64.b64decode(
            str(request.get("revocations", "")), validate=True))
    except (ValueError, msgspec.MsgspecError) as exc:
        raise ValueError(f"malformed roster statements: {exc}") from None
    return entries, revocations


# -- remove-node ------------------------------------------------------------------------


def _roster_for_change(config: Config) -> tuple[AuthorityKey, Roster, Path]:
    authority = load_authority(config)
    path = config.membership.roster_path
    if path is None:  # the config check makes this unreachable with an authority key
        raise NodeConfigError("[membership] roster_path is not set")
    try:
        roster = load_roster(path, expected_authority=authority.public_key)
    except RosterError as exc:
        raise KeyCheckError("roster", exc.detail) from None
    return authority, roster, path


def sign_revocation(config: Config, node_id: str, now: float | None = None) -> SignedRevocation:
    """The revocation of ``node_id``'s current key; SetupError if it is not a member."""
    authority, roster, _ = _roster_for_change(config)
    member = roster.member(node_id)
    if member is None:
        raise SetupError(f"node {node_id!r} is not in the roster (already removed?)")
    if node_id == config.node_id:
        raise SetupError("a node cannot remove itself; run remove-node on another node "
                         "holding the authority key, or stop this one and move the key")
    stamp = int(time.time() if now is None else now)
    return authority.sign_revocation(Revocation(node_id, member.node_key, stamp))


def sign_addresses(config: Config, node_id: str, wg_endpoint: str, mesh_address: str,
                   now: float | None = None) -> SignedEntry:
    """``node_id``'s current entry, re-signed with these addresses (and a newer
    ``added_at``, so it replaces the old one everywhere); SetupError names what is wrong."""
    authority, roster, _ = _roster_for_change(config)
    member = roster.member(node_id)
    if member is None:
        raise SetupError(f"node {node_id!r} is not in the roster")
    for name, value in (("WireGuard endpoint", wg_endpoint), ("mesh address", mesh_address)):
        try:
            split_host_port(value)
        except ValueError as exc:
            raise SetupError(f"{name} {value[:80]!r} is not IP:port ({exc})") from None
    stamp = max(int(time.time() if now is None else now), member.added_at + 1)
    try:
        return authority.sign_entry(msgspec.structs.replace(
            member, added_at=stamp, wg_endpoint=wg_endpoint, mesh_address=mesh_address))
    except RosterError as exc:
        raise SetupError(f"cannot sign these addresses: {exc.detail}") from None


def merge_into_roster_file(config: Config, entries: Sequence[SignedEntry] = (),
                           revocations: Sequence[SignedRevocation] = ()) -> Roster:
    """Apply statements to the roster file directly (no daemon runs)."""
    _, roster, path = _roster_for_change(config)
    for revocation in revocations:
        roster.merge_revocation(revocation)
    for entry in entries:
        roster.merge_entry(entry)
    save_roster(path, roster)
    return roster


# -- moving a cluster made before rosters -------------------------------------------------


def parse_member(text: str) -> tuple[str, bytes, bool]:
    """``ID=HEXKEY`` (may publish) or ``ID=HEXKEY:standby`` (may not)."""
    node_id, sep, rest = text.partition("=")
    key_hex, _, role = rest.partition(":")
    if not sep or role not in ("", "standby", "publisher"):
        raise SetupError(f"--member {text[:80]!r}: expected ID=HEXKEY or ID=HEXKEY:standby")
    try:
        key = bytes.fromhex(key_hex)
    except ValueError:
        key = b""
    if len(key) != 32:
        raise SetupError(f"--member {node_id[:64]!r}: the key must be 64 hex characters "
                         "(`onionmesh keys check` on that node prints it)")
    return node_id, key, role != "standby"


def create_roster(config: Config, members: Sequence[tuple[str, bytes, bool]],
                  roster_path: Path, authority_path: Path, *, may_publish_self: bool,
                  now: float | None = None) -> Roster:
    """A new authority key and a roster of this node plus ``members`` (files 0600).

    For a cluster made before rosters: the roster lists every node with the key it
    already has, so nodes moved one at a time keep talking to those not moved yet.
    """
    for path in (roster_path, authority_path):
        if path.exists() or path.is_symlink():
            raise SetupError(f"refusing to overwrite existing file {path}")
    node = load_node_key(config)
    stamp = int(time.time() if now is None else now)
    authority = AuthorityKey.generate()
    roster = Roster(authority.public_key)
    listed = [(config.node_id, node.public_key, may_publish_self), *members]
    seen: set[str] = set()
    for node_id, key, may_publish in listed:
        if node_id in seen:
            raise SetupError(f"node {node_id!r} is listed twice")
        seen.add(node_id)
        try:
            roster.merge_entry(authority.sign_entry(MemberEntry(node_id, key, may_publish,
                                                                stamp)))
        except (RosterError, ValueError, msgspec.MsgspecError) as exc:
            raise SetupError(f"node {node_id[:64]!r} cannot be listed: {exc}") from None
    try:
        save_authority_key(authority_path, authority)
        save_roster(roster_path, roster)
    except RosterError as exc:
        raise SetupError(exc.detail) from None
    return roster
