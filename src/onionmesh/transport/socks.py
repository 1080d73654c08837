"""Asyncio SOCKS5 client for tor's SOCKS port, with stream isolation.

tor isolates streams by SOCKS username/password (IsolateSOCKSAuth, on by default):
streams with different credentials never share a circuit, so a caller that passes
fresh credentials per attempt gets a fresh circuit per attempt, as a real client would,
without NEWNYM. Replies use tor's extended error codes (ExtendedErrors) where tor
sends them, named in the error.
"""

from __future__ import annotations

import asyncio
import struct

from onionmesh.errors import OnionmeshError

# tor's SOCKS5 reply codes (socks-extensions.txt), so errors say what happened.
REPLY_MEANINGS = {
    0x01: "general failure", 0x02: "not allowed", 0x03: "network unreachable",
    0x04: "host unreachable", 0x05: "connection refused", 0x06: "TTL expired",
    0x07: "command not supported", 0x08: "address type not supported",
    0xF0: "onion service descriptor not found", 0xF1: "onion service descriptor invalid",
    0xF2: "introduction failed", 0xF3: "rendezvous failed",
    0xF4: "missing client authorization", 0xF5: "wrong client authorization",
    0xF6: "invalid onion address", 0xF7: "introduction timed out",
}


class SocksFailure(OnionmeshError):
    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


async def socks_open(socks: tuple[str, int] | str, host: str, port: int, *,
                     username: str, password: str = "x", timeout: float = 60.0,
                     ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Open a stream to ``host:port`` through tor; ``socks`` is (host, port) or a unix path."""
    encoded = host.encode("ascii")
    user, pw = username.encode(), password.encode()
    if not 0 < len(encoded) < 256 or not 0 < len(user) < 256 or not 0 < len(pw) < 256:
        raise SocksFailure("SOCKS host, username and password must be 1-255 bytes")
    try:
        async with asyncio.timeout(timeout):
            if isinstance(socks, str):
                reader, writer = await asyncio.open_unix_connection(socks)
            else:
                reader, writer = await asyncio.open_connection(*socks)
            try:
                writer.write(b"\x05\x01\x02")  # one method: username/password
                version, method = await reader.readexactly(2)
                if version != 5 or method != 2:
                    raise SocksFailure(f"tor's SOCKS port refused username/password auth "
                                       f"(version {version}, method {method})")
                writer.write(b"\x01" + bytes([len(user)]) + user + bytes([len(pw)]) + pw)
                _, status = await reader.readexactly(2)
                if status != 0:
                    raise SocksFailure("tor's SOCKS port refused the credentials")
                writer.write(b"\x05\x01\x00\x03" + bytes([len(encoded)]) + encoded
                             + struct.pack(">H", port))
                head = await reader.readexactly(4)
                if head[1] != 0:
                    meaning = REPLY_MEANINGS.get(head[1], "unknown error")
                    raise SocksFailure(f"SOCKS reply 0x{head[1]:02X} ({meaning}) for "
                                       f"{host}:{port}", head[1])
                skip = {1: 4, 4: 16}.get(head[3])
                if skip is None:
                    skip = (await reader.readexactly(1))[0]
                await reader.readexactly(skip + 2)
            except BaseException:
                writer.close()
                raise
    except TimeoutError:
        raise SocksFailure(f"no stream to {host}:{port} through tor within {timeout:g} s") \
            from None
    except (OSError, asyncio.IncompleteReadError) as exc:
        raise SocksFailure(f"SOCKS connection to tor failed: {exc}") from None
    return reader, writer
