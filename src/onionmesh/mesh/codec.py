"""Strict msgpack encoding of the mesh schema, with size limits.

Size decision: a datagram may be up to MAX_DATAGRAM (60,000) bytes rather than
chunked. The largest message is a node's IntroPoints: at most 2 periods x 20
intro points x ~1 KB, which fits. Over WireGuard such a datagram is IP
fragmented; if a fragment is lost the whole datagram is lost, and the
heartbeat's intro digest makes the receiver ask again (IntroRequest), so no
chunk reassembly state (itself a memory-exhaustion target) is needed.
Every other message is far below 8 KiB.
"""

from __future__ import annotations

import msgspec

from onionmesh.mesh.errors import RejectedDatagram
from onionmesh.mesh.messages import WIRE_VERSION, Message, Sealed, Signed
from onionmesh.mesh.vocabulary import RejectReason

MAX_DATAGRAM = 60_000

_sealed_decoder = msgspec.msgpack.Decoder(Sealed)
_signed_decoder = msgspec.msgpack.Decoder(Signed)
_encoder = msgspec.msgpack.Encoder()


def encode(obj: msgspec.Struct) -> bytes:
    """Encode a schema object to msgpack bytes."""
    return _encoder.encode(obj)


def encode_sealed(sealed: Sealed) -> bytes:
    """Encode an envelope, refusing to produce one a peer would reject as oversized."""
    data = _encoder.encode(sealed)
    if len(data) > MAX_DATAGRAM:
        raise RejectedDatagram(RejectReason.OVERSIZED, f"outgoing datagram of {len(data)} bytes")
    return data


def decode_sealed(data: bytes) -> Sealed:
    """Decode the outer envelope; raise RejectedDatagram on any defect."""
    if len(data) > MAX_DATAGRAM:
        raise RejectedDatagram(RejectReason.OVERSIZED, f"{len(data)} bytes > {MAX_DATAGRAM}")
    try:
        sealed = _sealed_decoder.decode(data)
    except (msgspec.MsgspecError, ValueError) as exc:  # ValueError: bad UTF-8 in a str
        raise RejectedDatagram(RejectReason.MALFORMED, f"envelope: {exc}") from None
    if sealed.version != WIRE_VERSION:
        raise RejectedDatagram(RejectReason.UNSUPPORTED_VERSION, f"wire version {sealed.version}")
    return sealed


def decode_signed(data: bytes) -> Signed:
    """Decode the signed part (only after its MAC has been checked)."""
    try:
        return _signed_decoder.decode(data)
    except (msgspec.MsgspecError, ValueError) as exc:  # ValueError: bad UTF-8 in a str
        raise RejectedDatagram(RejectReason.MALFORMED, f"signed part: {exc}") from None


def message_kind(msg: Message) -> str:
    """A short name for logs and counters."""
    return type(msg).__name__
