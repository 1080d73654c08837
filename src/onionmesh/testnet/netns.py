"""Test hosts in network namespaces on a bridge, with fault injection (root only).

``HostLab(n)`` makes one bridge namespace (``<prefix>-sw``) and ``n`` host namespaces
(``<prefix>-h1`` ...), each with ``lo`` and an ``eth0`` on the bridge at
``10.231.0.<i>/24``. Every name starts with a prefix unique to the lab (it holds our
PID and a counter) so concurrent labs and other users' namespaces are never touched.
Nothing leaves the namespaces: the bridge has no uplink.

Faults, all inside our namespaces (this kernel has no netem):
  block_udp_port(i, port)   nft table in host i: drop that UDP port both ways
  cut(i, j)                 nft bridge table in the switch: drop frames between i and j
  loss(i, percent, port)    nft numgen drop on host i's egress
  delay(i, port, ms, loss)  NFQUEUE + nfq_delay in host i (delay, jitter, loss)
Teardown (``down``): SIGTERM then SIGKILL what we started, SIGKILL whatever else is left
in *our* namespaces (``ip netns pids``), delete them (the veths and bridge go with them),
and remove the UAPI sockets of the interface names ``iface()`` handed out.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from typing import Any

from onionmesh.errors import OnionmeshError
from onionmesh.wireguard.names import UAPI_DIR

UNDERLAY = "10.231.0.{}"
UNDERLAY_PREFIX = 24
_counter = itertools.count(1)


def stop_processes(procs: Iterable[subprocess.Popen[Any] | None], grace: float) -> None:
    """SIGTERM every live process at once, then wait up to ``grace`` seconds for each
    and SIGKILL the ones still running (the daemons release leases on SIGTERM)."""
    live = [proc for proc in procs if proc is not None]
    for proc in live:
        if proc.poll() is None:
            proc.terminate()
    for proc in live:
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


class LabError(OnionmeshError):
    """A namespace, link or nft rule could not be made (needs root, iproute2, nftables)."""


def _run(argv: Sequence[str], stdin: str | None = None) -> str:
    try:
        done = subprocess.run(list(argv), input=stdin, text=True, capture_output=True,
                              timeout=15, check=False)
    except FileNotFoundError:
        raise LabError(f"{argv[0]} not found: scripts/install-system-deps.sh installs it") \
            from None
    if done.returncode != 0:
        raise LabError(f"`{' '.join(argv)}` failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def require_lab_tools() -> list[str]:
    """What is missing to run a lab (empty when all is there)."""
    missing = [tool for tool in ("ip", "nft", "iptables", "wg", "wireguard-go")
               if shutil.which(tool) is None]
    if os.geteuid() != 0:
        missing.append("root (network namespaces)")
    return missing


class HostLab:
    def __init__(self, n_hosts: int, tag: str = "lab") -> None:
        if not 1 <= n_hosts <= 200:
            raise LabError(f"a lab has 1-200 hosts, not {n_hosts}")
        # ip netns names are free-form but we keep them short; the PID makes them ours.
        self.prefix = f"om{tag}{os.getpid()}x{next(_counter)}"
        self.n_hosts = n_hosts
        self.switch = f"{self.prefix}-sw"
        self._namespaces: list[str] = []
        self._processes: list[subprocess.Popen[Any]] = []
        self._tables: set[tuple[str, str, str]] = set()  # (netns, family, table)
        self._delayers: dict[tuple[int, int], subprocess.Popen[Any]] = {}
        self._queue_rules: dict[tuple[int, int], int] = {}
        self._ifaces: list[str] = []  # names handed out by iface(): their UAPI sockets

    def ns(self, host: int) -> str:
        return f"{self.prefix}-h{host}"

    def ip(self, host: int) -> str:
        return UNDERLAY.format(host)

    def prefix_for(self, host: int) -> list[str]:
        """Command prefix that runs a program inside host ``host``."""
        return ["ip", "netns", "exec", self.ns(host)]

    def iface(self, host: int, what: str = "w") -> str:
        """An interface name unique machine-wide (<= 15 characters) for host ``host``."""
        name = f"o{os.getpid() % 100000}{what}{next(_counter)}h{host}"
        if len(name) > 15:
            raise LabError(f"interface name {name!r} too long")
        self._ifaces.append(name)
        return name

    # --- lifecycle ---

    def up(self) -> HostLab:
        try:
            self._add_ns(self.switch)
            _run(["ip", "-n", self.switch, "link", "add", "br0", "type", "bridge"])
            _run(["ip", "-n", self.switch, "link", "set", "br0", "up"])
            for host in range(1, self.n_hosts + 1):
                self.add_host(host)
        except BaseException:
            self.down()
            raise
        return self

    def add_host(self, host: int) -> None:
        ns = self.ns(host)
        self._add_ns(ns)
        _run(["ip", "-n", ns, "link", "set", "lo", "up"])
        _run(["ip", "link", "add", f"v{host}", "netns", self.switch, "type", "veth",
              "peer", "name", "eth0", "netns", ns])
        _run(["ip", "-n", self.switch, "link", "set", f"v{host}", "master", "br0", "up"])
        _run(["ip", "-n", ns, "addr", "add", f"{self.ip(host)}/{UNDERLAY_PREFIX}", "dev", "eth0"])
        _run(["ip", "-n", ns, "link", "set", "eth0", "up"])

    def _add_ns(self, name: str) -> None:
        _run(["ip", "netns", "add", name])
        self._namespaces.append(name)

    def popen(self, host: int, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start a program in host ``host`` (``ip netns exec`` execs: the PID is the program's)."""
        proc = subprocess.Popen([*self.prefix_for(host), *argv], **kwargs)
        self._processes.append(proc)
        return proc

    def run(self, host: int, argv: Sequence[str], stdin: str | None = None) -> str:
        return _run([*self.prefix_for(host), *argv], stdin)

    def down(self) -> None:
        for proc in self._processes:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.terminate()
        deadline = time.monotonic() + 3
        for proc in self._processes:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        self._processes.clear()
        for ns in reversed(self._namespaces):
            for pid in self.pids(ns):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(LabError):
                _run(["ip", "netns", "del", ns])
        self._namespaces.clear()
        self._tables.clear()
        # A SIGKILLed wireguard-go leaves its UAPI socket behind (the path is global).
        for name in self._ifaces:
            with contextlib.suppress(FileNotFoundError):
                (UAPI_DIR / f"{name}.sock").unlink()

    def pids(self, ns: str) -> list[int]:
        try:
            out = _run(["ip", "netns", "pids", ns])
        except LabError:
            return []
        return [int(pid) for pid in out.split()]

    def leftovers(self) -> list[str]:
        """Our namespaces that still exist (empty after a clean ``down``)."""
        existing = _run(["ip", "netns", "list"]).split()
        return [name for name in existing if name.startswith(self.prefix + "-")]

    def __enter__(self) -> HostLab:
        return self.up()

    def __exit__(self, *exc: object) -> None:
        self.down()

    # --- faults ---

    def _nft(self, ns: str, script: str) -> None:
        _run(["ip", "netns", "exec", ns, "nft", "-f", "-"], stdin=script)

    def block_udp_port(self, host: int, port: int) -> None:
        table = f"block{port}"
        self._nft(self.ns(host), (
            f"table inet {table} {{\n"
            f"  chain in {{ type filter hook input priority 0; udp dport {port} drop; "
            f"udp sport {port} drop; }}\n"
            f"  chain out {{ type filter hook output priority 0; udp dport {port} drop; "
            f"udp sport {port} drop; }}\n}}\n"))
        self._tables.add((self.ns(host), "inet", table))

    def unblock_udp_port(self, host: int, port: int) -> None:
        self._drop_table(self.ns(host), "inet", f"block{port}")

    def cut(self, a: int, b: int) -> None:
        a, b = sorted((a, b))
        table = f"cut{a}x{b}"
        self._nft(self.switch, (
            f"table bridge {table} {{\n  chain cut {{ type filter hook forward priority 0; "
            f'iifname "v{a}" oifname "v{b}" drop; iifname "v{b}" oifname "v{a}" drop; }}\n}}\n'))
        self._tables.add((self.switch, "bridge", table))

    def heal(self, a: int, b: int) -> None:
        a, b = sorted((a, b))
        self._drop_table(self.switch, "bridge", f"cut{a}x{b}")

    def loss(self, host: int, percent: int, udp_port: int) -> None:
        """Drop ``percent`` % of host's outgoing datagrams from or to ``udp_port``."""
        if not 0 <= percent <= 100:
            raise LabError(f"loss must be 0-100 %, not {percent}")
        table = f"loss{udp_port}"
        self._drop_table(self.ns(host), "inet", table)
        # numgen takes 0-99: 100 % is a plain drop.
        chance = "" if percent == 100 else f"numgen random mod 100 < {percent} "
        self._nft(self.ns(host), (
            f"table inet {table} {{\n  chain out {{ type filter hook output priority 0; "
            f"udp sport {udp_port} {chance}drop; "
            f"udp dport {udp_port} {chance}drop; }}\n}}\n"))
        self._tables.add((self.ns(host), "inet", table))

    def clear_loss(self, host: int, udp_port: int) -> None:
        self._drop_table(self.ns(host), "inet", f"loss{udp_port}")

    def delay(self, host: int, udp_port: int, delay_ms: float, loss: float = 0.0,
              jitter_ms: float = 0.0, queue: int = 7) -> None:
        """Delay (and drop ``loss`` % of) host's outgoing datagrams from/to ``udp_port``
        through NFQUEUE and ``nfq_delay`` running in the host's namespace."""
        self.clear_delay(host, udp_port)
        proc = self.popen(host, [sys.executable, "-m", "onionmesh.testnet.nfq_delay",
                                 "--queue", str(queue), "--delay-ms", str(delay_ms),
                                 "--jitter-ms", str(jitter_ms), "--loss", str(loss)],
                          stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "ready":
            proc.kill()
            raise LabError("nfq_delay did not start (is fnfqueue installed?)")
        self._delayers[(host, udp_port)] = proc
        # This kernel has no nft `queue` expression (CONFIG_NFT_QUEUE): the xtables
        # NFQUEUE target through iptables-nft does the same; `--queue-bypass` lets packets
        # through undelayed if the delayer dies.
        for direction in ("--sport", "--dport"):
            self.run(host, ["iptables", "-I", "OUTPUT", "-p", "udp", direction, str(udp_port),
                            "-j", "NFQUEUE", "--queue-num", str(queue), "--queue-bypass"])
        self._queue_rules[(host, udp_port)] = queue

    def clear_delay(self, host: int, udp_port: int) -> None:
        queue = self._queue_rules.pop((host, udp_port), None)
        if queue is not None:
            for direction in ("--sport", "--dport"):
                self.run(host, ["iptables", "-D", "OUTPUT", "-p", "udp", direction,
                                str(udp_port), "-j", "NFQUEUE", "--queue-num", str(queue),
                                "--queue-bypass"])
        proc = self._delayers.pop((host, udp_port), None)
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    def _drop_table(self, ns: str, family: str, table: str) -> None:
        if (ns, family, table) in self._tables:
            self._nft(ns, f"delete table {family} {table}\n")
            self._tables.discard((ns, family, table))
