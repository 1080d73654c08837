"""Control-port authentication helpers: PROTOCOLINFO parsing, method choice, SAFECOOKIE.

Facts from tor's control-spec ("PROTOCOLINFO", "AUTHCHALLENGE", "Safe cookie
authentication"): the cookie is 32 bytes; SAFECOOKIE computes

    ServerHash = HMAC-SHA256(K_s, Cookie | ClientNonce | ServerNonce)
    ClientHash = HMAC-SHA256(K_c, Cookie | ClientNonce | ServerNonce)

with the two fixed keys below, and the client must check ServerHash before
revealing ClientHash (so a fake control port cannot harvest the cookie).
Uses the standard library's hmac/hashlib (constant-time compare included).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import stat
from dataclasses import dataclass

from onionmesh.tor.control_protocol import (
    AuthenticationError,
    ControlProtocolError,
    Reply,
    parse_keywords,
)

SERVER_TO_CONTROLLER_KEY = b"Tor safe cookie authentication server-to-controller hash"
CONTROLLER_TO_SERVER_KEY = b"Tor safe cookie authentication controller-to-server hash"
COOKIE_LEN = 32
NONCE_LEN = 32

#: Methods we implement, best first when no password is given.
KNOWN_METHODS = ("NULL", "SAFECOOKIE", "COOKIE", "HASHEDPASSWORD")


@dataclass(frozen=True)
class ProtocolInfo:
    """What PROTOCOLINFO told us."""

    methods: frozenset[str]
    cookie_file: str | None
    tor_version: str | None


def parse_protocolinfo(reply: Reply) -> ProtocolInfo:
    """Parse a 250 PROTOCOLINFO reply (AUTH METHODS=..., COOKIEFILE=..., VERSION Tor=...)."""
    if reply.status != 250:
        raise ControlProtocolError(f"PROTOCOLINFO failed with status {reply.status}")
    methods: frozenset[str] | None = None
    cookie_file: str | None = None
    version: str | None = None
    for line in reply.lines:
        word, _, rest = line.text.partition(" ")
        if word == "AUTH":
            _, kw = parse_keywords(rest)
            if "METHODS" not in kw:
                raise ControlProtocolError("PROTOCOLINFO AUTH line has no METHODS")
            methods = frozenset(m for m in kw["METHODS"].split(",") if m)
            cookie_file = kw.get("COOKIEFILE")
        elif word == "VERSION":
            _, kw = parse_keywords(rest)
            version = kw.get("Tor")
    if methods is None:
        raise ControlProtocolError("PROTOCOLINFO reply has no AUTH line")
    return ProtocolInfo(methods, cookie_file, version)


def choose_method(info: ProtocolInfo, *, have_password: bool, forced: str | None = None) -> str:
    """Pick the auth method: forced one, else NULL, password if given, SAFECOOKIE, COOKIE."""
    if forced is not None:
        if forced not in KNOWN_METHODS:
            raise AuthenticationError(f"unknown auth method {forced!r}")
        if forced not in info.methods:
            raise AuthenticationError(f"tor does not offer auth method {forced}")
        return forced
    if "NULL" in info.methods:
        return "NULL"
    if have_password and "HASHEDPASSWORD" in info.methods:
        return "HASHEDPASSWORD"
    for method in ("SAFECOOKIE", "COOKIE"):
        if method in info.methods:
            return method
    if "HASHEDPASSWORD" in info.methods:
        raise AuthenticationError("tor requires a control password and none was given")
    offered = ",".join(sorted(info.methods)) or "none"
    raise AuthenticationError(f"no supported auth method offered (tor offers: {offered})")


def read_cookie(path: str) -> bytes:
    """Read the 32-byte auth cookie; errors name the path, never the content.

    Only a regular file: a FIFO or device named by a fake control port would block
    the event loop or stream forever (opened non-blocking, checked before reading).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError as exc:
        raise AuthenticationError(f"cannot read auth cookie {path!r}: {exc.strerror}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise AuthenticationError(f"auth cookie {path!r} is not a regular file")
        cookie = os.read(fd, COOKIE_LEN + 1)
    except OSError as exc:
        raise AuthenticationError(f"cannot read auth cookie {path!r}: {exc.strerror}") from None
    finally:
        os.close(fd)
    if len(cookie) != COOKIE_LEN:
        raise AuthenticationError(f"auth cookie {path!r} is not {COOKIE_LEN} bytes long")
    return cookie


def safecookie_hashes(
    cookie: bytes, client_nonce: bytes, server_nonce: bytes
) -> tuple[bytes, bytes]:
    """Return (expected server hash, client hash) for SAFECOOKIE."""
    msg = cookie + client_nonce + server_nonce
    server = hmac.new(SERVER_TO_CONTROLLER_KEY, msg, hashlib.sha256).digest()
    client = hmac.new(CONTROLLER_TO_SERVER_KEY, msg, hashlib.sha256).digest()
    return server, client


_HEX64 = re.compile(r"[0-9A-Fa-f]{64}")


def parse_authchallenge(reply: Reply) -> tuple[bytes, bytes]:
    """Parse ``250 AUTHCHALLENGE SERVERHASH=<hex> SERVERNONCE=<hex>`` -> (hash, nonce)."""
    if reply.status != 250 or len(reply.lines) != 1:
        raise AuthenticationError(f"AUTHCHALLENGE failed with status {reply.status}")
    positional, kw = parse_keywords(reply.lines[0].text)
    if positional[:1] != ["AUTHCHALLENGE"]:
        raise ControlProtocolError("AUTHCHALLENGE reply does not start with AUTHCHALLENGE")
    server_hash = kw.get("SERVERHASH", "")
    server_nonce = kw.get("SERVERNONCE", "")
    if not _HEX64.fullmatch(server_hash) or not _HEX64.fullmatch(server_nonce):
        raise ControlProtocolError("AUTHCHALLENGE reply lacks 32-byte SERVERHASH/SERVERNONCE")
    return bytes.fromhex(server_hash), bytes.fromhex(server_nonce)


def verify_server_hash(expected: bytes, received: bytes) -> None:
    """Constant-time check of tor's SAFECOOKIE server hash."""
    if not hmac.compare_digest(expected, received):
        raise AuthenticationError(
            "SAFECOOKIE server hash mismatch (wrong cookie file, or not the expected tor)"
        )
