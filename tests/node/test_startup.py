"""Startup checks: backup master key fallback, clock refuse/warn, no signing with a BAD clock."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from onionmesh.clock import Clock, ClockVerdict
from onionmesh.config import load_config
from onionmesh.node.errors import EXIT_TOR, ClockRefused, KeyCheckError, NodeConfigError
from onionmesh.node.publishing import GuardedPublisher
from onionmesh.node.settings import clock_from_env
from onionmesh.node.startup import ClockGuard, check_keys

from .helpers import make_cluster, onionmesh


def _with_backup(tmp_path: Path, *, alert_file: Path | None = None):
    """A node whose primary master key is corrupt and whose backup is a good copy."""
    root = tmp_path / "n1"
    backup = tmp_path / "backup" / "master_key"
    backup.parent.mkdir(mode=0o700)
    settings: dict = {"master": {"backup_key_path": str(backup)},
                      "tor": {"binary": str(tmp_path / "no-such-tor")}}
    if alert_file is not None:
        script = (f"import sys; open({str(alert_file)!r}, 'ab')"
                  ".write(sys.stdin.buffer.read() + b'\\n')")
        settings["alerts"] = {"command": [sys.executable, "-c", script]}
    result = make_cluster(root, settings=settings)
    shutil.copy2(result.files.master_key, backup)
    good = result.files.master_key.read_bytes()
    result.files.master_key.write_bytes(good[:40])  # corrupt the primary
    return result, backup


def test_backup_key_is_used_when_the_primary_fails(tmp_path: Path):
    result, backup = _with_backup(tmp_path)
    keys = check_keys(load_config(result.files.config))
    assert keys.used_backup
    assert keys.master_path == backup
    assert keys.master is not None
    assert keys.master.onion_address == load_config(result.files.config).master.address
    assert "master-key-file" in keys.warnings[0] and "backup" in keys.warnings[0]
    done = onionmesh("keys", "check", "-c", str(result.files.config))
    assert done.returncode == 0, done.stderr
    assert "WARNING" in done.stderr and "using the backup key" in done.stderr


def test_a_bad_backup_does_not_save_a_bad_primary(tmp_path: Path):
    result, backup = _with_backup(tmp_path)
    backup.write_bytes(b"garbage")
    with pytest.raises(KeyCheckError) as info:
        check_keys(load_config(result.files.config))
    assert info.value.check == "master-key-file"
    assert "the backup key failed too" in str(info.value)


def test_run_with_backup_key_warns_alerts_and_exits_non_zero_when_tor_is_unusable(
    tmp_path: Path,
):
    alert_file = tmp_path / "alerts.jsonl"
    result, _ = _with_backup(tmp_path, alert_file=alert_file)
    done = onionmesh("run", "-c", str(result.files.config))
    assert done.returncode == EXIT_TOR, done.stderr
    assert "[WARN]" in done.stderr and "using the backup key" in done.stderr
    assert "no-such-tor" in done.stderr and "not found" in done.stderr
    sent = {}
    for line in alert_file.read_text().splitlines():
        if line.strip():
            alert = json.loads(line)
            sent[alert["kind"]] = alert
    alert = sent["key_problem"]
    assert alert["node"] == "n1"
    assert "using the backup key" in alert["summary"]
    # tor unusable: the refused start is an alert too
    assert sent["start_refused"]["summary"].startswith("Node n1 refused to start (exit 6)")


def _guard(offset: float, *, mode: str = "refuse", ntp: bool = False,
           synced: bool | None = True) -> ClockGuard:
    now = Clock().now()
    guard = ClockGuard(Clock(offset), mode=mode, require_ntp_sync=ntp, tolerance=30.0,
                       kernel_status=lambda: synced)
    # A consensus window as tor holds one now: valid-after 10 min ago, valid-until in 2 h.
    guard.consensus_window = (now - 600, now + 7200)
    return guard


def test_clock_far_past_the_consensus_is_refused():
    guard = _guard(+4 * 3600)
    with pytest.raises(ClockRefused, match="past the consensus valid-until"):
        guard.startup_check()
    with pytest.raises(ClockRefused, match="not signing"):
        guard.check_for_signing()


def test_clock_behind_the_consensus_in_warn_mode_starts_but_never_signs():
    guard = _guard(-3600, mode="warn")
    result = guard.startup_check()
    assert result.verdict is ClockVerdict.BAD
    assert guard.is_problem(result)
    assert "behind the consensus valid-after" in result.message
    with pytest.raises(ClockRefused):
        guard.check_for_signing()


def test_clock_within_the_window_is_fine():
    guard = _guard(+60)
    assert guard.startup_check().verdict is ClockVerdict.OK
    guard.check_for_signing()


def test_unsynchronised_kernel_refused_only_with_require_ntp_sync():
    with pytest.raises(ClockRefused, match="not NTP-synchronised"):
        _guard(0, ntp=True, synced=False).startup_check()
    warn = _guard(0, ntp=True, synced=False, mode="warn").startup_check()
    assert warn.verdict is ClockVerdict.WARN
    relaxed = _guard(0, ntp=False, synced=False)
    assert not relaxed.is_problem(relaxed.startup_check())
    relaxed.check_for_signing()  # an unsynchronised kernel alone never stops signing


def test_clock_offset_env_hook():
    assert clock_from_env({}).offset == 0.0
    assert clock_from_env({"ONIONMESH_CLOCK_OFFSET": "-90.5"}).offset == -90.5
    for bad in ("x", "nan", "inf"):
        with pytest.raises(NodeConfigError):
            clock_from_env({"ONIONMESH_CLOCK_OFFSET": bad})


async def test_publisher_does_not_sign_with_a_bad_clock(tmp_path: Path):
    result = make_cluster(tmp_path / "n1")
    keys = check_keys(load_config(result.files.config))
    guard = _guard(+4 * 3600)
    # No controller at all: the guard must stop the pass before tor is touched.
    publisher = GuardedPublisher(object(), keys.master, lambda period: [],
                                 clock_check=guard.check_for_signing)
    with pytest.raises(ClockRefused):
        await publisher.step()
    assert publisher.builds == 0


def test_signing_is_refused_off_the_peers_median_inside_the_window():
    guard = _guard(+120, mode="warn")
    guard.check_for_signing()  # alone: 120 s is inside the consensus window
    guard.peer_offsets = lambda: [120.0, 120.2]
    with pytest.raises(ClockRefused, match="ahead of the median of 2 live peer"):
        guard.check_for_signing()
    assert guard.last is not None and guard.last.basis.value == "peers_median"


def test_signing_is_refused_on_an_unsynchronised_kernel_clock_with_require_ntp_sync():
    with pytest.raises(ClockRefused, match="not NTP-synchronised"):
        _guard(0, mode="warn", ntp=True, synced=False).check_for_signing()
    _guard(0, mode="warn", ntp=False, synced=False).check_for_signing()
