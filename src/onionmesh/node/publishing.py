"""Running the Publisher while (and only while) the mesh core says this node publishes.

The core decides *what* and *when* (``PublishRequested`` carries a
``PublishPlan``, rate-limited by ``min_publish_interval``); the Publisher does
the uploads to every responsible HSDir for both time periods. The intro-point
source handed to the Publisher reads the plan of the last request, not the
core's live plan, so the core's rate limit holds.

Before every signing pass the Publisher asks the ClockGuard: with a clock
outside the consensus window no descriptor is signed (the pass fails with a
logged ClockRefused and is retried).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from onionmesh.aio import cancel_and_wait
from onionmesh.clock import Clock
from onionmesh.crypto.keys import Ed25519Identity
from onionmesh.descriptor.intro import IntroPoint, parse_intro_point
from onionmesh.errors import OnionmeshError
from onionmesh.mesh.plan import PublishPlan
from onionmesh.node.startup import ClockGuard
from onionmesh.publish.core import PublishEvent, PublishTiming, Role
from onionmesh.publish.period_sets import sets_for_master_period
from onionmesh.publish.publisher import Publisher
from onionmesh.publish.uploads import RetryPolicy
from onionmesh.tor.control import TorController
from onionmesh.tor.control_protocol import ControlError
from onionmesh.tor.hs_desc_feed import HsDescFeed

log = logging.getLogger(__name__)

_START_RETRY = 2.0  # seconds between attempts to start the publisher (tor restarting...)


def encode_intro_point(point: IntroPoint) -> bytes:
    """The bytes a node shares for one intro point: tor's text block."""
    return point.encode().encode("ascii")


def decode_intro_point(data: bytes) -> IntroPoint:
    """Inverse of ``encode_intro_point``; typed errors for anything else."""
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise IntroPointDecodeError("shared intro point is not ASCII text") from None
    return parse_intro_point(text)


class IntroPointDecodeError(OnionmeshError):
    """An intro point shared by a peer could not be decoded."""


