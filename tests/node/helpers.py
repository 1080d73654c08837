"""Shared pieces of the node tests: node directories, free ports, file snapshots."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from onionmesh.node.cluster_setup import InitResult, init_cluster

PYTHON = sys.executable
FAST = {
    "coordination": {"heartbeat_interval": 1.0, "lease_duration": 3.0, "lease_grace": 0.5},
    "resilience": {"require_ntp_sync": False},
}


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port the kernel just handed out on 127.0.0.1 (ephemeral, not a fixed number)."""
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_cluster(root: Path, node_id: str = "n1", *, tor_options: tuple[str, ...] = (),
                 service_port: int | None = None,
                 settings: dict[str, dict[str, Any]] | None = None) -> InitResult:
    """``init`` a cluster in ``root`` with a free coordination port and the fast profile."""
    merged: dict[str, dict[str, Any]] = {k: dict(v) for k, v in FAST.items()}
    for section, keys in (settings or {}).items():
        merged.setdefault(section, {}).update(keys)
    ports = [f"80 127.0.0.1:{service_port}"] if service_port else []
    return init_cluster(root, node_id=node_id,
                        listen=f"127.0.0.1:{free_port(socket.SOCK_DGRAM)}",
                        tor_options=tor_options, service_ports=ports, settings=merged)


def tree_snapshot(root: Path) -> dict[str, tuple[bytes, int, int]]:
    """Every regular file under ``root``: (content, mtime_ns, mode)."""
    result = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink():
            info = path.stat()
            result[str(path.relative_to(root))] = (path.read_bytes(), info.st_mtime_ns,
                                                   info.st_mode)
    return result


def onionmesh(*args: str, env: dict[str, str] | None = None, timeout: float = 60.0,
              stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run the CLI in a child process (real exit codes, real stderr)."""
    full_env = dict(os.environ, **(env or {}))
    return subprocess.run(
        [PYTHON, "-m", "onionmesh.cli", *args], capture_output=True, text=True,
        timeout=timeout, env=full_env, input=stdin, check=False,
    )
