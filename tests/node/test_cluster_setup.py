"""init / add-node / join / remove-node: configs and keys the checks accept; tokens that are
single-use, expire and hold no long-lived secret; nothing overwritten.

``join`` runs the join exchange over UDP against a sponsor served here by the same
``JoinService`` the daemon runs on its coordination port (the daemon itself needs a
running tor; tests/node/test_membership_tornet.py runs it for real).
"""

from __future__ import annotations

import base64
import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from onionmesh.cli import main
from onionmesh.config import Config, load_config
from onionmesh.crypto.keys import Ed25519Identity, load_secret_key, save_secret_key
from onionmesh.mesh.join import Joiner
from onionmesh.mesh.roster import load_roster, save_roster
from onionmesh.node.cluster_setup import issue_token, join_cluster, local_exchange
from onionmesh.node.coordination_keys import load_coordination_keys
from onionmesh.node.errors import EXIT_USAGE, KeyCheckError, SetupError, TokenError
from onionmesh.node.join_service import JoinService
from onionmesh.node.join_tokens import (
    LEGACY_TOKEN_PREFIX,
    TOKEN_PREFIX,
    JoinTokenBody,
    TokenStore,
    decode_token,
    encode_token,
)
from onionmesh.node.keyfiles import load_cluster_secret, load_node_key
from onionmesh.node.membership import load_node_roster, make_sponsor, tokens_path
from onionmesh.node.settings import peer_seeds

from .helpers import free_port, make_cluster, onionmesh, tree_snapshot


