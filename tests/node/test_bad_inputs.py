"""Bad config and key files: a clear error naming the problem, a non-zero exit, nothing changed.

``onionmesh run`` runs as a real child process: every case here fails before tor
would start, so the exit code and stderr are the daemon's own.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from onionmesh.crypto.keys import (
    PUBLIC_KEY_FILE,
    Ed25519Identity,
    encode_public_key_file,
    encode_secret_key_file,
    load_pem,
    load_secret_key,
)
from onionmesh.node.errors import EXIT_CONFIG, EXIT_KEY

from .helpers import make_cluster, onionmesh, tree_snapshot


def _secrets(root: Path) -> list[str]:
    """Hex forms of every secret under a node directory, to look for in output."""
    master = load_secret_key(root / "master" / "hs_ed25519_secret_key")
    node = load_pem(root / "node_key.pem")
    assert node.seed is not None
    secret = (root / "cluster_secret").read_text().strip()
    return [master.expanded.hex(), master.expanded[:32].hex(), node.seed.hex(), secret]


def _corrupt(path: Path) -> None:
    path.write_bytes(os.urandom(96))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:50])


def _mismatch(path: Path) -> None:
    path.write_bytes(encode_secret_key_file(Ed25519Identity.generate()))


def _missing(path: Path) -> None:
    path.unlink()


def _world_readable(path: Path) -> None:
    os.chmod(path, 0o644)


def _bad_public_key(path: Path) -> None:
    sibling = path.parent / PUBLIC_KEY_FILE
    sibling.write_bytes(encode_public_key_file(Ed25519Identity.generate().public_key))


def _not_hex(path: Path) -> None:
    path.write_text("this is not hex\n")


KEY_CASES: list[tuple[str, str, Callable[[Path], None], str, str]] = [
    ("corrupt master key", "master/hs_ed25519_secret_key", _corrupt, "master-key-file", "header"),
    ("truncated master key", "master/hs_ed25519_secret_key", _truncate, "master-key-file",
     "must be 96 bytes, got 50"),
    ("another master key", "master/hs_ed25519_secret_key", _mismatch, "onion-address",
     "belongs to"),
    ("missing master key", "master/hs_ed25519_secret_key", _missing, "master-key-file",
     "does not exist"),
    ("world-readable master key", "master/hs_ed25519_secret_key", _world_readable,
     "master-key-file", "mode 0644"),
    ("mismatched public key file", "master/hs_ed25519_secret_key", _bad_public_key,
     "public-key-file", "public key"),
    ("corrupt node key", "node_key.pem", _corrupt, "node-key-file", "PEM"),
    ("world-readable node key", "node_key.pem", _world_readable, "node-key-file", "mode 0644"),
    ("cluster secret not hex", "cluster_secret", _not_hex, "cluster-secret", "not hex"),
    ("missing cluster secret", "cluster_secret", _missing, "cluster-secret", "does not exist"),
]


@pytest.mark.parametrize(("label", "relpath", "damage", "check", "words"), KEY_CASES,
                         ids=[c[0] for c in KEY_CASES])
def test_bad_key_files_refuse_to_start_and_change_nothing(
    tmp_path: Path, label: str, relpath: str, damage: Callable[[Path], None], check: str,
    words: str,
):
    root = tmp_path / "n1"
    result = make_cluster(root)
    secrets = _secrets(root)
    damage(root / relpath)
    before = tree_snapshot(tmp_path)

    checked = onionmesh("keys", "check", "-c", str(result.files.config))
    assert checked.returncode == 1, checked.stderr  # keys check: 0 or 1
    assert f"key check '{check}' failed" in checked.stderr
    assert words in checked.stderr

    ran = onionmesh("run", "-c", str(result.files.config))
    assert ran.returncode == EXIT_KEY, ran.stderr
    assert f"key check '{check}' failed" in ran.stderr
    assert str(root / relpath) in ran.stderr or check == "onion-address"

    for output in (checked.stdout, checked.stderr, ran.stdout, ran.stderr):
        for secret in secrets:
            assert secret not in output
    assert tree_snapshot(tmp_path) == before  # bytes, mtimes and modes
    assert not (root / "state" / "tor").exists()  # stopped before creating anything


CONFIG_CASES = [
    ("unknown key", "[coordination]\nlisten_addr = \"1.2.3.4:5\"\n",
     "[coordination] listen_addr: unknown key"),
    ("bad value", "[resilience]\ndead_threshold = 0\n",
     "[resilience] dead_threshold: must be an integer >= 1, got 0"),
    ("unknown section", "[wirguard]\n", "unknown section [wirguard]"),
    ("wildcard listen without advertise", "[coordination]\nlisten = \"0.0.0.0:7443\"\n",
     "[coordination] advertise: required"),
    ("bad peer", "[coordination]\npeers = [\"Bad Id@1.2.3.4:5\"]\n", "[coordination] peers"),
    # No DNS in the event loop: peers are IP literals.
    ("peer by host name", "[coordination]\npeers = [\"n2@peer.example:7443\"]\n",
     "[coordination] peers: item 0: must be 'IP:port' or 'node_id@IP:port'"),
    ("newline smuggled into a torrc line",
     "[tor]\nextra_torrc = [\"Log notice stderr\\nControlPort 9051\"]\n",
     "[tor] extra_torrc: item 0: must be text without control characters (no newlines)"),
    ("deeply nested TOML", "[tor]\nextra_torrc = " + "[" * 3000 + "]" * 3000 + "\n",
     "not valid TOML: nested too deeply"),
    ("integer of 5000 digits", "[resilience]\ndead_threshold = " + "9" * 5000 + "\n",
     "not valid TOML: a number has too many digits"),
    ("oversized integer", "[resilience]\ndead_threshold = 9223372036854775807\n",
     "[resilience] dead_threshold: must be an integer <= 1000"),
    ("oversized string", "[tor]\nbinary = \"" + "x" * 5000 + "\"\n",
     "[tor] binary: must be a string of length <= 1024"),
    ("unknown choice", "[resilience]\nclock_check = \"ignore\"\n",
     "[resilience] clock_check: must be one of refuse, warn"),
]


@pytest.mark.parametrize(("label", "extra", "message"), CONFIG_CASES,
                         ids=[c[0] for c in CONFIG_CASES])
def test_bad_config_files_are_named_and_refused(tmp_path: Path, label: str, extra: str,
                                                message: str):
    root = tmp_path / "n1"
    result = make_cluster(root)
    config = result.files.config
    text = config.read_text()
    # Replace a whole section so the bad key is the only one of its kind.
    section = extra.split("]")[0] + "]"
    if section in text:
        head, _, rest = text.partition(section + "\n")
        tail = rest.partition("\n\n")[2]
        text = head + extra + "\n" + tail
    else:
        text += "\n" + extra
    config.write_text(text)
    before = tree_snapshot(tmp_path)
    for args in (("config", "check"), ("run",)):
        done = onionmesh(*args, "-c", str(config))
        assert done.returncode == EXIT_CONFIG, done.stderr
        assert str(config) in done.stderr
        assert message in done.stderr
    assert tree_snapshot(tmp_path) == before


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "no such file"), (b"[node\n", "not valid TOML"), (b"\xff\xfe", "not UTF-8")],
    ids=["missing", "not toml", "not utf-8"],
)
def test_unreadable_config_files(tmp_path: Path, content: bytes | None, message: str):
    path = tmp_path / "onionmesh.toml"
    if content is not None:
        path.write_bytes(content)
    before = tree_snapshot(tmp_path)
    for args in (("config", "check"), ("run",), ("keys", "check"), ("status",)):
        done = onionmesh(*args, "-c", str(path))
        expected = 1 if args == ("keys", "check") else EXIT_CONFIG
        assert done.returncode == expected, (args, done.stderr)
        assert f"{path}: {message}" in done.stderr
    assert tree_snapshot(tmp_path) == before


def test_bad_clock_offset_hook_is_a_config_error(tmp_path: Path):
    result = make_cluster(tmp_path / "n1")
    done = onionmesh("run", "-c", str(result.files.config),
                     env={"ONIONMESH_CLOCK_OFFSET": "soon"})
    assert done.returncode == EXIT_CONFIG
    assert "ONIONMESH_CLOCK_OFFSET must be a number" in done.stderr


def test_refused_start_is_a_log_line_and_an_alert(tmp_path: Path):
    """Contract: a start refused for a bad key says so in one log line and delivers the
    ``start_refused`` alert to the command hook before the process exits; no secret in
    either."""
    alerts = tmp_path / "alerts.jsonl"
    # The hook records stdin and the ONIONMESH_ALERT_* environment, one JSON line each.
    script = ("import json, os, sys; env = {k: v for k, v in os.environ.items() "
              "if k.startswith('ONIONMESH_ALERT_')}; body = json.load(sys.stdin); "
              f"open({str(alerts)!r}, 'a').write(json.dumps([body, env]) + '\\n')")
    root = tmp_path / "n1"
    result = make_cluster(root, settings={"alerts": {"command": [sys.executable, "-c", script]}})
    secrets = _secrets(root)
    _corrupt(root / "master" / "hs_ed25519_secret_key")
    ran = onionmesh("run", "-c", str(result.files.config))
    assert ran.returncode == EXIT_KEY, ran.stderr
    lines = [ln for ln in ran.stderr.splitlines() if "refused to start" in ln]
    assert len(lines) == 1, ran.stderr
    # The whole line (docs/operator.md, the log-line and alert contract).
    line = re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} \[ERROR\] onionmesh\.node: "
                        r"(Node n1 refused to start \(exit 4\): "
                        r"key check 'master-key-file' failed: .+)",
                        lines[0])
    assert line is not None, lines[0]
    sent = [json.loads(x) for x in alerts.read_text().splitlines() if x.strip()]
    refused = [(body, env) for body, env in sent if body["kind"] == "start_refused"]
    assert len(refused) == 1
    body, env = refused[0]
    assert set(body) == {"node", "kind", "subject", "summary", "details", "time"}
    assert (body["node"], body["subject"], body["details"]) == ("n1", "n1", {})
    assert body["summary"] == line.group(1)
    assert env == {"ONIONMESH_ALERT_KIND": "start_refused", "ONIONMESH_ALERT_SUBJECT": "n1",
                   "ONIONMESH_ALERT_SUMMARY": line.group(1)}
    for text in (ran.stderr, alerts.read_text()):
        for secret in secrets:
            assert secret not in text
