"""A refusing HSDir is retried with backoff and given up on; the others are posted once.

Real tor: the extra target is a fingerprint no relay has, so tor refuses the HSPOST
("552 Server not found"); every real HSDir must accept its descriptors exactly once.
"""

from __future__ import annotations

import asyncio
import random

import pytest

from onionmesh.crypto.keys import Ed25519Identity
from onionmesh.publish.period_sets import sets_for_master_period
from onionmesh.publish.publisher import PeriodTarget, Publisher
from onionmesh.publish.uploads import RetryPolicy, UploadStatus
from onionmesh.tor.control import TorController
from onionmesh.tor.control_protocol import parse_hs_desc_event
from onionmesh.tor.intro_points import NodeIntroWatcher
from tests.eventually import aeventually

pytestmark = [pytest.mark.tor, pytest.mark.tornet]

GHOST = "0123456789ABCDEF0123456789ABCDEF01234567"  # no relay has this identity


class GhostPublisher(Publisher):
    """Adds one unreachable HSDir to every period's targets."""

    def targets_from(self, consensus, now: float) -> dict[int, PeriodTarget]:
        return {
            n: PeriodTarget(t.period, t.blinded, (*t.hsdirs, GHOST))
            for n, t in super().targets_from(consensus, now).items()
        }


async def wait_for(predicate, timeout: float) -> None:
    await aeventually(predicate, timeout=timeout, what="publisher state", interval=0.1)


class RecordingController:
    """The publishing tor's controller, noting every HSPOST (HSDir, descriptor text)."""

    def __init__(self, inner: TorController) -> None:
        self.inner = inner
        self.raw: list[tuple[str, str]] = []

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    async def hs_post(self, descriptor: str, *, server, hs_address: str,
                      timeout: float | None = None) -> None:
        self.raw.append((server, descriptor))
        await self.inner.hs_post(descriptor, server=server, hs_address=hs_address,
                                 timeout=timeout)

    def posts(self, publisher: Publisher) -> list[tuple[str, int]]:
        """(hsdir, period) of every HSPOST; each posted text must be a period's descriptor."""
        period_of = {publisher.tracker.descriptor(p): p for p in publisher.targets}
        return [(hsdir, period_of[text]) for hsdir, text in self.raw]


async def test_refusing_hsdir_is_retried_and_others_are_not_reposted(tornet, tornet_client):
    node = await tornet.aadd_onion_service("h8retrynode")
    own = await TorController.connect(port=node.control_port)
    ctl = await TorController.connect(port=tornet_client.control_port)
    publisher = None
    try:
        watcher = NodeIntroWatcher(node.onion_address, period_length=lambda: 8, own=own)
        await wait_for_intro(watcher)
        recorder = RecordingController(ctl)
        retry = RetryPolicy(max_retries=2, base_delay=0.5, max_delay=2.0, jitter=0.2)
        publisher = GhostPublisher(
            recorder, Ed25519Identity.generate(),  # type: ignore[arg-type]
            lambda p: node_points(watcher, p), retry=retry,
            rng=random.Random(5),
        )
        await publisher.start()
        await wait_for(lambda: publisher.targets and publisher.tracker.settled()
                       and publisher.builds == 2, 60)
        posts = recorder.posts(publisher)
        for period, target in publisher.targets.items():
            real = set(target.hsdirs) - {GHOST}
            assert len(real) == 8
            assert publisher.tracker.with_status(period, UploadStatus.UPLOADED) == real
            assert publisher.tracker.with_status(period, UploadStatus.FAILED) == {GHOST}
            for hsdir in real:  # accepted at the first attempt: posted exactly once
                assert posts.count((hsdir, period)) == 1
            assert posts.count((GHOST, period)) == 1 + retry.max_retries
        ghost_states = [s for s in publisher.tracker.states() if s.hsdir == GHOST]
        assert all(s.attempts == 3 and s.last_reason == "POST_REFUSED" for s in ghost_states)
        assert publisher.tracker.health[GHOST].failures == 6
        assert not publisher.published()  # the ghost keeps it from counting as complete

        # An identical re-post is refused by the HSDir that holds it (UPLOAD_REJECTED):
        # the fact behind the tracker's "already held" rule.
        period, target = next(iter(publisher.targets.items()))
        hsdir = target.hsdirs[0]
        await publisher.stop()
        sub = ctl.subscribe("HS_DESC")
        await ctl.hs_post(publisher.tracker.descriptor(period), server=hsdir,
                          hs_address=publisher.address)
        async with asyncio.timeout(30):
            async for event in sub:
                parsed = parse_hs_desc_event(event)
                if parsed.address == publisher.address and parsed.hsdir == hsdir and (
                    parsed.action in ("UPLOADED", "FAILED")
                ):
                    break
        sub.close()
        assert (parsed.action, parsed.reason) == ("FAILED", "UPLOAD_REJECTED")
    finally:
        if publisher is not None:
            await publisher.stop()
        await own.close()
        await ctl.close()