class GuardedPublisher(Publisher):
    """A Publisher whose every pass first asks the clock guard (no signing with a BAD clock)."""

    def __init__(self, *args: object, clock_check: Callable[[], None], **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._clock_check = clock_check

    async def step(self) -> None:
        self._clock_check()  # ClockRefused is an OnionmeshError: logged, retried by _run
        await super().step()


class PublisherControl:
    """Starts, feeds and stops the Publisher as the mesh core's role changes."""

    def __init__(
        self,
        controller: TorController,
        master: Ed25519Identity,
        clock: Clock,
        guard: ClockGuard,
        retry: RetryPolicy,
        client_auth_keys: Sequence[bytes] = (),
        *,
        timing: PublishTiming | None = None,
        hs_desc: HsDescFeed | None = None,
        on_event: Callable[[PublishEvent], None] | None = None,
    ) -> None:
        self.controller = controller
        self.client_auth_keys = tuple(client_auth_keys)  # restricted discovery
        self.timing = timing or PublishTiming()
        self.hs_desc = hs_desc
        self.on_event = on_event
        self.master = master
        self.clock = clock
        self.guard = guard
        self.retry = retry
        self._plan: PublishPlan | None = None
        self.publisher: GuardedPublisher | None = None
        self._task: asyncio.Task[None] | None = None
        self._decoded: dict[int, tuple[list[IntroPoint], list[str]]] = {}
        self.requests = 0

    @property
    def plan(self) -> PublishPlan | None:
        """The plan being published (None: none requested, or detached)."""
        return self._plan

    @plan.setter
    def plan(self, plan: PublishPlan | None) -> None:
        # The decoded intro points belong to the plan they came from.
        self._plan = plan
        self._decoded = {}

    @property
    def active(self) -> bool:
        return self._task is not None

    def set_client_auth_keys(self, keys: Sequence[bytes]) -> None:
        """A reloaded config changed the authorized clients: the running publisher
        republishes with them at once; a later one starts with them."""
        self.client_auth_keys = tuple(keys)
        if self.publisher is not None:
            self.publisher.set_client_auth_keys(self.client_auth_keys)

    def request(self, plan: PublishPlan) -> None:
        """A PublishRequested from the core: publish this plan (starting if needed)."""
        self.plan = plan
        self.requests += 1
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="publisher-control")
        elif self.publisher is not None:
            self.publisher.intro_points_changed()

    def detach(self) -> Coroutine[Any, Any, None]:
        """Forget the running publisher at once; returns the coroutine that stops it.

        Synchronous so that a step-down followed by a new term in the same batch of
        mesh events can never have the old stop() cancel the new publisher.
        """
        task, self._task = self._task, None
        publisher, self.publisher = self.publisher, None
        self.plan = None
        if publisher is not None:
            # At once, not when the stop coroutine runs: the publisher may be in the middle
            # of a pass (this step-down came from one of its own events) with uploads queued.
            publisher.set_role(Role.STANDBY)
        return self._stop(task, publisher)

    async def stop(self) -> None:
        """Stop publishing (stepped down or shutting down)."""
        await self.detach()

    @staticmethod
    async def _stop(task: asyncio.Task[None] | None, publisher: Publisher | None) -> None:
        await cancel_and_wait(task)
        if publisher is not None:
            await publisher.stop()

    async def _run(self) -> None:
        while True:
            publisher = GuardedPublisher(
                self.controller, self.master, self.intro_source, retry=self.retry,
                owner_source=self.intro_owners,
                clock=self.clock.now, clock_check=self.guard.check_for_signing,
                timing=self.timing, feed=self.hs_desc, on_event=self.on_event,
            )
            keys = self.client_auth_keys
            publisher.builder.set_client_auth_keys(keys)
            try:
                try:
                    await publisher.start()
                except (ControlError, OnionmeshError, OSError) as exc:
                    log.warning("publisher could not start: %s: %s", type(exc).__name__, exc)
                    await publisher.stop()
                    await asyncio.sleep(_START_RETRY)  # retry period while tor is unavailable
                    continue
                self.publisher = publisher
                if self.client_auth_keys != keys:  # a reload while it was starting
                    publisher.set_client_auth_keys(self.client_auth_keys)
                log.info("publisher started for %s", self.master.onion_address)
                await asyncio.Event().wait()  # runs until detach() cancels this task
            finally:
                # Cancelled (stepped down) at any point: it never outlives this task.
                # Publisher.stop is idempotent, so detach()'s own stop does no harm.
                await publisher.stop()

    def intro_source(self, period: int) -> Sequence[IntroPoint]:
        """The intro points of the requested plan for master ``period``.

        Only the nodes' sets for exactly ``period`` (see ``publish.period_sets``: the
        previous period's only as a bridge while no node's set for it is known). When the
        nodes hold more than one descriptor carries, the plan's whole pool (``offered``):
        the publish core splits it over several descriptors.
        """
        return self._decode(period)[0]

    def intro_owners(self, period: int) -> Sequence[str]:
        """The node id of each intro point ``intro_source(period)`` returns."""
        return self._decode(period)[1]

    def _decode(self, period: int) -> tuple[list[IntroPoint], list[str]]:
        plan = self.plan
        if plan is None or not plan.intro_points:
            return [], []
        cached = self._decoded.get(period)
        if cached is not None:
            return cached
        pools = {p: plan.offered.get(p) or entries for p, entries in plan.intro_points.items()}
        found = sets_for_master_period(period, pools)
        if found is None:
            return [], []
        source, entries = found
        if source != period:
            log.info("period %d: no node's intro points for it are known yet; bridging "
                     "with their period-%d sets until they are", period, source)
        points: list[IntroPoint] = []
        owners: list[str] = []
        for node_id, data in entries:
            try:
                points.append(decode_intro_point(data))
            except OnionmeshError as exc:
                log.warning("skipping an intro point of %s that does not decode: %s",
                            node_id, exc)
            else:
                owners.append(node_id)
        self._decoded[period] = (points, owners)
        return points, owners
