"""Start, supervise and stop tor processes, always by PID.

A :class:`TorProcess` runs ``tor -f <torrc> --defaults-torrc <empty file>`` (an empty regular
file, because ``-f /dev/null`` is refused and without ``--defaults-torrc`` tor would also read
``/etc/tor/torrc``). With supervision on, a watcher thread blocks in ``wait()`` on the child and
starts it again with the same torrc if it dies without being asked to, with exponential backoff
so a tor that cannot start does not spin.

Stopping is by PID only: SIGTERM, a bounded wait, then SIGKILL. For PIDs recorded in a state
file by an earlier command, :func:`stop_pid` first checks that the process start time in
``/proc/PID/stat`` still equals the recorded one, so a recycled PID is never signalled.
Readiness beyond "the control port answers" is the caller's business (see onionmesh.testnet).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

from onionmesh.errors import OnionmeshError

log = logging.getLogger(__name__)

# How long a stopped tor gets between SIGTERM and SIGKILL. With ShutdownWaitLength 0 tor
# exits in well under a second; the bound only matters for a wedged process.
DEFAULT_STOP_TIMEOUT = 10.0


class TorProcessError(OnionmeshError):
    """A tor process could not be started, did not become ready, or was misused."""


class TorProcessTimeout(TorProcessError, TimeoutError):
    """A tor process did not reach a state within its bound."""


def log_tail(path: Path | None, lines: int = 15) -> str:
    """The last ``lines`` lines of a log file, for error messages ("" if unreadable)."""
    if path is None:
        return ""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 16384))
            data = handle.read()
    except OSError:
        return ""
    text = data.decode("utf-8", "replace")
    return "\n".join(text.splitlines()[-lines:])


def process_start_time(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot (``/proc/PID/stat`` field 22), or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read().decode("ascii", "replace")
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may contain spaces; split after it.
    _, _, rest = stat.rpartition(")")
    fields = rest.split()
    try:
        return int(fields[19])  # field 22 overall = index 19 after "pid (comm)"
    except (IndexError, ValueError):
        return None


def pid_alive(pid: int, start_time: int | None = None) -> bool:
    """True if ``pid`` runs (and, when given, started at ``start_time``); zombies count as dead."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read().decode("ascii", "replace")
    except OSError:
        return False
    _, _, rest = stat.rpartition(")")
    fields = rest.split()
    if not fields or fields[0] in ("Z", "X"):
        return False
    return start_time is None or process_start_time(pid) == start_time


