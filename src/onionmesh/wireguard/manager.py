"""The shell that makes the node's WireGuard interface match its spec, with `ip` and `wg`.

Like wg-quick: kernel WireGuard where `ip link add NAME type wireguard` works, else
wireguard-go (run in the foreground, so we hold its PID, notice when it dies and stop
it on close). wireguard-go dies with the daemon, also when the daemon is SIGKILLed
(``PR_SET_PDEATHSIG``, see ``_die_with_parent``); an interface found at the first
repair that this manager did not make was left by a run that did not stop cleanly:
a wireguard-go one is deleted (its process exits with it) and made again by us, a
kernel one is taken over (and deleted on close), each with a log line.
Configuration and reads go through `wg` (it speaks kernel netlink or the
userspace UAPI socket), so tests on wireguard-go run the production code path. The
private key reaches `wg` on stdin, never on a command line. Every command has a
timeout and every failure is a ``CommandError`` naming the command.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import enum
import logging
import os
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from onionmesh.wireguard.dump import DeviceState, LinkState, parse_ip_addr_json, parse_wg_dump
from onionmesh.wireguard.errors import CommandError, WireGuardError
from onionmesh.wireguard.names import uapi_socket
from onionmesh.wireguard.plan import (
    Action,
    AddAddress,
    ConfigureDevice,
    CreateInterface,
    Observation,
    PeerHealth,
    RemoveAddress,
    RemovePeer,
    SetLinkUp,
    SetPeer,
    peer_health,
    plan_repairs,
)
from onionmesh.wireguard.spec import InterfaceSpec

log = logging.getLogger(__name__)

COMMAND_TIMEOUT = 10.0
USERSPACE_READY_TIMEOUT = 5.0
STALE_EXIT_TIMEOUT = 5.0  # a left-over wireguard-go exits once its link is deleted
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _die_with_parent(parent: int, prctl: Callable[..., int]) -> Callable[[], None]:
    """``preexec_fn`` for wireguard-go: SIGTERM it when the daemon dies, however it dies
    (SIGTERM makes wireguard-go remove its link and UAPI socket).

    Runs in the child between fork and exec, where only async-signal-safe work is safe
    while other threads exist: it calls one libc function resolved before the fork,
    ``getppid`` and ``_exit``; no import, lock, allocation of note or logging. If the
    daemon died before the ``prctl``, the child is already orphaned: it exits at once.
    The signal follows the *thread* that forked, the event loop's (asyncio starts
    subprocesses from it), which lives as long as the daemon does.
    """
    def run() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)

    return run


def _libc_prctl() -> Callable[..., int] | None:
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # not Linux/glibc: the takeover at start remains
        return None


class Backend(enum.Enum):
    KERNEL = "kernel"
    USERSPACE = "wireguard-go"


@dataclass(frozen=True)
class RepairReport:
    applied: tuple[str, ...]
    problems: tuple[str, ...]
    peers: tuple[PeerHealth, ...]

    @property
    def healthy(self) -> bool:
        return not self.problems


def _describe(action: Action) -> str:
    match action:
        case CreateInterface():
            return "create interface"
        case ConfigureDevice():
            return "set private key and listen port"
        case SetPeer(peer=peer, set_endpoint=endpoint):
            return f"set peer {peer.node_id}" + (f" endpoint {peer.endpoint}" if endpoint else "")
        case RemovePeer(public_key=key):
            return f"remove peer {key}"
        case AddAddress(address=address):
            return f"add address {address}"
        case RemoveAddress(address=address):
            return f"remove address {address}"
        case SetLinkUp():
            return "set link up"


class WireGuardManager:
    """Owns one WireGuard interface. ``repair()`` is idempotent: call it on a timer."""

    def __init__(self, spec: InterfaceSpec, private_key: str, *,
                 command_prefix: Sequence[str] = (), wg: str = "wg", ip: str = "ip",
                 wireguard_go: str = "wireguard-go",
                 command_timeout: float = COMMAND_TIMEOUT) -> None:
        self.spec = spec
        self._private_key = private_key
        self._prefix = tuple(command_prefix)
        self._wg = wg
        self._ip = ip
        self._wireguard_go = wireguard_go
        self._timeout = command_timeout
        self.backend: Backend | None = None
        self._process: asyncio.subprocess.Process | None = None
        self._drain: asyncio.Task[None] | None = None
        self._first_look = True  # an interface seen before we made one is left over
        self._left_over = False  # ... by a wireguard-go that outlived its daemon

    @property
    def userspace_pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def userspace_running(self) -> bool:
        return self._process is not None and self._process.returncode is None

    def update_spec(self, spec: InterfaceSpec) -> None:
        """New roster or config: the next ``repair()`` adds and removes peers to match."""
        if spec.name != self.spec.name:
            raise WireGuardError("the WireGuard interface name cannot change while running "
                                 f"({self.spec.name!r} -> {spec.name!r}); restart the node")
        self.spec = spec

    async def _run(self, *argv: str, stdin: bytes | None = None,
                   check: bool = True) -> tuple[int, str, str]:
        full = (*self._prefix, *argv)
        try:
            proc = await asyncio.create_subprocess_exec(
                *full, stdin=asyncio.subprocess.PIPE if stdin is not None else
                asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE)
        except FileNotFoundError:
            raise CommandError(full, None, f"{full[0]} not found on PATH") from None
        except OSError as exc:
            raise CommandError(full, None, exc.strerror or str(exc)) from None
        try:
            out, err = await asyncio.wait_for(proc.communicate(stdin), self._timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise CommandError(full, None, f"no answer within {self._timeout:g} s") from None
        rc = proc.returncode if proc.returncode is not None else -1
        result = (rc, out.decode(errors="replace"), err.decode(errors="replace"))
        if check and rc != 0:
            raise CommandError(full, rc, result[2])
        return result

    async def _link(self) -> LinkState | None:
        rc, out, err = await self._run(self._ip, "-j", "addr", "show", "dev", self.spec.name,
                                       check=False)
        if rc != 0:
            if "does not exist" in err:
                return None
            raise CommandError((*self._prefix, self._ip, "-j", "addr", "show", "dev",
                                self.spec.name), rc, err)
        return parse_ip_addr_json(out, self.spec.name)

    async def _device(self) -> tuple[DeviceState | None, str | None]:
        rc, out, err = await self._run(self._wg, "show", self.spec.name, "dump", check=False)
        if rc != 0:
            return None, err.strip() or f"exit {rc}"
        return parse_wg_dump(out), None

    async def observe(self) -> Observation:
        link = await self._link()
        device, error = await self._device()
        alive = None
        if self._first_look and self.backend is None and link is not None \
                and device is not None:
            self._take_over()
        self._first_look = False
        if self.backend is Backend.USERSPACE:
            alive = self.userspace_running
        return Observation(link=link, device=device, device_error=error, process_alive=alive)

    def _take_over(self) -> None:
        """The interface exists before we made it: a previous run (killed, crashed) left it."""
        if uapi_socket(self.spec.name).exists():
            # Its wireguard-go is not our child: we could neither watch nor stop it. The
            # plan sees a dead process and recreates the interface; _create deletes the
            # link first, which makes that wireguard-go exit.
            log.warning("WireGuard interface %s was left by a wireguard-go that outlived "
                        "its daemon (killed?): replacing it with our own", self.spec.name)
            self.backend = Backend.USERSPACE
            self._left_over = True
        else:
            log.warning("WireGuard interface %s (kernel) was left by a previous run that did "
                        "not stop cleanly: taking it over", self.spec.name)
            self.backend = Backend.KERNEL

    async def repair(self, now: float | None = None) -> RepairReport:
        """Observe, plan, apply. Never raises for a failed command: it is a problem."""
        now = time.time() if now is None else now
        applied: list[str] = []
        try:
            seen = await self.observe()
        except WireGuardError as exc:
            return RepairReport((), (str(exc),), ())
        plan = plan_repairs(self.spec, seen, now)
        problems = list(plan.problems)
        device = seen.device
        for action in plan.actions:
            try:
                await self._apply(action)
            except WireGuardError as exc:
                problems.append(f"{_describe(action)}: {exc}")
                if isinstance(action, CreateInterface):
                    break  # nothing else can be applied to a missing interface
                continue
            applied.append(_describe(action))
            if isinstance(action, CreateInterface):
                log.warning("WireGuard interface %s (re)created (%s)", self.spec.name,
                            self.backend.value if self.backend else "?")
        if applied:
            log.info("WireGuard %s: %s", self.spec.name, "; ".join(applied))
            with contextlib.suppress(WireGuardError):
                device, _ = await self._device()
        for problem in problems:
            log.error("WireGuard %s: %s", self.spec.name, problem)
        return RepairReport(tuple(applied), tuple(problems),
                            tuple(peer_health(self.spec, device, now)))

    async def _apply(self, action: Action) -> None:
        name = self.spec.name
        match action:
            case CreateInterface():
                await self._create()
            case ConfigureDevice():
                await self._run(self._wg, "set", name, "listen-port", str(self.spec.listen_port),
                                "private-key", "/dev/stdin",
                                stdin=self._private_key.encode("ascii") + b"\n")
            case SetPeer(peer=peer, set_endpoint=endpoint):
                argv = [self._wg, "set", name, "peer", peer.public_key]
                if endpoint:
                    argv += ["endpoint", peer.endpoint]
                argv += ["allowed-ips", peer.allowed_ip,
                         "persistent-keepalive", str(self.spec.persistent_keepalive)]
                await self._run(*argv)
            case RemovePeer(public_key=key):
                await self._run(self._wg, "set", name, "peer", key, "remove")
            case AddAddress(address=address):
                await self._run(self._ip, "address", "add", str(address), "dev", name)
            case RemoveAddress(address=address):
                await self._run(self._ip, "address", "del", str(address), "dev", name)
            case SetLinkUp():
                await self._run(self._ip, "link", "set", "up", "dev", name)

    async def _create(self) -> None:
        await self._stop_process()
        if self._left_over:
            await self._remove_left_over()
        if self.backend is not Backend.USERSPACE:
            rc, _, err = await self._run(self._ip, "link", "add", self.spec.name, "type",
                                         "wireguard", check=False)
            if rc == 0:
                self.backend = Backend.KERNEL
                return
            if "Operation not permitted" in err:
                raise CommandError((*self._prefix, self._ip, "link", "add", self.spec.name,
                                    "type", "wireguard"), rc,
                                   err + " (the daemon needs CAP_NET_ADMIN)")
            if "exists" in err:
                raise WireGuardError(f"a link named {self.spec.name!r} already exists")
            log.info("no kernel WireGuard (%s); using wireguard-go", err.strip())
        self.backend = Backend.USERSPACE
        await self._start_userspace()

    async def _remove_left_over(self) -> None:
        """Delete a left-over wireguard-go link and wait (bounded) for its process to go:
        it removes its UAPI socket as it exits, which frees the name for ours."""
        self._left_over = False
        name = self.spec.name
        await self._run(self._ip, "link", "del", "dev", name, check=False)
        socket_path = uapi_socket(name)
        deadline = time.monotonic() + STALE_EXIT_TIMEOUT
        while socket_path.exists():
            if time.monotonic() > deadline:
                raise WireGuardError(
                    f"the left-over wireguard-go of {name!r} did not exit within "
                    f"{STALE_EXIT_TIMEOUT:g} s after its link was deleted (its socket "
                    f"{socket_path} is still there); stop it by hand")
            await asyncio.sleep(0.05)  # poll period of a bounded wait for the exit
        log.warning("WireGuard interface %s: the left-over wireguard-go is gone", name)

    async def _start_userspace(self) -> None:
        argv = (*self._prefix, self._wireguard_go, "-f", self.spec.name)
        env = dict(os.environ, WG_PROCESS_FOREGROUND="1", LOG_LEVEL="error")
        prctl = _libc_prctl()
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT, env=env, start_new_session=True,
                preexec_fn=None if prctl is None else _die_with_parent(os.getpid(), prctl))
        except FileNotFoundError:
            raise CommandError(argv, None, "no kernel WireGuard and wireguard-go not found "
                               "on PATH (apt-get install wireguard-go)") from None
        self._process = proc
        deadline = time.monotonic() + USERSPACE_READY_TIMEOUT
        while True:
            if proc.returncode is not None or (
                    await _wait_exit(proc, 0.02)):
                out = b""
                if proc.stdout is not None:
                    out = await proc.stdout.read()
                self._process = None
                raise CommandError(argv, proc.returncode, out.decode(errors="replace")[-500:])
            try:
                device, error = await self._device()
            except CommandError as exc:  # `wg` itself cannot run: no point waiting
                await self._stop_process()
                raise CommandError(argv, None, f"cannot check the interface: {exc}") from None
            link = await self._link()
            if device is not None and link is not None:
                break
            if time.monotonic() > deadline:
                await self._stop_process()
                raise CommandError(argv, None, "interface not ready within "
                                   f"{USERSPACE_READY_TIMEOUT:g} s (`wg show`: {error})")
        self._drain = asyncio.create_task(self._log_output(proc))
        log.info("wireguard-go %s started (pid %d)", self.spec.name, proc.pid)

    async def _log_output(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        async for line in proc.stdout:
            log.warning("wireguard-go %s: %s", self.spec.name,
                        line.decode(errors="replace").rstrip()[:300])
        code = await proc.wait()
        log.warning("wireguard-go %s (pid %d) exited with %s", self.spec.name, proc.pid, code)

    async def _stop_process(self) -> None:
        proc, self._process = self._process, None
        drain, self._drain = self._drain, None
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)  # removes the link and the UAPI socket
            if not await _wait_exit(proc, 3.0):
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        if drain is not None:
            drain.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await drain

    async def close(self) -> None:
        """Remove the interface this manager made (stop wireguard-go / delete the link)."""
        if self.backend is Backend.USERSPACE:
            await self._stop_process()
        elif self.backend is Backend.KERNEL:
            with contextlib.suppress(WireGuardError):
                await self._run(self._ip, "link", "del", "dev", self.spec.name, check=False)


async def _wait_exit(proc: asyncio.subprocess.Process, timeout: float) -> bool:
    try:
        await asyncio.wait_for(proc.wait(), timeout)
    except TimeoutError:
        return False
    return True
