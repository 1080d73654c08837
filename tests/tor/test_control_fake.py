"""TorController against a scripted fake control port on 127.0.0.1 (ephemeral port).

Covers what a well-behaved tor cannot be made to do on demand: malformed and
unsolicited replies, event floods against a slow subscriber, exact wire
format of data commands, SAFECOOKIE against a server that lies.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from onionmesh.tor.control import (
    AuthenticationError,
    ControlClosed,
    ControlProtocolError,
    TorController,
    parse_hs_desc_event,
)

pytestmark = pytest.mark.timeout(60)

PROTOCOLINFO_NULL = (
    '250-PROTOCOLINFO 1\r\n250-AUTH METHODS=NULL\r\n250-VERSION Tor="0.4.9.11"\r\n250 OK\r\n'
)
ADDR = "2fvhjskjet3n5syd6yfg5lhvwcs62bojmthr35ko5bllr3iqdb4ctdyd"
Responder = Callable[["FakeTor", str], str | None]


class FakeTor:
    """A line-oriented fake control port; ``respond`` maps each command to raw output."""

    def __init__(self, respond: Responder) -> None:
        self.respond = respond
        self.received: list[str] = []
        self.raw = bytearray()
        self.writer: asyncio.StreamWriter | None = None
        self.server: asyncio.base_events.Server | None = None
        self.port = 0
        self.in_data = False
        self.cookie_path = ""

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        try:
            while True:
                raw = await reader.readline()
                if not raw:
                    break
                self.raw += raw
                line = raw.decode().rstrip("\r\n")
                if self.in_data:
                    self.in_data = line != "."
                    continue
                if line.startswith("+"):
                    self.in_data = True
                self.received.append(line)
                out = self.respond(self, line)
                if out:
                    writer.write(out.encode())
                    await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    def send(self, text: str) -> None:
        assert self.writer is not None
        self.writer.write(text.encode())

    async def stop(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


def null_auth(fake: FakeTor, line: str) -> str | None:
    if line.startswith("PROTOCOLINFO"):
        return PROTOCOLINFO_NULL
    if line.startswith("AUTHENTICATE"):
        return "250 OK\r\n"
    return None


async def _fake(respond: Responder) -> AsyncIterator[FakeTor]:
    fake = FakeTor(respond)
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()


async def test_slow_subscriber_drops_oldest_and_counts() -> None:
    def respond(fake: FakeTor, line: str) -> str | None:
        if line == "FLOOD":
            events = "".join(f"650 SIGNAL N{i}\r\n" for i in range(2000))
            return events + "250 OK\r\n"
        return null_auth(fake, line)

    async for fake in _fake(respond):
        async with await TorController.connect(port=fake.port) as ctl:
            slow = ctl.subscribe("SIGNAL", maxsize=10)
            other_type = ctl.subscribe("CIRC", maxsize=10)
            await ctl.request("FLOOD")  # events precede the reply on the wire
            assert slow.dropped == 1990 and other_type.dropped == 0
            got = [slow.get_nowait() for _ in range(10)]
            assert [e.text for e in got if e] == [f"N{i}" for i in range(1990, 2000)]
            assert slow.get_nowait() is None and other_type.get_nowait() is None
        # Closing the controller ends every subscription.
        with pytest.raises(StopAsyncIteration):
            await anext(slow)


async def test_malformed_reply_fails_waiter_and_closes() -> None:
    def respond(fake: FakeTor, line: str) -> str | None:
        if line == "GETINFO version":
            return "25x garbage\r\n"
        return null_auth(fake, line)

    async for fake in _fake(respond):
        ctl = await TorController.connect(port=fake.port)
        with pytest.raises(ControlProtocolError):
            await ctl.get_info("version")
        assert not ctl.is_connected
        with pytest.raises(ControlClosed):
            await ctl.get_info("version")
        await ctl.close()


async def test_unsolicited_reply_is_protocol_error() -> None:
    async for fake in _fake(null_auth):
        ctl = await TorController.connect(port=fake.port)
        sub = ctl.subscribe()
        fake.send("250 OK\r\n")  # nobody asked
        with pytest.raises(ControlClosed, match="no command waiting"):
            async with asyncio.timeout(10):
                await anext(sub)
        await ctl.close()


async def test_cancelled_caller_keeps_fifo_slot() -> None:
    held: list[str] = []

    def respond(fake: FakeTor, line: str) -> str | None:
        if line.startswith("GETINFO"):
            held.append(line)
            if len(held) == 2:  # answer both, in order, only once both arrived
                return "".join(f"250-{h.split()[1]}=v-{h.split()[1]}\r\n250 OK\r\n" for h in held)
            return None
        return null_auth(fake, line)

    async for fake in _fake(respond):
        async with await TorController.connect(port=fake.port) as ctl:
            first = asyncio.create_task(ctl.get_info("a"))
            await asyncio.sleep(0)  # first is written (writes do not suspend)
            first.cancel()
            second = await ctl.get_info("b")
            assert second == {"b": "v-b"}
            assert first.cancelled()
            assert held == ["GETINFO a", "GETINFO b"]


async def test_hspost_wire_format_and_hs_desc_content_event() -> None:
    descriptor = "hs-descriptor 3\n.dot line\n..two\nsignature abc\n"

    def respond(fake: FakeTor, line: str) -> str | None:
        if line.startswith("+HSPOST"):
            return (
                f"250 OK\r\n650+HS_DESC_CONTENT {ADDR} QkJC $"
                + "A" * 40
                + "~dir\r\nhs-descriptor 3\r\n..dot line\r\n.\r\n650 OK\r\n"
                + f"650 HS_DESC UPLOADED {ADDR} UNKNOWN $"
                + "A" * 40
                + "~dir\r\n"
            )
        return null_auth(fake, line)

    async for fake in _fake(respond):
        async with await TorController.connect(port=fake.port) as ctl:
            waiter = ctl.wait_for_event(lambda e: e.type == "HS_DESC", 10)
            contents = ctl.subscribe("HS_DESC_CONTENT")
            await ctl.hs_post(descriptor, server=["$" + "A" * 40, "B" * 40], hs_address=ADDR)
            uploaded = parse_hs_desc_event(await waiter)
            assert (uploaded.action, uploaded.address, uploaded.hsdir) == (
                "UPLOADED", ADDR, "A" * 40
            )
            content = await anext(contents)
            assert content.data == "hs-descriptor 3\n.dot line"
    wire = bytes(fake.raw).decode()
    expected = (
        f"+HSPOST SERVER=${'A' * 40} SERVER={'B' * 40} HSADDRESS={ADDR}\r\n"
        "hs-descriptor 3\r\n..dot line\r\n...two\r\nsignature abc\r\n.\r\n"
    )
    assert wire.endswith(expected)


def _safecookie_server(cookie: bytes, *, lie: bool) -> Responder:
    k_server = b"Tor safe cookie authentication server-to-controller hash"
    k_client = b"Tor safe cookie authentication controller-to-server hash"
    state: dict[str, bytes] = {}

    def respond(fake: FakeTor, line: str) -> str | None:
        if line.startswith("PROTOCOLINFO"):
            return (
                "250-PROTOCOLINFO 1\r\n250-AUTH METHODS=SAFECOOKIE "
                f'COOKIEFILE="{fake.cookie_path}"\r\n250 OK\r\n'
            )
        if line.startswith("AUTHCHALLENGE SAFECOOKIE "):
            client_nonce = bytes.fromhex(line.split()[2])
            server_nonce = os.urandom(32)
            msg = cookie + client_nonce + server_nonce
            state["client"] = hmac.new(k_client, msg, hashlib.sha256).digest()
            server_hash = hmac.new(k_server, msg, hashlib.sha256).digest()
            if lie:
                server_hash = bytes(32)
            return (
                f"250 AUTHCHALLENGE SERVERHASH={server_hash.hex().upper()} "
                f"SERVERNONCE={server_nonce.hex().upper()}\r\n"
            )
        if line.startswith("AUTHENTICATE "):
            ok = bytes.fromhex(line.split()[1]) == state.get("client")
            return "250 OK\r\n" if ok else "515 Authentication failed\r\n"
        return None

    return respond


async def test_safecookie_against_spec_server(tmp_path: Path) -> None:
    cookie = os.urandom(32)
    (tmp_path / "cookie").write_bytes(cookie)
    for lie in (False, True):
        responder = _safecookie_server(cookie, lie=lie)
        async for fake in _fake(responder):
            fake.cookie_path = str(tmp_path / "cookie")
            if not lie:
                async with await TorController.connect(port=fake.port) as ctl:
                    assert ctl.auth_method_used == "SAFECOOKIE"
                assert any(line.startswith("AUTHENTICATE ") for line in fake.received)
            else:
                with pytest.raises(AuthenticationError, match="mismatch"):
                    await TorController.connect(port=fake.port)
                # The client hash was never revealed to the lying server.
                assert not any(line.startswith("AUTHENTICATE") for line in fake.received)


async def test_connection_closed_mid_reply_fails_waiter() -> None:
    def respond(fake: FakeTor, line: str) -> str | None:
        if line.startswith("GETINFO"):
            assert fake.writer is not None
            fake.writer.write(b"250-partial=1\r\n")
            fake.writer.close()
            return None
        return null_auth(fake, line)

    async for fake in _fake(respond):
        ctl = await TorController.connect(port=fake.port)
        with pytest.raises(ControlClosed):
            await ctl.get_info("partial")
        await ctl.close()


def _cookie_only_server(cookie_file: str, methods: str = "COOKIE") -> Responder:
    def respond(fake: FakeTor, line: str) -> str | None:
        if line.startswith("PROTOCOLINFO"):
            return (f"250-PROTOCOLINFO 1\r\n250-AUTH METHODS={methods} "
                    f'COOKIEFILE="{cookie_file}"\r\n250 OK\r\n')
        if line.startswith("AUTHENTICATE"):
            return "250 OK\r\n"
        return None

    return respond


async def test_a_fake_tcp_control_port_cannot_harvest_a_named_file(tmp_path: Path) -> None:
    """A process on the control port in tor's place names one of our 32-byte secrets."""
    secret = tmp_path / "secret"
    secret.write_bytes(os.urandom(32))
    async for fake in _fake(_cookie_only_server(str(secret))):
        with pytest.raises(AuthenticationError, match=r"needs a configured cookie path"):
            await TorController.connect(port=fake.port)
        assert not any(line.startswith("AUTHENTICATE") for line in fake.received)
        assert secret.read_bytes().hex() not in fake.raw.decode(errors="replace").lower()


