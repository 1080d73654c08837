"""Asyncio client for tor's control port (TCP or unix socket).

One reader task per connection turns incoming lines into replies and events
(parsing in :mod:`onionmesh.tor.control_protocol`, the connection and event
queues in :mod:`onionmesh.tor.control_connection`, authentication helpers in
:mod:`onionmesh.tor.control_auth`). Replies are matched
to commands strictly in FIFO order, which is how tor answers; 650 events are
routed to subscribers in between. Design choices, briefly:

* **Timeouts drop the connection.** Once a command was written and its reply
  did not come, the reply stream can no longer be matched to commands (a late
  or missing reply would shift every later answer), so the connection is
  closed; with ``reconnect=True`` a fresh one is authenticated and the
  SETEVENTS set restored. Cancelling a waiting caller, by contrast, keeps the
  slot and discards the late reply.
* **Slow subscribers never block the reader.** Each subscription has a
  bounded queue; when it is full the oldest event is dropped and counted
  (``EventSubscription.dropped``) with a warning every power of two.
* **Secrets are masked.** AUTHENTICATE arguments, ADD_ONION keys and the
  bodies of data commands (HSPOST) never reach the log; replies are logged by
  status and size only (an ADD_ONION reply carries the private key).
* Commands that were in flight when the connection died fail with
  ControlClosed and are never re-sent (they may not be idempotent).
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import re
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from onionmesh.aio import cancel_and_wait
from onionmesh.tor.control_auth import (
    NONCE_LEN,
    ProtocolInfo,
    choose_method,
    parse_authchallenge,
    parse_protocolinfo,
    read_cookie,
    safecookie_hashes,
    verify_server_hash,
)
from onionmesh.tor.control_connection import ControlConnection, EventSubscription
from onionmesh.tor.control_protocol import (
    MAX_LINE_CHARS,
    AuthenticationError,
    ControlArgumentError,
    ControlClosed,
    ControlConnectError,
    ControlError,
    ControlEvent,
    ControlProtocolError,
    ControlReplyError,
    ControlTimeout,
    HsDescEvent,
    Reply,
    ReplyLine,
    check_token,
    escape_data,
    maybe_unquote,
    parse_conf_changed,
    parse_hs_desc_event,
    parse_key_value_lines,
    parse_reply_line,
    quote,
)

__all__ = [
    "AddOnionResult",
    "AuthenticationError",
    "ControlArgumentError",
    "ControlClosed",
    "ControlConnectError",
    "ControlError",
    "ControlEvent",
    "ControlProtocolError",
    "ControlReplyError",
    "ControlTimeout",
    "EventSubscription",
    "HsDescEvent",
    "Reply",
    "ReplyLine",
    "TorController",
    "parse_conf_changed",
    "parse_hs_desc_event",
    "parse_reply_line",
]

log = logging.getLogger(__name__)

_EVENT_NAME_RE = re.compile(r"[A-Z][A-Z0-9_]*")
_CONF_KEY_RE = re.compile(r"[A-Za-z0-9_/]+")
_V3_ADDR_RE = re.compile(r"[a-z2-7]{56}")


@dataclass(frozen=True)
class AddOnionResult:
    """What ADD_ONION returned. ``private_key`` is secret and kept out of repr."""

    service_id: str
    private_key: str | None = field(default=None, repr=False)
    client_auth: tuple[str, ...] = ()

    def __repr__(self) -> str:
        key = "<redacted>" if self.private_key is not None else "None"
        return f"AddOnionResult(service_id={self.service_id!r}, private_key={key})"


def mask_command(command: str) -> str:
    """Return the command as it may be logged (secret arguments replaced)."""
    verb, _, rest = command.lstrip("+").partition(" ")
    upper = verb.upper()
    if upper in ("AUTHENTICATE", "ONION_CLIENT_AUTH_ADD") and rest:
        return f"{verb} <redacted>"
    if upper == "ADD_ONION" and rest:
        key, _, tail = rest.partition(" ")
        ktype, colon, _blob = key.partition(":")
        if colon and ktype.upper() != "NEW":
            key = f"{ktype}:<redacted>"
        return f"{verb} {key} {tail}".rstrip()
    if upper in ("SETCONF", "RESETCONF", "LOADCONF") and "password" in rest.lower():
        return f"{verb} <redacted>"
    return command


class TorController:
    """A control-port client; create it with :meth:`connect`.

    ``connect(port=...)`` or ``connect(socket_path=...)`` sends PROTOCOLINFO
    and authenticates with the best method tor offers: NULL, the password if
    one is given and tor accepts HASHEDPASSWORD, SAFECOOKIE, then COOKIE
    (``auth_method=`` forces one). ``timeout`` bounds the connect and is the
    default per-command timeout. With ``reconnect=True`` a lost connection
    is re-established in the background with exponential backoff and jitter,
    re-authenticated, and the last SETEVENTS set restored; commands issued
    meanwhile wait for it (within their timeout).
    """

    def __init__(
        self,
        *,
        port: int | None,
        host: str,
        socket_path: str | None,
        password: str | None,
        cookie_path: str | None,
        cookie_from_tor: bool,
        timeout: float,
        reconnect: bool,
        auth_method: str | None,
        backoff_initial: float,
        backoff_max: float,
    ) -> None:
        if (port is None) == (socket_path is None):
            raise ControlArgumentError("give exactly one of port= and socket_path=")
        if timeout <= 0:
            raise ControlArgumentError("timeout must be positive")
        self._port = port
        self._host = host
        self._socket_path = socket_path
        self._password = password
        self._cookie_path = cookie_path
        self._cookie_from_tor = cookie_from_tor
        self.timeout = timeout
        self._reconnect = reconnect
        self._auth_method = auth_method
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._conn: ControlConnection | None = None
        self._connected = asyncio.Event()
        self._closed = False
        self._lost_error: ControlError | None = None
        self._events: tuple[str, ...] = ()
        self._events_lock = asyncio.Lock()
        self._subs: set[EventSubscription] = set()
        self._reconnect_task: asyncio.Task[None] | None = None
        self.protocol_info: ProtocolInfo | None = None
        self.auth_method_used: str | None = None
        self.reconnects = 0

    def __repr__(self) -> str:
        where = self._socket_path or f"{self._host}:{self._port}"
        state = "closed" if self._closed else ("up" if self.is_connected else "down")
        return f"<TorController {where} {state}>"

    @property
    def target(self) -> str:
        """Where the controller connects (for logs)."""
        return self._socket_path or f"{self._host}:{self._port}"

    # ------------------------------------------------------------------ connect

    @classmethod
    async def connect(
        cls,
        *,
        port: int | None = None,
        host: str = "127.0.0.1",
        socket_path: str | None = None,
        password: str | None = None,
        cookie_path: str | None = None,
        cookie_from_tor: bool = True,
        timeout: float = 10.0,
        reconnect: bool = False,
        auth_method: str | None = None,
        backoff_initial: float = 0.05,
        backoff_max: float = 5.0,
    ) -> TorController:
        """Connect, send PROTOCOLINFO and authenticate; see the class docstring.

        ``cookie_from_tor=False``: never read the cookie file PROTOCOLINFO names (only
        ``cookie_path``). Over TCP whatever listens on the port names that file, so
        even by default it is used only for SAFECOOKIE, where the server must prove
        it knows the cookie before anything derived from it is sent.
        """
        self = cls(
            port=port,
            host=host,
            socket_path=socket_path,
            password=password,
            cookie_path=cookie_path,
            cookie_from_tor=cookie_from_tor,
            timeout=timeout,
            reconnect=reconnect,
            auth_method=auth_method,
            backoff_initial=backoff_initial,
            backoff_max=backoff_max,
        )
        conn = await self._open_authenticated(timeout)
        self._install(conn)
        return self

    async def _open_transport(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        try:
            if self._socket_path is not None:
                return await asyncio.open_unix_connection(self._socket_path, limit=MAX_LINE_CHARS)
            return await asyncio.open_connection(self._host, self._port, limit=MAX_LINE_CHARS)
        except OSError as exc:
            raise ControlConnectError(
                f"cannot connect to tor control port {self.target}: {exc.strerror or exc}"
            ) from None

    async def _open_authenticated(self, timeout: float) -> ControlConnection:
        conn: ControlConnection | None = None
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await self._open_transport()
                conn = ControlConnection(reader, writer, self._dispatch, self._lost, self.target)
                await self._authenticate(conn, timeout)
                if self._events:
                    await self._send(conn, "SETEVENTS " + " ".join(self._events), None, timeout)
            return conn
        except TimeoutError:
            if conn is not None:
                await conn.aclose()
            raise ControlTimeout(
                f"connecting to tor control port {self.target} took over {timeout:g} s"
            ) from None
        except BaseException:
            if conn is not None:
                await conn.aclose()
            raise

    def _cookie_file_from_tor(self, info: ProtocolInfo, method: str) -> str:
        over_tcp = self._socket_path is None
        if not self._cookie_from_tor or (over_tcp and method == "COOKIE"):
            raise AuthenticationError(
                f"{method} authentication over TCP needs a configured cookie path "
                "([tor] cookie_path): whatever listens on the port names the cookie file"
            )
        if not info.cookie_file:
            raise AuthenticationError(f"tor offers {method} but names no cookie file")
        return info.cookie_file

    async def _authenticate(self, conn: ControlConnection, timeout: float) -> None:
        reply = await self._send(conn, "PROTOCOLINFO 1", None, timeout)
        info = parse_protocolinfo(reply)
        self.protocol_info = info
        method = choose_method(
            info, have_password=self._password is not None, forced=self._auth_method
        )
        if method == "NULL":
            arg = ""
        elif method == "HASHEDPASSWORD":
            if self._password is None:
                raise AuthenticationError("HASHEDPASSWORD forced but no password given")
            arg = " " + quote(self._password)
        else:
            path = self._cookie_path or self._cookie_file_from_tor(info, method)
            cookie = read_cookie(path)
            if method == "COOKIE":
                arg = " " + cookie.hex()
            else:
                client_nonce = os.urandom(NONCE_LEN)
                challenge = await self._send(
                    conn, f"AUTHCHALLENGE SAFECOOKIE {client_nonce.hex()}", None, timeout,
                    check=False,
                )
                if challenge.status != 250:
                    raise AuthenticationError(
                        f"AUTHCHALLENGE refused: {challenge.status} {challenge.lines[-1].text}"
                    )
                server_hash, server_nonce = parse_authchallenge(challenge)
                expected, client_hash = safecookie_hashes(cookie, client_nonce, server_nonce)
                verify_server_hash(expected, server_hash)
                arg = " " + client_hash.hex()
        reply = await self._send(conn, "AUTHENTICATE" + arg, None, timeout, check=False)
        if reply.status != 250:
            raise AuthenticationError(
                f"tor rejected {method} authentication: {reply.status} {reply.lines[-1].text}"
            )
        self.auth_method_used = method
        log.debug("authenticated to %s with %s", self.target, method)

    def _install(self, conn: ControlConnection) -> None:
        self._conn = conn
        self._lost_error = None
        self._connected.set()

    def _lost(self, conn: ControlConnection, reason: ControlError) -> None:
        if conn is not self._conn:
            return
        self._conn = None
        self._connected.clear()
        if self._closed:
            return
        if self._reconnect:
            log.warning("lost tor control connection %s (%s); reconnecting", self.target, reason)
            if self._reconnect_task is None or self._reconnect_task.done():
                self._reconnect_task = asyncio.get_running_loop().create_task(
                    self._reconnect_loop(), name=f"tor-control-reconnect {self.target}"
                )
        else:
            self._lost_error = ControlClosed(f"control connection lost: {reason}")
            for sub in list(self._subs):
                sub._finish(self._lost_error)

    async def _reconnect_loop(self) -> None:
        attempt = 0
        while not self._closed:
            ceiling = min(self._backoff_max, self._backoff_initial * (2**attempt))
            await asyncio.sleep(random.uniform(ceiling / 2, ceiling))
            try:
                conn = await self._open_authenticated(self.timeout)
            except ControlError as exc:
                attempt = min(attempt + 1, 30)
                log.info("reconnect to %s failed (attempt %d): %s", self.target, attempt, exc)
                continue
            except Exception:  # keep healing even if something unexpected broke
                attempt = min(attempt + 1, 30)
                log.exception("reconnect to %s failed unexpectedly", self.target)
                continue
            if self._closed:
                await conn.aclose()
                return
            self.reconnects += 1
            log.info("reconnected to tor control port %s", self.target)
            self._install(conn)
            return

    @property
    def is_connected(self) -> bool:
        """True while an authenticated connection is up."""
        return self._conn is not None and not self._conn.closed

    async def wait_connected(self, timeout: float | None = None) -> None:
        """Wait until a connection is up (useful after tor restarts)."""
        await self._current_connection(self.timeout if timeout is None else timeout, "wait")

    async def close(self) -> None:
        """Close the connection, stop reconnecting and end every subscription."""
        self._closed = True
        task, self._reconnect_task = self._reconnect_task, None
        await cancel_and_wait(task)
        conn, self._conn = self._conn, None
        self._connected.clear()
        if conn is not None:
            await conn.aclose()
        for sub in list(self._subs):
            sub._finish(None)
        self._subs.clear()

    async def __aenter__(self) -> TorController:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ----------------------------------------------------------------- commands

    async def _current_connection(self, timeout: float, label: str) -> ControlConnection:
        if self._closed:
            raise ControlClosed(f"{label}: controller is closed")
        conn = self._conn
        if conn is not None and not conn.closed:
            return conn
        if not self._reconnect:
            raise self._lost_error or ControlClosed(f"{label}: not connected")
        try:
            async with asyncio.timeout(timeout):
                while True:
                    await self._connected.wait()
                    conn = self._conn
                    if conn is not None and not conn.closed:
                        return conn
                    if self._closed:
                        raise ControlClosed(f"{label}: controller is closed")
                    self._connected.clear()
        except TimeoutError:
            raise ControlTimeout(f"{label}: not reconnected within {timeout:g} s") from None

    @staticmethod
    async def _send(
        conn: ControlConnection,
        command: str,
        data: str | None,
        timeout: float,
        *,
        check: bool = True,
    ) -> Reply:
        if not isinstance(command, str) or not command.strip():
            raise ControlArgumentError("command must be a non-empty string")
        if any(c in command for c in "\r\n\0"):
            raise ControlArgumentError("command contains CR, LF or NUL")
        label = mask_command(command)
        if data is None:
            payload = command + "\r\n"
        else:
            if not command.startswith("+"):
                command = "+" + command
                label = "+" + label
            payload = command + "\r\n" + escape_data(data)
            label = f"{label} <data: {len(data)} chars>"
        reply = await conn.send(payload.encode("utf-8"), label, timeout)
        if check:
            reply.raise_for_status(label)
        return reply

    async def request(
        self, command: str, data: str | None = None, timeout: float | None = None,
        *, check: bool = True,
    ) -> Reply:
        """Send one command (with an optional data block) and return its reply.

        Raises ControlReplyError for 4xx/5xx unless ``check=False``,
        ControlTimeout if no reply came in time (the connection is then
        dropped), ControlClosed if the connection died first.
        """
        limit = self.timeout if timeout is None else timeout
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit
        conn = await self._current_connection(limit, mask_command(command.split(" ", 1)[0]))
        remaining = max(deadline - loop.time(), 0.001)
        return await self._send(conn, command, data, remaining, check=check)

    async def get_info(self, *keys: str, timeout: float | None = None) -> dict[str, str]:
        """GETINFO; multi-line values come back joined with "\\n"."""
        if not keys:
            raise ControlArgumentError("get_info needs at least one key")
        for key in keys:
            check_token(key, "GETINFO key")
        reply = await self.request("GETINFO " + " ".join(keys), timeout=timeout)
        values = dict(parse_key_value_lines(reply))
        missing = [k for k in keys if k not in values]
        if missing:
            raise ControlProtocolError(f"GETINFO reply lacks key(s): {', '.join(missing)[:200]}")
        return {k: v for k, v in values.items() if v is not None}

    async def get_conf(
        self, *keys: str, timeout: float | None = None
    ) -> dict[str, list[str]]:
        """GETCONF; each option maps to its values ([] when unset / default-empty).

        Keys come back in tor's canonical spelling (e.g. "ContactInfo").
        """
        if not keys:
            raise ControlArgumentError("get_conf needs at least one key")
        for key in keys:
            if not _CONF_KEY_RE.fullmatch(key):
                raise ControlArgumentError(f"bad option name {key[:60]!r}")
        reply = await self.request("GETCONF " + " ".join(keys), timeout=timeout)
        out: dict[str, list[str]] = {}
        for key, value in parse_key_value_lines(reply, allow_bare=True):
            values = out.setdefault(key, [])
            if value is not None:
                values.append(maybe_unquote(value))
        return out

    async def set_conf(
        self, values: Mapping[str, str | Sequence[str]], *, timeout: float | None = None
    ) -> None:
        """SETCONF; a sequence sets a multi-valued option, an empty one resets it."""
        if not values:
            raise ControlArgumentError("set_conf needs at least one option")
        parts: list[str] = []
        for key, value in values.items():
            if not _CONF_KEY_RE.fullmatch(key):
                raise ControlArgumentError(f"bad option name {key[:60]!r}")
            items = [value] if isinstance(value, str) else list(value)
            if not items:
                parts.append(key)
            parts.extend(f"{key}={quote(item)}" for item in items)
        await self.request("SETCONF " + " ".join(parts), timeout=timeout)

    async def set_events(self, *events: str, timeout: float | None = None) -> None:
        """SETEVENTS; the set is remembered and restored after a reconnect."""
        for event in events:
            if not _EVENT_NAME_RE.fullmatch(event):
                raise ControlArgumentError(f"bad event name {event[:40]!r}")
        command = "SETEVENTS " + " ".join(events) if events else "SETEVENTS"
        await self.request(command, timeout=timeout)
        self._events = tuple(events)

    @property
    def events(self) -> tuple[str, ...]:
        """The SETEVENTS set last accepted by tor (restored after reconnects)."""
        return self._events

    async def add_events(self, *events: str, timeout: float | None = None) -> None:
        """Add event types to the SETEVENTS set, keeping the ones already enabled.

        Serialised with a lock so concurrent users of one controller (publisher,
        intro-point watcher) cannot drop each other's events.
        """
        async with self._events_lock:
            wanted = self._events + tuple(e for e in dict.fromkeys(events) if e not in self._events)
            if wanted != self._events:
                await self.set_events(*wanted, timeout=timeout)

    async def remove_events(self, *events: str, timeout: float | None = None) -> None:
        """Remove event types from the SETEVENTS set."""
        async with self._events_lock:
            wanted = tuple(e for e in self._events if e not in events)
            if wanted != self._events:
                await self.set_events(*wanted, timeout=timeout)

    async def signal(self, name: str, *, timeout: float | None = None) -> None:
        """SIGNAL <name> (RELOAD, NEWNYM, HEARTBEAT, ...)."""
        if not _EVENT_NAME_RE.fullmatch(name):
            raise ControlArgumentError(f"bad signal name {name[:40]!r}")
        await self.request(f"SIGNAL {name}", timeout=timeout)

    async def hs_fetch(
        self, address: str, servers: Sequence[str] = (), *, timeout: float | None = None
    ) -> None:
        """HSFETCH <address> [SERVER=...]; results arrive as HS_DESC events."""
        addr = check_token(address.removesuffix(".onion"), "onion address")
        parts = [f"HSFETCH {addr}"]
        parts.extend(f"SERVER={check_token(s, 'HSDir server')}" for s in servers)
        await self.request(" ".join(parts), timeout=timeout)

    async def hs_post(
        self,
        descriptor: str,
        *,
        server: str | Sequence[str],
        hs_address: str,
        timeout: float | None = None,
    ) -> None:
        """+HSPOST SERVER=... HSADDRESS=... with the descriptor as data block.

        HSADDRESS is mandatory here because tor sends no reply at all without
        it. Upload results arrive as HS_DESC UPLOADED/FAILED events.
        """
        addr = hs_address.removesuffix(".onion")
        if not _V3_ADDR_RE.fullmatch(addr):
            raise ControlArgumentError("hs_address must be a 56-character v3 onion address")
        servers = [server] if isinstance(server, str) else list(server)
        if not servers:
            raise ControlArgumentError("hs_post needs at least one server")
        parts = ["+HSPOST"]
        parts.extend(f"SERVER={check_token(s, 'HSDir server')}" for s in servers)
        parts.append(f"HSADDRESS={addr}")
        await self.request(" ".join(parts), data=descriptor, timeout=timeout)

    async def add_onion(
        self,
        key: str,
        ports: Sequence[str],
        flags: Sequence[str] = (),
        *,
        client_auth_v3: Sequence[str] = (),
        timeout: float | None = None,
    ) -> AddOnionResult:
        """ADD_ONION key Flags=... Port=...; returns ServiceID (and PrivateKey for NEW:)."""
        check_token(key, "ADD_ONION key")
        if not ports:
            raise ControlArgumentError("add_onion needs at least one port")
        parts = ["ADD_ONION", key]
        if flags:
            parts.append("Flags=" + ",".join(check_token(f, "ADD_ONION flag") for f in flags))
        parts.extend(f"Port={check_token(p, 'ADD_ONION port')}" for p in ports)
        parts.extend(f"ClientAuthV3={check_token(c, 'client auth key')}" for c in client_auth_v3)
        reply = await self.request(" ".join(parts), timeout=timeout)
        service_id: str | None = None
        private_key: str | None = None
        client_auth: list[str] = []
        for name, value in parse_key_value_lines(reply):
            if name == "ServiceID":
                service_id = value
            elif name == "PrivateKey":
                private_key = value
            elif name == "ClientAuthV3" and value is not None:
                client_auth.append(value)
        if not service_id:
            raise ControlProtocolError("ADD_ONION reply has no ServiceID")
        return AddOnionResult(service_id, private_key, tuple(client_auth))

    async def onion_client_auth_add(self, service_id: str, x25519_private_b64: str, *,
                                    timeout: float | None = None) -> None:
        """ONION_CLIENT_AUTH_ADD: let this tor fetch a client-authorized service's
        descriptor (the key is masked in logs)."""
        sid = check_token(service_id, "service id")
        key = check_token(x25519_private_b64, "client auth key")
        await self.request(f"ONION_CLIENT_AUTH_ADD {sid} x25519:{key}", timeout=timeout)

    async def onion_client_auth_remove(self, service_id: str, *,
                                       timeout: float | None = None) -> None:
        sid = check_token(service_id, "service id")
        await self.request(f"ONION_CLIENT_AUTH_REMOVE {sid}", timeout=timeout)

    async def del_onion(self, service_id: str, *, timeout: float | None = None) -> None:
        """DEL_ONION <service id>."""
        sid = check_token(service_id, "service id")
        await self.request(f"DEL_ONION {sid}", timeout=timeout)

    # ------------------------------------------------------------------- events

    def _dispatch(self, event: ControlEvent) -> None:
        for sub in list(self._subs):
            if sub.wants(event.type):
                sub._push(event)

    def subscribe(self, *types: str, maxsize: int = 1024) -> EventSubscription:
        """Return an async iterator of events of these types (all if none).

        This does not send SETEVENTS: call :meth:`set_events` for the types
        tor should emit. The queue holds ``maxsize`` events; older ones are
        dropped (and counted) if the consumer falls behind.
        """
        if self._closed:
            raise ControlClosed("subscribe: controller is closed")
        sub = EventSubscription(types, maxsize, self._subs.discard)
        if self._lost_error is not None:
            sub._finish(self._lost_error)  # connection gone for good: end at once
        else:
            self._subs.add(sub)
        return sub

    def wait_for_event(
        self,
        predicate: Callable[[ControlEvent], bool],
        timeout: float,
        *types: str,
    ) -> Coroutine[Any, Any, ControlEvent]:
        """Return an awaitable of the first event (of ``types``, all if none) matching predicate.

        The subscription starts when this is *called*, not when the result is
        awaited, so ``w = ctl.wait_for_event(...); await ctl.hs_post(...);
        await w`` cannot miss an event that arrives before the await. Raises
        ControlTimeout after ``timeout`` seconds.
        """
        sub = self.subscribe(*types)
        return self._wait_on(sub, predicate, timeout)

    @staticmethod
    async def _wait_on(
        sub: EventSubscription, predicate: Callable[[ControlEvent], bool], timeout: float
    ) -> ControlEvent:
        try:
            async with asyncio.timeout(timeout):
                async for event in sub:
                    if predicate(event):
                        return event
        except TimeoutError:
            raise ControlTimeout(f"no matching event within {timeout:g} s") from None
        finally:
            sub.close()
        raise ControlClosed("controller closed while waiting for an event")
