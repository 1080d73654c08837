"""init / add-node / join: configs and keys the checks accept; tokens; nothing overwritten."""

from __future__ import annotations

import base64
import contextlib
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from onionmesh.cli import main
from onionmesh.config import load_config
from onionmesh.crypto.keys import Ed25519Identity, load_secret_key, save_secret_key
from onionmesh.node.cluster_setup import (
    TOKEN_PREFIX,
    JoinToken,
    decode_token,
    join_cluster,
    make_token,
)
from onionmesh.node.errors import EXIT_USAGE, KeyCheckError, SetupError, TokenError
from onionmesh.node.keyfiles import load_cluster_secret, load_node_key
from onionmesh.node.settings import peer_seeds

from .helpers import free_port, make_cluster, tree_snapshot


def test_init_writes_private_files_the_checks_accept(tmp_path: Path, capsys):
    assert main(["init", "--dir", str(tmp_path / "n1"), "--node-id", "alpha",
                 "--listen", "127.0.0.1:7443"]) == 0
    out = capsys.readouterr()
    token = out.out.strip()
    assert token.startswith(TOKEN_PREFIX)
    assert "SECRET" in out.err  # the operator is told the token is a secret
    config_path = tmp_path / "n1" / "onionmesh.toml"
    for path in (config_path, tmp_path / "n1" / "node_key.pem", tmp_path / "n1" / "cluster_secret",
                 tmp_path / "n1" / "master" / "hs_ed25519_secret_key"):
        assert path.stat().st_mode & 0o777 == 0o600, path
    assert main(["config", "check", "-c", str(config_path)]) == 0
    assert main(["keys", "check", "-c", str(config_path)]) == 0
    config = load_config(config_path)
    assert config.node_id == "alpha"
    assert config.resilience.require_ntp_sync is True  # docs/scenarios.md §4 default
    master = load_secret_key(tmp_path / "n1" / "master" / "hs_ed25519_secret_key")
    assert config.master.address == master.onion_address
    # The token names this node and carries the secret, never the master key.
    decoded = decode_token(token)
    assert decoded.inviter_id == "alpha"
    assert decoded.inviter_address == "127.0.0.1:7443"
    assert decoded.cluster_secret == load_cluster_secret(config)
    assert decoded.inviter_public_key == load_node_key(config).public_key
    assert master.expanded.hex() not in token
    assert master.expanded not in decoded.cluster_secret


def test_add_node_and_join_produce_a_second_node_the_checks_accept(tmp_path: Path, capsys):
    first = make_cluster(tmp_path / "n1")
    first_config = load_config(first.files.config)
    assert main(["add-node", "-c", str(first.files.config)]) == 0
    token = capsys.readouterr().out.strip()
    listen = f"127.0.0.1:{free_port(socket.SOCK_DGRAM)}"
    assert main(["join", token, "--dir", str(tmp_path / "n2"), "--node-id", "n2",
                 "--listen", listen, "--master-key", str(first.files.master_key),
                 "--no-ntp-check"]) == 0
    config_path = tmp_path / "n2" / "onionmesh.toml"
    assert main(["config", "check", "-c", str(config_path)]) == 0
    assert main(["keys", "check", "-c", str(config_path)]) == 0
    second = load_config(config_path)
    assert second.master.address == first_config.master.address
    assert load_cluster_secret(second) == load_cluster_secret(first_config)
    # Cluster-wide timing comes from the token (the fast profile of the first node).
    assert second.coordination.heartbeat_interval == 1.0
    assert second.coordination.lease_duration == 3.0
    # The inviter is a pinned peer.
    (seed,) = peer_seeds(second)
    assert seed.node_id == "n1"
    assert seed.address == first_config.coordination.listen
    assert seed.public_key == load_node_key(first_config).public_key
    assert load_node_key(second).public_key != seed.public_key
    assert second.resilience.require_ntp_sync is False
    assert first_config.resilience.require_ntp_sync is False  # the test profile


def test_join_without_master_key_makes_a_node_that_never_publishes(tmp_path: Path):
    first = make_cluster(tmp_path / "n1")
    token = make_token(load_config(first.files.config))
    join_cluster(token, tmp_path / "n2", node_id="n2", listen="127.0.0.1:7444")
    config = load_config(tmp_path / "n2" / "onionmesh.toml")
    assert config.master.key_path is None
    assert "copy the master key" in (tmp_path / "n2" / "onionmesh.toml").read_text()
    assert not (tmp_path / "n2" / "master").exists()
    assert main(["keys", "check", "-c", str(config.path)]) == 0


def test_join_refuses_a_master_key_of_another_address(tmp_path: Path):
    first = make_cluster(tmp_path / "n1")
    token = make_token(load_config(first.files.config))
    other = tmp_path / "other_key"
    save_secret_key(Ed25519Identity.generate(), other)
    with pytest.raises(KeyCheckError) as info:
        join_cluster(token, tmp_path / "n2", node_id="n2", listen="127.0.0.1:7444",
                     master_key=other)
    assert info.value.check == "onion-address"
    assert not (tmp_path / "n2").exists()  # checked before anything was written


