"""Event wording (the log lines of docs/scenarios.md), config and identity validation."""

from __future__ import annotations

import pytest

from onionmesh.errors import OnionmeshError
from onionmesh.mesh.config import MeshConfig
from onionmesh.mesh.core import MeshCore
from onionmesh.mesh.errors import MeshConfigError
from onionmesh.mesh.events import (
    IntroPointsRequested,
    MessageRejected,
    PeerDead,
    PeerRecovered,
    PeerSuspect,
    SteppedDown,
)
from onionmesh.mesh.identity import NodeIdentity, PeerSeed
from onionmesh.mesh.intro import IntroSetsError
from onionmesh.mesh.vocabulary import RejectReason, StepDownCause

from .netloop import SECRET, identity


def test_peer_events_read_like_the_design():
    # the log lines of docs/scenarios.md
    assert (
        PeerSuspect("node-xyz", 2, 1).message
        == "Peer node-xyz missed 2 heartbeats, 1 more until dead"
    )
    assert PeerDead("node-xyz", 3).message == "Peer node-xyz declared DEAD, removing 3 intro points"
    assert PeerRecovered("node-xyz").message == "Peer node-xyz came back! Adding to mesh"
    assert (
        IntroPointsRequested("node-xyz").message == "Re-fetching intro points from recovered peer"
    )
    assert PeerDead("n", 1).message.endswith("removing 1 intro point")
    assert "forged" in MessageRejected(RejectReason.FORGED, "bad signature", "1.2.3.4:5").message
    assert "nobody yet" in SteppedDown(4, StepDownCause.SHUTDOWN, "shutdown", None).message


@pytest.mark.parametrize(
    "kw",
    [
        {"heartbeat_interval": 0},
        {"heartbeat_interval": float("nan")},
        {"dead_threshold": 2.5},
        {"max_intro_points": 21},
        {"lease_duration": 4.0},  # not longer than the heartbeat interval
        {"heartbeat_slack": 1.0},
        {"removal_grace_period": True},
    ],
)
def test_bad_config_values_are_refused_with_a_typed_error(kw):
    with pytest.raises(MeshConfigError) as exc:
        MeshConfig(**kw)
    assert isinstance(exc.value, OnionmeshError)
    assert next(iter(kw)) in str(exc.value)


def test_defaults_follow_the_resilience_section():
    cfg = MeshConfig()
    assert (cfg.dead_threshold, cfg.removal_grace_period, cfg.max_intro_points) == (3, 30.0, 20)


@pytest.mark.parametrize("node_id", ["", "A", "a b", "x" * 65, "é"])
def test_node_ids_are_validated(node_id):
    with pytest.raises(MeshConfigError):
        NodeIdentity(node_id, b"\x00" * 32)


def test_identity_and_seed_validation():
    with pytest.raises(MeshConfigError):
        NodeIdentity("a", b"\x00" * 31)
    with pytest.raises(MeshConfigError):
        PeerSeed("a", "")
    with pytest.raises(MeshConfigError):
        PeerSeed("a", "a:1", b"\x00" * 5)


@pytest.mark.parametrize(
    "sets",
    [
        {-1: [b"x"]},
        {1: [b""]},
        {1: [b"x" * 5000]},
        {1: [b"x"] * 21},
        {p: [b"x"] for p in range(5)},
        {1: ["text"]},
    ],
)
def test_bad_local_intro_points_raise_a_typed_error(sets):
    core = MeshCore(MeshConfig(), identity("a"), SECRET, [], 0.0)
    with pytest.raises(IntroSetsError):
        core.set_local_intro_points(sets, 1.0)
