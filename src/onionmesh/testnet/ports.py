"""Reserve a block of free loopback ports for one private network.

A network needs fixed ports (the DirAuthority lines name every authority's ORPort and DirPort),
so ``auto`` ports are not an option. Several test sessions may run at once on this machine, so a
block is chosen at random below the kernel's ephemeral range, every port in it is probed by
binding, and the block is claimed with an ``flock`` on a lock file so two harnesses in
different processes never pick the same block while both are alive.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import random
import socket
import tempfile
from pathlib import Path

from onionmesh.testnet.errors import PortAllocationError

BLOCK_SIZE = 200
# Below Linux's default ephemeral range (32768-60999) so outgoing connections do not hold them.
LOW_PORT = 10000
HIGH_PORT = 32000


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """True if a TCP listener could bind ``host:port`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


class PortBlock:
    """``size`` consecutive ports from ``base``, claimed by a lock file while open."""

    def __init__(self, base: int, size: int, lock_fd: int | None) -> None:
        self.base = base
        self.size = size
        self._lock_fd = lock_fd
        self._next = 0

    def __repr__(self) -> str:
        return f"PortBlock(base={self.base}, size={self.size})"

    def port(self, offset: int) -> int:
        """The port at ``offset`` inside the block."""
        if not 0 <= offset < self.size:
            raise PortAllocationError(f"port offset {offset} outside block of {self.size}")
        return self.base + offset

    def take(self, first_offset: int) -> int:
        """Hand out the next port at or after ``first_offset`` that is free right now."""
        self._next = max(self._next, first_offset)
        while self._next < self.size:
            port = self.base + self._next
            self._next += 1
            if port_is_free(port):
                return port
        raise PortAllocationError(f"port block {self.base}..{self.base + self.size - 1} is used up")

    def release(self) -> None:
        """Drop the claim on the block (the ports themselves are closed by their users)."""
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._lock_fd)
            self._lock_fd = None


def _lock_dir() -> Path:
    path = Path(tempfile.gettempdir()) / "onionmesh-port-locks"
    path.mkdir(mode=0o1777, exist_ok=True)
    return path


def _claim(base: int) -> int | None:
    fd = os.open(_lock_dir() / f"{base}.lock", os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def reserve_block(
    needed: int, *, base: int | None = None, size: int = BLOCK_SIZE, attempts: int = 60
) -> PortBlock:
    """Reserve a block whose first ``needed`` ports are free now.

    With ``base`` given, only that block is tried (and must be free); otherwise random blocks
    in ``LOW_PORT..HIGH_PORT`` are tried.
    """
    if needed > size:
        raise PortAllocationError(f"need {needed} fixed ports but a block has only {size}")
    if base is not None:
        if not 1024 < base <= 65535 - size:
            raise PortAllocationError(f"base port {base} must be in 1025..{65535 - size}")
        candidates = [base]
    else:
        starts = list(range(LOW_PORT, HIGH_PORT - size, size))
        candidates = random.sample(starts, min(attempts, len(starts)))
    for start in candidates:
        fd = _claim(start)
        if fd is None:
            continue
        if all(port_is_free(start + offset) for offset in range(needed)):
            return PortBlock(start, size, fd)
        os.close(fd)
    where = f"at base {base}" if base is not None else f"in {len(candidates)} random blocks"
    raise PortAllocationError(f"no block of {needed} free loopback ports {where}")
