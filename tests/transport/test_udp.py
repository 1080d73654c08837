"""UDP transport on loopback: datagrams and addresses round-trip."""

import asyncio

import pytest

from onionmesh.transport.udp import TransportError, UdpTransport, join_address, split_address


def test_address_forms():
    assert split_address("10.0.0.1:7443") == ("10.0.0.1", 7443)
    assert split_address("[fd00::1]:7443") == ("fd00::1", 7443)
    assert join_address("fd00::1", 7443) == "[fd00::1]:7443"
    for bad in ("10.0.0.1", ":7443", "host:port", "h:70000", "localhost:7443",
                "peer.example:7443"):
        with pytest.raises(TransportError):
            split_address(bad)


async def test_datagrams_flow_both_ways_with_source_addresses():
    inbox_a: asyncio.Queue = asyncio.Queue()
    inbox_b: asyncio.Queue = asyncio.Queue()
    a = await UdpTransport.open("127.0.0.1:0", lambda d, s: inbox_a.put_nowait((d, s)))
    b = await UdpTransport.open("127.0.0.1:0", lambda d, s: inbox_b.put_nowait((d, s)))
    try:
        assert a.send(b"hello", b.local_address)
        data, source = await asyncio.wait_for(inbox_b.get(), 5)
        assert data == b"hello"
        assert source == a.local_address
        assert b.send(b"back", source)
        data, source = await asyncio.wait_for(inbox_a.get(), 5)
        assert (data, source) == (b"back", b.local_address)
    finally:
        a.close()
        b.close()


async def test_bad_destination_and_oversize_are_counted_not_raised():
    t = await UdpTransport.open("127.0.0.1:0", lambda d, s: None)
    try:
        assert not t.send(b"x", "not-an-address")
        assert not t.send(b"x" * 70000, "127.0.0.1:9")
        # A name (as a member could gossip one) is refused, never resolved in the loop.
        assert not t.send(b"x", "onionmesh-test.invalid:7443")
        assert t.send_errors == 3
    finally:
        t.close()


async def test_listen_on_a_busy_port_is_a_clear_error():
    t = await UdpTransport.open("127.0.0.1:0", lambda d, s: None)
    try:
        with pytest.raises(TransportError, match="cannot listen"):
            await UdpTransport.open(t.local_address, lambda d, s: None)
    finally:
        t.close()
