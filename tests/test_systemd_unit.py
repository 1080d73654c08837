"""The shipped systemd unit matches the CLI: commands parse, paths are the CLI's defaults,
the writable directories are the ones the daemon writes, least privilege holds, and
`systemd-analyze verify` accepts it (it warns about any unknown or malformed directive)."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from onionmesh.cli import build_parser, main
from onionmesh.config import DEFAULT_CONFIG_PATH, load_config
from onionmesh.wireguard.names import UAPI_DIR

ROOT = Path(__file__).resolve().parents[1]
UNIT = ROOT / "packaging" / "systemd" / "onionmesh.service"
TMPFILES = ROOT / "packaging" / "systemd" / "onionmesh.tmpfiles"
INSTALLED = "/opt/onionmesh/bin/onionmesh"  # where docs/operator.md installs the CLI


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], defaultdict(list))
            continue
        assert current is not None, f"directive outside a section: {line}"
        key, _, value = line.partition("=")
        current[key.strip()].append(value.strip())
    return sections


SERVICE = parse_unit(UNIT.read_text())["Service"]


def commands(key: str) -> list[list[str]]:
    return [shlex.split(value) for value in SERVICE[key]]


def test_commands_are_cli_commands_on_the_default_config() -> None:
    parser = build_parser()
    seen = []
    for key in ("ExecStartPre", "ExecStart"):
        for argv in commands(key):
            assert argv[0] == INSTALLED
            args = parser.parse_args(argv[1:])
            assert args.config == DEFAULT_CONFIG_PATH
            seen.append(args.command)
    assert seen == ["config", "keys", "run"]
    # SIGHUP is the daemon's reload (tests/node/test_run_tornet.py sends one to `run`).
    assert commands("ExecReload") == [["/bin/kill", "-HUP", "$MAINPID"]]
    assert SERVICE["KillSignal"] == ["SIGTERM"]


def test_writable_paths_are_what_init_writes(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    writable = [Path(p.lstrip("-")) for p in SERVICE["ReadWritePaths"]]
    config_dir = DEFAULT_CONFIG_PATH.parent
    assert config_dir in writable
    # `onionmesh init --dir /etc/onionmesh` (the operator guide's command), made in a
    # scratch directory: its state directory must fall under a writable path.
    target = tmp_path / "etc-onionmesh"
    assert main(["init", "--dir", str(target), "--node-id", "n1", "--no-ntp-check"]) == 0
    capsys.readouterr()
    config = load_config(target / DEFAULT_CONFIG_PATH.name)
    state = Path(config.node.state_dir).resolve().relative_to(target.resolve())
    assert any((config_dir / state).is_relative_to(p) for p in writable)
    assert Path("/run/wireguard") in writable and UAPI_DIR.name == "wireguard"
    assert TMPFILES.read_text().splitlines()[-1].split() == [
        "d", "/run/wireguard", "0770", "root", "onionmesh", "-"]


def test_least_privilege() -> None:
    assert SERVICE["User"] == ["onionmesh"] and SERVICE["Group"] == ["onionmesh"]
    assert SERVICE["AmbientCapabilities"] == ["CAP_NET_ADMIN"]
    assert SERVICE["CapabilityBoundingSet"] == ["CAP_NET_ADMIN"]
    assert SERVICE["NoNewPrivileges"] == ["yes"]
    assert SERVICE["ProtectSystem"] == ["strict"]
    assert SERVICE["DeviceAllow"] == ["/dev/net/tun rw"]


def test_systemd_accepts_the_unit(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.fail("systemd-analyze not found (scripts/install-system-deps.sh installs "
                    "systemd)", pytrace=False)
    onionmesh = shutil.which("onionmesh") or str(Path(sys.executable).parent / "onionmesh")
    unit = tmp_path / "onionmesh.service"
    unit.write_text(UNIT.read_text().replace(INSTALLED, onionmesh))
    done = subprocess.run([analyze, "verify", "--man=no", str(unit)], capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0 and done.stdout + done.stderr == "", done.stdout + done.stderr
