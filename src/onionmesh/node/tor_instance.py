"""The node's own onion service: a tor onionmesh starts and supervises, or an existing one.

Managed (``[tor] managed = true``, the default): onionmesh writes
``<state_dir>/tor/torrc`` and the node's HiddenServiceDir (the node key in
tor's format + ``ob_config`` naming the master, so tor accepts INTRODUCE2
cells made for the master address), starts tor under a supervisor that
restarts it if it dies, and talks to it over a control socket inside tor's
private DataDirectory (cookie authentication). ``[tor] extra_torrc`` lines are
appended as they are (a private test network puts its DirAuthority lines there).

Existing (``managed = false``): onionmesh connects to ``control_socket`` or
``control_port``; the operator's torrc must already run the node service with
``HiddenServiceOnionbalanceInstance 1`` and an ``ob_config``, and
``[service] key_dir`` must point at that HiddenServiceDir (its ``hostname``
names the node address).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from onionmesh.config import Config
from onionmesh.crypto.keys import (
    SECRET_KEY_FILE,
    Ed25519Identity,
    KeyFileError,
    load_hostname,
    save_hidden_service_dir,
)
from onionmesh.errors import OnionmeshError
from onionmesh.hsdir.consensus import Consensus, parse_consensus
from onionmesh.node.errors import NodeConfigError, TorUnusable
from onionmesh.node.keyfiles import (
    ensure_private_dir,
    service_dir,
    socks_socket_path,
    state_dir,
    unix_socket_path,
)
from onionmesh.node.path_safety import UnsafePath
from onionmesh.tor import torrc as torrc_gen
from onionmesh.tor.control import TorController
from onionmesh.tor.control_protocol import ControlError, HsDescEvent
from onionmesh.tor.hs_desc_feed import HsDescFeed
from onionmesh.tor.intro_circuits import intro_circuit_ids
from onionmesh.tor.process import (
    TorProcess,
    TorProcessError,
    log_tail,
    process_start_time,
    stop_pid,
)
from onionmesh.tor.upload_events import UploadMatcher

log = logging.getLogger(__name__)

_CONSENSUS_KEY = "dir/status-vote/current/consensus-microdesc"


def _port_option(mapping: str) -> str:
    """``"80 127.0.0.1:8080"`` as is; a bare ``"80"`` forwards to the same local port."""
    parts = mapping.split()
    if len(parts) == 1:
        return f"{parts[0]} 127.0.0.1:{parts[0]}"
    return " ".join(parts)


def _extra_option(line: str) -> tuple[str, str]:
    key, _, value = line.strip().partition(" ")
    return key, value.strip()


def managed_torrc(config: Config, data_dir: Path, hs_dir: Path, control_socket: Path) -> str:
    """The torrc of a managed node tor (pure; ``TorrcError`` for unsafe values)."""
    tor = config.tor
    options: list[tuple[str, str | int]] = [
        ("DataDirectory", str(data_dir)),
        ("PidFile", f"{data_dir}/tor.pid"),
        # tor exits by itself if this daemon dies without stopping it (SIGKILL).
        ("__OwningControllerProcess", os.getpid()),
        ("Log", f"notice file {data_dir}/notice.log"),
        ("ControlSocket", str(control_socket)),
        ("CookieAuthentication", 1),
        # Each new consensus as soon as it is published (as directory caches fetch it),
        # not at a random moment of the following hours as clients do: at a time-period
        # boundary the node reads its new descriptor's intro points, and the publisher
        # uploads them, before clients move to the new period (docs/time-periods.md).
        ("FetchDirInfoEarly", 1),
        ("FetchDirInfoExtraEarly", 1),
    ]
    socks = [str(tor.socks_port)] if tor.socks_port else []
    if config.wireguard.enabled and config.resilience.tor_fallback_enabled:
        # The tor channel's streams to the other members' coordination onions: a unix
        # socket (no local TCP port for other users), tor's extended SOCKS errors, and
        # one circuit per SOCKS username (IsolateSOCKSAuth is tor's default).
        socks.append(f"unix:{socks_socket_path(config)} ExtendedErrors")
    # "SocksPort 0" beside another SocksPort line is an error for tor.
    options += [("SocksPort", port) for port in socks or ["0"]]
    options.append(("HiddenServiceDir", str(hs_dir)))
    options += [("HiddenServicePort", _port_option(p)) for p in config.service.ports]
    options.append(("HiddenServiceOnionbalanceInstance", 1))
    options += [_extra_option(line) for line in tor.extra_torrc]
    return torrc_gen.render(options)


async def fetch_consensus_header(controller: TorController) -> Consensus:
    """tor's current microdesc consensus (no microdescriptors: time and SRV are enough)."""
    info = await controller.get_info(_CONSENSUS_KEY)
    return parse_consensus(info[_CONSENSUS_KEY])


