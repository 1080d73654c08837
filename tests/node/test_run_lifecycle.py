"""``onionmesh run`` lifecycle with a real tor that never bootstraps (``DisableNetwork 1``).

No network is touched: the managed tor starts, opens its control socket and waits.
SIGTERM during that wait must end the daemon at once (exit 0, tor stopped); a
``[tor] bootstrap_timeout`` that passes is a fatal "tor unusable" (exit 6).
"""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import pytest

from onionmesh.config import load_config
from onionmesh.node.errors import EXIT_TOR
from onionmesh.node.keyfiles import status_socket_path
from onionmesh.status_document import StatusDocument, read_status
from onionmesh.status_socket import StatusUnavailable
from onionmesh.tor.process import pid_alive
from tests.eventually import eventually

from .helpers import PYTHON, make_cluster, onionmesh

pytestmark = [pytest.mark.tor]
OFFLINE = ("DisableNetwork 1",)


def _tor_pid(root: Path) -> int | None:
    path = root / "state" / "tor" / "tor.pid"
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


@pytest.mark.parametrize("depth", [0, 6], ids=["short", "deep state dir"])
def test_sigterm_while_tor_bootstraps_exits_at_once_and_stops_tor(tmp_path: Path, depth: int):
    # A deep state directory is too long for unix socket paths: the sockets move to a
    # private short directory and `onionmesh status` still finds them.
    root = tmp_path.joinpath(*(["a-rather-long-directory-name"] * depth), "n1")
    setup = make_cluster(root, tor_options=OFFLINE)
    log = tmp_path / "n1.log"
    with open(log, "wb") as handle:
        proc = subprocess.Popen([PYTHON, "-m", "onionmesh.cli", "run", "-c",
                                 str(setup.files.config)], stderr=handle)
        try:
            socket_path = status_socket_path(load_config(setup.files.config))

            def status_while_tor_runs() -> StatusDocument | None:
                try:
                    doc = read_status(socket_path, timeout=5)
                except StatusUnavailable:
                    return None
                return doc if _tor_pid(setup.files.root) else None

            doc = eventually(status_while_tor_runs, timeout=60, what="status while tor starts",
                             context=log.read_text,
                             gave_up=lambda: proc.poll() is not None and "the daemon exited")
            assert doc.node.state == "starting"
            assert doc.cluster is None  # no mesh before tor is ready
            tor_pid = _tor_pid(setup.files.root)
            assert tor_pid is not None and pid_alive(tor_pid)
            shown = onionmesh("status", "--json", "-c", str(setup.files.config))
            assert shown.returncode == 0, shown.stderr
            assert '"state": "starting"' in shown.stdout
            # A second daemon of the same node refuses instead of taking its tor away.
            second = onionmesh("run", "-c", str(setup.files.config))
            assert second.returncode == 1
            assert "another onionmesh run of this node answers on" in second.stderr
            assert f"(pid {proc.pid})" in second.stderr
            assert pid_alive(tor_pid)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
    text = log.read_text()
    assert "SIGTERM received: shutting down" in text
    assert not pid_alive(tor_pid)
    assert not socket_path.exists()


def test_a_tor_that_never_bootstraps_is_fatal(tmp_path: Path):
    setup = make_cluster(tmp_path / "n1", tor_options=OFFLINE,
                         settings={"tor": {"bootstrap_timeout": 5}})
    done = onionmesh("run", "-c", str(setup.files.config), timeout=120)
    assert done.returncode == EXIT_TOR, done.stderr[-2000:]
    assert "tor did not bootstrap within 5 s" in done.stderr
    tor_pid = _tor_pid(setup.files.root)
    assert tor_pid is None or not pid_alive(tor_pid)


def test_status_without_a_running_node_says_so(tmp_path: Path):
    setup = make_cluster(tmp_path / "n1")
    done = onionmesh("status", "-c", str(setup.files.config))
    assert done.returncode == 1
    assert "is `onionmesh run` running?" in done.stderr
