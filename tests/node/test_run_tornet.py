"""``onionmesh run`` as a real process on the shared private Tor network (managed tor).

One node: it must publish the master descriptor so that a real tor client
reaches the backend through the master address, show itself as publisher in
``onionmesh status --json``, apply a SIGHUP, and on SIGTERM release its lease
and exit 0. A node with a skewed clock (the ``ONIONMESH_CLOCK_OFFSET`` hook)
is refused or runs without ever signing, as ``[resilience] clock_check`` says.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from onionmesh.config import load_config
from onionmesh.node.errors import EXIT_CLOCK
from onionmesh.node.keyfiles import status_socket_path
from onionmesh.node.testnet_options import network_tor_options
from onionmesh.status_document import StatusDocument, decode_status, read_status
from onionmesh.status_socket import StatusUnavailable
from onionmesh.testnet.backend import start_backend_process
from onionmesh.tor.process import pid_alive
from tests.eventually import eventually

from .helpers import PYTHON, free_port, make_cluster, onionmesh

pytestmark = [pytest.mark.tor, pytest.mark.tornet]


class Node:
    """One `onionmesh run` child process with its log file."""

    def __init__(self, config: Path, log: Path, env: dict[str, str] | None = None) -> None:
        self.config = config
        self.log = log
        self._log_handle = open(log, "wb")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            [PYTHON, "-m", "onionmesh.cli", "run", "-c", str(config)],
            stdout=subprocess.DEVNULL, stderr=self._log_handle,
            env=dict(os.environ, **(env or {})),
        )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def status(self) -> StatusDocument | None:
        with contextlib.suppress(StatusUnavailable):
            return read_status(status_socket_path(load_config(self.config)), timeout=5.0)
        return None

    def wait_for(self, what: str, check: Callable[[], Any], timeout: float) -> Any:
        """Poll ``check`` until it returns something truthy; fail with the log tail."""
        return eventually(check, timeout=timeout, what=what, interval=0.5,
                          context=lambda: self.text()[-3000:],
                          gave_up=lambda: self.proc.poll() is not None
                          and f"node exited ({self.proc.returncode})")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log_handle.close()


@pytest.fixture
def backend(tmp_path: Path) -> Iterator[tuple[str, int]]:
    port = free_port()
    proc = start_backend_process("nodeonebackend", port, tmp_path / "backend.log")
    try:
        yield "nodeonebackend", port
    finally:
        proc.terminate()
        proc.wait(10)


def _node_dir(tmp_path: Path, tornet, port: int, **settings: dict[str, Any]):
    # Short root: tor's control socket path must stay under the unix-socket limit.
    return make_cluster(tmp_path / "n1", tor_options=tuple(network_tor_options(tornet)),
                        service_port=port, settings=settings or None)


def test_single_node_publishes_serves_reloads_and_releases_on_sigterm(
    tmp_path: Path, tornet, tornet_client, backend
):
    name, port = backend
    metrics_port = free_port()
    setup = _node_dir(tmp_path, tornet, port, metrics={"listen": f"127.0.0.1:{metrics_port}"})
    node = Node(setup.files.config, tmp_path / "n1.log")
    try:
        doc = node.wait_for(
            "an HSDir to accept the master descriptor",
            lambda: (s := node.status()) and s.descriptor_age is not None and s, 240,
        )
        assert doc.role == "publisher"
        assert doc.cluster.publisher == "n1"
        assert doc.node.master_key == "primary"
        assert doc.intro_points["n1"] > 0

        # A real tor client reaches the backend through the master address.
        response = tornet_client.http_get(setup.master_address, "/", timeout=30.0,
                                          retry_for=120.0)
        assert response.status == 200
        assert response.text.strip() == name

        # The CLI shows it too (a separate process reading the unix socket).
        shown = onionmesh("status", "--json", "-c", str(setup.files.config))
        assert shown.returncode == 0, shown.stderr
        status = decode_status(json.loads(shown.stdout))  # the daemon's document, typed
        assert status.role == "publisher"
        assert status.cluster.lease.holder == "n1"
        assert any(u.result == "uploaded" for u in status.uploads.values())
        assert status.plan.count > 0
        human = onionmesh("status", "-c", str(setup.files.config))
        assert "role: publisher" in human.stdout

        # Prometheus metrics on the opt-in local port.
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as r:
            metrics = r.read().decode()
        assert "onionmesh_is_publisher 1.0" in metrics
        assert 'onionmesh_hsdir_uploads_total{hsdir="' in metrics and 'result="ok"' in metrics
        assert 'onionmesh_republishes_total{reason="takeover"}' in metrics

        # SIGHUP: the log level applies live, a timing change needs a restart.
        text = setup.files.config.read_text()
        text = text.replace('level = "info"', 'level = "debug"')
        text = text.replace("heartbeat_interval = 1.0", "heartbeat_interval = 2.0")
        setup.files.config.write_text(text)
        node.proc.send_signal(signal.SIGHUP)
        node.wait_for("the reload", lambda: "SIGHUP: configuration reloaded" in node.text(), 30)
        log = node.text()
        assert "SIGHUP: log level is now debug" in log
        assert "need a restart to apply: [coordination] heartbeat_interval" in log

        tor_pid = status.node.tor_pid
        assert tor_pid and pid_alive(tor_pid)
        node.proc.send_signal(signal.SIGTERM)
        assert node.proc.wait(30) == 0
        log = node.text()
        assert "SIGTERM received: shutting down" in log
        assert "Released the publisher lease (term" in log
        assert not pid_alive(tor_pid)  # the managed tor was stopped with the daemon
        assert not status_socket_path(load_config(setup.files.config)).exists()
    finally:
        node.stop()
    # The log lines of docs/scenarios.md come out as written; no secret reaches the log.
    log = node.text()
    assert "Publishing updated descriptor with" in log
    assert "Became publisher for term 1" in log
    assert (setup.files.cluster_secret.read_text().strip()) not in log


def test_skewed_clock_is_refused_after_the_consensus_check(tmp_path: Path, tornet, backend):
    _, port = backend
    setup = _node_dir(tmp_path, tornet, port)
    done = onionmesh("run", "-c", str(setup.files.config), timeout=300,
                     env={"ONIONMESH_CLOCK_OFFSET": "7200"})
    assert done.returncode == EXIT_CLOCK, done.stderr[-3000:]
    assert "TESTING HOOK: clock offset +7200" in done.stderr
    assert "clock check refused to start" in done.stderr
    assert "past the consensus valid-until" in done.stderr
    tor_pid_file = setup.files.state_dir / "tor" / "tor.pid"
    pid = int(tor_pid_file.read_text()) if tor_pid_file.exists() else None
    assert pid is None or not pid_alive(pid)  # tor did not outlive the refusal


def test_skewed_clock_in_warn_mode_runs_but_never_signs(tmp_path: Path, tornet, backend):
    _, port = backend
    setup = _node_dir(tmp_path, tornet, port, resilience={"clock_check": "warn"})
    node = Node(setup.files.config, tmp_path / "n1.log", env={"ONIONMESH_CLOCK_OFFSET": "-7200"})
    try:
        # Warn mode keeps the node running, but a clock problem holds the lease: it
        # neither claims nor signs, and says so.
        node.wait_for("the clock hold",
                      lambda: "not claiming the lease and not signing: clock check "
                              "(consensus_window)" in node.text(), 240)
        status = node.status()
        assert status is not None
        assert status.clock.verdict == "bad"
        assert status.clock.basis == "consensus_window"
        assert status.clock.hold is not None and "behind the consensus" in status.clock.hold
        assert status.role != "publisher"
        assert status.publisher is None or status.publisher.builds == 0
        assert status.descriptor_age is None
        assert "behind the consensus valid-after" in node.text()
    finally:
        node.stop()
    assert node.proc.returncode == 0
    assert "built revision" not in node.text()


def test_existing_tor_with_its_own_node_service_publishes(
    tmp_path: Path, tornet, tornet_client, backend
):
    """``[tor] managed = false``: onionmesh uses a tor it did not start, and leaves it running."""
    name, port = backend
    # [service] ports names what the operator's torrc forwards to: the node's self-check
    # probes it (with the default 127.0.0.1:8080 the node would withdraw, rightly).
    setup = make_cluster(tmp_path / "n1", service_port=port)
    # The operator's tor: an Onionbalance-style instance of the master (ob_config + option).
    service = tornet.add_onion_service("nodeexisting", target_port=port,
                                       ob_master=setup.master_address)
    try:
        text = setup.files.config.read_text()
        # Over TCP the cookie file is the configured one, never the one the port names.
        text = text.replace("managed = true", f"managed = false\ncontrol_port = "
                                              f"{service.control_port}\ncookie_path = "
                                              f'"{service.data_dir}/control_auth_cookie"')
        text = text.replace("[service]\n", f'[service]\nkey_dir = "{service.hs_dir}"\n')
        setup.files.config.write_text(text)
        assert onionmesh("config", "check", "-c", str(setup.files.config)).returncode == 0
        node = Node(setup.files.config, tmp_path / "n1.log")
        try:
            doc = node.wait_for(
                "an HSDir to accept the master descriptor",
                lambda: (s := node.status()) and s.descriptor_age is not None and s, 240,
            )
            assert doc.node.onion_address == service.onion_address + ".onion"
            assert doc.node.tor_pid is None  # not ours
            response = tornet_client.http_get(setup.master_address, "/", timeout=30.0,
                                              retry_for=120.0)
            assert response.status == 200
            assert response.text.strip() == name
            node.proc.send_signal(signal.SIGTERM)
            assert node.proc.wait(30) == 0
        finally:
            node.stop()
        assert service.is_running()  # onionmesh never stops a tor it does not manage
    finally:
        service.stop()


def test_restart_after_sigkill_is_stateless_and_publishes_again(tmp_path: Path, tornet, backend):
    """docs/scenarios.md §4: killed hard, restarted from config and keys alone; its old tor
    is gone."""
    _, port = backend
    setup = _node_dir(tmp_path, tornet, port)
    first = Node(setup.files.config, tmp_path / "first.log")
    try:
        doc = first.wait_for(
            "the first publish",
            lambda: (s := first.status()) and s.descriptor_age is not None and s, 240,
        )
        old_tor = doc.node.tor_pid
        first.proc.kill()  # SIGKILL: no lease release, no cleanup
        first.proc.wait(10)
    finally:
        first.stop()
    second = Node(setup.files.config, tmp_path / "second.log")
    try:
        doc = second.wait_for(
            "a publish by the restarted node",
            lambda: (s := second.status()) and s.node.pid == second.proc.pid
            and s.descriptor_age is not None and s, 240,
        )
        assert doc.role == "publisher"
        assert doc.node.tor_pid != old_tor
        assert not pid_alive(old_tor)  # stopped by tor itself or by the new daemon
        assert "Became publisher for term 1" in second.text()
    finally:
        second.stop()
    assert second.proc.returncode == 0