class UdpSponsor:
    """The sponsor's join answerer on its coordination port, as the daemon runs it."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.roster = load_node_roster(config, load_node_key(config).public_key)
        assert self.roster is not None
        self.service = JoinService(make_sponsor(config, self.roster),
                                   TokenStore(tokens_path(config)), time.time, self._admitted)
        host, _, port = config.coordination.listen.rpartition(":")
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, int(port)))
        self.sock.settimeout(0.1)
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def _admitted(self, entry) -> None:
        assert self.roster is not None and self.config.membership.roster_path is not None
        self.roster.merge_entry(entry)
        save_roster(self.config.membership.roster_path, self.roster)

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, addr = self.sock.recvfrom(65536)
            except TimeoutError:
                continue
            for reply in self.service.handle(data, f"{addr[0]}:{addr[1]}"):
                self.sock.sendto(reply, addr)

    def __enter__(self) -> UdpSponsor:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.thread.join(5)
        self.sock.close()


def _join_cli(root: Path, token: str, node_id: str = "n2", *extra: str):
    return onionmesh("join", "--via", "direct", "--dir", str(root), "--node-id", node_id,
                     "--listen", f"127.0.0.1:{free_port(socket.SOCK_DGRAM)}", "--no-ntp-check",
                     *extra, stdin=token + "\n", timeout=90)


def test_init_writes_private_files_the_checks_accept(tmp_path: Path, capsys):
    assert main(["init", "--dir", str(tmp_path / "n1"), "--node-id", "alpha",
                 "--listen", "127.0.0.1:7443"]) == 0
    out = capsys.readouterr()
    token = out.out.strip()
    assert token.startswith(TOKEN_PREFIX)
    assert "secret" in out.err  # the operator is told to keep the token private
    root = tmp_path / "n1"
    config_path = root / "onionmesh.toml"
    for path in (config_path, root / "node_key.pem", root / "cluster_secret",
                 root / "master" / "hs_ed25519_secret_key", root / "roster",
                 root / "authority_key", root / "state" / "join_tokens",
                 root / "state" / "wireguard.key", root / "state" / "coordination_onion.pem"):
        assert path.stat().st_mode & 0o777 == 0o600, path
    assert main(["config", "check", "-c", str(config_path)]) == 0
    assert main(["keys", "check", "-c", str(config_path)]) == 0
    config = load_config(config_path)
    assert config.node_id == "alpha"
    assert config.resilience.require_ntp_sync is True  # docs/scenarios.md §4 default
    master = load_secret_key(root / "master" / "hs_ed25519_secret_key")
    assert config.master.address == master.onion_address
    # The authority-signed roster lists this node, under its key, allowed to publish.
    roster = load_roster(root / "roster")
    assert [m.node_id for m in roster.members()] == ["alpha"]
    assert roster.key_of("alpha") == load_node_key(config).public_key
    assert roster.may_publish("alpha")
    # ...with its WireGuard key and coordination onion, made at init (docs/coordination.md).
    coordination = load_coordination_keys(config)
    entry = roster.member("alpha")
    assert entry is not None and entry.wg_key == coordination.wg_public_raw
    assert entry.coord_onion == coordination.onion_address
    # The token names this node as sponsor and holds no long-lived secret.
    decoded = decode_token(token)
    assert decoded.sponsor_id == "alpha" and decoded.sponsor_address == "127.0.0.1:7443"
    assert decoded.authority_key == roster.authority_key
    raw = base64.urlsafe_b64decode(token[len(TOKEN_PREFIX):] + "==")
    for secret in (load_cluster_secret(config), master.expanded[:32],
                   (root / "authority_key").read_bytes()[-32:], load_node_key(config).seed):
        assert secret is not None and secret not in raw and secret.hex() not in token
    assert decoded.expires_at == pytest.approx(time.time() + 3600, abs=60)


def test_add_node_and_join_over_udp_produce_a_member_the_checks_accept(tmp_path: Path, capsys):
    first = make_cluster(tmp_path / "n1")
    first_config = load_config(first.files.config)
    assert main(["add-node", "-c", str(first.files.config)]) == 0
    token = capsys.readouterr().out.strip()
    with UdpSponsor(first_config):
        done = _join_cli(tmp_path / "n2", token, "n2", "--master-key",
                         str(first.files.master_key))
    assert done.returncode == 0, done.stderr
    assert token not in done.stdout + done.stderr  # never echoed
    config_path = tmp_path / "n2" / "onionmesh.toml"
    assert main(["config", "check", "-c", str(config_path)]) == 0
    assert main(["keys", "check", "-c", str(config_path)]) == 0
    second = load_config(config_path)
    assert second.master.address == first_config.master.address
    # The cluster secret came boxed in the answer; the roster lists both nodes, each
    # under its own key, on both sides.
    assert load_cluster_secret(second) == load_cluster_secret(first_config)
    for config in (first_config, second):
        roster = load_roster(config.membership.roster_path)
        assert roster.key_of("n1") == load_node_key(first_config).public_key
        assert roster.key_of("n2") == load_node_key(second).public_key
        assert roster.may_publish("n2")
        for node_config in (first_config, second):
            entry = roster.member(node_config.node_id)
            keys = load_coordination_keys(node_config)
            assert entry is not None and entry.wg_key == keys.wg_public_raw
            assert entry.coord_onion == keys.onion_address
    assert (tmp_path / "n2" / "roster").stat().st_mode & 0o777 == 0o600
    # Cluster-wide timing comes from the token (the fast profile of the first node).
    assert second.coordination.heartbeat_interval == 1.0
    assert second.coordination.lease_duration == 3.0
    (seed,) = peer_seeds(second)
    assert (seed.node_id, seed.address) == ("n1", first_config.coordination.listen)
    assert second.resilience.require_ntp_sync is False


def test_a_used_token_is_refused_without_revealing_anything(tmp_path: Path):
    first = make_cluster(tmp_path / "n1")
    config = load_config(first.files.config)
    token = issue_token(config)
    with UdpSponsor(config) as sponsor:
        assert _join_cli(tmp_path / "n2", token, "n2").returncode == 0
        again = _join_cli(tmp_path / "n3", token, "n3")
        never_issued = encode_token(msgspec.structs.replace(decode_token(token),
                                                            join_seed=os.urandom(32)))
        unknown = _join_cli(tmp_path / "n4", never_issued, "n4")
    assert again.returncode != 0
    assert "refused" in again.stderr
    assert not (tmp_path / "n3").exists()  # nothing written
    # Unknown and used tokens look the same to the joiner.
    assert again.stderr.replace("n3", "X") == unknown.stderr.replace("n4", "X")
    assert sponsor.service.admitted == 1 and sponsor.service.refused >= 2
    roster = load_roster(config.membership.roster_path)
    assert "n3" not in roster and "n2" in roster


def test_an_expired_token_is_refused(tmp_path: Path):
    first = make_cluster(tmp_path / "n1")
    config = load_config(first.files.config)
    expired = issue_token(config, now=time.time() - 7200)  # issued 2 h ago, 1 h lifetime
    with pytest.raises(TokenError, match="expired"):
        join_cluster(expired, tmp_path / "n2", node_id="n2", listen="127.0.0.1:7444",
                     exchange=local_exchange(config))
    # A joiner that ignores the expiry in the token is refused by the sponsor too.
    body = decode_token(expired)
    forged = encode_token(msgspec.structs.replace(body, expires_at=time.time() + 3600))
    with pytest.raises(SetupError, match="refused"):
        join_cluster(forged, tmp_path / "n2", node_id="n2", listen="127.0.0.1:7444",
                     exchange=local_exchange(config))
    assert not (tmp_path / "n2").exists()


def test_tokens_are_read_from_stdin_or_a_file_never_argv(tmp_path: Path):
    first = make_cluster(tmp_path / "n1")
    config = load_config(first.files.config)
    token = issue_token(config)
    argv = onionmesh("join", token, "--dir", str(tmp_path / "n2"), "--node-id", "n2")
    assert argv.returncode == EXIT_USAGE and "unrecognized arguments" in argv.stderr
    token_file = tmp_path / "token"
    token_file.write_text(token)
    with UdpSponsor(config):
        done = onionmesh("join", "--via", "direct", "--token-file", str(token_file),
                         "--dir", str(tmp_path / "n2"),
                         "--node-id", "n2", "--listen", "127.0.0.1:7445", "--no-ntp-check")
    assert done.returncode == 0, done.stderr


def test_a_reserved_node_id_and_no_publish_right_are_honoured(tmp_path: Path):
    first = make_cluster(tmp_path / "n1")
    config = load_config(first.files.config)
    token = issue_token(config, node_id="web2", may_publish=False)
    with pytest.raises(SetupError, match="refused"):
        join_cluster(token, tmp_path / "x", node_id="web3", listen="127.0.0.1:7444",
                     exchange=local_exchange(config))
    join_cluster(token, tmp_path / "web2", node_id="web2", listen="127.0.0.1:7444",
                 exchange=local_exchange(config))
    roster = load_roster(config.membership.roster_path)
    assert "web2" in roster and not roster.may_publish("web2")


def test_token_bookkeeping_survives_and_prunes(tmp_path: Path):
    store = TokenStore(tmp_path / "state" / "join_tokens")
    key = b"\x07" * 32
    store.issue(key, 1000.0, 3600.0, may_publish=True)
    assert store.mark_used(key, b"\x01" * 32, 1010.0)
    assert store.mark_used(key, b"\x01" * 32, 1011.0)  # the same request, resent
    assert not store.mark_used(key, b"\x02" * 32, 1012.0)  # another request
    again = TokenStore(tmp_path / "state" / "join_tokens")  # a restart
    grant = again.grant(key)
    assert grant is not None and grant.used_by == b"\x01" * 32
    assert (tmp_path / "state" / "join_tokens").stat().st_mode & 0o777 == 0o600
    again.issue(b"\x08" * 32, 1000.0 + 30 * 86400, 3600.0, may_publish=True)
    assert again.grant(key) is None  # a month later the old record is pruned


def test_join_without_master_key_makes_a_node_that_never_publishes(tmp_path: Path):
    first = make_cluster(tmp_path / "n1")
    config = load_config(first.files.config)
    join_cluster(issue_token(config), tmp_path / "n2", node_id="n2", listen="127.0.0.1:7444",
                 exchange=local_exchange(config))
    joined = load_config(tmp_path / "n2" / "onionmesh.toml")
    assert joined.master.key_path is None
    assert "copy the master key" in (tmp_path / "n2" / "onionmesh.toml").read_text()
    assert not (tmp_path / "n2" / "master").exists()
    assert main(["keys", "check", "-c", str(joined.path)]) == 0


def test_join_refuses_a_master_key_of_another_address(tmp_path: Path):
    first = make_cluster(tmp_path / "n1")
    config = load_config(first.files.config)
    other = tmp_path / "other_key"
    save_secret_key(Ed25519Identity.generate(), other)
    with pytest.raises(KeyCheckError) as info:
        join_cluster(issue_token(config), tmp_path / "n2", node_id="n2",
                     listen="127.0.0.1:7444", master_key=other, exchange=local_exchange(config))
    assert info.value.check == "onion-address"
    assert not (tmp_path / "n2").exists()  # checked before anything was written


def test_join_refuses_the_inviters_node_id(tmp_path: Path):
    first = make_cluster(tmp_path / "n1")
    config = load_config(first.files.config)
    with pytest.raises(SetupError, match="inviting node"):
        join_cluster(issue_token(config), tmp_path / "n2", node_id="n1",
                     listen="127.0.0.1:7444", exchange=local_exchange(config))


def test_init_and_join_never_overwrite_anything(tmp_path: Path, capsys):
    first = make_cluster(tmp_path / "n1")
    config = load_config(first.files.config)
    token = issue_token(config)
    before = tree_snapshot(tmp_path)
    assert main(["init", "--dir", str(tmp_path / "n1")]) != 0
    err = capsys.readouterr().err
    assert "refusing to overwrite" in err and "onionmesh.toml" in err
    with pytest.raises(SetupError, match="refusing to overwrite"):
        join_cluster(token, tmp_path / "n1", node_id="n9", listen="127.0.0.1:7444",
                     exchange=local_exchange(config))
    assert tree_snapshot(tmp_path) == before


def test_add_node_needs_the_authority_key(tmp_path: Path):
    first = make_cluster(tmp_path / "n1")
    config = load_config(first.files.config)
    join_cluster(issue_token(config), tmp_path / "n2", node_id="n2", listen="127.0.0.1:7444",
                 exchange=local_exchange(config))
    done = onionmesh("add-node", "-c", str(tmp_path / "n2" / "onionmesh.toml"))
    assert done.returncode != 0 and "authority key" in done.stderr


def test_token_repr_hides_the_join_key():
    body = JoinTokenBody(b"\x01" * 32, b"\x02" * 32, "a" * 56 + ".onion", "n1",
                         "10.0.0.1:7443", 5.0, {"coordination": {"heartbeat_interval": 5.0}})
    assert decode_token(encode_token(body)) == body
    assert "01" * 32 not in repr(body)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("hello", "not an onionmesh join token"),
        (TOKEN_PREFIX + "!!!", "damaged"),
        (TOKEN_PREFIX + "kA", "damaged or incomplete"),  # msgpack []
        (LEGACY_TOKEN_PREFIX + "eyJ2IjoxfQ", "older onionmesh"),
    ],
)
def test_bad_tokens_are_typed_errors_that_do_not_repeat_the_token(text: str, problem: str):
    with pytest.raises(TokenError, match=problem) as info:
        decode_token(text)
    assert text not in str(info.value) or len(text) < 6


def test_token_values_the_config_refuses_give_a_setup_error(tmp_path: Path):
    body = JoinTokenBody(b"\x01" * 32, b"\x02" * 32, "a" * 56 + ".onion", "n1",
                         "10.0.0.1:7443", time.time() + 60,
                         {"coordination": {"heartbeat_interval": 0.0}})
    with pytest.raises(SetupError, match="heartbeat_interval"):
        join_cluster(encode_token(body), tmp_path / "n2", node_id="n2", listen="127.0.0.1:7444")
    assert not (tmp_path / "n2").exists()


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_arbitrary_tokens_give_only_token_errors(text: str):
    with contextlib.suppress(TokenError):
        decode_token(TOKEN_PREFIX + text)


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_token_payloads_give_only_token_errors(data: bytes):
    with contextlib.suppress(TokenError):
        decode_token(TOKEN_PREFIX + base64.urlsafe_b64encode(data).decode())


def test_hostile_tokens_on_stdin_are_one_line_errors(tmp_path: Path):
    """A token read from stdin that is huge or nests deeply: one error line, no traceback."""
    nested = b"\x91" * 1500 + b"\x90"  # msgpack arrays nested deeper than any limit
    bodies = [
        TOKEN_PREFIX + base64.urlsafe_b64encode(nested).decode(),
        TOKEN_PREFIX + "A" * 1_000_000,
    ]
    for body in bodies:
        done = subprocess.run(
            [sys.executable, "-m", "onionmesh.cli", "join", "--dir", str(tmp_path / "n2"),
             "--node-id", "n2"], input=body, capture_output=True, text=True, timeout=60,
        )
        assert done.returncode == EXIT_USAGE, done.stderr
        assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
        assert "join token" in done.stderr
        assert not (tmp_path / "n2").exists()


def test_a_flood_of_join_requests_costs_a_bounded_number_of_checks(tmp_path: Path):
    """Requests naming unknown tokens, 500 in one second: at most 20 are even looked at."""
    first = make_cluster(tmp_path / "n1")
    config = load_config(first.files.config)
    roster = load_node_roster(config, load_node_key(config).public_key)
    assert roster is not None
    now = [1000.0]
    service = JoinService(make_sponsor(config, roster), TokenStore(tokens_path(config)),
                          lambda: now[0], lambda entry: None)
    body = decode_token(issue_token(config))
    answered = 0
    for _ in range(500):
        forged = msgspec.structs.replace(body, join_seed=os.urandom(32))
        joiner = Joiner(forged.join_seed, forged.authority_key, "x1", os.urandom(32), now[0],
                        entropy=os.urandom(64))
        answered += bool(service.handle(joiner.request(), "198.51.100.7:4000"))
    assert answered == 20 and service.dropped == 480 and service.admitted == 0
    now[0] += 1.0
    assert service.handle(b"OMJ1garbage", "198.51.100.7:4000") == []  # malformed: no answer


def test_wireguard_addressing_travels_in_the_roster_to_every_joiner(tmp_path: Path, capsys):
    """init/join with --wireguard-address/--wireguard-endpoint sign both into the node's
    entry; a joiner's persisted roster then gives it every peer, with no config line."""
    from onionmesh.node.coordination_peers import coordination_peers

    root = tmp_path / "n1"
    assert main(["init", "--dir", str(root), "--listen", "10.77.0.1:7443",
                 "--wireguard-address", "10.77.0.1/24",
                 "--wireguard-endpoint", "192.0.2.1:51821"]) == 0
    capsys.readouterr()
    sponsor = load_config(root / "onionmesh.toml")
    assert sponsor.wireguard.enabled and sponsor.wireguard.listen_port == 51821
    assert main(["config", "check", "-c", str(root / "onionmesh.toml")]) == 0
    for i in (2, 3):
        join_cluster(issue_token(sponsor), tmp_path / f"n{i}", node_id=f"n{i}",
                     listen=f"10.77.0.{i}:7443", exchange=local_exchange(sponsor), settings={
                         "wireguard": {"enabled": True, "address": f"10.77.0.{i}/24",
                                       "endpoint": f"192.0.2.{i}:51820"}})
    n3 = load_config(tmp_path / "n3" / "onionmesh.toml")
    assert n3.wireguard.peers == {}
    roster = load_roster(tmp_path / "n3" / "roster")
    peers = coordination_peers(n3, roster.members(), load_coordination_keys(n3).wg_public_raw)
    assert peers.missing == ()
    assert [(p.node_id, p.endpoint, str(p.tunnel_ip)) for p in peers.wireguard] == [
        ("n1", "192.0.2.1:51821", "10.77.0.1"), ("n2", "192.0.2.2:51820", "10.77.0.2")]
    entry = roster.member("n3")
    assert entry is not None and entry.mesh_address == "10.77.0.3:7443"
    # One flag without the other is a usage error, not a half-made node.
    assert main(["init", "--dir", str(tmp_path / "x"), "--wireguard-address",
                 "10.77.0.1/24"]) != 0
    assert "go together" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_roster_set_address_signs_addresses_into_an_entry_made_without_them(
        tmp_path: Path, capsys):
    """A member made without WireGuard addresses gets them from the authority node
    (`onionmesh roster set-address`, no daemon running: into the roster file)."""
    first = make_cluster(tmp_path / "n1")
    sponsor = load_config(first.files.config)
    join_cluster(issue_token(sponsor), tmp_path / "n2", node_id="n2",
                 listen="127.0.0.1:7999", exchange=local_exchange(sponsor))
    roster_path = sponsor.membership.roster_path
    assert roster_path is not None
    before = load_roster(roster_path).member("n2")
    assert before is not None and (before.wg_endpoint, before.mesh_address) == ("", "")
    config = str(first.files.config)
    assert main(["roster", "set-address", "n2", "--wireguard-endpoint", "192.0.2.2:51820",
                 "--mesh-address", "10.77.0.2:7443", "-c", config]) == 0
    assert "addresses signed" in capsys.readouterr().err
    after = load_roster(roster_path).member("n2")
    assert after is not None and after.added_at > before.added_at
    assert (after.node_key, after.wg_key, after.coord_onion) == (
        before.node_key, before.wg_key, before.coord_onion)
    assert (after.wg_endpoint, after.mesh_address) == ("192.0.2.2:51820", "10.77.0.2:7443")
    # Bad input names what is wrong and changes nothing.
    assert main(["roster", "set-address", "n2", "--wireguard-endpoint", "host:51820",
                 "--mesh-address", "10.77.0.2:7443", "-c", config]) != 0
    assert "WireGuard endpoint 'host:51820' is not IP:port" in capsys.readouterr().err
    assert main(["roster", "set-address", "n9", "--wireguard-endpoint", "192.0.2.9:1",
                 "--mesh-address", "10.77.0.9:7443", "-c", config]) != 0
    assert "not in the roster" in capsys.readouterr().err
    assert load_roster(roster_path).member("n2") == after


