"""Codec strictness: arbitrary bytes are rejected with a reason, never an exception."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from onionmesh.mesh import codec
from onionmesh.mesh.config import MeshConfig
from onionmesh.mesh.core import MeshCore
from onionmesh.mesh.errors import RejectedDatagram
from onionmesh.mesh.messages import Heartbeat, IntroPoints, Sealed, Signed
from onionmesh.mesh.vocabulary import RejectReason

from .netloop import SECRET, identity

C16 = b"c" * 16
REASONS = {"oversized", "malformed", "unsupported_version", "unknown_cluster"}


def _heartbeat() -> Heartbeat:
    return Heartbeat("standby", 3, "", 100, True, "a:1", b"\x01" * 16, 2, b"\x02" * 16, 0)


def test_signed_roundtrip_keeps_every_field():
    s = Signed("node-a", b"k" * 32, 7, 9, 1234, C16, "", b"", _heartbeat())
    assert codec.decode_signed(codec.encode(s)) == s


@given(st.binary(max_size=2048))
@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
def test_arbitrary_bytes_give_a_typed_rejection(data):
    try:
        codec.decode_sealed(data)
    except RejectedDatagram as exc:
        assert exc.reason in {"malformed", "unsupported_version"}
    try:
        codec.decode_signed(data)
    except RejectedDatagram as exc:
        assert exc.reason == "malformed"


@given(
    st.lists(
        st.one_of(
            st.integers(-(2**63), 2**64 - 1),
            st.binary(max_size=80),
            st.text(max_size=20),
            st.none(),
            st.booleans(),
        ),
        max_size=8,
    )
)
@settings(max_examples=300)
def test_wellformed_msgpack_of_the_wrong_shape_is_malformed(items):
    data = msgspec.msgpack.encode(items)
    with pytest.raises(RejectedDatagram) as exc:
        codec.decode_sealed(data)
        codec.decode_signed(data)
        raise RejectedDatagram(RejectReason.MALFORMED, "both decoders accepted a random list")
    assert exc.value.reason in {"malformed", "unsupported_version"}


def test_oversized_datagram_is_rejected_before_decoding():
    with pytest.raises(RejectedDatagram) as exc:
        codec.decode_sealed(b"\x00" * (codec.MAX_DATAGRAM + 1))
    assert exc.value.reason == "oversized"


def test_unknown_wire_version_is_refused():
    data = codec.encode(Sealed(2, b"x", b"s" * 64, b"m" * 32))
    with pytest.raises(RejectedDatagram) as exc:
        codec.decode_sealed(data)
    assert exc.value.reason == "unsupported_version"


@pytest.mark.parametrize(
    "bad",
    [
        Signed("Node-A", b"k" * 32, 1, 1, 1, C16, "", b"", _heartbeat()),  # upper case id
        Signed("a" * 65, b"k" * 32, 1, 1, 1, C16, "", b"", _heartbeat()),  # id too long
        Signed("a", b"k" * 31, 1, 1, 1, C16, "", b"", _heartbeat()),  # short key
        Signed(
            "a", b"k" * 32, 1, 1, 1, C16, "", b"", IntroPoints(b"d" * 16, {1: [b""]})
        ),  # empty ip
        Signed(
            "a", b"k" * 32, 1, 1, 1, C16, "", b"", IntroPoints(b"d" * 16, {1: [b"x"] * 21})
        ),  # > 20
        Signed("a", b"k" * 32, -1, 1, 1, C16, "", b"", _heartbeat()),  # negative boot
    ],
)
def test_schema_bounds_are_enforced_on_decode(bad):
    with pytest.raises(RejectedDatagram) as exc:
        codec.decode_signed(codec.encode(bad))
    assert exc.value.reason == "malformed"


def test_largest_legal_intro_point_message_fits_a_datagram():
    sets = {p: [bytes([p]) * 1400] * 20 for p in (1, 2)}  # 2 periods x 20 x 1.4 KB
    assert len(codec.encode(IntroPoints(b"d" * 16, sets))) < codec.MAX_DATAGRAM


def test_outgoing_oversize_is_refused_not_sent():
    sealed = Sealed(1, b"x" * (codec.MAX_DATAGRAM + 10), b"s" * 64, b"m" * 32)
    with pytest.raises(RejectedDatagram):
        codec.encode_sealed(sealed)


@given(st.binary(max_size=1024))
@settings(max_examples=200, deadline=None)
def test_core_counts_garbage_and_changes_nothing(data):
    core = MeshCore(MeshConfig(), identity("a"), SECRET, [], now=100.0)
    core.datagrams_to_send(100.0)
    before = (dict(core.peers()), core.term, core.publisher_id, core.get_timer())
    core.receive_datagram(data, "x:1", 100.0)
    assert sum(core.rejections.values()) == 1
    reason = next(iter(core.rejections))
    assert reason in REASONS
    ev = core.next_event()
    assert ev is not None and ev.reason == reason and ev.addr == "x:1"
    assert (dict(core.peers()), core.term, core.publisher_id, core.get_timer()) == before
    assert core.datagrams_to_send(100.0) == []


def test_sealed_fields_have_exact_lengths():
    data = codec.encode(Sealed(1, b"x", b"s" * 63, b"m" * 32))
    with pytest.raises(RejectedDatagram) as exc:
        codec.decode_sealed(data)
    assert exc.value.reason == "malformed"
