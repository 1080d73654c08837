"""NodeDaemon: one onionmesh node, wired together (``onionmesh run``).

Start order (docs/scenarios.md §4; stateless from config and keys):

1. key integrity check, before anything touches the disk or the network
   (backup master key with a WARN log and an alert if the primary fails);
2. clock check against the kernel's NTP status (refuse or warn);
3. the node's tor (managed or existing), bootstrapped;
4. clock check against tor's consensus (refuse or warn);
5. the mesh core on its UDP socket: its Join goes out at once (peer discovery);
6. the node's intro points from its tor into the core; when the core makes
   this node publisher, the Publisher uploads the core's plan.

Exit codes (``onionmesh.node.errors``): 0 after SIGTERM/SIGINT, 3 bad config,
4 bad key, 5 clock refused, 6 tor unusable, 7 coordination socket, 1 any
loop that died. On SIGTERM/SIGINT the core releases its lease and the release
datagram is sent before the socket closes, so a standby takes over at once.
SIGHUP re-reads the config: log level, alerts, added peers and the master's
authorized clients (republished at once) apply live; anything else is logged as
needing a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from onionmesh.aio import cancel_and_wait
from onionmesh.alerts import Alert, AlertKind, AlertSink
from onionmesh.clock import Clock, ClockAssessment, ClockBasis, ClockVerdict
from onionmesh.config import Config, ConfigError, load_config
from onionmesh.errors import OnionmeshError
from onionmesh.mesh.core import MeshCore
from onionmesh.mesh.errors import MeshError
from onionmesh.mesh.events import (
    BecamePublisher,
    ConflictDetected,
    Event,
    MessageRejected,
    PeerDead,
    PeerRecovered,
    PeerSuspect,
    PublishRequested,
    RosterChanged,
    SendRefused,
    SteppedDown,
)
from onionmesh.mesh.identity import NodeIdentity
from onionmesh.metrics import NodeMetrics
from onionmesh.node.advertise_filter import AdvertiseFilter
from onionmesh.node.advertise_gate import GateEvent, GateEventKind
from onionmesh.node.client_set import client_set_change
from onionmesh.node.conflict_record import ConflictRecord, foreign_instance
from onionmesh.node.coordination_keys import (
    CoordinationKeys,
    ensure_join_onion_key,
    load_coordination_keys,
)
from onionmesh.node.coordination_link import CoordinationLink
from onionmesh.node.coordination_peers import coordination_peers, with_roster_seeds
from onionmesh.node.errors import (
    EXIT_CONFIG,
    EXIT_FAILURE,
    EXIT_OK,
    AlreadyRunning,
    ClockRefused,
    KeyCheckError,
    NodeConfigError,
    NodeError,
    TorUnusable,
    TransportFailed,
)
from onionmesh.node.intro_feed import IntroFeed
from onionmesh.node.join_relay_service import JoinOnionWiring, join_onion_answer
from onionmesh.node.keyfiles import (
    ensure_private_dir,
    load_cluster_secrets,
    status_socket_path,
    unix_socket_path,
)
from onionmesh.node.logsetup import set_level
from onionmesh.node.membership import ROSTER_COMMAND
from onionmesh.node.mesh_driver import MeshDriver, TransportOpener
from onionmesh.node.path_safety import UnsafePath
from onionmesh.node.publishing import PublisherControl
from onionmesh.node.roster_keeper import RosterKeeper
from onionmesh.node.service_probe import service_targets
from onionmesh.node.settings import (
    CLOCK_OFFSET_ENV,
    advertise_address,
    check_runnable,
    clock_from_env,
    health_policy,
    mesh_config,
    peer_seeds,
)
from onionmesh.node.snapshot import build_snapshot
from onionmesh.node.standby_checks import StandbyChecks
from onionmesh.node.startup import ClockGuard, KeyMaterial, check_keys
from onionmesh.node.tor_instance import NodeTor
from onionmesh.node.uploads_view import UploadsView
from onionmesh.publish.core import PublishEvent, PublishEventKind, PublishTiming
from onionmesh.publish.uploads import RetryPolicy
from onionmesh.status_document import MasterKeySource, NodeState
from onionmesh.status_socket import StatusServer, StatusUnavailable, query_status
from onionmesh.tor.control import TorController
from onionmesh.tor.control_protocol import ControlError, HsDescEvent
from onionmesh.tor.intro_points import enable_events
from onionmesh.transport.join_onion import JoinOnion, JoinOnionError
from onionmesh.transport.paths import FellBackToTor, PathEvent, WireGuardDown, WireGuardRestored
from onionmesh.transport.tor_channel import TorChannelError, coordination_key
from onionmesh.transport.udp import TransportError

log = logging.getLogger("onionmesh.node")

CONSENSUS_POLL = 30.0  # seconds between consensus reads (clock re-check, periods)
# Settings that a SIGHUP applies live; every other change needs a restart.
_LIVE = {("logging", "level"), ("alerts", "command"), ("alerts", "webhook"),
         ("coordination", "peers"), ("master", "authorized_clients")}


class NodeDaemon:
    """One node: see the module docstring for the order of things."""

    def __init__(self, config: Config, *, clock: Clock | None = None) -> None:
        self.config = config
        self.clock = clock or Clock()
        self.state = NodeState.STARTING
        self.started_at = self.clock.now()
        self.keys: KeyMaterial | None = None
        self.master_key_source = MasterKeySource.NONE
        self.advertise = ""
        self.tor: NodeTor | None = None
        self.driver: MeshDriver | None = None
        self.roster_keeper: RosterKeeper | None = None
        self.coordination_keys: CoordinationKeys | None = None
        self.link: CoordinationLink | None = None  # [wireguard] enabled: WireGuard + tor
        self.join_onion: JoinOnion | None = None  # on every member (relays, or answers)
        self.join_wiring: JoinOnionWiring | None = None
        self.feed: IntroFeed | None = None
        self.advertising: AdvertiseFilter | None = None
        self.publisher_control: PublisherControl | None = None
        self.standby_checks: StandbyChecks | None = None
        self.local_sets: dict[int, tuple[bytes, ...]] = {}
        self.metrics = NodeMetrics()
        self.alerts = self._alert_sink(config)
        self.uploads = UploadsView(config.master.address)
        self.guard = ClockGuard(
            self.clock, mode=config.resilience.clock_check,
            require_ntp_sync=config.resilience.require_ntp_sync,
            tolerance=config.resilience.clock_skew_tolerance,
            skew_tolerance=config.resilience.clock_skew_tolerance,
        )
        self.status_server: StatusServer | None = None
        self._metrics_server: Any = None
        self._stopping = asyncio.Event()
        self._stop_reason = ""
        self._failure: BaseException | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._alert_tasks: set[asyncio.Task[Any]] = set()
        self._clock_bad = False
        self._foreign_finding: str | None = None  # the publish core's words for a conflict
        self._foreign_instance = ""  # which foreign descriptor: its own alert, not a repeat
        self._foreign_details: dict[str, str] = {}  # and its facts, for the alert
        self.conflicts = ConflictRecord()

    # ------------------------------------------------------------------ entry point

    async def run(self) -> int:
        """Start, serve until SIGTERM/SIGINT or a fatal error, shut down; the exit code."""
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.request_stop, signal.Signals(signum).name)
        loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
        code = EXIT_OK
        starting = asyncio.create_task(self.start(), name="node-start")
        stopping = asyncio.create_task(self._stopping.wait(), name="node-stopping")
        try:
            # A SIGTERM while tor bootstraps must not wait for the bootstrap to end.
            await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if not starting.done():
                starting.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await starting
            else:
                starting.result()  # raises the startup error, if any
                await stopping
        except NodeError as exc:
            log.error("fatal: %s", exc)
            code = exc.exit_code
            if self.state is NodeState.STARTING:
                self._refused_start(code, str(exc))
        except ConfigError as exc:
            log.error("fatal: %s", exc)
            code = EXIT_CONFIG
            if self.state is NodeState.STARTING:
                self._refused_start(code, str(exc))
        except Exception:  # a bug: say so and exit non-zero, never 0
            log.exception("fatal: unexpected error")
            code = EXIT_FAILURE
        finally:
            stopping.cancel()
            await self.shutdown()
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(signum)
        if code == EXIT_OK and self._failure is not None:
            code = getattr(self._failure, "exit_code", EXIT_FAILURE)
        log.info("onionmesh node %s exits with code %d", self.config.node_id, code)
        return code

    def _refused_start(self, code: int, why: str) -> None:
        """A start refused (bad key, clock, tor...): an alert too, delivered on shutdown."""
        summary = f"Node {self.config.node_id} refused to start (exit {code}): {why}"
        log.error("%s", summary)
        self._alert(Alert(AlertKind.START_REFUSED, self.config.node_id, summary))

    def request_stop(self, reason: str) -> None:
        if not self._stop_reason:
            self._stop_reason = reason
            log.info("%s received: shutting down", reason)
        self._stopping.set()

    # ------------------------------------------------------------------ start

    async def start(self) -> None:
        config = self.config
        # 1. Keys before anything else: only reads, never writes.
        self.keys = keys = check_keys(config)
        for warning in keys.warnings:
            log.warning("%s", warning)
            self._alert(Alert(AlertKind.KEY_PROBLEM, str(config.master.key_path), warning))
        self.master_key_source = (
            MasterKeySource.NONE if keys.master is None
            else MasterKeySource.BACKUP if keys.used_backup else MasterKeySource.PRIMARY
        )
        if keys.master is None:
            log.warning("no [master] key_path: this node shares intro points but never publishes")
        self.advertise = advertise_address(config)
        seeds = peer_seeds(config)
        if config.wireguard.enabled:
            self.coordination_keys = coordination_keys = load_coordination_keys(config)
            if keys.roster is not None:  # every member the signed roster gives an address
                seeds = with_roster_seeds(seeds, coordination_peers(
                    config, keys.roster.members(), coordination_keys.wg_public_raw))
        mesh_cfg = mesh_config(config)
        if self.clock.offset:
            log.warning("TESTING HOOK: clock offset %+g s from %s", self.clock.offset,
                        CLOCK_OFFSET_ENV)
        # 2. Clock against the kernel's NTP status (quick refusal before tor starts).
        self._startup_clock_check("before tor")
        # Status socket early: `onionmesh status` answers while tor bootstraps.
        status_path = status_socket_path(config)
        try:
            # The directory first: a planted one must not even be asked who runs there.
            ensure_private_dir(status_path.parent)
        except UnsafePath as exc:
            raise NodeConfigError(f"status socket directory: {exc}") from None
        self._refuse_if_running(status_path)
        try:
            self.status_server = StatusServer(status_path, self.snapshot,
                                              commands={ROSTER_COMMAND: self._roster_command})
            await self.status_server.start()
        except OSError as exc:
            raise NodeConfigError(
                f"cannot serve the status socket {status_path}: {exc.strerror}"
            ) from None
        self._serve_metrics()
        # 3. tor.
        self.tor = NodeTor(config, keys.node)
        controller = await self.tor.start()
        log.info("tor ready; node service %s.onion", self.tor.node_address)
        # 4. Clock against the consensus.
        try:
            consensus = await self.tor.consensus()
        except (ControlError, OnionmeshError) as exc:
            raise TorUnusable(f"tor has no usable consensus: {exc}") from None
        self.guard.note_consensus(consensus)
        self._startup_clock_check("against tor's consensus")
        # 5. Mesh.
        identity = NodeIdentity(
            config.node_id, keys.node.seed or b"", config.node.priority,
            eligible=keys.master is not None, address=self.advertise,
        )
        core = MeshCore(mesh_cfg, identity, keys.cluster_secret, seeds, self.clock.now(),
                        roster=keys.roster)
        self.driver = MeshDriver(core, self.clock, self.on_mesh_event)
        # From now on the clock is judged against the live peers' median too; a
        # problem already known at start holds claims before the first timer runs.
        self.guard.peer_offsets = lambda: list(core.peer_clock_offsets().values())
        self._recheck_clock()
        if keys.accepted_secrets:
            core.set_cluster_secrets(keys.cluster_secret, keys.accepted_secrets)
            log.info("cluster secret rotation in progress: also accepting the other secret")
        if keys.roster is not None:
            self.roster_keeper = RosterKeeper(config, core, self.clock, self.driver.flush)
            self.driver.join_handler = self.roster_keeper.join_handler()
        opener = await self._start_link(controller, core) if config.wireguard.enabled else None
        try:
            await self.driver.start(str(config.coordination.listen), opener)
        except TransportError as exc:
            raise TransportFailed(str(exc)) from None
        if keys.roster is not None:
            # Every member serves a join onion: the authority node answers there, the
            # others relay to it over the mesh (mesh/join_relay.py).
            await self._start_join_onion(controller, keys.node.seed or b"")
        log.info("mesh: node %s at %s (priority %d, %s), %d configured peers",
                 config.node_id, self.advertise, identity.priority,
                 "may publish" if identity.eligible else "never publishes", len(seeds))
        # 6. Intro points in, publisher out.
        if keys.master is not None:
            timing = PublishTiming(refresh_interval=float(config.publishing.refresh_interval))
            self.publisher_control = PublisherControl(
                controller, keys.master, self.clock, self.guard,
                RetryPolicy(max_retries=config.hsdir_max_retries),
                # self.config: a SIGHUP during start-up may have changed the clients
                client_auth_keys=self.config.master.client_auth_keys(),
                timing=timing, hs_desc=self.tor.hs_desc, on_event=self.on_publish_event,
            )
            driver = self.driver
            self.standby_checks = StandbyChecks(
                controller, keys.master, self.clock, driver.core.known_intro_points,
                timing=timing, hs_desc=self.tor.hs_desc, on_event=self.on_publish_event,
            )
            if not driver.core.is_publisher:
                self.standby_checks.start()
            if config.master.authorized_clients:
                log.info("restricted discovery: the master descriptor is readable only by %d "
                         "authorized client(s)", len(config.master.authorized_clients))
        # Between tor's intro points and the mesh: service checks, tor liveness and
        # intro-circuit health decide what this node advertises.
        self.advertising = AdvertiseFilter(
            controller, self.tor.node_address, health_policy(config),
            service_targets(config.service.ports), self._on_local_sets,
            self._on_gate_event,
            # Only a tor this daemon manages: an operator's own torrc is theirs to change.
            suspend_service=self.tor.set_service_suspended if self.tor.managed else None,
        )
        await self.advertising.start()
        self.feed = IntroFeed(controller, self.tor.node_address, self.advertising.feed_sets,
                              poll_interval=config.service.intro_poll_interval,
                              uploaded=self.tor.uploaded, hs_desc=self.tor.hs_desc)
        # (The feed judges tor's own descriptors by the system clock tor made them with,
        # not by the ONIONMESH_CLOCK_OFFSET test clock.)
        self.feed.note_consensus(consensus)
        await self.feed.start()
        self._watch(self.driver.task, "mesh timer loop")
        self._watch(asyncio.create_task(self._consensus_loop(), name="consensus"), "consensus")
        self._watch(asyncio.create_task(self._clock_loop(), name="clock"), "clock check")
        if self.tor.hs_desc is not None:
            self.tor.hs_desc.listen(self._on_hs_desc)
        self.state = NodeState.RUNNING
        log.info("node %s running (master %s)", config.node_id, config.master.address)

    async def _start_join_onion(self, controller: TorController, node_seed: bytes) -> None:
        """Where `onionmesh join` reaches this node through tor (tokens name it): the
        authority node answers joins there, every other member relays them to it."""
        driver = self.driver
        assert driver is not None
        wiring = join_onion_answer(
            driver, self.config.node_id, node_seed, now=self.clock.now,
            max_age=self.config.coordination.datagram_max_age)
        self.join_wiring = wiring
        # Without it the node serves on; joins still work directly (`join --via direct`).
        try:
            key, service_id = coordination_key(ensure_join_onion_key(self.config))
        except KeyCheckError as exc:
            log.error("join onion: %s; `onionmesh join` cannot reach this node through tor",
                      exc)
            return
        self.join_onion = JoinOnion(controller, key, unix_socket_path(self.config, "join"),
                                    wiring.answer)
        try:
            await self.join_onion.start(service_id)
        except JoinOnionError as exc:
            log.error("join onion: %s; `onionmesh join` cannot reach this node through tor",
                      exc)
            self.join_onion = None
            return
        log.info("join onion %s.onion: this node %s", service_id, wiring.described)

    async def _start_link(self, controller: TorController, core: MeshCore) -> TransportOpener:
        """WireGuard up with a peer per roster member, the coordination onion on our tor;
        the mesh driver then sends through the multipath transport."""
        assert self.tor is not None and self.coordination_keys is not None
        if core.roster is None:
            raise NodeConfigError(
                f"{self.config.path}: [wireguard] enabled = true needs the signed roster "
                "([membership] roster_path): the members' WireGuard keys and coordination "
                "onions come from it")
        self.link = CoordinationLink(self.config, self.coordination_keys, self.clock,
                                     controller, self.tor.channel_socks(), self._on_path_event)
        try:
            await self.link.start(core.roster.members())
        except (TorChannelError, ControlError, OnionmeshError) as exc:
            raise TransportFailed(f"coordination link: {exc}") from None
        return self.link.open_transport

    def _on_path_event(self, event: PathEvent) -> None:
        """The transport logged it already; alerts for the operator."""
        if isinstance(event, FellBackToTor):
            self._alert(Alert(AlertKind.TOR_FALLBACK, event.node_id, event.message))
        elif isinstance(event, WireGuardRestored):
            self._alert(Alert(AlertKind.WIREGUARD_RESTORED, event.node_id, event.message))
        elif isinstance(event, WireGuardDown):
            self._alert(Alert(AlertKind.WIREGUARD_DOWN, event.node_id, event.message))

    @staticmethod
    def _refuse_if_running(status_path: Path) -> None:
        """Two daemons of one node would fight over its tor and its lease."""
        try:
            other = query_status(status_path, timeout=2.0)
        except StatusUnavailable:
            return  # nobody answers: a stale socket at most
        pid = other.get("node", {}).get("pid") if isinstance(other.get("node"), dict) else None
        raise AlreadyRunning(
            f"another onionmesh run of this node answers on {status_path} (pid {pid})"
        )

    def _startup_clock_check(self, when: str) -> None:
        result = self.guard.startup_check()  # ClockRefused in refuse mode
        if self.guard.is_problem(result):
            summary = f"clock problem {when}: {result.message}"
            log.warning("%s (continuing: [resilience] clock_check = \"warn\")", summary)
            self._alert(Alert(AlertKind.CLOCK_PROBLEM, self.config.node_id, summary))
            self._clock_bad = result.verdict is ClockVerdict.BAD
        else:
            log.info("clock check %s: %s", when, result.message)

    def _serve_metrics(self) -> None:
        listen = self.config.metrics.listen
        if not listen:
            return
        host, _, port = str(listen).rpartition(":")
        try:
            self._metrics_server = self.metrics.serve(host.strip("[]"), int(port))
        except OSError as exc:
            raise NodeConfigError(
                f"{self.config.path}: [metrics] listen {listen}: {exc.strerror}"
            ) from None
        log.info("metrics on http://%s/metrics", listen)

    # ------------------------------------------------------------------ runtime loops

    def _watch(self, task: asyncio.Task[Any] | None, what: str) -> None:
        """A loop that must never end: if it does, the daemon exits non-zero."""
        if task is None:
            return
        self._tasks.append(task)

        def done(t: asyncio.Task[Any]) -> None:
            if t.cancelled() or self._stopping.is_set():
                return
            exc = t.exception()
            self._failure = exc or RuntimeError(f"{what} ended")
            log.error("fatal: the %s stopped: %r", what, self._failure)
            self._stopping.set()

        task.add_done_callback(done)

    async def _consensus_loop(self) -> None:
        assert self.tor is not None and self.tor.controller is not None
        controller = self.tor.controller
        # NEWCONSENSUS wakes us as soon as tor has a new consensus: at a time-period
        # boundary the intro feed must fetch the node's new descriptor within seconds
        # (clients refetch the master descriptor then). The poll is the fallback.
        events = controller.subscribe("NEWCONSENSUS", maxsize=4)
        try:
            await enable_events(controller, "NEWCONSENSUS")
        except (ControlError, OSError) as exc:
            log.warning("cannot subscribe to new consensuses (polling every %.0f s): %s",
                        CONSENSUS_POLL, exc)
        while True:
            try:
                async with asyncio.timeout(CONSENSUS_POLL):  # polling period
                    await anext(events)
            except TimeoutError:
                pass
            except StopAsyncIteration:  # control connection replaced: subscribe again
                await asyncio.sleep(1.0)
                events = controller.subscribe("NEWCONSENSUS", maxsize=4)
            if await self._read_consensus():
                self._recheck_clock()

    async def _read_consensus(self) -> bool:
        """Take tor's current consensus (for the clock check and the intro feed)."""
        assert self.tor is not None
        try:
            consensus = await self.tor.consensus()
        except (ControlError, OnionmeshError, OSError) as exc:
            log.warning("reading tor's consensus failed: %s", exc)
            return False
        self.guard.note_consensus(consensus)
        if self.feed is not None:
            self.feed.note_consensus(consensus)
        return True

    async def _clock_loop(self) -> None:
        """The clock against the live peers' median every half heartbeat, so a skewed
        node holds its claims before any lease it could win expires."""
        interval = max(0.25, self.config.coordination.heartbeat_interval / 2)
        while True:
            await asyncio.sleep(interval)  # a period, not a wait for readiness
            if self.guard.assess().outside_window:
                # Before calling the clock bad, make sure our copy of the consensus is
                # tor's current one: after this process was paused (SIGSTOP, a suspended
                # VM) the NEWCONSENSUS that replaced it may still be queued, and a stale
                # copy looks exactly like a clock past valid-until.
                await self._read_consensus()
            self._recheck_clock()

    def _recheck_clock(self) -> None:
        result = self.guard.assess()
        self._hold_for_clock(result)
        # Outside the consensus window is a gross error (the exit below in refuse mode);
        # off the peers' median the node keeps running as a standby (_hold_for_clock).
        bad = result.outside_window
        if bad and not self._clock_bad:
            summary = f"clock went bad: {result.message}; descriptors are not signed until fixed"
            log.error("%s", summary)
            self._alert(Alert(AlertKind.CLOCK_PROBLEM, self.config.node_id, summary))
            if self.guard.mode == "refuse":
                # Leave the cluster (releasing the lease) rather than hold it without
                # signing; a restart refuses until the clock is fixed.
                self._failure = ClockRefused(f"clock went bad at runtime: {result.message}")
                log.error("fatal: %s ([resilience] clock_check = \"refuse\")", self._failure)
                self._stopping.set()
        elif self._clock_bad and not bad:
            log.info("clock is good again: %s", result.message)
        self._clock_bad = bad

    def _hold_for_clock(self, result: ClockAssessment) -> None:
        """Neither claim nor keep the lease while the clock is a problem; alert once."""
        if self.driver is None:
            return
        core = self.driver.core
        problem = self.guard.is_problem(result)
        if problem and core.claim_hold is None:
            reason = f"clock check ({result.basis.value}): {result.message}"
            summary = f"not claiming the lease and not signing: {reason}"
            log.error("%s", summary)
            self._alert(Alert(AlertKind.CLOCK_HOLD, self.config.node_id, summary))
            core.hold_claims(reason, self.clock.now())
            self.driver.flush()
        elif not problem and core.claim_hold is not None:
            log.info("clock check (%s) passes again: %s; this node may claim the lease",
                     result.basis.value, result.message)
            core.hold_claims(None, self.clock.now())
            self.driver.flush()

    def _on_hs_desc(self, event: HsDescEvent) -> None:
        entry = self.uploads.observe(event, self.clock.now())
        if entry is not None:
            self.metrics.record_upload(entry.hsdir, entry.result == "uploaded")

    def on_publish_event(self, event: PublishEvent) -> None:
        """The publish core's events (already logged by the Publisher): alerts, conflicts."""
        if event.kind is PublishEventKind.SIGNING_FAILURES:
            self._alert(Alert(AlertKind.SIGNING_FAILURE, self.config.node_id, event.message))
        elif event.kind is PublishEventKind.UPLOAD_TIMEOUT and event.hsdir is not None:
            # tor never answered: the status and the metrics show it as a failure.
            self.uploads.note_timeout(event.hsdir, self.clock.now())
            self.metrics.record_upload(event.hsdir, False)
        elif event.kind is PublishEventKind.FAILURE_STREAK and event.hsdir is not None:
            # Timeouts of our own uploads count as well as tor's FAILED answers.
            self._alert(Alert(AlertKind.UPLOAD_FAILURE_STREAK, event.hsdir, event.message,
                              {"hsdir": event.hsdir, "streak": str(event.streak)}))
        elif event.kind is PublishEventKind.CONFLICT and event.foreign is not None:
            self.conflicts.record(event, self.clock.now())
            found = event.foreign
            details = {"period": str(found.period), "revision": str(found.revision),
                       "their_intro_points": str(found.intro_count),
                       "hsdirs": " ".join(found.hsdirs)}
            if self.driver is None:
                self._alert(Alert(AlertKind.CONFLICT, "hsdir", event.message, details,
                                  instance=foreign_instance(event)))
                return
            # The mesh core decides (re-election: the side with more intro points keeps
            # publishing); its ConflictDetected event carries this finding into the alert.
            self._foreign_finding, self._foreign_details = event.message, details
            self._foreign_instance = foreign_instance(event)
            try:
                self.driver.report_foreign_descriptor(found.revision, found.intro_count)
            finally:
                self._foreign_finding, self._foreign_details = None, {}
                self._foreign_instance = ""

    # ------------------------------------------------------------------ mesh events

    def _on_local_sets(self, sets: Mapping[int, Sequence[bytes]]) -> None:
        counts = ", ".join(f"period {p}: {len(v)}" for p, v in sorted(sets.items()))
        log.info("this node's intro points changed (%s); sharing them now", counts or "none")
        if self.driver is not None:
            try:
                self.driver.set_local_intro_points(sets)
            except OnionmeshError as exc:
                log.error("cannot share this node's intro points: %s", exc)
                return
        self.local_sets = {p: tuple(v) for p, v in sets.items()}

    def _on_gate_event(self, event: GateEvent) -> None:
        if event.kind is GateEventKind.WITHDRAWN:
            log.warning("%s", event.message)
            self._alert(Alert(AlertKind.NODE_WITHDRAWN, self.config.node_id, event.message))
        elif event.kind is GateEventKind.RESTORED:
            log.info("%s", event.message)
            self._alert(Alert(AlertKind.NODE_RESTORED, self.config.node_id, event.message))
        elif event.kind is GateEventKind.CHECK_FAILED:
            log.warning("%s", event.message)
        else:
            log.info("%s", event.message)

    async def _roster_command(self, request: dict[str, Any]) -> Mapping[str, Any]:
        if self.roster_keeper is None:
            return {"error": "this node runs without a roster ([membership] roster_path)"}
        return await self.roster_keeper.apply_request(request)

    def on_mesh_event(self, event: Event) -> None:
        """The mesh core's events become log lines, alerts, metrics and publish requests."""
        if isinstance(event, RosterChanged) and self.roster_keeper is not None:
            self.roster_keeper.persist()
        if isinstance(event, RosterChanged) and self.link is not None \
                and self.driver is not None and self.driver.core.roster is not None:
            self._spawn(self.link.update_members(self.driver.core.roster.members()))
        if isinstance(event, MessageRejected):
            log.debug("%s", event.message)
            self.metrics.record_rejection(event.reason)
            return
        # SendRefused: the core built a message peers would refuse (a bug worth seeing).
        warn = (PeerDead, ConflictDetected, SendRefused)
        level = logging.WARNING if isinstance(event, warn) else logging.INFO
        log.log(level, "%s", event.message)
        if isinstance(event, PeerDead):
            self._alert(Alert(AlertKind.NODE_DEAD, event.node_id, event.message,
                              {"intro_points": str(event.intro_count)}))
        elif isinstance(event, PeerRecovered):
            self._alert(Alert(AlertKind.NODE_RECOVERED, event.node_id, event.message))
        elif isinstance(event, BecamePublisher):
            self._alert(Alert(AlertKind.TAKEOVER, self.config.node_id, event.message,
                              {"term": str(event.term), "cause": event.cause.value}))
            if self.standby_checks is not None and self.standby_checks.active:
                self._spawn(self.standby_checks.stop())  # the publisher checks, faster
        elif isinstance(event, ConflictDetected):
            detail = event.message
            if self._foreign_finding is not None:
                detail = f"{self._foreign_finding}. {event.message}"
            self._alert(Alert(AlertKind.CONFLICT, event.other, detail, {
                "conflict": event.kind.value, "resolution": event.resolution.value,
                "our_intro_points": str(event.our_intro_count),
                "their_intro_points": str(event.their_intro_count),
                **self._foreign_details}, instance=self._foreign_instance))
        elif isinstance(event, SteppedDown):
            if self.publisher_control is not None:
                self._spawn(self.publisher_control.detach())
            if self.standby_checks is not None:
                self.standby_checks.start()
        elif isinstance(event, PublishRequested):
            counts = {p: len(v) for p, v in event.plan.intro_points.items()}
            self.metrics.record_publish(event.trigger.label, counts, self.clock.now())
            if self.publisher_control is not None:
                self.publisher_control.request(event.plan)
        if not isinstance(event, PeerSuspect):
            self._update_gauges()

    def _update_gauges(self) -> None:
        if self.driver is None:
            return
        core = self.driver.core
        counts: dict[str, int] = {}
        for view in core.peers().values():
            counts[view.state] = counts.get(view.state, 0) + 1
        self.metrics.set_peer_counts(counts)
        self.metrics.is_publisher.set(1 if core.is_publisher else 0)
        self.metrics.lease_term.set(core.term)

    # ------------------------------------------------------------------ alerts, status

    def _alert_sink(self, config: Config) -> AlertSink:
        return AlertSink(config.node_id, command=config.alerts.command,
                         webhook=config.alerts.webhook)

    def _alert(self, alert: Alert) -> None:
        if not self.alerts.enabled:
            return
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return
        self._spawn(self.alerts.send(alert, time.time()))

    async def alerts_delivered(self, timeout: float) -> None:
        """Wait (bounded) until the alerts raised so far were handed to their hooks."""
        if self._alert_tasks:
            await asyncio.wait(list(self._alert_tasks), timeout=timeout)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._alert_tasks.add(task)
        task.add_done_callback(self._alert_tasks.discard)

    def snapshot(self) -> dict[str, Any]:
        try:
            if self.driver is not None:
                self._update_gauges()
            return build_snapshot(self)
        except Exception as exc:  # a status bug must never take the daemon down
            log.exception("building the status document failed")
            return {"version": 1, "node": {"id": self.config.node_id, "state": self.state},
                    "master_address": self.config.master.address,
                    "clock": {"verdict": "unknown", "message": "status document failed"},
                    "error": f"{type(exc).__name__}: {exc}"}

    def clock_status(self) -> dict[str, Any]:
        last = self.guard.last
        return {
            "verdict": last.verdict.value if last else "unknown",
            "message": last.message if last else "not checked yet",
            "offset_hint": last.offset_hint if last else None,
            "test_offset": self.clock.offset,
            "basis": last.basis.value if last else "none",
            "peers": last.peers if last else 0,
            "tolerance": (self.guard.skew_tolerance
                          if last is not None and last.basis is ClockBasis.PEERS
                          else self.guard.tolerance),
            "hold": None if self.driver is None else self.driver.core.claim_hold,
        }

    # ------------------------------------------------------------------ reload

    def _on_sighup(self) -> None:
        self._spawn(self.reload())

    def _reload_cluster_secrets(self, config: Config) -> None:
        """A step of ``onionmesh rotate-secret``: the secret file may have changed."""
        if self.driver is None:
            return
        try:
            current, accepted = load_cluster_secrets(config)
            self.driver.core.set_cluster_secrets(current, accepted)
        except (NodeError, MeshError) as exc:
            log.error("SIGHUP: cluster secret not reloaded, keeping the running one: %s", exc)
            return
        log.info("SIGHUP: cluster secret reloaded (%s)",
                 "rotation in progress: also accepting the other secret" if accepted
                 else "one secret")

    def _reload_clients(self, old: Config, new: Config) -> None:
        """``onionmesh client add/remove``: the publisher republishes with the new set."""
        change = client_set_change(old.master.authorized_clients,
                                   new.master.authorized_clients)
        if change is None:
            return
        if self.publisher_control is None:
            log.info("SIGHUP: %s (this node has no publisher: no master key, or still "
                     "starting and reads the new list when it gets one)", change.describe())
            return
        self.publisher_control.set_client_auth_keys(change.keys)
        log.info("SIGHUP: %s; %s", change.describe(),
                 "republishing the master descriptor now" if self.publisher_control.active
                 else "applies when this node publishes (every node needs the same list)")

    async def reload(self) -> None:
        """SIGHUP: apply what can change live, name what needs a restart."""
        try:
            new = load_config(self.config.path)
            check_runnable(new)
        except (ConfigError, NodeError) as exc:
            log.error("SIGHUP: config reload failed, keeping the running config: %s", exc)
            return
        self._reload_cluster_secrets(new)
        old = self.config
        restart_needed = []
        for section, key in new.changed_keys(old):
            if (section, key) not in _LIVE:
                restart_needed.append(f"[{section}] {key}")
        if new.logging.level != old.logging.level:
            set_level(new.logging.level)
            log.info("SIGHUP: log level is now %s", new.logging.level)
        if (new.alerts.command, new.alerts.webhook) != (
            old.alerts.command, old.alerts.webhook
        ):
            self.alerts.close()
            self.alerts = self._alert_sink(new)
            log.info("SIGHUP: alert hook reloaded")
        added = [s for s in peer_seeds(new) if s.address not in
                 {p.address for p in peer_seeds(old)}]
        for seed in added:
            if self.driver is not None:
                self.driver.add_peer(seed)
            log.info("SIGHUP: added peer %s", seed.address)
        self._reload_clients(old, new)
        removed = {p.address for p in peer_seeds(old)} - {p.address for p in peer_seeds(new)}
        if removed:
            restart_needed.append("[coordination] peers (removals)")
        if restart_needed:
            log.warning("SIGHUP: these changes need a restart to apply: %s",
                        ", ".join(restart_needed))
        self.config = new
        log.info("SIGHUP: configuration reloaded from %s", new.path)

    # ------------------------------------------------------------------ shutdown

    async def shutdown(self) -> None:
        self.state = NodeState.STOPPING
        await cancel_and_wait(*self._tasks)
        self._tasks = []
        if self.feed is not None:
            await self.feed.stop()
        if self.advertising is not None:
            await self.advertising.stop()
        if self.driver is not None:
            core = self.driver.core
            term = core.term if core.is_publisher else None
            await self.driver.shutdown()
            if term is not None:
                log.info("Released the publisher lease (term %d) on shutdown; a standby can "
                         "take over at once", term)
            else:
                log.info("Left the mesh (this node held no lease)")
        if self.link is not None:
            await self.link.close()  # after the lease release went out over it
        if self.join_onion is not None:
            await self.join_onion.close()
        if self.publisher_control is not None:
            await self.publisher_control.stop()
        if self.standby_checks is not None:
            await self.standby_checks.stop()
        if self.status_server is not None:
            await self.status_server.close()
        if self.tor is not None:
            await self.tor.stop()
        if self._metrics_server is not None:
            with contextlib.suppress(Exception):
                self._metrics_server.shutdown()
        await self.alerts_delivered(timeout=5.0)
        self.state = NodeState.STOPPED


async def run_node(config_path: Path, environ: Mapping[str, str] = os.environ) -> int:
    """``onionmesh run``: load, run, return the exit code."""
    try:
        config = load_config(config_path)
        check_runnable(config)
        clock = clock_from_env(environ)
    except ConfigError as exc:
        log.error("fatal: %s", exc)
        return EXIT_CONFIG
    except NodeError as exc:
        log.error("fatal: %s", exc)
        return exc.exit_code
    set_level(config.logging.level)
    return await NodeDaemon(config, clock=clock).run()
