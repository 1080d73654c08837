"""The alert hook: command and webhook delivery, deduplication, failures contained."""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from onionmesh.alerts import Alert, AlertKind, AlertSink

DEAD = Alert("node_dead", "node-2", "Peer node-2 declared DEAD, removing 3 intro points")


async def test_command_receives_json_and_environment(tmp_path: Path):
    out = tmp_path / "alert.json"
    script = (
        "import json, os, sys; data = json.load(sys.stdin); "
        "data['env_kind'] = os.environ['ONIONMESH_ALERT_KIND']; "
        f"open({str(out)!r}, 'w').write(json.dumps(data))"
    )
    sink = AlertSink("node-1", command=[sys.executable, "-c", script])
    assert await sink.send(DEAD, now=1000.0)
    data = json.loads(out.read_text())
    assert data["kind"] == data["env_kind"] == "node_dead"
    assert data["subject"] == "node-2"
    assert data["node"] == "node-1"
    assert sink.sent == 1


async def test_same_alert_is_sent_once_per_interval(tmp_path: Path):
    counter = tmp_path / "count"
    script = f"open({str(counter)!r}, 'a').write('x')"
    sink = AlertSink("node-1", command=[sys.executable, "-c", script], min_interval=60)
    assert await sink.send(DEAD, now=1000.0)
    assert not await sink.send(DEAD, now=1030.0)
    other = Alert("node_dead", "node-3", "Peer node-3 declared DEAD, removing 1 intro points")
    assert await sink.send(other, now=1030.0)
    assert await sink.send(DEAD, now=1061.0)
    assert counter.read_text() == "xxx"
    assert sink.suppressed == 1


async def test_another_event_of_the_same_kind_and_subject_is_not_held_back(tmp_path: Path):
    counter = tmp_path / "count"
    script = f"open({str(counter)!r}, 'a').write('x')"
    sink = AlertSink("node-1", command=[sys.executable, "-c", script], min_interval=60)
    first = Alert("conflict", "hsdir", "foreign revision 7", instance="period 3 revision 7")
    second = Alert("conflict", "hsdir", "foreign revision 9", instance="period 3 revision 9")
    assert await sink.send(first, now=1000.0)
    assert await sink.send(second, now=1010.0)  # a different foreign descriptor
    assert not await sink.send(first, now=1020.0)  # the same one again: a repeat
    assert counter.read_text() == "xx"
    assert sink.suppressed == 1


async def test_failing_or_missing_command_is_counted_not_raised(tmp_path: Path):
    failing = AlertSink("n", command=[sys.executable, "-c", "raise SystemExit(3)"])
    assert not await failing.send(DEAD, now=0.0)
    assert failing.failures == 1
    missing = AlertSink("n", command=[str(tmp_path / "no-such-program")])
    assert not await missing.send(DEAD, now=0.0)
    assert missing.failures == 1


async def test_command_timeout_is_contained():
    sink = AlertSink("n", command=[sys.executable, "-c", "import time; time.sleep(30)"],
                     timeout=0.5)
    assert not await sink.send(DEAD, now=0.0)
    assert sink.failures == 1


@pytest.fixture
def webhook_server():
    received: list[dict] = []
    status = {"code": 204}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            length = int(self.headers["Content-Length"])
            received.append(json.loads(self.rfile.read(length)))
            self.send_response(status["code"])
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", received, status
    server.shutdown()
    server.server_close()
    thread.join(5)


async def test_webhook_receives_the_alert(webhook_server):
    url, received, status = webhook_server
    sink = AlertSink("node-1", webhook=url)
    assert await sink.send(DEAD, now=5.0)
    assert received[0]["summary"] == DEAD.summary
    status["code"] = 500
    assert not await sink.send(Alert("takeover", "node-1", "took over"), now=6.0)
    assert sink.failures == 1


def test_webhook_must_be_http():
    with pytest.raises(ValueError, match="http"):
        AlertSink("n", webhook="file:///etc/passwd")


def _peer_alert(i: int) -> Alert:
    return Alert("node_dead", f"fake-{i}", f"Peer fake-{i} declared DEAD")


async def test_many_subjects_are_bounded_by_an_overall_budget(webhook_server):
    """Distinct subjects (peer ids an insider can invent) do not each get an alert."""
    url, received, _ = webhook_server
    sink = AlertSink("node-1", webhook=url, max_per_window=20, window=60.0)
    results = [await sink.send(_peer_alert(i), now=100.0 + i * 0.1) for i in range(200)]
    assert sum(results) == 20 and len(received) == 20
    assert sink.dropped == 180
    assert await sink.send(_peer_alert(999), now=200.0)  # a new window
    assert len(received) == 21
    sink.close()


async def test_a_hanging_webhook_cannot_pile_up_threads_or_block_the_loop():
    """A webhook that accepts and never answers: bounded in-flight posts, own threads."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)  # the kernel completes connects; nobody ever reads
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/hook"
    sink = AlertSink("node-1", webhook=url, timeout=1.0, max_pending=4)
    try:
        tasks = [asyncio.create_task(sink.send(_peer_alert(i), now=10.0)) for i in range(40)]
        await asyncio.sleep(0)  # every send has started
        # The loop's default executor is free although webhooks hang.
        assert await asyncio.wait_for(asyncio.to_thread(lambda: 42), 1.0) == 42
        results = await asyncio.wait_for(asyncio.gather(*tasks), 30.0)
        assert not any(results)
        assert sink.dropped == 36  # only max_pending were attempted
        assert sink.failures == 4  # each attempt timed out
    finally:
        sink.close()
        listener.close()


def test_alert_kinds_are_a_closed_vocabulary():
    alert = Alert("takeover", "n1", "Became publisher for term 2 (lease of n3 expired)",
                  {"term": "2", "cause": "lease_expired"})
    assert alert.kind is AlertKind.TAKEOVER
    body = alert.to_json("n1", 5.0)
    assert body["kind"] == "takeover" and body["details"] == {"term": "2",
                                                              "cause": "lease_expired"}
    assert json.loads(json.dumps(body)) == body
    with pytest.raises(ValueError, match="node_deadd"):
        Alert("node_deadd", "n2", "typo")