def test_tokens_name_every_members_join_onion_by_default(tmp_path: Path):
    """A joiner's join onion goes into its signed roster entry (its key saved once it is
    admitted), so `add-node` on the authority node names every member's join onion: the
    inviter's first, then `--bootstrap`, then the other members (each relays to it)."""
    from onionmesh.node.coordination_keys import ensure_join_onion_key

    first = make_cluster(tmp_path / "n1")
    config = load_config(first.files.config)
    own = ensure_join_onion_key(config).onion_address
    assert decode_token(issue_token(config)).bootstrap == [("n1", own)]
    onions = {}
    for i, node_id in enumerate(("n2", "n3"), start=2):
        join_cluster(issue_token(config), tmp_path / node_id, node_id=node_id,
                     listen=f"127.0.0.1:{7440 + i}", exchange=local_exchange(config))
        joined = load_config(tmp_path / node_id / "onionmesh.toml")
        onions[node_id] = ensure_join_onion_key(joined).onion_address  # the saved key
        assert (tmp_path / node_id / "state" / "join_onion.pem").stat().st_mode & 0o077 == 0
    roster = load_roster(first.files.roster)
    assert {m.node_id: m.join_onion for m in roster.members()} == {"n1": own, **onions}
    extra = Ed25519Identity.generate().onion_address
    token = decode_token(issue_token(config, bootstrap=[("x9", extra), ("n3", onions["n3"])]))
    assert token.bootstrap == [("n1", own), ("x9", extra), ("n3", onions["n3"]),
                               ("n2", onions["n2"])]