def test_join_refuses_the_inviters_node_id(tmp_path: Path):
    first = make_cluster(tmp_path / "n1")
    token = make_token(load_config(first.files.config))
    with pytest.raises(SetupError, match="inviting node"):
        join_cluster(token, tmp_path / "n2", node_id="n1", listen="127.0.0.1:7444")


def test_init_and_join_never_overwrite_anything(tmp_path: Path, capsys):
    first = make_cluster(tmp_path / "n1")
    before = tree_snapshot(tmp_path)
    assert main(["init", "--dir", str(tmp_path / "n1")]) != 0
    err = capsys.readouterr().err
    assert "refusing to overwrite" in err and "onionmesh.toml" in err
    token = make_token(load_config(first.files.config))
    with pytest.raises(SetupError, match="refusing to overwrite"):
        join_cluster(token, tmp_path / "n1", node_id="n9", listen="127.0.0.1:7444")
    assert tree_snapshot(tmp_path) == before


def test_token_roundtrip_and_repr_hides_the_secret():
    token = JoinToken(b"\x01" * 32, "a" * 56 + ".onion", "n1", "10.0.0.1:7443", b"\x02" * 32,
                      {"coordination": {"heartbeat_interval": 5.0}})
    decoded = decode_token(token.encode())
    assert decoded == token
    assert "01" * 32 not in repr(decoded)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("hello", "not an onionmesh join token"),
        (TOKEN_PREFIX + "!!!", "damaged"),
        (TOKEN_PREFIX + "e30", "version"),  # "{}"
        (TOKEN_PREFIX + "W10", "not a JSON object"),  # "[]"
        (TOKEN_PREFIX + "eyJ2IjoxfQ", "incomplete"),  # {"v":1}
    ],
)
def test_bad_tokens_are_typed_errors_that_do_not_repeat_the_token(text: str, problem: str):
    with pytest.raises(TokenError, match=problem) as info:
        decode_token(text)
    assert text not in str(info.value) or len(text) < 6


def test_token_with_bad_timing_is_a_token_error():
    import base64
    import json

    body = {"v": 1, "cluster_secret": "01" * 32, "master": "a" * 56 + ".onion",
            "inviter": {"id": "n1", "address": "10.0.0.1:7443", "public_key": "02" * 32},
            "timing": {"coordination": 5}}
    text = TOKEN_PREFIX + base64.urlsafe_b64encode(json.dumps(body).encode()).decode()
    with pytest.raises(TokenError, match="timing"):
        decode_token(text)


def test_token_values_the_config_refuses_give_a_setup_error(tmp_path: Path):
    token = JoinToken(b"\x01" * 32, "a" * 56 + ".onion", "n1", "10.0.0.1:7443", b"\x02" * 32,
                      {"coordination": {"heartbeat_interval": -1}})
    with pytest.raises(SetupError, match="heartbeat_interval"):
        join_cluster(token.encode(), tmp_path / "n2", node_id="n2", listen="127.0.0.1:7444")
    assert not (tmp_path / "n2").exists()


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_arbitrary_tokens_give_only_token_errors(text: str):
    with contextlib.suppress(TokenError):
        decode_token(TOKEN_PREFIX + text)


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_token_payloads_give_only_token_errors(data: bytes):
    import base64

    with contextlib.suppress(TokenError):
        decode_token(TOKEN_PREFIX + base64.urlsafe_b64encode(data).decode())


def test_join_reads_the_token_from_stdin(tmp_path: Path):
    from .helpers import onionmesh

    first = make_cluster(tmp_path / "n1")
    token = make_token(load_config(first.files.config))
    done = onionmesh("join", "-", "--dir", str(tmp_path / "n2"), "--node-id", "n2",
                     "--listen", "127.0.0.1:7444", stdin=token + "\n")
    assert done.returncode == 0, done.stderr
    assert token not in done.stdout + done.stderr  # never echoed
    assert load_config(tmp_path / "n2" / "onionmesh.toml").node_id == "n2"


def test_hostile_tokens_on_stdin_are_one_line_errors(tmp_path: Path):
    """A token read from stdin that is huge or nests JSON deeply: one error line, no traceback."""
    nested = "[" * 1500 + "]" * 1500  # deeper than json's recursion limit, under the size cap
    bodies = [
        TOKEN_PREFIX + base64.urlsafe_b64encode(nested.encode()).decode(),
        TOKEN_PREFIX + "A" * 1_000_000,
    ]
    for body in bodies:
        done = subprocess.run(
            [sys.executable, "-m", "onionmesh.cli", "join", "-", "--dir", str(tmp_path / "n2"),
             "--node-id", "n2"], input=body, capture_output=True, text=True, timeout=60,
        )
        assert done.returncode == EXIT_USAGE, done.stderr
        assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
        assert "join token" in done.stderr
        assert not (tmp_path / "n2").exists()