async def test_cookie_path_configured_for_tcp_is_used(tmp_path: Path) -> None:
    mine = tmp_path / "control_auth_cookie"
    mine.write_bytes(os.urandom(32))
    other = tmp_path / "named_by_the_port"
    other.write_bytes(os.urandom(32))
    async for fake in _fake(_cookie_only_server(str(other))):
        async with await TorController.connect(port=fake.port, cookie_path=str(mine),
                                               cookie_from_tor=False) as ctl:
            assert ctl.auth_method_used == "COOKIE"
        assert f"AUTHENTICATE {mine.read_bytes().hex()}" in fake.received
    # The node's own setting: never the file the port names, not even for SAFECOOKIE.
    async for fake in _fake(_cookie_only_server(str(other), "SAFECOOKIE")):
        with pytest.raises(AuthenticationError, match=r"\[tor\] cookie_path"):
            await TorController.connect(port=fake.port, cookie_from_tor=False)
        assert not any(line.startswith("AUTH") for line in fake.received[1:])


@pytest.mark.parametrize("kind", ["fifo", "directory", "device"])
async def test_a_cookie_file_must_be_a_regular_file(tmp_path: Path, kind: str) -> None:
    """A FIFO would block the event loop forever; a device streams without end."""
    if kind == "fifo":
        target = tmp_path / "fifo"
        os.mkfifo(target)
    elif kind == "directory":
        target = tmp_path
    else:
        target = Path("/dev/zero")
    async for fake in _fake(_cookie_only_server(str(target), "SAFECOOKIE")):
        with pytest.raises(AuthenticationError, match="not a regular file"):
            await asyncio.wait_for(TorController.connect(port=fake.port), 10)
