"""TorController against real tor processes (DisableNetwork 1, loopback/unix socket only).

Each module-scoped fixture starts its own tor in a private temp dir with
``ControlPort auto`` and waits (bounded) for ``ControlPortWriteToFile``;
teardown stops it by PID. A missing tor binary makes these tests fail.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from nacl.signing import SigningKey

from onionmesh.tor.control import (
    AuthenticationError,
    ControlArgumentError,
    ControlClosed,
    ControlConnectError,
    ControlReplyError,
    ControlTimeout,
    TorController,
)
from onionmesh.tor.control_protocol import parse_conf_changed
from tests.eventually import eventually

pytestmark = [pytest.mark.tor, pytest.mark.timeout(120)]

PASSWORD = "correct horse battery"
START_TIMEOUT = 30.0


class TorProcess:
    """One tor process with its own data dir; restartable on the same control port."""

    def __init__(self, directory: Path, options: list[str], *, unix_socket: bool) -> None:
        self.dir = directory
        self.options = options
        self.socket_path = str(directory / "ctl.sock") if unix_socket else None
        self.torrc = directory / "torrc"
        self.proc: subprocess.Popen[bytes] | None = None
        self.port: int | None = None

    def start(self, control_port: str = "auto") -> None:
        port_file = self.dir / "control.port"
        port_file.unlink(missing_ok=True)
        old_cookie = self.cookie_file.read_bytes() if self.cookie_file.exists() else None
        empty = self.dir / "defaults-torrc"
        empty.write_text("")
        lines = [
            f"DataDirectory {self.dir / 'data'}",
            "DisableNetwork 1",
            "SocksPort 0",
            f"ControlPort {control_port}",
            f"ControlPortWriteToFile {port_file}",
            f"Log notice file {self.dir / 'tor.log'}",
            *self.options,
        ]
        if self.socket_path:
            lines.append(f"ControlSocket {self.socket_path}")
        self.torrc.write_text("\n".join(lines) + "\n")
        tor = shutil.which("tor")
        assert tor, "tor binary not found on PATH (apt-get install tor)"
        self.proc = subprocess.Popen(
            [tor, "-f", str(self.torrc), "--defaults-torrc", str(empty)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        started = time.monotonic()

        def port_file_text() -> str:
            text = port_file.read_text() if port_file.exists() else ""
            return text if "PORT=" in text and text.endswith("\n") else ""

        try:
            # Bounded poll: tor writes the file once its control listeners are open.
            text = eventually(port_file_text, timeout=START_TIMEOUT, interval=0.02,
                              what="tor opens its control port", context=self.log_tail,
                              gave_up=lambda: self.proc.poll() is not None
                              and f"tor exited with {self.proc.returncode}")
            for line in text.splitlines():
                if line.startswith("PORT="):
                    self.port = int(line.rsplit(":", 1)[1])
            if "CookieAuthentication 1" in self.options:
                # tor may write the cookie just after the port file; after a
                # restart the old cookie is still there until it is replaced.
                eventually(lambda: self._fresh_cookie(old_cookie), interval=0.02,
                           timeout=max(0.1, START_TIMEOUT - (time.monotonic() - started)),
                           what="tor writes a new auth cookie")
        except AssertionError:
            self.stop()
            raise

    def _fresh_cookie(self, old: bytes | None) -> bool:
        try:
            cookie = self.cookie_file.read_bytes()
        except FileNotFoundError:
            return False
        return len(cookie) == 32 and cookie != old

    def log_tail(self) -> str:
        log = self.dir / "tor.log"
        return log.read_text()[-2000:] if log.exists() else "(no log)"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def cookie_file(self) -> Path:
        return self.dir / "data" / "control_auth_cookie"

    def kill(self) -> None:
        """SIGKILL (a crash, from the client's point of view) and reap."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with_cont = os.kill  # a SIGSTOPped tor must be continued to handle SIGTERM
        with_cont(self.proc.pid, signal.SIGCONT)
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


def _tor(options: list[str], *, unix_socket: bool = True) -> Iterator[TorProcess]:
    # mkdtemp under /tmp keeps the unix socket path short (< 108 bytes), mode 0700.
    directory = Path(tempfile.mkdtemp(prefix="omctl-"))
    tor = TorProcess(directory, options, unix_socket=unix_socket)
    try:
        tor.start()
        yield tor
    finally:
        tor.stop()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def tor_null() -> Iterator[TorProcess]:
    yield from _tor([])


@pytest.fixture(scope="module")
def tor_cookie() -> Iterator[TorProcess]:
    yield from _tor(["CookieAuthentication 1"])


@pytest.fixture(scope="module")
def tor_password() -> Iterator[TorProcess]:
    hashed = subprocess.run(
        ["tor", "--hash-password", PASSWORD, "--quiet"],
        check=True, capture_output=True, text=True, timeout=30,
    ).stdout.strip().splitlines()[-1]
    assert hashed.startswith("16:")
    yield from _tor([f"HashedControlPassword {hashed}"], unix_socket=False)


@pytest.fixture
def tor_restartable() -> Iterator[TorProcess]:
    yield from _tor(["CookieAuthentication 1"])


# --------------------------------------------------------------------- auth


async def test_null_auth_tcp_and_unix(tor_null: TorProcess) -> None:
    for kwargs in ({"port": tor_null.port}, {"socket_path": tor_null.socket_path}):
        async with await TorController.connect(**kwargs) as ctl:
            assert ctl.auth_method_used == "NULL"
            info = await ctl.get_info("process/pid", "version")
            assert info["process/pid"] == str(tor_null.pid)
            assert ctl.protocol_info is not None
            assert info["version"] == ctl.protocol_info.tor_version


async def test_safecookie_preferred_and_cookie_never_logged(
    tor_cookie: TorProcess, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="onionmesh.tor.control")
    cookie_hex = tor_cookie.cookie_file.read_bytes().hex()
    for kwargs in ({"port": tor_cookie.port}, {"socket_path": tor_cookie.socket_path}):
        async with await TorController.connect(**kwargs) as ctl:
            assert ctl.auth_method_used == "SAFECOOKIE"
            assert (await ctl.get_info("process/pid"))["process/pid"] == str(tor_cookie.pid)
    assert "AUTHENTICATE <redacted>" in caplog.text
    assert cookie_hex not in caplog.text.lower()


async def test_plain_cookie_auth(tor_cookie: TorProcess, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="onionmesh.tor.control")
    async with await TorController.connect(
        socket_path=tor_cookie.socket_path, auth_method="COOKIE"
    ) as ctl:
        assert ctl.auth_method_used == "COOKIE"
        assert (await ctl.get_info("process/pid"))["process/pid"] == str(tor_cookie.pid)
    assert tor_cookie.cookie_file.read_bytes().hex() not in caplog.text.lower()


@pytest.mark.parametrize("method", ["SAFECOOKIE", "COOKIE"])
async def test_wrong_cookie_is_rejected(
    tor_cookie: TorProcess, tmp_path: Path, method: str
) -> None:
    fake = tmp_path / "fake_cookie"
    fake.write_bytes(b"\x07" * 32)
    with pytest.raises(AuthenticationError) as err:
        await TorController.connect(
            port=tor_cookie.port, cookie_path=str(fake), auth_method=method
        )
    assert "07" * 32 not in str(err.value)
    # SAFECOOKIE: we detect the mismatch ourselves before revealing anything.
    assert ("mismatch" in str(err.value)) == (method == "SAFECOOKIE")


async def test_missing_or_short_cookie(tor_cookie: TorProcess, tmp_path: Path) -> None:
    with pytest.raises(AuthenticationError, match="cannot read"):
        await TorController.connect(port=tor_cookie.port, cookie_path=str(tmp_path / "none"))
    short = tmp_path / "short"
    short.write_bytes(b"x" * 31)
    with pytest.raises(AuthenticationError, match="32 bytes"):
        await TorController.connect(port=tor_cookie.port, cookie_path=str(short))


async def test_password_auth(tor_password: TorProcess, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="onionmesh.tor.control")
    async with await TorController.connect(port=tor_password.port, password=PASSWORD) as ctl:
        assert ctl.auth_method_used == "HASHEDPASSWORD"
        assert (await ctl.get_info("process/pid"))["process/pid"] == str(tor_password.pid)
    with pytest.raises(AuthenticationError, match="515") as err:
        await TorController.connect(port=tor_password.port, password="wrong " + PASSWORD)
    assert PASSWORD not in str(err.value)
    with pytest.raises(AuthenticationError, match="requires a control password"):
        await TorController.connect(port=tor_password.port)
    assert PASSWORD not in caplog.text


async def test_connect_errors(tmp_path: Path) -> None:
    with pytest.raises(ControlConnectError):
        await TorController.connect(socket_path=str(tmp_path / "no.sock"))
    with pytest.raises(ControlArgumentError):
        await TorController.connect()


# ----------------------------------------------------------- commands/events


async def test_concurrent_replies_and_events_are_routed(tor_cookie: TorProcess) -> None:
    async with await TorController.connect(port=tor_cookie.port) as ctl:
        await ctl.set_events("CONF_CHANGED")
        sub = ctl.subscribe("CONF_CHANGED")
        n = 30
        values = [f'run {time.time_ns()} #{i} "quoted" \\ tail' for i in range(n)]
        keys = ["process/pid", "config-file", "net/listeners/control", "config-text", "version"]
        expected = {
            "process/pid": lambda v: v == str(tor_cookie.pid),
            "config-file": lambda v: v == str(tor_cookie.torrc),
            "net/listeners/control": lambda v: f'"127.0.0.1:{tor_cookie.port}"' in v,
            "config-text": lambda v: "DisableNetwork 1" in v.splitlines(),
            "version": lambda v: ctl.protocol_info is not None
            and v == ctl.protocol_info.tor_version,
        }

        async def set_value(value: str) -> str:
            await ctl.set_conf({"ContactInfo": value})
            return value

        calls = []
        for i, value in enumerate(values):
            calls.append(set_value(value))
            calls.append(ctl.get_info(keys[i % len(keys)]))
        results = await asyncio.gather(*calls)
        for i, value in enumerate(values):
            assert results[2 * i] == value
            info = results[2 * i + 1]
            key = keys[i % len(keys)]
            assert list(info) == [key]
            assert expected[key](info[key]), (key, info[key][:200])

        seen: set[str] = set()
        async with asyncio.timeout(20):
            async for event in sub:
                assert event.type == "CONF_CHANGED"
                seen.update(v for k, v in parse_conf_changed(event) if k == "ContactInfo")
                if seen >= set(values):
                    break
        assert sub.dropped == 0
        sub.close()


async def test_signal_events_and_wait_for_event(tor_null: TorProcess) -> None:
    async with await TorController.connect(socket_path=tor_null.socket_path) as ctl:
        await asyncio.gather(ctl.add_events("SIGNAL"), ctl.add_events("CONF_CHANGED", "SIGNAL"))
        assert sorted(ctl.events) == ["CONF_CHANGED", "SIGNAL"]
        await ctl.remove_events("CONF_CHANGED")
        assert ctl.events == ("SIGNAL",)
        sub = ctl.subscribe("SIGNAL")
        await ctl.signal("DEBUG")
        await ctl.signal("DUMP")
        got = []
        async with asyncio.timeout(10):
            async for event in sub:
                got.append(event.text)
                if len(got) == 2:
                    break
        assert got == ["DEBUG", "DUMP"]
        # wait_for_event subscribes when called, so the event cannot be missed.
        waiter = ctl.wait_for_event(lambda e: e.text == "HEARTBEAT", 10, "SIGNAL")
        await ctl.signal("HEARTBEAT")
        event = await waiter
        assert (event.type, event.text) == ("SIGNAL", "HEARTBEAT")
        with pytest.raises(ControlReplyError) as err:
            await ctl.signal("NO_SUCH_SIGNAL")
        assert err.value.status == 552
        with pytest.raises(ControlTimeout):
            await ctl.wait_for_event(lambda e: False, 0.2)


async def test_getconf_setconf_roundtrip(tor_null: TorProcess) -> None:
    async with await TorController.connect(port=tor_null.port) as ctl:
        for value in ['"quoted"', "tab\there", "back\\slash", " lead space", "plain"]:
            await ctl.set_conf({"ContactInfo": value})
            assert await ctl.get_conf("ContactInfo") == {"ContactInfo": [value]}
        await ctl.set_conf({"ExitPolicy": ["accept *:80", "reject *:*"]})
        conf = await ctl.get_conf("ExitPolicy", "SocksPort")
        assert conf["ExitPolicy"] == ["accept *:80", "reject *:*"]
        assert conf["SocksPort"] == ["0"]
        await ctl.set_conf({"ExitPolicy": []})
        assert await ctl.get_conf("exitpolicy") == {"ExitPolicy": []}
        with pytest.raises(ControlReplyError) as err:
            await ctl.get_conf("NoSuchOption")
        assert err.value.status == 552
        with pytest.raises(ControlArgumentError):
            await ctl.set_conf({"ContactInfo": "line\nbreak"})


async def test_get_info_errors_keep_connection_usable(tor_null: TorProcess) -> None:
    async with await TorController.connect(port=tor_null.port) as ctl:
        with pytest.raises(ControlReplyError) as err:
            await ctl.get_info("no/such/key")
        assert err.value.status == 552
        with pytest.raises(ControlArgumentError):
            await ctl.get_info("version\r\nSIGNAL HALT")
        names = (await ctl.get_info("config/names"))["config/names"]
        assert "ContactInfo String" in names.splitlines()
        assert (await ctl.get_info("process/pid"))["process/pid"] == str(tor_null.pid)


def _onion_address(public_key: bytes) -> str:
    # rend-spec-v3 §6: base32(PUBKEY | CHECKSUM | VERSION), CHECKSUM = H(".onion checksum"|...)[:2]
    checksum = hashlib.sha3_256(b".onion checksum" + public_key + b"\x03").digest()[:2]
    return base64.b32encode(public_key + checksum + b"\x03").decode().lower()


async def test_add_onion_and_del_onion(
    tor_cookie: TorProcess, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="onionmesh.tor.control")
    async with await TorController.connect(port=tor_cookie.port) as ctl:
        new = await ctl.add_onion("NEW:ED25519-V3", ["80,127.0.0.1:9"])
        assert new.private_key is not None and new.private_key.startswith("ED25519-V3:")
        blob = new.private_key.split(":", 1)[1]
        assert len(base64.b64decode(blob)) == 64
        assert blob not in repr(new)
        current = (await ctl.get_info("onions/current"))["onions/current"].splitlines()
        assert new.service_id in current

        # A caller-supplied key: tor must derive the address we expect.
        seed = os.urandom(32)
        digest = hashlib.sha512(seed).digest()
        scalar = bytearray(digest[:32])
        scalar[0] &= 248
        scalar[31] &= 127
        scalar[31] |= 64
        expanded = base64.b64encode(bytes(scalar) + digest[32:]).decode()
        public = SigningKey(seed).verify_key.encode()
        given = await ctl.add_onion(
            f"ED25519-V3:{expanded}", ["80,127.0.0.1:9", "443,127.0.0.1:9"], ["Detach"]
        )
        assert given.service_id == _onion_address(public)
        assert given.private_key is None
        discarded = await ctl.add_onion("NEW:ED25519-V3", ["80,127.0.0.1:9"], ["DiscardPK"])
        assert discarded.private_key is None

        await ctl.del_onion(new.service_id)
        await ctl.del_onion(given.service_id)
        await ctl.del_onion(discarded.service_id)
        current = (await ctl.get_info("onions/current"))["onions/current"].splitlines()
        assert new.service_id not in current and discarded.service_id not in current
        detached = (await ctl.get_info("onions/detached"))["onions/detached"].splitlines()
        assert given.service_id not in detached
        with pytest.raises(ControlReplyError) as err:
            await ctl.del_onion(new.service_id)
        assert err.value.status == 552
    assert blob not in caplog.text and expanded not in caplog.text
    assert "ED25519-V3:<redacted>" in caplog.text


async def test_hspost_and_hsfetch_replies_offline(tor_cookie: TorProcess) -> None:
    async with await TorController.connect(port=tor_cookie.port) as ctl:
        address = _onion_address(SigningKey(os.urandom(32)).verify_key.encode())
        descriptor = "hs-descriptor 3\n.line starting with a dot\nsignature x\n"
        # Offline tor knows no relays: an explicit SERVER must be refused with 552.
        with pytest.raises(ControlReplyError) as err:
            await ctl.hs_post(descriptor, server="$" + "A" * 40, hs_address=address + ".onion")
        assert err.value.status == 552 and "not found" in err.value.text
        with pytest.raises(ControlArgumentError):
            await ctl.hs_post(descriptor, server="A" * 40, hs_address="notanaddress")
        with pytest.raises(ControlReplyError) as err:
            await ctl.hs_fetch("invalidaddress")
        assert err.value.status == 513
        # The connection stays in sync after the data command and the errors.
        assert (await ctl.get_info("process/pid"))["process/pid"] == str(tor_cookie.pid)


async def test_raw_request_with_data_block(tor_null: TorProcess) -> None:
    async with await TorController.connect(socket_path=tor_null.socket_path) as ctl:
        # +LOADCONF takes a data block; lines starting with "." are dot-escaped.
        torrc = Path(tor_null.torrc).read_text() + "ContactInfo .dotted contact\n"
        reply = await ctl.request("LOADCONF", data=torrc)
        assert reply.status == 250
        assert await ctl.get_conf("ContactInfo") == {"ContactInfo": [".dotted contact"]}


# ------------------------------------------------------- failure and healing


async def test_timeout_drops_connection_then_reconnects(tor_restartable: TorProcess) -> None:
    tor = tor_restartable
    ctl = await TorController.connect(
        port=tor.port, reconnect=True, backoff_initial=0.02, backoff_max=0.2, timeout=5
    )
    try:
        await ctl.set_events("CONF_CHANGED")
        sub = ctl.subscribe("CONF_CHANGED")
        os.kill(tor.pid, signal.SIGSTOP)
        try:
            with pytest.raises(ControlTimeout):
                await ctl.get_info("version", timeout=0.3)
            assert not ctl.is_connected
            # A stalled tor accepts TCP connections but never answers PROTOCOLINFO.
            with pytest.raises(ControlTimeout):
                await TorController.connect(port=tor.port, timeout=0.3)
        finally:
            os.kill(tor.pid, signal.SIGCONT)
        await ctl.wait_connected(timeout=20)
        assert ctl.reconnects >= 1
        await ctl.set_conf({"ContactInfo": "after stall"})
        async with asyncio.timeout(10):
            async for event in sub:
                if event.data == "ContactInfo=after stall":
                    break
    finally:
        await ctl.close()


async def test_command_in_flight_fails_with_closed_when_tor_dies(
    tor_restartable: TorProcess,
) -> None:
    tor = tor_restartable
    ctl = await TorController.connect(socket_path=tor.socket_path)
    try:
        await ctl.set_events("CONF_CHANGED")
        sub = ctl.subscribe()
        os.kill(tor.pid, signal.SIGSTOP)  # tor will not answer: the command stays pending
        pending = asyncio.create_task(ctl.get_info("version", timeout=30))
        # One loop turn runs the task up to its wait for the reply (the write
        # does not suspend); if it had not been written yet it would fail
        # with ControlClosed just the same, so the assertion holds either way.
        await asyncio.sleep(0)
        tor.kill()
        with pytest.raises(ControlClosed):
            await asyncio.wait_for(pending, 10)
        with pytest.raises(ControlClosed):
            async with asyncio.timeout(10):
                async for _ in sub:
                    pass
        with pytest.raises(ControlClosed):
            await ctl.get_info("version")
        with pytest.raises(ControlClosed):  # a late subscriber learns it at once
            await anext(ctl.subscribe())
        assert not ctl.is_connected
    finally:
        await ctl.close()


@pytest.mark.parametrize("transport", ["tcp", "unix"])
async def test_reconnect_after_tor_restart(tor_restartable: TorProcess, transport: str) -> None:
    tor = tor_restartable
    where = {"port": tor.port} if transport == "tcp" else {"socket_path": tor.socket_path}
    ctl = await TorController.connect(
        **where, reconnect=True, backoff_initial=0.02, backoff_max=0.3, timeout=10
    )
    try:
        await ctl.set_events("CONF_CHANGED", "SIGNAL")
        conf_events = ctl.subscribe("CONF_CHANGED")
        signal_events = ctl.subscribe("SIGNAL")
        await ctl.set_conf({"ContactInfo": "before restart"})
        async with asyncio.timeout(10):
            first = await anext(conf_events)
        assert first.data == "ContactInfo=before restart"

        old_pid = tor.pid
        old_cookie = tor.cookie_file.read_bytes()
        tor.kill()
        tor.start(control_port=str(tor.port))
        assert tor.pid != old_pid
        assert tor.cookie_file.read_bytes() != old_cookie  # SAFECOOKIE must re-read it

        # Commands issued while the client notices the loss may fail with
        # ControlClosed; afterwards they wait for the reconnect and succeed.
        async with asyncio.timeout(30):
            while True:
                try:
                    info = await ctl.get_info("process/pid")
                except ControlClosed:
                    continue
                if info["process/pid"] == str(tor.pid):
                    break
        assert ctl.reconnects == 1 and ctl.is_connected

        # The SETEVENTS set was restored: the new tor sends both event types
        # to the subscribers created before the restart.
        await ctl.set_conf({"ContactInfo": "after restart"})
        await ctl.signal("DUMP")
        async with asyncio.timeout(10):
            async for event in conf_events:
                if event.data == "ContactInfo=after restart":
                    break
            async for event in signal_events:
                if event.text == "DUMP":
                    break
    finally:
        await ctl.close()
    with pytest.raises(ControlClosed):
        await ctl.get_info("version")
