"""The join onion's stream handling (the tor side is tested on the private network in
tests/cluster/test_join_tornet.py): one JOIN frame in, the answer's JOIN frames out;
anything else is closed without an answer."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from onionmesh.tor.control import AddOnionResult
from onionmesh.tor.control_protocol import ControlError
from onionmesh.transport import join_onion
from onionmesh.transport.frames import Frame, FrameKind, StreamDecoder, stream_encode
from onionmesh.transport.join_onion import JOIN_PORT, JoinOnion, JoinOnionError


class FakeController:
    def __init__(self, refuse: bool = False) -> None:
        self.refuse = refuse
        self.calls: list[tuple[Any, ...]] = []

    async def add_onion(self, key: str, ports: list[str], flags: list[str]) -> AddOnionResult:
        self.calls.append(("add", key, tuple(ports), tuple(flags)))
        if self.refuse:
            raise ControlError("552", "Onion address collision")
        return AddOnionResult("x" * 56)

    async def del_onion(self, service_id: str) -> None:
        self.calls.append(("del", service_id))


async def _exchange(path: Path, data: bytes) -> list[Frame]:
    reader, writer = await asyncio.open_unix_connection(str(path))
    writer.write(data)
    await writer.drain()
    frames: list[Frame] = []
    decoder = StreamDecoder()
    async with asyncio.timeout(10):
        while chunk := await reader.read(4096):
            frames += decoder.feed(chunk)
    writer.close()
    return frames


async def test_one_request_gets_the_answer_and_nothing_else_does(tmp_path: Path) -> None:
    seen: list[bytes] = []

    async def answer(data: bytes) -> list[bytes]:
        seen.append(data)
        return [b"OMJ1 accept", b"OMJ1 chunk"]

    controller = FakeController()
    onion = JoinOnion(controller, "ED25519-V3:key", tmp_path / "d", answer)  # type: ignore[arg-type]
    assert await onion.start("x" * 56) == "x" * 56
    assert controller.calls[0] == ("del", "x" * 56)  # a crashed run's service goes first
    assert controller.calls[1] == ("add", "ED25519-V3:key",
                                   (f"{JOIN_PORT},unix:{tmp_path / 'd' / 'join.sock'}",),
                                   ("Detach",))
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o700
    sock = tmp_path / "d" / "join.sock"
    try:
        got = await _exchange(sock, stream_encode(Frame(FrameKind.JOIN, b"OMJ1 request")))
        assert got == [Frame(FrameKind.JOIN, b"OMJ1 accept"), Frame(FrameKind.JOIN, b"OMJ1 chunk")]
        assert seen == [b"OMJ1 request"]
        # A mesh frame, a HELLO, two requests at once, garbage: closed, never answered.
        for data in (stream_encode(Frame(FrameKind.MESH, b"\x94x")),
                     stream_encode(Frame(FrameKind.HELLO, b"n2")),
                     stream_encode(Frame(FrameKind.JOIN, b"a"))
                     + stream_encode(Frame(FrameKind.JOIN, b"b")),
                     b"\x00\x00", b"\x00\x02\x09\x09"):
            assert await _exchange(sock, data) == []
        assert seen == [b"OMJ1 request"] and onion.answered == 1 and onion.rejected == 5
    finally:
        await onion.close()
    assert controller.calls[-1] == ("del", "x" * 56) and not sock.exists()


async def test_a_silent_stream_is_closed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(join_onion, "REQUEST_TIMEOUT", 0.2)

    async def answer(data: bytes) -> list[bytes]:
        raise AssertionError("never asked")

    onion = JoinOnion(FakeController(), "ED25519-V3:key", tmp_path, answer)  # type: ignore[arg-type]
    await onion.start("x" * 56)
    try:
        assert await _exchange(tmp_path / "join.sock", b"") == []
        assert onion.rejected == 1
    finally:
        await onion.close()


async def test_tor_refusing_the_onion_is_a_clear_error(tmp_path: Path) -> None:
    async def answer(data: bytes) -> list[bytes]:
        return []

    onion = JoinOnion(FakeController(refuse=True), "ED25519-V3:key", tmp_path,  # type: ignore[arg-type]
                      answer)
    with pytest.raises(JoinOnionError, match="tor refused the join onion"):
        await onion.start("x" * 56)
    assert not (tmp_path / "join.sock").exists()
