"""Read the testnet state file and act on it: which PIDs still run, stop them by PID.

``onionmesh testnet up`` (detached mode) returns while the tors keep running; the state file
it leaves (``<dir>/testnet.json``) records each process's PID and its start time from
``/proc/PID/stat``, so ``down`` signals exactly those processes and never a recycled PID.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from onionmesh.testnet.errors import StateFileError
from onionmesh.tor.process import pid_alive, stop_pid


def load_state(path: Path) -> dict[str, Any]:
    """Parse a state file; :class:`StateFileError` if missing or malformed."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError as exc:
        raise StateFileError(f"no testnet state file at {path}") from exc
    except OSError as exc:
        raise StateFileError(f"cannot read testnet state file {path}: {exc.strerror}") from exc
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise StateFileError(f"testnet state file {path} is not valid JSON") from exc
    if not isinstance(data, dict) or not isinstance(data.get("nodes"), list):
        raise StateFileError(f"testnet state file {path} has no 'nodes' list")
    for node in data["nodes"]:
        if not isinstance(node, dict) or not isinstance(node.get("name"), str):
            raise StateFileError(f"testnet state file {path} has a node without a name")
        for key in ("pid", "start_time", "backend_pid", "backend_start_time"):
            value = node.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise StateFileError(f"node {node['name']!r} in {path}: {key} is not an integer")
    return data


def _processes(state: dict[str, Any]) -> list[tuple[str, int, int | None]]:
    """(label, pid, start_time) of every process a state names."""
    found = []
    for node in state["nodes"]:
        if node.get("pid"):
            found.append((node["name"], node["pid"], node.get("start_time")))
        if node.get("backend_pid"):
            found.append(
                (f"{node['name']}-backend", node["backend_pid"], node.get("backend_start_time"))
            )
    return found


def running_pids(state: dict[str, Any]) -> list[int]:
    """PIDs from the state that still run with the recorded start time."""
    return [pid for _, pid, start in _processes(state) if pid > 1 and pid_alive(pid, start)]


def stop_from_state(path: Path, timeout: float = 10.0) -> list[str]:
    """Stop every process the state file lists (start time verified); return what was stopped."""
    state = load_state(path)
    stopped = []
    # Services and clients first, authorities last, like an orderly shutdown.
    for label, pid, start in reversed(_processes(state)):
        if pid > 1 and pid_alive(pid, start):
            stop_pid(pid, start, timeout)
            stopped.append(f"{label} (pid {pid})")
    return stopped


def status_lines(state: dict[str, Any]) -> list[str]:
    """Human-readable status, one line per node."""
    lines = [
        f"network in {state.get('base_dir')} base port {state.get('base_port')}, "
        f"{state.get('n_authorities')} authorities"
    ]
    for node in state["nodes"]:
        pid = node.get("pid")
        alive = bool(pid) and pid_alive(pid, node.get("start_time"))
        ports = [
            f"{label}={node[key]}"
            for label, key in (("control", "control_port"), ("socks", "socks_port"),
                               ("or", "or_port"), ("dir", "dir_port"))
            if node.get(key)
        ]  # fmt: skip
        extra = f" {node['onion_address']}.onion" if node.get("onion_address") else ""
        lines.append(
            f"  {node['name']:<10} {node.get('role', '?'):<9} "
            f"{'running' if alive else 'stopped'} pid={pid} {' '.join(ports)}{extra}"
        )
    return lines