class NodeTor:
    """The node's tor and a reconnecting control connection to it."""

    def __init__(self, config: Config, node_key: Ed25519Identity,
                 now: Callable[[], float] = time.time) -> None:
        self.config = config
        self.now = now
        self.node_key = node_key
        self.managed = bool(config.tor.managed)
        self.data_dir = state_dir(config) / "tor"
        self.hs_dir = service_dir(config)
        self.control_socket = unix_socket_path(config, "tor-control.sock")
        self.process: TorProcess | None = None
        self.controller: TorController | None = None
        self.node_address = ""  # 56 base32 characters, no ".onion"
        # Managed tor only: blinded key (base64) -> when this run's tor first uploaded a
        # node descriptor for it (watched from the first control connection on). None for
        # an existing tor, whose uploads happened before we came.
        self.uploaded: dict[str, float] | None = None
        # The node's one HS_DESC subscription; every consumer listens to it.
        self.hs_desc: HsDescFeed | None = None

    def channel_socks(self) -> tuple[str, int] | str:
        """Where the tor channel opens its streams: the managed tor's unix SOCKS socket,
        or an existing tor's ``[tor] socks_socket`` / ``socks_port`` (config check
        requires one)."""
        if self.managed:
            return str(socks_socket_path(self.config))
        if self.config.tor.socks_socket is not None:
            return str(self.config.tor.socks_socket)
        return ("127.0.0.1", int(self.config.tor.socks_port))

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> TorController:
        """Start (or reach) tor and wait until it has bootstrapped; TorUnusable otherwise."""
        timeout = float(self.config.tor.bootstrap_timeout)
        deadline = time.monotonic() + timeout
        if self.managed:
            self._prepare_managed()
            self.controller = await self._connect_managed(deadline)
            await self._watch_uploads(self.controller)
        else:
            self.node_address = self._read_unmanaged_address()
            self.controller = await self._connect_existing(timeout)
            self.hs_desc = HsDescFeed(self.controller)
            await self.hs_desc.start()
        await self._wait_bootstrapped(deadline)
        return self.controller

    async def _watch_uploads(self, controller: TorController) -> None:
        self.uploaded = {}
        self._upload_matcher = UploadMatcher(self.node_address)
        self.hs_desc = HsDescFeed(controller)  # subscribes before SETEVENTS: nothing missed
        await self.hs_desc.start()
        self.hs_desc.listen(self._note_upload)

    def _note_upload(self, event: HsDescEvent) -> None:
        # UPLOADED names no descriptor: the matcher takes it from the UPLOAD before it.
        done = self._upload_matcher.observe(event)
        if done is not None and self.uploaded is not None:
            self.uploaded.setdefault(done.blinded_key, self.now())

    async def stop(self) -> None:
        if self.managed:
            await self._close_intro_circuits()
        if self.hs_desc is not None:
            await self.hs_desc.stop()
        if self.controller is not None:
            with contextlib.suppress(Exception):
                await self.controller.close()
            self.controller = None
        if self.process is not None:
            await asyncio.to_thread(self.process.stop)
            self.process = None

    async def _close_intro_circuits(self) -> None:
        """Before the managed tor exits: close its intro circuits itself, so each intro
        point drops this node at once (a DESTROY along the circuit). Left to the closed
        TCP connection, the intro relays kept forwarding introductions into circuits
        already gone for 5 s and more on the test network: a client holding the master
        descriptor got INTRODUCE_ACK and waited for a rendezvous that never came, instead
        of a NACK that makes tor try another node's intro point. Best effort, bounded."""
        controller = self.controller
        if controller is None or not controller.is_connected:
            return
        try:
            async with asyncio.timeout(3.0):
                info = await controller.get_info("circuit-status")
                ids = intro_circuit_ids(next(iter(info.values()), ""))
                for circuit_id in ids:
                    await controller.request(f"CLOSECIRCUIT {circuit_id}", check=False)
                if ids:
                    log.info("closed %d intro circuits before stopping tor", len(ids))
                    # tor's cell scheduler writes queued cells every few ms (KIST's
                    # run interval is 10 ms by default): give the DESTROYs that time.
                    await asyncio.sleep(0.2)
        except (ControlError, TimeoutError, OSError) as exc:
            log.info("could not close the intro circuits before stopping tor: %s", exc)

    async def set_service_suspended(self, suspended: bool) -> None:
        """Take the node's onion service out of the managed tor, or put it back.

        While the node's own service fails its checks, the publisher drops its intro
        points, but a client keeps the master descriptor it fetched until the period
        ends and would still be introduced here, reach the rendezvous, and see its
        stream fail (tor does not try another intro point after that). Without the
        service, tor closes its intro circuits, the intro points answer such clients
        with a NACK, and tor moves on to another intro point: another node. Back in,
        tor builds new intro points and uploads a new descriptor; the node advertises
        them once their circuits are established.

        Done with LOADCONF of the torrc this daemon wrote, without or with the
        HiddenService lines; the ephemeral coordination and join onions (ADD_ONION)
        survive a config reload. ``ControlError`` if tor refuses.
        """
        if not self.managed or self.controller is None:
            return
        text = (self.data_dir / "torrc").read_text()
        if suspended:
            text = "\n".join(line for line in text.splitlines()
                             if not line.startswith("HiddenService")) + "\n"
        await self.controller.request("LOADCONF", data=text)

    # -- managed tor --------------------------------------------------------------------

    def _prepare_managed(self) -> None:
        for directory in (state_dir(self.config), self.data_dir):
            directory.mkdir(parents=True, exist_ok=True)
        os.chmod(self.data_dir, 0o700)  # tor refuses a DataDirectory others can read
        # tor wants the control socket's directory private too.
        try:
            ensure_private_dir(self.control_socket.parent)
        except UnsafePath as exc:
            raise TorUnusable(f"control socket directory: {exc}") from None
        if not (self.hs_dir / SECRET_KEY_FILE).exists():
            try:
                save_hidden_service_dir(self.node_key, self.hs_dir)
            except KeyFileError as exc:
                raise TorUnusable(f"cannot write the node's HiddenServiceDir: {exc}") from None
        os.chmod(self.hs_dir, 0o700)
        master = self.config.master.address
        ob_config = self.hs_dir / "ob_config"
        wanted = torrc_gen.ob_config_text(master)
        if not ob_config.exists() or ob_config.read_text() != wanted:
            torrc_gen.write_ob_config(self.hs_dir, master)
        self.node_address = self.node_key.onion_address.removesuffix(".onion")
        try:
            text = managed_torrc(self.config, self.data_dir, self.hs_dir, self.control_socket)
        except torrc_gen.TorrcError as exc:
            raise NodeConfigError(f"{self.config.path}: [tor] {exc}") from None
        torrc = self.data_dir / "torrc"
        torrc.write_text(text)
        defaults = self.data_dir / "torrc.defaults"
        defaults.write_text("")
        self._stop_orphan(torrc)
        with contextlib.suppress(FileNotFoundError):
            self.control_socket.unlink()  # stale socket of a killed tor: wait for the new one
        self.process = TorProcess(
            f"{self.config.node_id}-tor", torrc, defaults_torrc=defaults,
            log_path=self.data_dir / "notice.log", tor_binary=self.config.tor.binary,
            supervise=True,
        )
        try:
            self.process.start()
        except TorProcessError as exc:
            raise TorUnusable(str(exc)) from None
        log.info("started tor (pid %s) for node service %s.onion", self.process.pid,
                 self.node_address)

    def _stop_orphan(self, torrc: Path) -> None:
        """A tor left by a killed earlier run of this node holds the DataDirectory lock."""
        pid_file = self.data_dir / "tor.pid"
        try:
            pid = int(pid_file.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            return
        # Only our own tor: same torrc path on its command line.
        if pid > 1 and str(torrc).encode() in cmdline:
            log.warning("stopping tor pid %d left by an earlier run of this node", pid)
            stop_pid(pid, process_start_time(pid))

    async def _connect_managed(self, deadline: float) -> TorController:
        last = "no attempt"
        while time.monotonic() < deadline:
            assert self.process is not None
            if not self.process.is_running() and self.process.restarts >= self.process.max_restarts:
                break
            if self.control_socket.exists():
                try:
                    return await TorController.connect(
                        socket_path=str(self.control_socket), reconnect=True, timeout=10.0
                    )
                except (ControlError, OSError) as exc:
                    last = f"{type(exc).__name__}: {exc}"
            await asyncio.sleep(0.2)  # poll period while tor creates its control socket
        raise TorUnusable(
            f"tor's control socket {self.control_socket} did not answer ({last}); "
            f"tor log tail:\n{log_tail(self.data_dir / 'notice.log')}"
        )

    # -- existing tor -------------------------------------------------------------------

    def _read_unmanaged_address(self) -> str:
        hostname = self.hs_dir / "hostname"
        try:
            return load_hostname(hostname).removesuffix(".onion")
        except KeyFileError as exc:
            raise NodeConfigError(
                f"{self.config.path}: [service] key_dir must be the HiddenServiceDir of the "
                f"node service in your tor: {exc}"
            ) from None

    async def _connect_existing(self, timeout: float) -> TorController:
        tor = self.config.tor
        kwargs: dict[str, object] = {"reconnect": True, "timeout": min(timeout, 30.0)}
        if tor.control_socket is not None:
            kwargs["socket_path"] = str(tor.control_socket)
        else:
            kwargs["port"] = int(tor.control_port)
            kwargs["cookie_from_tor"] = False  # over TCP: only [tor] cookie_path
        if tor.control_password is not None:
            kwargs["password"] = tor.control_password
        if tor.cookie_path is not None:
            kwargs["cookie_path"] = str(tor.cookie_path)
        try:
            return await TorController.connect(**kwargs)  # type: ignore[arg-type]
        except (ControlError, OSError) as exc:
            raise TorUnusable(f"cannot use tor's control port: {exc}") from None

    # -- readiness ----------------------------------------------------------------------

    async def _wait_bootstrapped(self, deadline: float) -> None:
        assert self.controller is not None
        phase = "unknown"
        while time.monotonic() < deadline:
            try:
                info = await self.controller.get_info("status/bootstrap-phase")
                phase = info.get("status/bootstrap-phase", "")
            except (ControlError, OnionmeshError) as exc:
                phase = f"{type(exc).__name__}: {exc}"
            if "PROGRESS=100" in phase:
                return
            await asyncio.sleep(0.5)  # poll period while tor bootstraps
        raise TorUnusable(
            f"tor did not bootstrap within {self.config.tor.bootstrap_timeout:g} s "
            f"(last status: {phase}); tor log tail:\n{log_tail(self.data_dir / 'notice.log')}"
        )

    async def consensus(self) -> Consensus:
        assert self.controller is not None
        return await fetch_consensus_header(self.controller)
