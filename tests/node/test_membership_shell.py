"""The daemon's membership shell without tor: the real MeshDriver on a UDP port, a roster-mode
MeshCore and the RosterKeeper, as ``onionmesh run`` wires them; ``onionmesh join`` and
``onionmesh remove-node`` as real processes against it."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

from onionmesh.clock import Clock
from onionmesh.config import load_config
from onionmesh.mesh.core import MeshCore
from onionmesh.mesh.events import Event, RosterChanged
from onionmesh.mesh.identity import NodeIdentity
from onionmesh.mesh.roster import load_roster
from onionmesh.node.cluster_setup import issue_token, join_cluster, local_exchange
from onionmesh.node.keyfiles import load_node_key
from onionmesh.node.membership import statements_request
from onionmesh.node.mesh_driver import MeshDriver
from onionmesh.node.roster_keeper import RosterKeeper
from onionmesh.node.settings import mesh_config, peer_seeds
from onionmesh.node.startup import check_keys
from onionmesh.status_socket import StatusServer, send_request

from .helpers import free_port, make_cluster, onionmesh


async def _sponsor(config_path: Path, status_path: Path):
    """n1's mesh side as the daemon starts it (steps 5 and the status socket)."""
    config = load_config(config_path)
    keys = check_keys(config, managed_tor=False)
    assert keys.roster is not None
    clock = Clock()
    identity = NodeIdentity(config.node_id, keys.node.seed or b"", 100, eligible=True,
                            address=config.coordination.listen)
    events: list[Event] = []
    core = MeshCore(mesh_config(config), identity, keys.cluster_secret, peer_seeds(config),
                    clock.now(), roster=keys.roster)
    keeper: RosterKeeper | None = None

    def on_event(event: Event) -> None:
        events.append(event)
        if isinstance(event, RosterChanged) and keeper is not None:
            keeper.persist()

    driver = MeshDriver(core, clock, on_event)
    keeper = RosterKeeper(config, core, clock, driver.flush)
    driver.join_handler = keeper.join_handler()
    await driver.start(config.coordination.listen)
    server = StatusServer(status_path, lambda: {}, commands={"roster": keeper.apply_request})
    await server.start()
    return config, core, driver, server, events


async def test_join_and_remove_node_through_the_running_mesh_shell(tmp_path: Path):
    first = make_cluster(tmp_path / "n1")
    status_path = tmp_path / "status.sock"
    config, core, driver, server, events = await _sponsor(first.files.config, status_path)
    try:
        token = issue_token(config)
        joined = await asyncio.to_thread(
            onionmesh, "join", "--via", "direct", "--dir", str(tmp_path / "n2"), "--node-id", "n2",
            "--listen", f"127.0.0.1:{free_port(socket.SOCK_DGRAM)}", "--no-ntp-check",
            stdin=token, timeout=90,
        )
        assert joined.returncode == 0, joined.stderr
        n2_key = load_node_key(load_config(tmp_path / "n2" / "onionmesh.toml")).public_key
        # The running core took the new member at once, and the roster file has it.
        assert core.roster is not None and core.roster.key_of("n2") == n2_key
        assert "n2" in core.membership.peers
        assert load_roster(first.files.roster).key_of("n2") == n2_key
        assert any(isinstance(e, RosterChanged) and "n2" in e.added for e in events)
        # A second use of the token: refused, nothing changes.
        again = await asyncio.to_thread(
            onionmesh, "join", "--via", "direct", "--dir", str(tmp_path / "n3"), "--node-id", "n3",
            "--listen", f"127.0.0.1:{free_port(socket.SOCK_DGRAM)}", stdin=token, timeout=90,
        )
        assert again.returncode != 0 and "refused" in again.stderr
        assert "n3" not in core.roster

        # remove-node: the CLI signs, the running shell applies, persists (and gossips).
        revoke = await asyncio.to_thread(_remove_with_socket, config, "n2", status_path)
        assert revoke["refused"] == [] and revoke["revoked"] == 1
        assert core.roster.key_of("n2") is None and core.roster.is_revoked(n2_key)
        assert "n2" not in core.membership.peers
        persisted = load_roster(first.files.roster)
        assert persisted.is_revoked(n2_key) and "n2" not in persisted
        # After a restart the revocation is still there: the removed key stays refused.
        assert check_keys(load_config(first.files.config), managed_tor=False).roster \
            .is_revoked(n2_key)
    finally:
        await server.close()
        await driver.shutdown()


def _remove_with_socket(config, node_id: str, status_path: Path) -> dict:
    from onionmesh.node.membership import sign_revocation

    return send_request(status_path, statements_request(
        revocations=[sign_revocation(config, node_id)]))


