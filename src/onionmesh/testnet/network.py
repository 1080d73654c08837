"""A private Tor network on 127.0.0.1: authorities, clients and onion services.

Bring-up follows the measured recipe of docs/testnet.md (§1, §2):

1. reserve a block of free loopback ports; generate authority keys (tor-gencert) and relay
   fingerprints (tor --list-fingerprint) in parallel;
2. write every torrc with all ``DirAuthority`` lines, ``TestingTorNetwork 1`` and a 20 s voting
   interval (HS time period = 8 minutes), then start all authorities at once;
3. phase 1: poll every authority until its microdesc consensus lists all relays with
   ``Running Valid HSDir Guard V2Dir`` and ``md/all`` holds every microdescriptor it names;
4. only then add clients (ready at bootstrap ``PROGRESS=100``) and onion services (ready
   when tor wrote ``hostname`` and reported ``HS_DESC UPLOADED`` for both descriptors).

Clients started before a consensus exists back off exponentially, which is why phase 2 waits.
Every authority is also an HSDir relay: plain relays join far more slowly (docs/testnet.md §1).
All waits are bounded and raise :class:`TestnetTimeout` with the tail of the tor's notice log.
Teardown is by PID only, through :class:`onionmesh.tor.process.TorProcess`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from onionmesh.crypto.keys import Ed25519Identity, encode_secret_key_file
from onionmesh.testnet.backend import start_backend_process
from onionmesh.testnet.consensus import check_completeness
from onionmesh.testnet.errors import TestnetError, TestnetTimeout
from onionmesh.testnet.keys import KeyJob, generate_keys
from onionmesh.testnet.nodes import ServiceInstance, TorClient, TorNode, run_coroutine
from onionmesh.testnet.ports import PortBlock, reserve_block
from onionmesh.tor import torrc as torrc_gen
from onionmesh.tor.process import (
    TorProcess,
    ensure_empty_file,
    log_tail,
    process_start_time,
    wait_control_port,
)

log = logging.getLogger(__name__)

STATE_FILE = "testnet.json"
MAX_AUTHORITIES = 20
# Port layout inside the reserved block: authorities use fixed offsets (the DirAuthority
# lines name them), later nodes take free ports from DYNAMIC_OFFSET on.
OR_OFFSET = 0
DIR_OFFSET = 20
CONTROL_OFFSET = 40
DYNAMIC_OFFSET = 60

PHASE1_TIMEOUT = 180.0  # docs/testnet.md §6: >= 120 s (a rare 50 s stall was observed)
CLIENT_TIMEOUT = 120.0
SERVICE_TIMEOUT = 120.0
POLL_INTERVAL = 1.0


def _secret_key_bytes(key: bytes | Ed25519Identity) -> bytes:
    """The 64-byte expanded secret of an identity (via tor's key file form), or ``key`` itself."""
    if isinstance(key, Ed25519Identity):
        return encode_secret_key_file(key)[32:]
    return key


def authorities_for_hsdirs(n_hsdirs: int) -> int:
    """How many authorities (each an HSDir) a test needing ``n_hsdirs`` HSDirs should run.

    5 by default; 10 when more than 8 are needed, so that tor picks 8 of 10 for a descriptor
    and a ring computation can be told apart from "all HSDirs".
    """
    if isinstance(n_hsdirs, bool) or not isinstance(n_hsdirs, int) or n_hsdirs < 1:
        raise TestnetError(f"n_hsdirs must be a positive integer, got {n_hsdirs!r}")
    if n_hsdirs > MAX_AUTHORITIES:
        raise TestnetError(f"at most {MAX_AUTHORITIES} HSDirs are supported, asked {n_hsdirs}")
    if n_hsdirs <= 5:
        return 5
    return max(10, n_hsdirs) if n_hsdirs > 8 else n_hsdirs


class TorNetwork:
    """A private Tor network; use as a context manager or call :meth:`start`/:meth:`stop`."""

    def __init__(
        self,
        base_dir: Path | str,
        n_authorities: int = 5,
        base_port: int | None = None,
        *,
        tor_binary: str = "tor",
        gencert_binary: str = "tor-gencert",
        voting_interval: int = torrc_gen.DEFAULT_VOTING_INTERVAL,
        ready_timeout: float = PHASE1_TIMEOUT,
        supervise: bool = True,
    ) -> None:
        if isinstance(n_authorities, bool) or not isinstance(n_authorities, int):
            raise TestnetError(f"n_authorities must be an integer, got {n_authorities!r}")
        if not 4 <= n_authorities <= MAX_AUTHORITIES:
            # 3 relays cannot build the 3-hop onion circuits (docs/testnet.md §1).
            raise TestnetError(
                f"n_authorities must be in 4..{MAX_AUTHORITIES}, got {n_authorities}"
            )
        self.base_dir = Path(base_dir).absolute()
        self.n_authorities = n_authorities
        self.requested_base_port = base_port
        self.tor_binary = tor_binary
        self.gencert_binary = gencert_binary
        self.voting_interval = voting_interval
        self.ready_timeout = ready_timeout
        self.supervise = supervise
        self.authorities: list[TorNode] = []
        self.clients: dict[str, TorClient] = {}
        self.services: dict[str, ServiceInstance] = {}
        self._dir_authorities: tuple[torrc_gen.DirAuthority, ...] = ()
        self._ports: PortBlock | None = None
        self._started = False
        self.phase1_seconds: float | None = None
        # Clients and services may be added from worker threads at once.
        self._state_lock = threading.RLock()

    # ----------------------------------------------------------------- lifecycle

    def __enter__(self) -> TorNetwork:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @classmethod
    def for_hsdirs(cls, base_dir: Path | str, n_hsdirs: int, **kwargs: Any) -> TorNetwork:
        """A network with enough authorities for ``n_hsdirs`` (:func:`authorities_for_hsdirs`)."""
        return cls(base_dir, authorities_for_hsdirs(n_hsdirs), **kwargs)

    @property
    def base_port(self) -> int:
        if self._ports is None:
            raise TestnetError("the network has not been started")
        return self._ports.base

    @property
    def empty_torrc(self) -> Path:
        return self.base_dir / "empty-torrc"

    @property
    def nodes(self) -> list[TorNode]:
        """Every tor of the network, authorities first."""
        return [*self.authorities, *self.clients.values(), *self.services.values()]

    def start(self) -> None:
        """Generate keys, start the authorities and wait for phase-1 readiness."""
        if self._started:
            raise TestnetError("the network is already started")
        self._prepare_base_dir()
        self._ports = reserve_block(DYNAMIC_OFFSET, base=self.requested_base_port)
        self._started = True
        try:
            self._create_authorities()
            for node in self.authorities:
                node.process.start()
            self.write_state()
            started = time.monotonic()
            run_coroutine(self._wait_phase1())
            self.phase1_seconds = time.monotonic() - started
            log.info("test network ready after %.1f s (phase 1)", self.phase1_seconds)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop every tor and backend by PID (SIGTERM, then SIGKILL after a bound)."""
        for node in reversed(self.nodes):
            try:
                node.stop()
            except Exception:  # keep stopping the others
                log.exception("stopping %s failed", node.name)
        if self._ports is not None:
            self._ports.release()
        with contextlib.suppress(OSError):
            self.write_state()

    def leftover_pids(self) -> list[int]:
        """PIDs of harness processes (tor and backends) that are still alive."""
        from onionmesh.tor.process import pid_alive

        alive = []
        for node in self.nodes:
            pid = node.process.pid
            if pid is not None and pid_alive(pid, node.process.start_time):
                alive.append(pid)
            backend = node.backend if isinstance(node, ServiceInstance) else None
            if backend is not None and pid_alive(backend.pid, node.backend_start_time):
                alive.append(backend.pid)
        return alive

    def _prepare_base_dir(self) -> None:
        """Use an empty directory, or wipe one an earlier TorNetwork left (never anything else)."""
        state_path = self.base_dir / STATE_FILE
        if self.base_dir.exists() and any(self.base_dir.iterdir()):
            if not state_path.is_file():
                raise TestnetError(
                    f"{self.base_dir} is not empty and holds no {STATE_FILE}; refusing to reuse it"
                )
            from onionmesh.testnet.state import load_state, running_pids

            state = load_state(state_path)
            if running_pids(state):
                raise TestnetError(f"a test network is still running from {self.base_dir}")
            for entry in self.base_dir.iterdir():
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
        self.base_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.base_dir, 0o700)
        ensure_empty_file(self.empty_torrc)

    def _create_authorities(self) -> None:
        assert self._ports is not None
        jobs = []
        for i in range(self.n_authorities):
            name = f"auth{i}"
            jobs.append(
                KeyJob(
                    nickname=name,
                    data_dir=self.base_dir / name,
                    or_port=self._ports.port(OR_OFFSET + i),
                    dir_port=self._ports.port(DIR_OFFSET + i),
                )
            )
        keys = generate_keys(
            jobs, empty_torrc=self.empty_torrc, tor=self.tor_binary, gencert=self.gencert_binary
        )
        self._dir_authorities = tuple(
            torrc_gen.DirAuthority(
                nickname=job.nickname,
                address="127.0.0.1",
                or_port=job.or_port,
                dir_port=job.dir_port or 0,
                v3ident=keys[job.nickname][0] or "",
                fingerprint=keys[job.nickname][1],
            )
            for job in jobs
        )
        for i, (job, auth) in enumerate(zip(jobs, self._dir_authorities, strict=True)):
            control_port = self._ports.port(CONTROL_OFFSET + i)
            base = torrc_gen.NodeBase(
                job.nickname, job.data_dir, control_port, self._dir_authorities
            )
            text = torrc_gen.authority_torrc(
                base,
                or_port=auth.or_port,
                dir_port=auth.dir_port,
                voting_interval=self.voting_interval,
            )
            process = self._write_and_make_process(job.nickname, job.data_dir, text, control_port)
            self.authorities.append(
                TorNode(
                    name=job.nickname,
                    role="authority",
                    data_dir=job.data_dir,
                    control_port=control_port,
                    process=process,
                    or_port=auth.or_port,
                    dir_port=auth.dir_port,
                    fingerprint=auth.fingerprint,
                    v3ident=auth.v3ident,
                )
            )

    def _write_and_make_process(
        self, name: str, data_dir: Path, text: str, control_port: int
    ) -> TorProcess:
        data_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(data_dir, 0o700)
        torrc_path = data_dir / "torrc"
        torrc_path.write_text(text)
        return TorProcess(
            name,
            torrc_path,
            defaults_torrc=self.empty_torrc,
            log_path=data_dir / "notice.log",
            tor_binary=self.tor_binary,
            control_port=control_port,
            supervise=self.supervise,
        )

    def _check_name(self, name: str) -> None:
        try:
            torrc_gen.check_nickname(name)
        except torrc_gen.TorrcError as exc:
            raise TestnetError(f"bad node name: {exc}") from exc
        if any(node.name == name for node in self.nodes):
            raise TestnetError(f"a node named {name!r} already exists in this network")
        if not self._started:
            raise TestnetError("start the network before adding nodes")

    def _node_base(self, name: str) -> torrc_gen.NodeBase:
        assert self._ports is not None
        control_port = self._ports.take(DYNAMIC_OFFSET)
        return torrc_gen.NodeBase(name, self.base_dir / name, control_port, self._dir_authorities)

    # ----------------------------------------------------------------- phase 1

    async def _wait_phase1(self) -> None:
        from onionmesh.tor.control import ControlError, TorController

        deadline = time.monotonic() + self.ready_timeout
        expected = {node.fingerprint or "": node.name for node in self.authorities}
        controllers: dict[str, TorController] = {}
        status: dict[str, str] = {
            node.name: "control port not answering" for node in self.authorities
        }
        try:
            for node in self.authorities:
                await wait_control_port(
                    node.control_port,
                    timeout=max(1.0, deadline - time.monotonic()),
                    log_path=node.log_path,
                )
            pending = list(self.authorities)
            while pending:
                self._fail_if_dead(pending)
                for node in list(pending):
                    try:
                        controller = controllers.get(node.name)
                        if controller is None:
                            controller = await TorController.connect(port=node.control_port)
                            controllers[node.name] = controller
                        consensus = await self._get_info_or_empty(
                            controller, "dir/status-vote/current/consensus-microdesc"
                        )
                        if not consensus:
                            status[node.name] = "no consensus yet"
                            continue
                        md_all = await self._get_info_or_empty(controller, "md/all")
                        result = check_completeness(consensus, md_all, expected)
                        status[node.name] = result.describe()
                        if result.ready:
                            pending.remove(node)
                    except (ControlError, OSError) as exc:
                        status[node.name] = f"control error {type(exc).__name__}: {exc}"
                        stale = controllers.pop(node.name, None)
                        if stale is not None:
                            with contextlib.suppress(Exception):
                                await stale.close()
                if not pending:
                    break
                if time.monotonic() >= deadline:
                    worst = pending[0]
                    summary = "; ".join(f"{n.name}: {status[n.name]}" for n in pending)
                    raise TestnetTimeout(
                        f"authorities not ready within {self.ready_timeout:.0f} s ({summary}); "
                        f"{worst.name} notice log tail:\n{log_tail(worst.log_path)}"
                    )
                await asyncio.sleep(POLL_INTERVAL)  # poll period between real checks
        finally:
            for controller in controllers.values():
                with contextlib.suppress(Exception):
                    await controller.close()

    @staticmethod
    async def _get_info_or_empty(controller: Any, key: str) -> str:
        """GETINFO ``key``; "" when tor says it has nothing yet (5xx before the first consensus)."""
        from onionmesh.tor.control import ControlReplyError

        try:
            return (await controller.get_info(key)).get(key, "")
        except ControlReplyError:
            return ""

    def _fail_if_dead(self, nodes: Sequence[TorNode]) -> None:
        """During bring-up a tor that exited is a configuration error: fail now, not at timeout."""
        for node in nodes:
            if node.process.restarts or not node.process.is_running():
                raise TestnetError(
                    f"tor {node.name} exited during bring-up; notice log tail:\n"
                    f"{log_tail(node.log_path)}"
                )

    # ----------------------------------------------------------------- clients

    def add_client(self, name: str, *, timeout: float = CLIENT_TIMEOUT,
                   client_auth_dir: Path | None = None) -> TorClient:
        """Start a client tor (SOCKS with ExtendedErrors) and wait for bootstrap 100 %;
        ``client_auth_dir`` becomes its ``ClientOnionAuthDir``."""
        with self._state_lock:
            self._check_name(name)
            assert self._ports is not None
            base = self._node_base(name)
            socks_port = self._ports.take(DYNAMIC_OFFSET)
            text = torrc_gen.client_torrc(base, socks_port=socks_port,
                                          client_auth_dir=client_auth_dir)
            process = self._write_and_make_process(name, base.data_dir, text, base.control_port)
            client = TorClient(
                name=name,
                role="client",
                data_dir=base.data_dir,
                control_port=base.control_port,
                process=process,
                socks_port=socks_port,
            )
            self.clients[name] = client
            process.start()
            self.write_state()
        run_coroutine(self._wait_bootstrapped(client, timeout))
        return client

    async def aadd_client(self, name: str, *, timeout: float = CLIENT_TIMEOUT,
                          client_auth_dir: Path | None = None) -> TorClient:
        """:meth:`add_client` for async callers (runs in a worker thread)."""
        return await asyncio.to_thread(self.add_client, name, timeout=timeout,
                                       client_auth_dir=client_auth_dir)

    async def _wait_bootstrapped(self, node: TorNode, timeout: float) -> None:
        from onionmesh.tor.control import ControlError, TorController

        deadline = time.monotonic() + timeout
        await wait_control_port(node.control_port, timeout=timeout, log_path=node.log_path)
        phase = "unknown"
        while True:
            self._fail_if_dead([node])
            try:
                controller = await TorController.connect(port=node.control_port)
                try:
                    while time.monotonic() < deadline:
                        info = await controller.get_info("status/bootstrap-phase")
                        phase = info.get("status/bootstrap-phase", "")
                        if "PROGRESS=100" in phase:
                            return
                        await asyncio.sleep(0.5)  # poll period between real checks
                finally:
                    await controller.close()
            except (ControlError, OSError) as exc:
                phase = f"control error {type(exc).__name__}: {exc}"
            if time.monotonic() >= deadline:
                raise TestnetTimeout(
                    f"{node.role} {node.name} did not bootstrap within {timeout:.0f} s "
                    f"(last phase: {phase}); notice log tail:\n{log_tail(node.log_path)}"
                )
            await asyncio.sleep(0.5)

    # ----------------------------------------------------------------- onion services

    def add_onion_service(
        self,
        name: str,
        key: bytes | Ed25519Identity | None = None,
        target_port: int | None = None,
        ob_master: str | None = None,
        *,
        virtual_port: int = 80,
        timeout: float = SERVICE_TIMEOUT,
    ) -> ServiceInstance:
        """Start a tor serving one v3 onion service and wait until its descriptors are uploaded.

        ``key``: an :class:`Ed25519Identity`, a 32-byte seed or a 64-byte expanded ed25519
        secret (None: tor makes one).
        ``target_port``: where ``virtual_port`` forwards; None starts the built-in backend that
        answers with ``name``. ``ob_master``: make it an Onionbalance instance of that master
        (``HiddenServiceOnionbalanceInstance 1`` + ``ob_config`` written before tor starts).
        """
        self._check_name(name)
        assert self._ports is not None
        base = self._node_base(name)
        hs_dir = base.data_dir / "hs"
        base.data_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(base.data_dir, 0o700)
        torrc_gen.make_hs_dir(hs_dir)
        expected_address = None
        if key is not None:
            expected_address = torrc_gen.write_hs_secret_key(hs_dir, _secret_key_bytes(key))
        master = None
        if ob_master is not None:
            master = torrc_gen.normalize_onion_address(ob_master)
            torrc_gen.write_ob_config(hs_dir, master)
        backend = None
        if target_port is None:
            target_port = self._ports.take(DYNAMIC_OFFSET)
            backend = start_backend_process(name, target_port, base.data_dir / "backend.log")
        text = torrc_gen.onion_service_torrc(
            base,
            hs_dir=hs_dir,
            target_port=target_port,
            virtual_port=virtual_port,
            onionbalance_instance=master is not None,
        )
        process = self._write_and_make_process(name, base.data_dir, text, base.control_port)
        service = ServiceInstance(
            name=name,
            role="service",
            data_dir=base.data_dir,
            control_port=base.control_port,
            process=process,
            hs_dir=hs_dir,
            target_port=target_port,
            virtual_port=virtual_port,
            ob_master=master,
            backend=backend,
            backend_start_time=process_start_time(backend.pid) if backend else None,
        )  # onion_address is filled from tor's hostname file, then checked against the key
        with self._state_lock:
            self.services[name] = service
            process.start()
            self.write_state()
        run_coroutine(self._wait_service(service, timeout))
        if expected_address is not None and service.onion_address != expected_address:
            raise TestnetError(
                f"tor serves {service.onion_address} for {name}, expected {expected_address}"
            )
        self.write_state()
        return service

    async def aadd_onion_service(self, name: str, *args: Any, **kwargs: Any) -> ServiceInstance:
        """:meth:`add_onion_service` for async callers (runs in a worker thread)."""
        return await asyncio.to_thread(self.add_onion_service, name, *args, **kwargs)

    async def _wait_service(self, service: ServiceInstance, timeout: float) -> None:
        """Ready = ``hostname`` written and ``HS_DESC UPLOADED`` seen for both descriptors."""
        from onionmesh.tor.control import TorController, parse_hs_desc_event

        deadline = time.monotonic() + timeout
        await wait_control_port(service.control_port, timeout=timeout, log_path=service.log_path)
        controller = await TorController.connect(port=service.control_port)
        descriptor_ids: set[str] = set()
        try:
            # Subscribe at once: tor uploads ~5 s after start (docs/testnet.md §2), long after this.
            events = controller.subscribe("HS_DESC")
            await controller.set_events("HS_DESC")
            hostname_file = service.hs_dir / "hostname"
            while not service.onion_address:
                self._fail_if_dead([service])
                if hostname_file.is_file():
                    text = hostname_file.read_text().strip()
                    service.onion_address = torrc_gen.normalize_onion_address(text)
                    break
                if time.monotonic() >= deadline:
                    raise TestnetTimeout(
                        f"service {service.name} wrote no hostname within {timeout:.0f} s; "
                        f"notice log tail:\n{log_tail(service.log_path)}"
                    )
                await asyncio.sleep(0.1)  # poll period for the hostname file
            iterator = events.__aiter__()
            while len(descriptor_ids) < 2:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TestnetTimeout(
                        f"service {service.name} ({service.onion_address}) uploaded "
                        f"{len(descriptor_ids)} of 2 descriptors within {timeout:.0f} s; "
                        f"notice log tail:\n{log_tail(service.log_path)}"
                    )
                try:
                    event = await asyncio.wait_for(iterator.__anext__(), min(remaining, 5.0))
                except TimeoutError:
                    self._fail_if_dead([service])
                    continue
                parsed = parse_hs_desc_event(event)
                if parsed.action == "UPLOADED" and parsed.address == service.onion_address:
                    service.uploads += 1
                    descriptor_ids.add(parsed.descriptor_id or f"unknown{service.uploads}")
        finally:
            await controller.close()

    # ----------------------------------------------------------------- directory views

    async def aconsensus_text(self, authority: int = 0) -> str:
        """The microdesc consensus an authority currently holds."""
        return await self._authority_info(authority, "dir/status-vote/current/consensus-microdesc")

    def consensus_text(self, authority: int = 0) -> str:
        """Synchronous :meth:`aconsensus_text`."""
        return run_coroutine(self.aconsensus_text(authority), timeout=60.0)

    async def amicrodescriptors_text(self, authority: int = 0) -> str:
        """``GETINFO md/all`` of an authority, with the final newline the control port strips."""
        text = await self._authority_info(authority, "md/all")
        return text if text.endswith("\n") else text + "\n"

    def microdescriptors_text(self, authority: int = 0) -> str:
        """Synchronous :meth:`amicrodescriptors_text`."""
        return run_coroutine(self.amicrodescriptors_text(authority), timeout=60.0)

    async def _authority_info(self, authority: int, key: str) -> str:
        from onionmesh.tor.control import TorController

        if not 0 <= authority < len(self.authorities):
            raise TestnetError(f"no authority #{authority} (network has {len(self.authorities)})")
        node = self.authorities[authority]
        controller = await TorController.connect(port=node.control_port)
        try:
            return (await controller.get_info(key))[key]
        finally:
            await controller.close()

    def hsdir_fingerprints(self) -> list[str]:
        """Fingerprints of the HSDirs (every authority is one)."""
        return [node.fingerprint or "" for node in self.authorities]

    # ----------------------------------------------------------------- state file

    @property
    def state_path(self) -> Path:
        return self.base_dir / STATE_FILE

    def state(self) -> dict[str, Any]:
        """JSON-able description of the network (PIDs, start times, ports, addresses)."""
        with self._state_lock:
            nodes = [node.state() for node in self.nodes]
        return {
            "base_dir": str(self.base_dir),
            "base_port": self._ports.base if self._ports is not None else None,
            "n_authorities": self.n_authorities,
            "voting_interval": self.voting_interval,
            "nodes": nodes,
        }

    def write_state(self) -> Path:
        """Write the state file atomically (``testnet down`` stops the PIDs it lists).

        Nodes may be added from several threads at once (``aadd_client`` runs in a thread),
        so writers are serialised and each uses a temporary file of its own."""
        path = self.state_path
        with self._state_lock:
            tmp = path.with_name(f"{STATE_FILE}.{os.getpid()}.{threading.get_ident()}.tmp")
            tmp.write_text(json.dumps(self.state(), indent=2) + "\n")
            os.replace(tmp, path)
        return path