def stop_pid(pid: int, start_time: int | None, timeout: float = DEFAULT_STOP_TIMEOUT) -> bool:
    """Stop a process that is not our child: SIGTERM, wait up to ``timeout``, SIGKILL.

    Only signals ``pid`` if its start time still matches ``start_time`` (when given). Returns
    True if the process is gone afterwards. Zombies (if we are the parent) are reaped.
    """
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 1:
        raise TorProcessError(f"refusing to signal invalid pid {pid!r}")
    if not pid_alive(pid, start_time):
        _reap(pid)
        return True
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _reap(pid)
        if not pid_alive(pid, start_time):
            return True
        time.sleep(0.05)
    if pid_alive(pid, start_time):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    kill_deadline = time.monotonic() + 5.0
    while time.monotonic() < kill_deadline:
        _reap(pid)
        if not pid_alive(pid, start_time):
            return True
        time.sleep(0.05)
    return False


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def ensure_empty_file(path: Path) -> Path:
    """Create (or truncate) an empty regular file, for ``--defaults-torrc`` and ``-f``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


class TorProcess:
    """One tor child process, started from a torrc file, optionally supervised."""

    def __init__(
        self,
        name: str,
        torrc: Path,
        *,
        defaults_torrc: Path,
        log_path: Path | None = None,
        tor_binary: str = "tor",
        control_port: int | None = None,
        supervise: bool = True,
        max_restarts: int = 20,
        on_restart: Callable[[TorProcess], None] | None = None,
    ) -> None:
        self.name = name
        self.torrc = Path(torrc)
        self.defaults_torrc = Path(defaults_torrc)
        self.log_path = log_path
        self.tor_binary = tor_binary
        self.control_port = control_port
        self.supervise = supervise
        self.max_restarts = max_restarts
        self.on_restart = on_restart
        self.restarts = 0
        self.start_time: int | None = None
        self._popen: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._watcher: threading.Thread | None = None
        self._restarted = threading.Condition(self._lock)

    def __repr__(self) -> str:
        return f"TorProcess(name={self.name!r}, pid={self.pid}, restarts={self.restarts})"

    @property
    def pid(self) -> int | None:
        """PID of the current child, or None before start."""
        popen = self._popen
        return popen.pid if popen is not None else None

    @property
    def popen(self) -> subprocess.Popen[bytes] | None:
        """The current ``Popen`` object (it changes when the supervisor restarts tor)."""
        return self._popen

    def is_running(self) -> bool:
        """True while the current child has not exited."""
        popen = self._popen
        return popen is not None and popen.poll() is None

    def command(self) -> list[str]:
        """The exact argv used to start tor."""
        return [
            self.tor_binary,
            "-f",
            str(self.torrc),
            "--defaults-torrc",
            str(self.defaults_torrc),
        ]

    def start(self) -> None:
        """Start tor; raises :class:`TorProcessError` if the binary is missing."""
        with self._lock:
            if self._popen is not None and self._popen.poll() is None:
                raise TorProcessError(f"tor {self.name!r} is already running (pid {self.pid})")
            self._stopping.clear()
            self._spawn_locked()
        if self.supervise and (self._watcher is None or not self._watcher.is_alive()):
            self._watcher = threading.Thread(
                target=self._watch, name=f"tor-supervisor-{self.name}", daemon=True
            )
            self._watcher.start()

    def _spawn_locked(self) -> None:
        if not self.torrc.is_file():
            raise TorProcessError(f"torrc {self.torrc} of tor {self.name!r} does not exist")
        if not self.defaults_torrc.is_file():
            ensure_empty_file(self.defaults_torrc)
        try:
            # Own session: a Ctrl-C aimed at the harness must not kill tor before we stop it,
            # and `onionmesh testnet up` leaves the network running after it returns.
            self._popen = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        except FileNotFoundError as exc:
            raise TorProcessError(
                f"tor binary {self.tor_binary!r} not found on PATH (install the tor package)"
            ) from exc
        self.start_time = process_start_time(self._popen.pid)
        log.debug("started tor %s pid %d", self.name, self._popen.pid)

    def _watch(self) -> None:
        """Supervisor loop: restart tor whenever it exits without stop() being called."""
        backoff = 0.5
        while not self._stopping.is_set():
            popen = self._popen
            if popen is None:
                return
            started = time.monotonic()
            code = popen.wait()
            if self._stopping.is_set():
                return
            if self.restarts >= self.max_restarts:
                log.error("tor %s died (exit %s); restart limit reached", self.name, code)
                return
            # A tor that lived a while gets restarted at once; one that dies at startup
            # (bad torrc, port taken) is retried with growing delays.
            backoff = 0.5 if time.monotonic() - started > 30 else min(backoff * 2, 30.0)
            log.warning("tor %s (pid %d) exited with %s; restarting", self.name, popen.pid, code)
            if self._stopping.wait(backoff):
                return
            with self._lock:
                if self._stopping.is_set():
                    return
                try:
                    self._spawn_locked()
                except TorProcessError:
                    log.exception("restarting tor %s failed", self.name)
                    return
                self.restarts += 1
                self._restarted.notify_all()
            if self.on_restart is not None:
                try:
                    self.on_restart(self)
                except Exception:  # a callback bug must not end supervision
                    log.exception("on_restart callback for tor %s failed", self.name)

    def wait_restarted(self, previous_restarts: int, timeout: float) -> int:
        """Block until the supervisor has restarted tor since ``previous_restarts``; new PID."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self.restarts <= previous_restarts:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TorProcessTimeout(
                        f"tor {self.name!r} was not restarted within {timeout:.0f} s; log tail:\n"
                        f"{log_tail(self.log_path)}"
                    )
                self._restarted.wait(remaining)
            pid = self.pid
        assert pid is not None
        return pid

    def stop(self, timeout: float = DEFAULT_STOP_TIMEOUT) -> None:
        """Stop supervision, SIGTERM the child, SIGKILL it after ``timeout``, reap it."""
        self._stopping.set()
        with self._lock:
            popen = self._popen
        if popen is None:
            return
        if popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                popen.send_signal(signal.SIGTERM)
            try:
                popen.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning(
                    "tor %s ignored SIGTERM for %.0f s; sending SIGKILL", self.name, timeout
                )
                with contextlib.suppress(ProcessLookupError):
                    popen.kill()
                popen.wait(5.0)
        watcher = self._watcher
        if watcher is not None and watcher is not threading.current_thread():
            watcher.join(timeout=5.0)

    def kill_for_test(self) -> int:
        """SIGKILL the current child without stopping supervision (fault injection). Returns PID."""
        popen = self._popen
        if popen is None or popen.poll() is not None:
            raise TorProcessError(f"tor {self.name!r} is not running")
        popen.kill()
        return popen.pid

    async def wait_control_ready(self, timeout: float = 30.0) -> None:
        """Wait until tor's control port accepts an authenticated ``GETINFO version``."""
        if self.control_port is None:
            raise TorProcessError(f"tor {self.name!r} has no control port configured")
        await wait_control_port(
            self.control_port, timeout=timeout, process=self, log_path=self.log_path
        )


async def wait_control_port(
    port: int,
    *,
    timeout: float,
    process: TorProcess | None = None,
    log_path: Path | None = None,
    host: str = "127.0.0.1",
) -> str:
    """Poll until tor on ``port`` authenticates and answers ``GETINFO version``; return it.

    Fails early (not at the deadline) if ``process`` has exited and is not supervised.
    """
    from onionmesh.tor.control import ControlError, TorController

    deadline = time.monotonic() + timeout
    last_error = "no attempt"
    while True:
        if process is not None and not process.supervise and not process.is_running():
            raise TorProcessError(
                f"tor {process.name!r} exited while waiting for its control port {port}; "
                f"log tail:\n{log_tail(log_path)}"
            )
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TorProcessTimeout(
                f"control port {host}:{port} did not answer within {timeout:.0f} s "
                f"(last error: {last_error}); log tail:\n{log_tail(log_path)}"
            )
        try:
            controller = await TorController.connect(
                host=host, port=port, timeout=min(5.0, max(0.5, remaining))
            )
        except (ControlError, OSError) as exc:
            last_error = f"{type(exc).__name__}: {exc}"
        else:
            try:
                info = await controller.get_info("version")
                return info["version"]
            except (ControlError, OSError, KeyError) as exc:
                last_error = f"{type(exc).__name__}: {exc}"
            finally:
                with contextlib.suppress(Exception):
                    await controller.close()
        await asyncio.sleep(min(0.25, max(0.0, deadline - time.monotonic())))
