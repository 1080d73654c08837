"""The tors of a test network as seen by tests: authorities, clients and onion services."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from onionmesh.testnet.errors import SocksError, TestnetError, TestnetTimeout
from onionmesh.testnet.socks import HttpResponse, http_get_via_socks
from onionmesh.tor.process import TorProcess, stop_pid

# tor rate-limits NEWNYM to one per 10 s and silently delays extra ones; waiting out the
# remainder makes newnym() mean "the next circuit/descriptor fetch is fresh".
NEWNYM_INTERVAL = 10.0


def run_coroutine(coro: Any, timeout: float | None = None) -> Any:
    """Run ``coro`` to completion from synchronous code, even inside a running event loop.

    The harness is used from sync fixtures and from async tests alike; a private thread with
    its own loop keeps both working (control connections are opened and closed inside it).
    """
    result: dict[str, Any] = {}

    def runner() -> None:
        try:
            result["value"] = asyncio.run(coro)
        except BaseException as exc:
            result["error"] = exc

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    thread = threading.Thread(target=runner, name="onionmesh-testnet-sync", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise TestnetTimeout(f"harness operation did not finish within {timeout} s")
    if "error" in result:
        raise result["error"]
    return result["value"]


@dataclass
class TorNode:
    """A tor of the network: its name, role, ports and supervised process."""

    name: str
    role: str  # "authority", "client" or "service"
    data_dir: Path
    control_port: int
    process: TorProcess
    or_port: int | None = None
    dir_port: int | None = None
    socks_port: int | None = None
    fingerprint: str | None = None
    v3ident: str | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid

    @property
    def log_path(self) -> Path:
        return self.data_dir / "notice.log"

    @property
    def cookie_path(self) -> Path:
        return self.data_dir / "control_auth_cookie"

    def is_running(self) -> bool:
        return self.process.is_running()

    def stop(self) -> None:
        self.process.stop()

    def state(self) -> dict[str, Any]:
        """JSON-able description for the state file and ``testnet status``."""
        return {
            "name": self.name,
            "role": self.role,
            "pid": self.process.pid,
            "start_time": self.process.start_time,
            "data_dir": str(self.data_dir),
            "control_port": self.control_port,
            "or_port": self.or_port,
            "dir_port": self.dir_port,
            "socks_port": self.socks_port,
            "fingerprint": self.fingerprint,
        }


@dataclass
class TorClient(TorNode):
    """A client tor with an ExtendedErrors SOCKS port."""

    _last_newnym: float = field(default=0.0, repr=False)

    async def anewnym(self) -> None:
        """Send ``SIGNAL NEWNYM`` (waiting out tor's 10 s rate limit first)."""
        from onionmesh.tor.control import TorController

        wait = self._last_newnym + NEWNYM_INTERVAL - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)  # rate-limit spacing, not a readiness wait
        controller = await TorController.connect(port=self.control_port, timeout=10.0)
        try:
            await controller.signal("NEWNYM")
        finally:
            await controller.close()
        self._last_newnym = time.monotonic()

    def newnym(self) -> None:
        """Synchronous :meth:`anewnym`."""
        run_coroutine(self.anewnym(), timeout=30.0)

    def http_get(
        self, onion_host: str, path: str = "/", *, timeout: float = 30.0, retry_for: float = 0.0
    ) -> HttpResponse:
        """GET through this client; on failure NEWNYM and retry until ``retry_for`` s passed."""
        if self.socks_port is None:
            raise TestnetError(f"client {self.name!r} has no SOCKS port")
        deadline = time.monotonic() + retry_for
        errors: list[str] = []
        while True:
            try:
                return http_get_via_socks(self.socks_port, onion_host, path, timeout)
            except SocksError as exc:
                errors.append(str(exc))
                if time.monotonic() + NEWNYM_INTERVAL > deadline:
                    raise SocksError(
                        f"GET http://{onion_host}{path} via {self.name} failed "
                        f"{len(errors)} time(s) within {retry_for:.0f} s; last: {errors[-1]}",
                        exc.code,
                    ) from exc
            # A failed onion fetch leaves "no more HSDirs to query" state behind; NEWNYM
            # clears it so the next attempt fetches the descriptor again (docs/testnet.md §6).
            self.newnym()

    def browser_get(self, onion_host: str, path: str = "/", *,
                    timeout: float = 30.0) -> HttpResponse:
        """One GET on a circuit of its own (fresh SOCKS credentials, like a new Tor Browser
        tab), keeping tor's descriptor cache: no NEWNYM, no retry beyond tor's own."""
        if self.socks_port is None:
            raise TestnetError(f"client {self.name!r} has no SOCKS port")
        return http_get_via_socks(self.socks_port, onion_host, path, timeout,
                                  isolation=os.urandom(8).hex())

    async def abrowser_get(self, onion_host: str, path: str = "/", *,
                           timeout: float = 30.0) -> HttpResponse:
        """:meth:`browser_get` from async code."""
        return await asyncio.to_thread(self.browser_get, onion_host, path, timeout=timeout)

    async def ahttp_get(
        self, onion_host: str, path: str = "/", *, timeout: float = 30.0, retry_for: float = 0.0
    ) -> HttpResponse:
        """:meth:`http_get` from async code without blocking the event loop."""
        return await asyncio.to_thread(
            self.http_get, onion_host, path, timeout=timeout, retry_for=retry_for
        )


@dataclass
class ServiceInstance(TorNode):
    """A tor running one v3 onion service, possibly an Onionbalance instance, plus its backend."""

    onion_address: str = ""  # 56 characters, no ".onion"
    hs_dir: Path = Path()
    target_port: int = 0
    virtual_port: int = 80
    ob_master: str | None = None
    backend: subprocess.Popen[bytes] | None = None
    backend_start_time: int | None = None
    uploads: int = 0  # HS_DESC UPLOADED events seen while waiting for readiness

    @property
    def hostname(self) -> str:
        return f"{self.onion_address}.onion"

    def stop(self) -> None:
        """Stop tor and the backend (by their PIDs)."""
        self.process.stop()
        self.stop_backend()

    def stop_backend(self) -> None:
        if self.backend is not None and self.backend.poll() is None:
            stop_pid(self.backend.pid, self.backend_start_time, timeout=5.0)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.backend.wait(5.0)

    def state(self) -> dict[str, Any]:
        data = super().state()
        data.update(
            onion_address=self.onion_address,
            hs_dir=str(self.hs_dir),
            target_port=self.target_port,
            ob_master=self.ob_master,
            backend_pid=self.backend.pid if self.backend is not None else None,
            backend_start_time=self.backend_start_time,
        )
        return data