def node_points(watcher: NodeIntroWatcher, period: int) -> tuple:
    """The node's intro points for master ``period`` by the production rule."""
    found = sets_for_master_period(
        period, {q: watcher.sets.for_period(q).intro_points for q in watcher.sets.periods()})
    return found[1] if found is not None else ()


async def wait_for_intro(watcher: NodeIntroWatcher) -> None:
    async def exposed() -> bool:
        await watcher.poll_once()
        return any(watcher.sets.for_period(q).intro_points for q in watcher.sets.periods())

    await aeventually(exposed, timeout=20, interval=0.5, what="node exposes intro points")


async def test_unreachable_hsdir_times_out_is_retried_and_others_are_not_reposted(tornet):
    """One responsible HSDir made unreachable for the publishing tor (ExcludeNodes +
    StrictNodes): its uploads never get an answer, so they time out and are retried."""
    node = await tornet.aadd_onion_service("h8unreachnode")
    client = await tornet.aadd_client("h8unreachpub")
    own = await TorController.connect(port=node.control_port)
    ctl = await TorController.connect(port=client.control_port)
    publisher = None
    try:
        watcher = NodeIntroWatcher(node.onion_address, period_length=lambda: 8, own=own)
        await wait_for_intro(watcher)
        master = Ed25519Identity.generate()
        probe = Publisher(ctl, master, lambda p: [])
        await probe.refresh_consensus()
        shared = set.intersection(*(set(t.hsdirs) for t in probe.targets.values()))
        victim = sorted(shared)[0]  # responsible for both descriptors
        await ctl.set_conf({"ExcludeNodes": f"${victim}", "StrictNodes": "1"})

        recorder = RecordingController(ctl)
        retry = RetryPolicy(max_retries=1, base_delay=0.5, max_delay=1.0, jitter=0.1,
                            upload_timeout=8.0)
        publisher = Publisher(recorder, master,  # type: ignore[arg-type]
                              lambda p: node_points(watcher, p),
                              retry=retry, rng=random.Random(9))
        await publisher.start()
        await wait_for(lambda: publisher.builds == 2 and publisher.tracker.settled(), 90)
        posts = recorder.posts(publisher)
        for period, target in publisher.targets.items():
            others = set(target.hsdirs) - {victim}
            assert publisher.tracker.with_status(period, UploadStatus.UPLOADED) == others
            assert publisher.tracker.with_status(period, UploadStatus.FAILED) == {victim}
            assert all(posts.count((h, period)) == 1 for h in others)
            assert posts.count((victim, period)) == 2  # first attempt + one retry
        reasons = {s.last_reason for s in publisher.tracker.states() if s.hsdir == victim}
        assert reasons == {"TIMEOUT"}  # tor never answers: our upload timeout fires
        assert publisher.tracker.health[victim].failures == 4
    finally:
        if publisher is not None:
            await publisher.stop()
        await own.close()
        await ctl.close()
