"""The daemon's pure parts: config -> mesh settings, peers, intro-point exchange, uploads view,
the status document and the mesh driver over real UDP sockets."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest
from nacl.public import PrivateKey

from onionmesh.clock import Clock
from onionmesh.config import parse_config
from onionmesh.crypto.keys import Ed25519Identity
from onionmesh.descriptor.intro import IntroPoint, LinkSpecifier, recertify
from onionmesh.mesh.core import MeshCore
from onionmesh.mesh.events import BecamePublisher, Event, PeerDiscovered, PublishRequested
from onionmesh.mesh.identity import NodeIdentity, PeerSeed
from onionmesh.mesh.plan import PublishPlan
from onionmesh.node.errors import NodeConfigError
from onionmesh.node.mesh_driver import MeshDriver
from onionmesh.node.publishing import (
    IntroPointDecodeError,
    PublisherControl,
    decode_intro_point,
    encode_intro_point,
)
from onionmesh.node.settings import advertise_address, check_runnable, mesh_config, peer_seeds
from onionmesh.node.snapshot import format_status
from onionmesh.node.startup import ClockGuard
from onionmesh.node.uploads_view import STREAK_ALERT, UploadsView
from onionmesh.publish.core import PublishEvent, PublishEventKind
from onionmesh.publish.uploads import RetryPolicy
from onionmesh.status_document import StatusDocumentError, decode_status
from onionmesh.tor.control_protocol import HsDescEvent
from tests.eventually import aeventually

from .helpers import free_port

MASTER = Ed25519Identity.generate()


def _config(extra: str = "") -> object:
    text = f'[node]\nid = "n1"\n[master]\naddress = "{MASTER.onion_address}"\n{extra}'
    return parse_config(text, "/etc/onionmesh/onionmesh.toml")


def test_mesh_config_takes_the_config_timing_and_the_seed_resilience_defaults():
    config = _config("[coordination]\nlisten = \"10.0.0.1:7443\"\nheartbeat_interval = 2\n"
                     "lease_duration = 7\nlease_grace = 0\n"
                     "[publishing]\nmin_publish_interval = 0\n")
    mesh = mesh_config(config)
    assert (mesh.heartbeat_interval, mesh.lease_duration) == (2.0, 7.0)
    assert mesh.dead_threshold == 3 and mesh.removal_grace_period == 30.0
    assert 0 < mesh.lease_grace < 0.01 and 0 < mesh.min_publish_interval < 0.01


@pytest.mark.parametrize("listen", ["0.0.0.0:7443", "[::]:7443"])
def test_a_wildcard_listen_address_needs_advertise(listen: str):
    config = _config(f'[coordination]\nlisten = "{listen}"\n')
    with pytest.raises(NodeConfigError, match=r"\[coordination\] advertise: required"):
        check_runnable(config)
    fixed = _config(f'[coordination]\nlisten = "{listen}"\nadvertise = "10.0.0.1:7443"\n')
    assert advertise_address(fixed) == "10.0.0.1:7443"


def test_peers_with_ids_get_their_pinned_keys():
    key = Ed25519Identity.generate().public_key
    config = _config('[coordination]\nlisten = "10.0.0.1:7443"\n'
                     'peers = ["n2@10.0.0.2:7443", "10.0.0.3:7443", "n4@10.0.0.4:7443"]\n'
                     f'peer_keys = {{ n2 = "{key.hex()}" }}\n')
    assert peer_seeds(config) == [
        PeerSeed("n2", "10.0.0.2:7443", key), PeerSeed(None, "10.0.0.3:7443"),
        PeerSeed("n4", "10.0.0.4:7443", None),
    ]


@pytest.mark.parametrize("bad", ['{ n2 = "abcd" }', '{ "N 2" = "' + "00" * 32 + '" }', "5"])
def test_bad_peer_keys_are_config_errors(bad: str):
    from onionmesh.config import ConfigError

    with pytest.raises(ConfigError, match=r"\[coordination\] peer_keys"):
        _config(f"[coordination]\npeer_keys = {bad}\n")


def _intro_point(n: int) -> IntroPoint:
    base = IntroPoint(
        (LinkSpecifier(2, bytes([n]) * 20),), bytes(PrivateKey.generate().public_key),
        Ed25519Identity.generate().public_key, bytes(PrivateKey.generate().public_key),
    )
    return recertify(base, Ed25519Identity.generate(), time.time() + 3600)


def test_intro_points_travel_as_tor_text_and_come_back_equal():
    point = _intro_point(1)
    data = encode_intro_point(point)
    assert data.startswith(b"introduction-point ")
    assert decode_intro_point(data) == point
    with pytest.raises(IntroPointDecodeError):
        decode_intro_point(b"\xff\xfe")


def test_intro_source_takes_exactly_the_period_and_bridges_only_a_period_nobody_has():
    control = PublisherControl(object(), MASTER, Clock(),  # type: ignore[arg-type]
                               ClockGuard(Clock()), RetryPolicy())
    assert control.intro_source(10) == []
    a, b, c = _intro_point(1), _intro_point(2), _intro_point(3)
    control.plan = PublishPlan(
        1, 1, {10: (("n1", encode_intro_point(a)), ("n2", b"garbage")),
               11: (("n1", encode_intro_point(b)), ("n2", encode_intro_point(c)))}, 0)
    assert control.intro_source(10) == [a]  # the undecodable one is skipped
    assert control.intro_source(11) == [b, c]
    # Nobody's set for 12 is known (the second descriptor before its period starts):
    # the period-11 sets bridge it, as they stay alive until the middle of 12.
    assert control.intro_source(12) == [b, c]
    assert control.intro_source(9) == []  # never a later period's, never further back
    assert control.intro_source(13) == []
    control.plan = PublishPlan(1, 2, {11: (("n1", encode_intro_point(b)),),
                                      12: (("n2", encode_intro_point(c)),)}, 0)
    assert control.intro_source(12) == [c]  # n1's set for 12 unknown: n1 is left out
    assert control.intro_owners(12) == ["n2"]


def test_intro_source_takes_the_whole_pool_when_more_than_a_descriptor_holds():
    control = PublisherControl(object(), MASTER, Clock(),  # type: ignore[arg-type]
                               ClockGuard(Clock()), RetryPolicy())
    points = [_intro_point(k) for k in range(1, 5)]
    encoded = [(f"n{k % 2}", encode_intro_point(p)) for k, p in enumerate(points)]
    control.plan = PublishPlan(1, 1, {11: tuple(encoded[:2])}, 0,
                               {11: (*encoded, ("n9", b"garbage"))})
    assert control.intro_source(11) == points  # the pool, not the one-descriptor plan
    assert control.intro_owners(11) == ["n0", "n1", "n0", "n1"]  # parallel, garbage skipped
    assert control.intro_source(12) == points  # the bridge takes the pool too


async def test_a_step_down_drops_the_uploads_the_publisher_had_queued():
    """detach() (the mesh stepped down, maybe from inside one of the publisher's own
    events) turns the publisher into a standby at once: what it had queued is not sent."""
    from onionmesh.publish.core import PublishCore, Role
    from onionmesh.publish.publisher import Publisher
    from onionmesh.publish.uploads import Post
    from tests.publish.corekit import T0, TextSigner, points, targets

    seen: list[PublishEvent] = []
    publisher = Publisher(object(), MASTER, lambda period: [],  # type: ignore[arg-type]
                          on_event=seen.append)
    publisher.core = PublishCore(TextSigner())
    planned = targets(MASTER)
    publisher.core.set_targets(planned, T0, fetchable=min(planned))
    publisher.core.set_intro_points({p: points("a", "b") for p in planned}, T0)  # queues posts
    control = PublisherControl(object(), MASTER, Clock(),  # type: ignore[arg-type]
                               ClockGuard(Clock()), RetryPolicy())
    control.publisher = publisher
    stopping = control.detach()
    assert publisher.core.role is Role.STANDBY and control.publisher is None
    assert not [a for a in iter(publisher.core.next_action, None) if isinstance(a, Post)]
    assert [e for e in seen if e.kind is PublishEventKind.POSTS_DROPPED]
    await stopping


def test_uploads_view_alerts_once_per_failure_streak_and_tracks_the_age():
    master = MASTER.onion_address.removesuffix(".onion")
    streaks: list[tuple[str, int]] = []
    view = UploadsView(MASTER.onion_address, lambda h, n, r: streaks.append((h, n)))
    hsdir = "A" * 40

    def event(action: str, address: str = master) -> HsDescEvent:
        return HsDescEvent(action, address, "NO_AUTH", hsdir, "blinded", "UPLOAD_REJECTED"
                           if action == "FAILED" else None, None, None)

    assert view.observe(event("UPLOADED", "b" * 56), 1.0) is None  # another service
    assert view.descriptor_age(5.0) is None
    for i in range(STREAK_ALERT + 2):
        view.observe(event("FAILED"), 10.0 + i)
    assert streaks == [(hsdir, STREAK_ALERT)]
    assert view.hsdirs[hsdir].failures_in_a_row == STREAK_ALERT + 2
    view.observe(event("UPLOADED"), 20.0)
    assert view.descriptor_age(25.0) == 5.0
    assert view.to_json(25.0)[hsdir]["result"] == "uploaded"


def test_uploads_view_counts_the_publishers_own_timeouts_as_failures():
    streaks: list[tuple[str, int, str | None]] = []
    view = UploadsView(MASTER.onion_address, lambda h, n, r: streaks.append((h, n, r)))
    hsdir = "B" * 40
    for i in range(STREAK_ALERT):
        entry = view.note_timeout(hsdir, 30.0 * (i + 1))
    assert (entry.result, entry.reason, entry.failures_in_a_row) == ("failed", "TIMEOUT",
                                                                     STREAK_ALERT)
    assert streaks == [(hsdir, STREAK_ALERT, "TIMEOUT")]
    assert view.to_json(95.0)[hsdir]["age"] == 5.0
    assert view.descriptor_age(95.0) is None  # nothing was ever accepted


def test_format_status_names_roles_peers_and_uploads():
    doc = {
        "node": {"id": "n1", "state": "running"}, "master_address": "m.onion",
        "cluster": {"role": "publisher", "publisher": "n1", "term": 3,
                    "lease": {"holder": "n1", "renewed_ago": 0.5}},
        "peers": {"n2": {"state": "dead", "role": "standby", "address": "10.0.0.2:7443",
                         "intro_points": 3, "last_seen_ago": 12.0}},
        "intro_points": {"n1": 3, "n2": 3},
        "plan": {"count": 3, "per_period": {"5": 3}, "left_out": {"6": ["n2"]}},
        "uploads": {"A" * 40: {"result": "failed", "reason": "UPLOAD_REJECTED", "age": 2.0}},
        "descriptor_age": None, "clock": {"verdict": "ok", "message": "clock OK"},
        "join_onion": {"address": "j.onion", "role": "relays", "streams_answered": 3,
                       "relayed": 2, "relay_unanswered": 1, "relay_not_forwarded": 0},
        "advertising": {"advertising": True, "intro_points_advertised": 5,
                        "intro_points_by_period": {"5": 3, "6": 2}},
    }
    text = format_status(decode_status(doc))
    assert "advertising intro points (period 5: 3, period 6: 2)" in text
    assert "join onion j.onion: relays joins to the authority node (2 relayed, 1 without " \
        "an answer, 0 not forwarded)" in text
    assert "role: publisher; publisher: n1 (term 3)" in text
    assert "n2" in text and "dead" in text
    assert "failed (UPLOAD_REJECTED)" in text
    assert "never published" in text
    assert "left out of period 6: n2" in text


def test_status_document_decodes_typed_ignores_new_sections_and_names_bad_keys(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from onionmesh.config import load_config
    from onionmesh.mesh.vocabulary import PeerState, Role
    from onionmesh.node.daemon import NodeDaemon
    from onionmesh.node.snapshot import build_snapshot

    from .helpers import make_cluster

    # What a daemon that has not started its mesh yet serves has the documented shape.
    daemon = NodeDaemon(load_config(make_cluster(tmp_path / "n1").files.config))
    early = decode_status(json.loads(json.dumps(build_snapshot(daemon))))
    assert early.node.state == "starting" and early.cluster is None and early.role is None
    # A bug while building it still gives a document the CLI can show, naming the error.
    import onionmesh.node.daemon as daemon_module

    def broken(_daemon: object) -> dict:
        raise KeyError("plan")

    monkeypatch.setattr(daemon_module, "build_snapshot", broken)
    failed = decode_status(json.loads(json.dumps(daemon.snapshot())))
    assert failed.error == "KeyError: 'plan'"
    assert "STATUS INCOMPLETE: KeyError: 'plan'" in format_status(failed)

    doc = {
        "node": {"id": "n1", "state": "running"}, "master_address": "m.onion",
        "clock": {"verdict": "ok", "message": "clock OK"},
        "cluster": {"role": "standby", "publisher": "n2", "term": 4},
        "peers": {"n2": {"state": "alive", "role": "publisher", "address": "10.0.0.2:7443"}},
        "plan": {"count": 2, "per_period": {"5": 2}, "per_node": {"n1": 2, "n2": 0}},
        "a_section_from_a_newer_daemon": {"x": 1},
    }
    status = decode_status(doc)
    assert status.role is Role.STANDBY and not status.is_publisher
    assert status.peers["n2"].state is PeerState.ALIVE
    assert status.carried_nodes() == {"n1"}
    doc["peers"]["n2"]["state"] = "zombie"
    with pytest.raises(StatusDocumentError, match=r"zombie.*\$\.peers\[\.\.\.\]\.state"):
        decode_status(doc)


async def test_two_drivers_find_each_other_and_one_publishes_then_releases():
    """The asyncio shell over real UDP: discovery, election, publish request, lease release."""
    mesh = mesh_config(_config('[coordination]\nlisten = "127.0.0.1:1"\nheartbeat_interval = '
                               "0.2\nlease_duration = 0.6\nlease_grace = 0.1\n"
                               "[publishing]\nmin_publish_interval = 0.1\n"))
    secret = b"s" * 32
    ports = [free_port(socket.SOCK_DGRAM), free_port(socket.SOCK_DGRAM)]
    addrs = [f"127.0.0.1:{p}" for p in ports]
    events: dict[str, list[Event]] = {"a": [], "b": []}
    drivers = []
    for name, addr, other in (("a", addrs[0], addrs[1]), ("b", addrs[1], addrs[0])):
        identity = NodeIdentity(name, bytes([ord(name)]) * 32, 100, True, addr)
        core = MeshCore(mesh, identity, secret, [PeerSeed(None, other)], Clock().now())
        drivers.append(MeshDriver(core, Clock(), events[name].append))
    for driver, addr in zip(drivers, addrs, strict=True):
        await driver.start(addr)
    drivers[0].set_local_intro_points({7: [b"intro-a"]})
    drivers[1].set_local_intro_points({7: [b"intro-b"]})

    async def until(predicate, what: str) -> None:
        await aeventually(predicate, timeout=20, what=what, interval=0.05)

    await until(lambda: any(isinstance(e, PeerDiscovered) for e in events["a"] + events["b"]),
                "discovery")
    await until(lambda: any(isinstance(e, PublishRequested) for e in events["a"]), "publish")
    assert any(isinstance(e, BecamePublisher) for e in events["a"])  # "a" ranks first
    request = next(e for e in events["a"] if isinstance(e, PublishRequested))
    await until(lambda: drivers[0].core.publish_plan() is not None
                and drivers[0].core.publish_plan().count == 2, "both intro points planned")
    assert request.plan.count >= 1
    await drivers[0].shutdown()  # releases the lease over UDP
    await until(lambda: drivers[1].core.is_publisher, "takeover by b")
    await drivers[1].shutdown()



def _consensus_at(valid_after: int):
    """A test-network consensus (20 s voting: 8-minute periods) valid from ``valid_after``."""
    from onionmesh.hsdir.consensus import parse_consensus

    from ..hsdir.netdocs import ConsensusSpec, make_consensus

    start = valid_after - valid_after % 20
    return parse_consensus(make_consensus(ConsensusSpec(valid_after=start, voting_interval=20)))


def _feed_with_sets(uploaded: dict[str, float] | None):
    from onionmesh.descriptor.layers import b64_nopad
    from onionmesh.node.intro_feed import IntroFeed
    from onionmesh.tor.intro_points import IntroSet

    node = Ed25519Identity.generate().onion_address
    shared: list[dict] = []
    feed = IntroFeed(object(), node, shared.append, uploaded=uploaded)  # type: ignore[arg-type]
    feed.periods = (10, 11)
    own_point, old_point, new_point = _intro_point(1), _intro_point(2), _intro_point(3)
    addr = node.removesuffix(".onion")
    feed.own.sets.update(IntroSet(addr, 10, b"k" * 32, 5, (own_point,), "own", 100.0))
    # A fetched descriptor for period 11 received at t=50, before this tor uploaded at t=60.
    feed.fetched.sets.update(IntroSet(addr, 11, b"m" * 32, 3, (old_point,), "hsfetch", 50.0))
    return feed, shared, b64_nopad(b"m" * 32), own_point, new_point, addr


def test_a_fetched_descriptor_counts_only_after_this_tors_upload():
    from onionmesh.tor.intro_points import IntroSet

    uploaded: dict[str, float] = {}
    feed, shared, blinded_id, own_point, new_point, addr = _feed_with_sets(uploaded)
    own = encode_intro_point(own_point)
    # No upload seen yet: the fetched set may be an earlier tor's, so the node shares
    # nothing for period 11 (never its period-10 set, whose intro points die first).
    assert feed.current_sets() == {10: (own,)}
    assert feed.missing_periods() == [11]
    uploaded[blinded_id] = 60.0
    assert feed.current_sets() == {10: (own,)}  # fetched at 50, before the upload at 60
    feed.fetched.sets.update(IntroSet(addr, 11, b"m" * 32, 4, (new_point,), "hsfetch", 70.0))
    assert feed.current_sets() == {10: (own,), 11: (encode_intro_point(new_point),)}
    feed.share()
    feed.share()  # unchanged sets are shared once
    assert len(shared) == 1


def test_an_existing_tor_uses_fetched_descriptors_as_they_come():
    feed, _, _, own_point, _, _ = _feed_with_sets(None)
    sets = feed.current_sets()
    assert sets[10] == (encode_intro_point(own_point),)
    assert sets[11] != sets[10]


def test_own_and_fetched_sets_of_one_period_take_tors_newer_revision():
    from onionmesh.tor.intro_points import IntroSet

    feed, _, _, _, new_point, addr = _feed_with_sets(None)
    feed.fetched.sets.update(IntroSet(addr, 10, b"k" * 32, 6, (new_point,), "hsfetch", 90.0))
    assert feed.current_sets()[10] == (encode_intro_point(new_point),)  # rev 6 > own rev 5


def test_a_new_time_period_triggers_a_fetch_and_tracks_the_fetchable_blinded_key():
    from onionmesh.crypto.address import decode_onion_address
    from onionmesh.crypto.blinding import blind_public_key
    from onionmesh.descriptor.layers import b64_nopad
    from onionmesh.hsdir.timeperiod import fetch_period
    from onionmesh.node.intro_feed import IntroFeed

    node = Ed25519Identity.generate().onion_address
    feed = IntroFeed(object(), node, lambda s: None)  # type: ignore[arg-type]
    consensus = _consensus_at(1_700_000_000)
    feed.note_consensus(consensus)
    period, _ = fetch_period(consensus, consensus.valid_after + 1)
    assert feed.fetch_period == period and feed.fetch_pending
    key = decode_onion_address(node.removesuffix(".onion"))
    assert feed.fetch_blinded_key == b64_nopad(blind_public_key(key, period, feed.period_length))
    assert feed.begin_fetch() == []  # the fetch loop takes the request
    feed.note_consensus(consensus)  # same period: no extra fetch
    assert not feed.fetch_pending
    later = _consensus_at(consensus.valid_after + feed.period_length * 60)
    feed.note_consensus(later)
    assert feed.fetch_period == period + 1 and feed.fetch_pending


async def test_a_peer_added_at_runtime_is_discovered():
    """What SIGHUP does for a new `[coordination] peers` entry."""
    mesh = mesh_config(_config('[coordination]\nlisten = "127.0.0.1:1"\nheartbeat_interval = '
                               "0.2\nlease_duration = 0.6\n"))
    addrs = [f"127.0.0.1:{free_port(socket.SOCK_DGRAM)}" for _ in range(2)]
    events: list[Event] = []
    drivers = []
    for name, addr in zip("ab", addrs, strict=True):
        identity = NodeIdentity(name, bytes([ord(name)]) * 32, 100, True, addr)
        core = MeshCore(mesh, identity, b"s" * 32, [], Clock().now())
        drivers.append(MeshDriver(core, Clock(), events.append if name == "a" else
                                  (lambda e: None)))
        await drivers[-1].start(addr)
    try:
        drivers[0].add_peer(PeerSeed(None, addrs[1], None))
        await aeventually(lambda: "b" in drivers[0].core.peers()
                          and drivers[0].core.peers()["b"].state == "alive",
                          timeout=20, what="b alive", interval=0.05)
        assert drivers[0].core.peers()["b"].address == addrs[1]
    finally:
        for driver in drivers:
            await driver.shutdown()


def test_publish_triggers_are_bounded_distinct_metric_labels():
    import re

    from onionmesh.mesh.vocabulary import PublishTrigger

    labels = [trigger.label for trigger in PublishTrigger]
    assert len(set(labels)) == len(labels)
    assert all(re.fullmatch(r"[a-z_]+", label) for label in labels)
    assert PublishTrigger.INTRO_POINT_ROTATION.label == "intro_point_rotation"


async def test_events_become_log_lines_alerts_and_metrics(tmp_path: Path, caplog):
    import json
    import logging
    import sys

    from onionmesh.config import load_config
    from onionmesh.mesh.events import (
        ConflictDetected,
        MessageRejected,
        PeerDead,
        PeerRecovered,
    )
    from onionmesh.mesh.vocabulary import (
        ConflictKind,
        ConflictResolution,
        RejectReason,
        TakeoverCause,
    )
    from onionmesh.node.daemon import NodeDaemon

    from .helpers import make_cluster

    alerts = tmp_path / "alerts.jsonl"
    script = f"import sys; open({str(alerts)!r}, 'ab').write(sys.stdin.buffer.read() + b'\\n')"
    setup = make_cluster(tmp_path / "n1",
                         settings={"alerts": {"command": [sys.executable, "-c", script]}})
    daemon = NodeDaemon(load_config(setup.files.config))
    caplog.set_level(logging.INFO, logger="onionmesh.node")
    daemon.on_mesh_event(PeerDead("n2", 3))
    daemon.on_mesh_event(PeerRecovered("n2"))
    daemon.on_mesh_event(BecamePublisher(4, TakeoverCause.LEASE_EXPIRED, "lease of n2 expired"))
    daemon.on_mesh_event(ConflictDetected(ConflictKind.TWO_PUBLISHERS, "n3", 6, 3,
                                          ConflictResolution.KEEP))
    daemon.on_mesh_event(MessageRejected(RejectReason.UNKNOWN_CLUSTER,
                                         "cluster MAC does not verify", "10.0.0.9:7443"))
    hsdir = "B" * 40
    # The publish core's streak (tor's FAILED answers and our own timeouts) is the alert.
    daemon.on_publish_event(PublishEvent(
        PublishEventKind.FAILURE_STREAK, f"HSDir {hsdir} failed 3 uploads in a row "
        "(last: TIMEOUT)", hsdir=hsdir, streak=3))
    daemon.on_publish_event(PublishEvent(PublishEventKind.UPLOAD_FAILED, "not an alert",
                                          hsdir=hsdir))
    await daemon.alerts_delivered(timeout=20)
    sent = [json.loads(line) for line in alerts.read_text().splitlines() if line]
    kinds = sorted(a["kind"] for a in sent)
    assert kinds == ["conflict", "node_dead", "node_recovered", "takeover",
                     "upload_failure_streak"]
    streak = next(a for a in sent if a["kind"] == "upload_failure_streak")
    assert (streak["subject"], streak["summary"]) == (
        hsdir, f"HSDir {hsdir} failed 3 uploads in a row (last: TIMEOUT)")
    dead = next(a for a in sent if a["kind"] == "node_dead")
    assert dead["subject"] == "n2"
    assert dead["summary"] == "Peer n2 declared DEAD, removing 3 intro points"
    assert "Peer n2 declared DEAD, removing 3 intro points" in caplog.text
    assert "Peer n2 came back! Adding to mesh" in caplog.text
    rejected = daemon.metrics.registry.get_sample_value(
        "onionmesh_messages_rejected_total", {"reason": "unknown_cluster"})
    assert rejected == 1.0
    assert "Rejected datagram" not in caplog.text  # debug only: floods must not spam


async def test_a_foreign_descriptor_is_alerted_and_shown_in_the_status(tmp_path: Path):
    """A CONFLICT of the publish core (no mesh yet: a standby's check before the mesh
    runs) is alerted with the core's words and kept for ``onionmesh status``."""
    import sys

    from onionmesh.config import load_config
    from onionmesh.node.daemon import NodeDaemon
    from onionmesh.node.snapshot import build_snapshot
    from onionmesh.publish.core import ForeignDescriptor, Verdict

    from .helpers import make_cluster

    alerts = tmp_path / "alerts.jsonl"
    script = f"import sys; open({str(alerts)!r}, 'ab').write(sys.stdin.buffer.read() + b'\\n')"
    setup = make_cluster(tmp_path / "n1",
                         settings={"alerts": {"command": [sys.executable, "-c", script]}})
    daemon = NodeDaemon(load_config(setup.files.config))
    assert decode_status(json.loads(json.dumps(build_snapshot(daemon)))).conflicts is None
    hsdirs = ("A" * 40, "C" * 40)
    message = (f"Conflict: HSDir {'C' * 40} serves a foreign master descriptor for period 7: "
               "revision 90 with 3 intro points (ours: revision 80 with 6)")
    daemon.on_publish_event(PublishEvent(
        PublishEventKind.CONFLICT, message, period=7, hsdir="C" * 40, verdict=Verdict.FOREIGN,
        foreign=ForeignDescriptor(7, 90, 3, hsdirs, 80, 6)))
    await daemon.alerts_delivered(timeout=20)
    sent = [json.loads(line) for line in alerts.read_text().splitlines() if line]
    assert [(a["kind"], a["subject"], a["summary"]) for a in sent] == [
        ("conflict", "hsdir", message)]
    # Another foreign descriptor within the alert interval is a new alert; the same one
    # seen on one more HSDir is a repeat, held back.
    newer = message.replace("revision 90", "revision 95")
    for revision, text in ((95, newer), (95, newer)):
        daemon.on_publish_event(PublishEvent(
            PublishEventKind.CONFLICT, text, period=7, hsdir="C" * 40, verdict=Verdict.FOREIGN,
            foreign=ForeignDescriptor(7, revision, 3, hsdirs, 80, 6)))
    await daemon.alerts_delivered(timeout=20)
    sent = [json.loads(line) for line in alerts.read_text().splitlines() if line]
    assert [a["summary"] for a in sent] == [message, newer]
    seen = decode_status(json.loads(json.dumps(build_snapshot(daemon)))).conflicts
    assert seen is not None
    assert (seen.count, seen.period, seen.revision, seen.intro_points) == (3, 7, 95, 3)
    assert (seen.our_revision, seen.our_intro_points, seen.message) == (80, 6, newer)
    assert seen.hsdirs == list(hsdirs) == seen.all_hsdirs
    doc = {"node": {"id": "n1", "state": "running"}, "master_address": "m.onion",
           "clock": {"verdict": "ok", "message": "clock OK"},
           "conflicts": json.loads(json.dumps(daemon.conflicts.to_json(seen.last_at + 5)))}
    assert (f"! foreign master descriptors seen on the HSDirs: 3, the last 5 s ago: {newer}"
            in format_status(decode_status(doc)))