def test_remove_node_without_a_running_daemon_writes_the_roster(tmp_path: Path):
    first = make_cluster(tmp_path / "n1")
    config = load_config(first.files.config)
    join_cluster(issue_token(config), tmp_path / "n2", node_id="n2", listen="127.0.0.1:7444",
                 exchange=local_exchange(config))
    n2_key = load_node_key(load_config(tmp_path / "n2" / "onionmesh.toml")).public_key
    done = onionmesh("remove-node", "-c", str(first.files.config), "n2")
    assert done.returncode == 0, done.stderr
    assert "revocation written" in done.stderr
    roster = load_roster(first.files.roster)
    assert roster.is_revoked(n2_key) and "n2" not in roster
    # Unknown ids and the node itself are refused with one line.
    unknown = onionmesh("remove-node", "-c", str(first.files.config), "n9")
    assert unknown.returncode != 0 and "not in the roster" in unknown.stderr
    itself = onionmesh("remove-node", "-c", str(first.files.config), "n1")
    assert itself.returncode != 0 and "cannot remove itself" in itself.stderr
    # The removed node's own roster no longer matches the cluster's: restarted with a
    # roster that has the revocation (gossip persists it), it refuses to run.
    n2_config = load_config(tmp_path / "n2" / "onionmesh.toml")
    (tmp_path / "n2" / "roster").write_bytes(first.files.roster.read_bytes())
    refused = onionmesh("keys", "check", "-c", str(n2_config.path))
    assert refused.returncode == 1 and "does not list node n2" in refused.stderr


def test_roster_init_moves_a_node_made_before_rosters(tmp_path: Path):
    """`roster init` on a node with no roster: authority key + roster of the listed nodes."""
    first = make_cluster(tmp_path / "n1")
    root = first.files.root
    for name in ("roster", "authority_key"):
        (root / name).unlink()
    text = first.files.config.read_text()
    head, _, rest = text.partition("[membership]\n")
    first.files.config.write_text(head + rest.partition("\n\n")[2])
    config = load_config(first.files.config)
    assert config.membership.roster_path is None
    other = "ab" * 32
    done = onionmesh("roster", "init", "-c", str(first.files.config), "--member",
                     f"n2={other}", "--member", f"n3={'cd' * 32}:standby")
    assert done.returncode == 0, done.stderr
    roster = load_roster(root / "roster")
    assert roster.key_of("n1") == load_node_key(config).public_key and roster.may_publish("n1")
    assert roster.key_of("n2") == bytes.fromhex(other) and roster.may_publish("n2")
    assert not roster.may_publish("n3")
    for name in ("roster", "authority_key"):
        assert (root / name).stat().st_mode & 0o777 == 0o600
    bad = onionmesh("roster", "init", "-c", str(first.files.config), "--member", "n2=zz")
    assert bad.returncode != 0 and "64 hex characters" in bad.stderr


async def test_a_member_relays_a_join_to_the_authority_over_the_real_mesh(tmp_path: Path):
    """n2 (no authority key) answers a join with the join onion answer the daemon wires;
    its request crosses the real UDP mesh drivers to n1, which admits (token marked used)
    and answers; n2 passes the signed answer back and the joiner verifies it."""
    import os

    from onionmesh.mesh.join import Joiner
    from onionmesh.node.join_relay_service import join_onion_answer
    from onionmesh.node.join_tokens import TokenStore, decode_token
    from onionmesh.node.membership import tokens_path

    first = make_cluster(tmp_path / "n1")
    sponsor = load_config(first.files.config)
    join_cluster(issue_token(sponsor), tmp_path / "n2", node_id="n2",
                 listen=f"127.0.0.1:{free_port(socket.SOCK_DGRAM)}",
                 exchange=local_exchange(sponsor))
    config, core, driver, server, _ = await _sponsor(first.files.config, tmp_path / "s.sock")
    n2_config = load_config(tmp_path / "n2" / "onionmesh.toml")
    keys = check_keys(n2_config, managed_tor=False)
    clock = Clock()
    core2 = MeshCore(mesh_config(n2_config), NodeIdentity(
        "n2", keys.node.seed or b"", 100, eligible=False, address=n2_config.coordination.listen),
        keys.cluster_secret, peer_seeds(n2_config), clock.now(), roster=keys.roster)
    driver2 = MeshDriver(core2, clock, lambda event: None)
    await driver2.start(n2_config.coordination.listen)
    try:
        here = join_onion_answer(driver, "n1", load_node_key(config).seed or b"",
                                 now=clock.now, max_age=30.0)
        assert here.role == "answers" and driver.relay_handler is not None
        relaying = join_onion_answer(driver2, "n2", keys.node.seed or b"", now=clock.now,
                                     max_age=30.0)
        assert relaying.described == "relays joins to the authority node"
        answer = relaying.answer
        token = decode_token(issue_token(config))
        joiner = Joiner(token.join_seed, token.authority_key, "n9", os.urandom(32),
                        clock.now(), entropy=os.urandom(64))
        replies = await asyncio.wait_for(answer(joiner.request()), 20)
        result = None
        for reply in replies:
            result = joiner.receive(reply, clock.now())
        assert result is not None and "n9" in result.roster
        assert core.roster is not None and "n9" in core.roster
        assert [r.used_by is not None for r in TokenStore(tokens_path(config)).records()
                ][-1]
        # What `onionmesh status` shows on each (the join onion section).
        assert relaying.status("x.onion", 1) == {
            "address": "x.onion", "role": "relays", "streams_answered": 1, "relayed": 1,
            "relay_unanswered": 0, "relay_not_forwarded": 0}
        assert here.status("y.onion", 0)["relayed"] == 1
    finally:
        await driver2.shutdown()
        await server.close()
        await driver.shutdown()
