"""Authorized clients applied live: the reload decision, the publish core's rebuild, the
daemon's SIGHUP path (pure or with fakes; the real-tor run is in
tests/cluster/test_client_auth_tornet.py)."""

from __future__ import annotations

import base64
import json
import logging
from pathlib import Path

from onionmesh.config import load_config
from onionmesh.node.client_auth import add_client, generate_client_keypair, remove_client
from onionmesh.node.client_set import abbreviate, client_set_change, client_set_fingerprint
from onionmesh.node.daemon import NodeDaemon
from onionmesh.publish.core import PublishEventKind
from tests.publish.corekit import T0
from tests.publish.test_publish_core import (
    FIRST,
    SECOND,
    TARGETS,
    accept_all,
    drain,
    events,
    make,
    start,
)

from .helpers import make_cluster


def _key(b32: str) -> bytes:
    return base64.b32decode(b32 + "====")


def test_no_change_when_only_the_spelling_differs():
    public, _ = generate_client_keypair()
    assert client_set_change({"a": public}, {"a": f"descriptor:x25519:{public.lower()}"}) is None
    assert client_set_change({}, {}) is None


def test_the_fingerprint_is_of_the_public_keys_only():
    alice, bob = (generate_client_keypair()[0] for _ in range(2))
    one = client_set_fingerprint({"alice": alice, "bob": bob})
    assert one == client_set_fingerprint({"a": f"descriptor:x25519:{bob}", "b": alice.lower()})
    assert one != client_set_fingerprint({"alice": alice})
    assert len(one) == 16 and alice not in one


def test_the_change_names_who_and_counts_readers_without_whole_keys():
    alice, bob, carol, carol2 = (generate_client_keypair()[0] for _ in range(4))
    change = client_set_change({"alice": alice, "carol": carol},
                               {"bob": bob, "carol": carol2})
    assert change is not None
    assert change.added == (("bob", bob),) and change.removed == ("alice",)
    assert change.rekeyed == (("carol", carol2),)
    assert change.keys == (_key(bob), _key(carol2)) and change.count == 2
    line = change.describe()
    assert "+bob" in line and "-alice" in line and "~carol" in line
    assert "readable only by 2 authorized client(s)" in line
    assert abbreviate(bob) in line and bob not in line and carol2 not in line
    gone = client_set_change({"alice": alice}, {})
    assert gone is not None and gone.keys == ()
    assert "readable by anyone who knows the address" in gone.describe()


def test_the_core_rebuilds_both_periods_for_every_hsdir_when_clients_change():
    core, signer = make()
    posts, _ = start(core)
    accept_all(core, posts, T0 + 0.5)
    events(core)
    built = len(signer.built)
    core.clients_changed(T0 + 0.5)  # within min_build_interval (1 s) of the first build
    assert len(signer.built) == built and core.get_timer() == T0 + 1.0
    core.handle_timer(T0 + 1.0)
    assert sorted(b[0] for b in signer.built[built:]) == [FIRST, SECOND]
    reposts, _ = drain(core)
    assert {(p.period, p.hsdir) for p in reposts} == {
        (n, h) for n, t in TARGETS.items() for h in t.hsdirs}
    before = {p.period: p.revision for p in posts}
    assert all(p.revision > before[p.period] for p in reposts)
    built_events = [e for e in events(core) if e.kind is PublishEventKind.BUILT]
    assert len(built_events) == 2
    assert all("authorized-clients-changed" in e.message for e in built_events)
    core.handle_timer(T0 + 5.0)  # once: the forced rebuild is done
    assert len(signer.built) == built + 2


def test_a_core_that_built_nothing_yet_only_needs_the_new_keys():
    core, signer = make()
    core.clients_changed(T0)
    assert signer.built == [] and core.get_timer() is None


class _FakeControl:
    def __init__(self, active: bool) -> None:
        self.active = active
        self.keys: list[tuple[bytes, ...]] = []

    def set_client_auth_keys(self, keys: tuple[bytes, ...]) -> None:
        self.keys.append(tuple(keys))


async def test_sighup_hands_the_new_clients_to_the_publisher(tmp_path: Path, caplog):
    path = make_cluster(tmp_path / "n1").files.config
    daemon = NodeDaemon(load_config(path))
    control = _FakeControl(active=True)
    daemon.publisher_control = control  # type: ignore[assignment]
    caplog.set_level(logging.INFO, logger="onionmesh.node")
    public, secret = add_client(path, "alice", None)
    assert secret is not None
    await daemon.reload()
    assert control.keys == [(_key(public),)]
    assert daemon.config.master.authorized_clients == {"alice": public}
    text = caplog.text
    assert "SIGHUP: authorized clients changed (+alice" in text
    assert "readable only by 1 authorized client(s); republishing" in text
    assert public not in text and secret not in text
    assert "need a restart" not in text
    # `onionmesh status` shows the running set's fingerprint (to compare across nodes).
    from onionmesh.node.snapshot import build_snapshot, format_status
    from onionmesh.status_document import decode_status

    doc = decode_status(json.loads(json.dumps(build_snapshot(daemon), default=str)))
    assert doc.restricted_discovery is not None
    assert doc.restricted_discovery.clients == 1
    assert doc.restricted_discovery.fingerprint == client_set_fingerprint({"a": public})
    assert f"restricted discovery: 1 authorized client(s), key set " \
        f"{client_set_fingerprint({'a': public})}" in format_status(doc)
    # Nothing changed: the publisher is not disturbed.
    await daemon.reload()
    assert len(control.keys) == 1
    remove_client(path, "alice")
    await daemon.reload()
    assert control.keys[-1] == ()


async def test_a_bad_client_key_on_reload_keeps_the_running_set(tmp_path: Path, caplog):
    path = make_cluster(tmp_path / "n1").files.config
    public, _ = add_client(path, "alice", None)
    daemon = NodeDaemon(load_config(path))
    control = _FakeControl(active=False)
    daemon.publisher_control = control  # type: ignore[assignment]
    path.write_text(path.read_text().replace(public, "NOT-A-KEY"))
    caplog.set_level(logging.INFO, logger="onionmesh.node")
    await daemon.reload()
    assert control.keys == []
    assert daemon.config.master.authorized_clients == {"alice": public}
    assert "config reload failed, keeping the running config" in caplog.text
    assert "[master] authorized_clients: alice: is not base32" in caplog.text


async def test_a_standby_keeps_the_new_clients_for_when_it_publishes(tmp_path: Path, caplog):
    from onionmesh.node.publishing import PublisherControl

    path = make_cluster(tmp_path / "n1").files.config
    daemon = NodeDaemon(load_config(path))
    control = PublisherControl(object(), object(), object(), object(), object())  # type: ignore[arg-type]
    daemon.publisher_control = control
    caplog.set_level(logging.INFO, logger="onionmesh.node")
    public, _ = add_client(path, "bob", None)
    await daemon.reload()
    assert control.client_auth_keys == (_key(public),) and not control.active
    assert "applies when this node publishes" in caplog.text
