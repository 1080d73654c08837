"""``python -m onionmesh.demo --once``: the newcomer's demo runs end to end and cleans up.

The demo starts its own private Tor network (10 authorities), a 3-node cluster of
``onionmesh run`` processes and a client tor, so this test runs it as a real subprocess and
checks what a newcomer sees: the cluster published, ``onionmesh status`` shown, every node
answering GETs of the master address, and every process it started stopped afterwards.
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

DEMO_TIMEOUT = 600  # network ~20-40 s, nodes ~15 s, then GETs 10 s apart


def test_demo_once_serves_master_from_every_node_and_stops_everything(tmp_path_factory):
    require_tor()
    # A short path: the nodes' tor control sockets must fit in a unix socket path.
    base = tmp_path_factory.mktemp("demo", numbered=True)
    result = subprocess.run(
        [sys.executable, "-m", "onionmesh.demo", "--once", "--nodes", "3", "--gets", "3",
         "--dir", str(base)],
        capture_output=True, text=True, timeout=DEMO_TIMEOUT, check=False,
    )
    out = result.stdout
    assert result.returncode == 0, f"demo failed ({result.returncode}):\n{out}\n{result.stderr}"

    master = re.search(r"Cluster of 3 nodes for master address ([a-z2-7]{56}\.onion)", out)
    assert master, out
    daemons = {m[0]: int(m[1]) for m in re.findall(r"(n\d): onionmesh run PID (\d+)", out)}
    assert set(daemons) == {"n1", "n2", "n3"}, out
    # `onionmesh status` of the publisher, as printed: it names itself publisher and the peers.
    assert re.search(r"role: publisher; publisher: (n\d)", out), out
    assert master[1] in out.split("onionmesh status")[1]
    answered = set(re.findall(r"GET \d+: HTTP 200, answered by (n\d)", out))
    assert answered == {"n1", "n2", "n3"}, out
    assert "all stopped." in out

    # Every PID the demo started is gone: the node daemons and the harness's tors/backends.
    assert not [pid for pid in daemons.values() if pid_alive(pid)]
    state = json.loads((base / "tornet" / "testnet.json").read_text())
    recorded = [(n["pid"], n["start_time"]) for n in state["nodes"] if n["pid"]]
    assert len(recorded) == 10 + 1  # authorities + the visitor client
    assert not [pid for pid, start in recorded if pid_alive(pid, start)]
    node_tors = [int(p.read_text().split()[0]) for p in base.glob("cluster/n*/state/tor/tor.pid")]
    assert not [pid for pid in node_tors if pid_alive(pid)]
