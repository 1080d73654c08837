"""``python -m onionmesh.demo --once``: the newcomer's demo runs end to end and cleans up.

The demo starts its own private Tor network (5 authorities), three node instances, a
publisher tor and a client tor, so this test runs it as a real subprocess and checks what a
newcomer would see: the master published, every node answering, every process stopped.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from onionmesh.tor.process import pid_alive
from tests.conftest import require_tor

pytestmark = [pytest.mark.tor, pytest.mark.tornet, pytest.mark.slow]

DEMO_TIMEOUT = 600  # network ~20-40 s, nodes ~20 s, publish, then GETs 10 s apart


def test_demo_once_serves_master_from_every_node_and_stops_everything(tmp_path):
    require_tor()
    result = subprocess.run(
        [sys.executable, "-m", "onionmesh.demo", "--once", "--nodes", "3", "--gets", "3",
         "--dir", str(tmp_path)],
        capture_output=True, text=True, timeout=DEMO_TIMEOUT, check=False,
    )
    out = result.stdout
    assert result.returncode == 0, f"demo failed ({result.returncode}):\n{out}\n{result.stderr}"

    master = re.search(r"Master address: ([a-z2-7]{56})\.onion", out)
    assert master, out
    assert re.search(r"published in [0-9.]+ s: .*HSDir uploads [1-9]\d* ok", out), out
    answered = set(re.findall(r"GET \d+: HTTP 200, answered by (node\d)", out))
    assert answered == {"node1", "node2", "node3"}, out
    assert "all stopped." in out

    # Every PID the harness recorded (tors and backends) is gone after the demo exited.
    state = json.loads((tmp_path / "tornet" / "testnet.json").read_text())
    recorded = [(n["pid"], n["start_time"]) for n in state["nodes"] if n["pid"]]
    recorded += [(n["backend_pid"], n["backend_start_time"]) for n in state["nodes"]
                 if n.get("backend_pid")]
    assert len(recorded) >= 5 + 2 + 3 * 2
    assert not [pid for pid, start in recorded if pid_alive(pid, start)]
