"""The SOCKS5 client against a scripted SOCKS server on 127.0.0.1 (no tor needed)."""

from __future__ import annotations

import socket
import threading

import pytest

from onionmesh.testnet.errors import SocksError, TestnetError
from onionmesh.testnet.socks import http_get_via_socks, parse_http_response

HOST = "abcdefghijklmnopqrstuvwxyz234567abcdefghijklmnopqrstuvwx.onion"


class FakeSocks:
    """Accepts one connection, records the CONNECT request, answers with ``reply_code``."""

    def __init__(self, reply_code: int, http_answer: bytes = b"") -> None:
        self.reply_code = reply_code
        self.http_answer = http_answer
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.request: bytes = b""
        self.http_request: bytes = b""
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _recv(self, conn: socket.socket, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = conn.recv(n - len(data))
            if not chunk:
                break
            data += chunk
        return data

    def _serve(self) -> None:
        conn, _ = self.server.accept()
        with conn:
            conn.settimeout(10)
            assert self._recv(conn, 3) == b"\x05\x01\x00"
            conn.sendall(b"\x05\x00")
            head = self._recv(conn, 5)
            rest = self._recv(conn, head[4] + 2)
            self.request = head + rest
            conn.sendall(bytes([5, self.reply_code, 0, 1, 0, 0, 0, 0, 0, 0]))
            if self.reply_code == 0:
                while b"\r\n\r\n" not in self.http_request:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    self.http_request += chunk
                conn.sendall(self.http_answer)

    def close(self) -> None:
        self.thread.join(10)
        self.server.close()


def test_get_sends_domain_name_connect_and_parses_the_answer():
    fake = FakeSocks(0, b"HTTP/1.0 200 OK\r\nX-Onionmesh-Node: n1\r\n\r\nn1\n")
    try:
        response = http_get_via_socks(fake.port, HOST, "/hello", timeout=10)
    finally:
        fake.close()
    # ATYP 3 (domain name): tor, not us, resolves the onion address.
    assert fake.request == b"\x05\x01\x00\x03" + bytes([len(HOST)]) + HOST.encode() + b"\x00\x50"
    assert fake.http_request.startswith(b"GET /hello HTTP/1.0\r\nHost: " + HOST.encode())
    assert response.status == 200
    assert response.text == "n1\n"
    assert response.headers["x-onionmesh-node"] == "n1"


@pytest.mark.parametrize("code", [0xF0, 0xF2, 0x04])
def test_socks_failures_carry_the_reply_code(code):
    fake = FakeSocks(code)
    try:
        with pytest.raises(SocksError) as info:
            http_get_via_socks(fake.port, HOST, "/", timeout=10)
    finally:
        fake.close()
    assert info.value.code == code
    assert f"0x{code:02X}" in str(info.value)


def test_closed_socks_port_is_a_socks_error():
    with socket.create_server(("127.0.0.1", 0)) as sock:
        port = sock.getsockname()[1]
    with pytest.raises(SocksError, match="cannot connect"):
        http_get_via_socks(port, HOST, "/", timeout=5)


@pytest.mark.parametrize("path", ["nope", "/a b", "/x\r\nEvil: 1"])
def test_bad_paths_are_rejected_before_connecting(path):
    with pytest.raises(TestnetError, match="path"):
        http_get_via_socks(1, HOST, path, timeout=1)


@pytest.mark.parametrize(
    "raw", [b"", b"garbage", b"HTTP/1.0 abc OK\r\n\r\n", b"FTP 200\r\n\r\n", b"\xff\xfe\r\n\r\n"]
)
def test_malformed_http_answers_are_typed_errors(raw):
    with pytest.raises(TestnetError):
        parse_http_response(raw)
