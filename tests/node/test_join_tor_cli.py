"""`onionmesh join` through tor, the parts that need no Tor network: an expired token
fails before any traffic, a missing tor is named, bootstrap peers are checked, and the
token's bootstrap list (older tokens have none)."""

from __future__ import annotations

import base64
import socket
import threading
import time
from pathlib import Path

import msgspec
import pytest

from onionmesh.config import load_config
from onionmesh.node.cluster_setup import issue_token, parse_bootstrap
from onionmesh.node.commands import socks_target
from onionmesh.node.coordination_keys import ensure_join_onion_key
from onionmesh.node.errors import SetupError, TokenError
from onionmesh.node.join_tokens import JoinTokenBody, decode_token, encode_token

from .helpers import make_cluster, onionmesh


class CountingListener:
    """A TCP port that counts connections: where a tor SOCKS port would be."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self.thread.join(5)
        self.sock.close()


def test_an_expired_token_fails_before_any_traffic(tmp_path: Path) -> None:
    config = load_config(make_cluster(tmp_path / "n1").files.config)
    token = issue_token(config, lifetime=60, now=time.time() - 120)
    listener = CountingListener()
    try:
        done = onionmesh("join", "--dir", str(tmp_path / "n2"), "--node-id", "n2",
                         "--listen", "127.0.0.1:7444", "--tor-socks",
                         f"127.0.0.1:{listener.port}", stdin=token)
    finally:
        listener.close()
    assert done.returncode != 0
    assert "expired" in done.stderr and "add-node" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert listener.accepted == 0  # not even the tor SOCKS port was contacted
    assert not (tmp_path / "n2").exists()


def test_a_missing_tor_is_named(tmp_path: Path) -> None:
    config = load_config(make_cluster(tmp_path / "n1").files.config)
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    port = free.getsockname()[1]
    free.close()  # nothing listens there now
    done = onionmesh("join", "--dir", str(tmp_path / "n2"), "--node-id", "n2",
                     "--listen", "127.0.0.1:7444", "--tor-socks", f"127.0.0.1:{port}",
                     stdin=issue_token(config))
    assert done.returncode != 0
    assert f"no tor SOCKS port at 127.0.0.1:{port}" in done.stderr, done.stderr
    assert not (tmp_path / "n2").exists()


def test_the_token_names_the_inviters_join_onion_first(tmp_path: Path) -> None:
    config = load_config(make_cluster(tmp_path / "n1").files.config)
    alt = "b" * 56 + ".onion"
    token = decode_token(issue_token(config, bootstrap=parse_bootstrap([f"n2@{alt}"])))
    own = ensure_join_onion_key(config).onion_address
    assert token.bootstrap == [("n1", own), ("n2", alt)]
    assert ensure_join_onion_key(config).onion_address == own  # stable: never replaced


def test_an_older_token_without_bootstrap_peers_still_decodes() -> None:
    body = JoinTokenBody(b"\x01" * 32, b"\x02" * 32, "a" * 56 + ".onion", "n1",
                         "127.0.0.1:7443", 10.0, {})
    raw = msgspec.msgpack.encode(body)
    old = msgspec.msgpack.encode(msgspec.msgpack.decode(raw)[:7])  # the 7 fields before
    text = "onionmesh-join-2." + base64.urlsafe_b64encode(old).decode().rstrip("=")
    assert decode_token(text).bootstrap == []
    assert decode_token(encode_token(body)).bootstrap == []


@pytest.mark.parametrize("item, problem", [
    ("n2", "must be ID@"), ("N2@" + "b" * 56 + ".onion", "not a node id"),
    ("n2@example.com", "not a v3 onion"), ("n2@" + "b" * 55, "not a v3 onion"),
])
def test_bad_bootstrap_peers_are_named(item: str, problem: str) -> None:
    with pytest.raises((SetupError, TokenError), match=problem):
        parse_bootstrap([item])


@pytest.mark.parametrize("text, target", [
    ("127.0.0.1:9050", ("127.0.0.1", 9050)), ("[::1]:9150", ("::1", 9150)),
    ("unix:/run/tor/socks", "/run/tor/socks"), ("/run/tor/socks", "/run/tor/socks"),
    ("./socks.sock", "./socks.sock"),
])
def test_tor_socks_values(text: str, target: object) -> None:
    assert socks_target(text) == target


@pytest.mark.parametrize("text, problem", [
    ("9050", "expected HOST:PORT, unix:/path"), ("localhost", "expected HOST:PORT"),
    (":9050", "expected HOST:PORT"), ("127.0.0.1:0", "expected HOST:PORT"),
    ("127.0.0.1:65536", "expected HOST:PORT"), ("run/tor/socks", "expected HOST:PORT"),
    ("unix:", "no socket path"), ("unix:/" + "s" * 120, "at most 107 bytes"),
])
def test_bad_tor_socks_values_are_named(text: str, problem: str) -> None:
    with pytest.raises(SetupError, match=problem):
        socks_target(text)


def test_a_bad_tor_socks_value_fails_cleanly_before_any_file(tmp_path: Path) -> None:
    config = load_config(make_cluster(tmp_path / "n1").files.config)
    done = onionmesh("join", "--dir", str(tmp_path / "n2"), "--node-id", "n2",
                     "--listen", "127.0.0.1:7444", "--tor-socks", "unix:",
                     stdin=issue_token(config))
    assert done.returncode != 0
    assert "--tor-socks 'unix:': no socket path" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "n2").exists()


def test_a_unix_socket_with_no_tor_is_named(tmp_path: Path) -> None:
    config = load_config(make_cluster(tmp_path / "n1").files.config)
    path = tmp_path / "socks.sock"  # no tor made it
    done = onionmesh("join", "--dir", str(tmp_path / "n2"), "--node-id", "n2",
                     "--listen", "127.0.0.1:7444", "--tor-socks", f"unix:{path}",
                     stdin=issue_token(config))
    assert done.returncode != 0
    assert f"no tor SOCKS port at {path}" in done.stderr, done.stderr
    assert not (tmp_path / "n2").exists()
