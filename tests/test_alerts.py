"""The alert hook: command and webhook delivery, deduplication, failures contained."""

from __future__ import annotations

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from onionmesh.alerts import Alert, AlertSink

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
