"""Conflict detection against real HSDirs: a stray publisher outside the cluster.

Real tor: the cluster's Publisher (default timings: one HSFETCH check every 30 s)
publishes the master descriptors; then a stray with the same master key, on another
tor, builds newer revisions of both descriptors and HSPOSTs them to every responsible
HSDir (what a restored old node with the master key would do). The Publisher must see
the foreign descriptor with its next check, report a CONFLICT naming the revision and
the HSDir, and put its own descriptor back on every responsible HSDir of the period
tor can fetch; each HSDir is then asked directly (HSFETCH ... SERVER=) by a third tor.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from onionmesh.crypto.keys import Ed25519Identity
from onionmesh.descriptor.errors import DescriptorError
from onionmesh.descriptor.parse import parse_descriptor
from onionmesh.publish.core import PublishEvent, PublishEventKind, PublishTiming, tor_revision
from onionmesh.publish.master import MasterDescriptorBuilder
from onionmesh.publish.publisher import Publisher
from onionmesh.tor.control import TorController
from onionmesh.tor.control_protocol import parse_hs_desc_event
from onionmesh.tor.intro_points import (
    IntroPointsError,
    NodeIntroWatcher,
    enable_events,
    fetch_descriptor,
)
from tests.eventually import aeventually

pytestmark = [pytest.mark.tor, pytest.mark.tornet]

TIMING = PublishTiming()  # the defaults: check_interval 30 s, fetch_timeout 30 s


async def _stray_upload(ctl: TorController, master: Ed25519Identity, publisher: Publisher,
                        points: list) -> dict[int, int]:
    """Build newer revisions of both descriptors and HSPOST them to every HSDir."""
    builder = MasterDescriptorBuilder(master, lifetime_minutes=180)
    address = master.onion_address.removesuffix(".onion")
    sub = ctl.subscribe("HS_DESC")
    await enable_events(ctl, "HS_DESC")
    revisions: dict[int, int] = {}
    expected: set[str] = set()
    accepted: set[str] = set()
    try:
        for number, target in publisher.targets.items():
            now = time.time()
            ours = publisher.tracker.revision(number) or 0
            revision = max(tor_revision(target, now, None), ours + 1)
            text = builder.build(number, target.period.period_length, revision, points,
                                 now=now, blinded=target.blinded)
            revisions[number] = revision
            for hsdir in target.hsdirs:
                await ctl.hs_post(text, server=hsdir, hs_address=address)
                expected.add(hsdir)
        async with asyncio.timeout(60):
            async for event in sub:
                parsed = parse_hs_desc_event(event)
                # Every HSDir answers; once the cluster superseded the stray some
                # refuse it (UPLOAD_REJECTED): the race a real stray has too.
                if parsed.address == address and parsed.action in ("UPLOADED", "FAILED"):
                    expected.discard(parsed.hsdir or "")
                    if parsed.action == "UPLOADED":
                        accepted.add(parsed.hsdir or "")
                    if not expected:
                        break
    finally:
        sub.close()
    assert accepted, "no HSDir took the stray's descriptor"
    return revisions


async def test_stray_publisher_is_detected_and_superseded_on_every_hsdir(tornet, tornet_client):
    node = await tornet.aadd_onion_service("i10conflictnode")
    stray_tor = await tornet.aadd_client("i10stray")
    own = await TorController.connect(port=node.control_port)
    ctl = await TorController.connect(port=tornet_client.control_port)
    stray = await TorController.connect(port=stray_tor.control_port)
    checker = await TorController.connect(port=stray_tor.control_port)
    events: list[tuple[float, PublishEvent]] = []
    master = Ed25519Identity.generate()
    publisher = None
    try:
        watcher = NodeIntroWatcher(node.onion_address, period_length=lambda: 8, own=own)

        async def intro_points():
            await watcher.poll_once()
            sets = [watcher.sets.for_period(q) for q in watcher.sets.periods()]
            return next((list(s.intro_points) for s in reversed(sets) if s.intro_points),
                        None)

        # (One node's newest set for both periods: this test is about the HSDirs.)
        points = await aeventually(intro_points, timeout=60, what="node intro points")
        publisher = Publisher(ctl, master, lambda p: points, timing=TIMING,
                              on_event=lambda e: events.append((time.monotonic(), e)))
        await publisher.start()
        await publisher.wait_published(90)
        assert publisher.core.fetchable is not None
        # The stray keeps only half of the intro points: a descriptor we never made.
        stray_points = points[: max(1, len(points) // 2)]
        stray_at = time.monotonic()
        revisions = await _stray_upload(stray, master, publisher, stray_points)

        def conflict():
            found = [(t, e) for t, e in events if e.kind is PublishEventKind.CONFLICT]
            return found[0] if found else None

        # Bound: the next check comes within check_interval, plus one HSFETCH round trip.
        at, event = await aeventually(conflict, timeout=TIMING.check_interval + 30,
                                      what="CONFLICT event")
        assert event.foreign is not None
        seen_period = event.foreign.period  # the fetchable one (unless tor's period rolled)
        assert seen_period in revisions
        assert event.foreign.revision == revisions[seen_period]
        assert event.foreign.intro_count == len(stray_points)
        assert event.hsdir in publisher.targets[seen_period].hsdirs
        assert f"revision {revisions[seen_period]}" in event.message
        detection = at - stray_at
        assert detection <= TIMING.check_interval + 30

        # Ours again everywhere: every responsible HSDir of the fetchable period, asked
        # directly by a third tor, serves our intro points above the stray's revision.
        address = master.onion_address.removesuffix(".onion")
        keys = {p.auth_key for p in points}

        async def all_ours():
            # (tor's time period may roll over meanwhile: judge the one it fetches now.)
            period = publisher.core.fetchable
            target = publisher.targets.get(period)
            if target is None or not publisher.tracker.complete(period):
                return None
            above = revisions.get(period, 0)
            if publisher.tracker.revision(period) <= above:
                return None
            for hsdir in target.hsdirs:
                try:
                    text = await fetch_descriptor(checker, address, servers=[hsdir],
                                                  timeout=30)
                    desc = parse_descriptor(text, address,
                                            period_length=target.period.period_length)
                except (IntroPointsError, DescriptorError):
                    return None  # nothing there for us (yet)
                if (desc.period_number != period
                        or {ip.auth_key for ip in desc.intro_points} != keys
                        or desc.revision_counter <= above):
                    return None
            return True

        await aeventually(all_ours, timeout=120, what="our descriptor back on every HSDir")
        # The other period was re-posted above the stray's revision as well.
        for other in set(publisher.targets) & set(revisions) - {seen_period}:
            assert publisher.tracker.revision(other) > revisions[other]
    finally:
        if publisher is not None:
            await publisher.stop()
        for controller in (own, ctl, stray, checker):
            await controller.close()
