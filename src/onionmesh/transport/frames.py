"""Path-layer frames: what travels over the WireGuard tunnel (UDP) and the tor stream.

One type byte, then the payload:
  MESH  0x00 + an authenticated mesh datagram, passed to the core unchanged
  PROBE 0x01 + 8-byte nonce: "does this path deliver?"
  ACK   0x02 + the probe's nonce, sent back on the path the probe came in on
  HELLO 0x03 + the sender's node id: first frame of a tor stream (says whose it is)
  JOIN  0x04 + one join-exchange datagram (mesh.join): only on a join onion's streams
Probes need no MAC of their own: on WireGuard the tunnel authenticates the sender
(a peer's tunnel address is bound to its key by allowed-ips); on tor the stream runs
to a coordination onion only roster members can reach, and a forged ACK could at
worst keep a peer on a path whose mesh datagrams (which are authenticated) then fail.

On a tor stream each frame is preceded by its length (2 bytes, big-endian).
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from onionmesh.errors import OnionmeshError

NONCE_BYTES = 8
MAX_NODE_ID = 64
MAX_FRAME = 65507  # the UDP payload limit: the mesh core keeps datagrams under it


class FrameError(OnionmeshError):
    """A frame is malformed (its type or size); it is dropped."""


class FrameKind(enum.IntEnum):
    MESH = 0
    PROBE = 1
    ACK = 2
    HELLO = 3
    JOIN = 4


@dataclass(frozen=True)
class Frame:
    kind: FrameKind
    payload: bytes

    def encode(self) -> bytes:
        if len(self.payload) + 1 > MAX_FRAME:
            raise FrameError(f"frame of {len(self.payload) + 1} bytes is over {MAX_FRAME}")
        return bytes((self.kind,)) + self.payload


def decode_frame(data: bytes) -> Frame:
    if not data:
        raise FrameError("empty frame")
    try:
        kind = FrameKind(data[0])
    except ValueError:
        raise FrameError(f"unknown frame type {data[0]}") from None
    payload = data[1:]
    if kind is FrameKind.HELLO:
        if not 1 <= len(payload) <= MAX_NODE_ID:
            raise FrameError(f"HELLO frame must carry a node id of 1-{MAX_NODE_ID} bytes")
        return Frame(kind, payload)
    if kind in (FrameKind.MESH, FrameKind.JOIN):
        if not payload:
            raise FrameError(f"empty {kind.name} frame")
        return Frame(kind, payload)
    if len(payload) != NONCE_BYTES:
        raise FrameError(f"{kind.name} frame must carry {NONCE_BYTES} bytes, got {len(payload)}")
    return Frame(kind, payload)


def stream_encode(frame: Frame) -> bytes:
    body = frame.encode()
    return struct.pack(">H", len(body)) + body


class StreamDecoder:
    """Splits a tor stream's bytes into frames; a bad length ends the stream."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[Frame]:
        self._buffer += data
        frames = []
        while len(self._buffer) >= 2:
            (length,) = struct.unpack_from(">H", self._buffer)
            if length == 0:
                raise FrameError("zero-length frame on the stream")
            if len(self._buffer) < 2 + length:
                break
            body = bytes(self._buffer[2:2 + length])
            del self._buffer[:2 + length]
            frames.append(decode_frame(body))
        return frames
