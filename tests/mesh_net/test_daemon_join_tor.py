"""A new host joins through tor only (issue 12, docs/scenarios.md §6), on namespace hosts
with real wireguard-go, real tor and real `onionmesh run` daemons.

Three hosts run a cluster (DaemonLab, set up like test_daemon_wireguard's); a fourth
host is a new machine whose WireGuard port is blocked before any of its node exists.
As an operator: `onionmesh add-node` on n1, `onionmesh join --via tor` in the new
host's namespace through that host's tor (its SOCKS port is a unix socket there,
``--tor-socks unix:PATH``), then `onionmesh run`. The joiner is in every node's roster
(status and roster files); every path to and from it is tor while the paths among the
others stay on WireGuard; nobody is declared dead and there is one publisher; its intro
points are in the master descriptor the HSDirs serve (an HSFETCH by a separate client).
Unblocking its port moves it to WireGuard.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from onionmesh.config import load_config
from onionmesh.mesh.config import MeshConfig
from onionmesh.mesh.roster import load_roster
from onionmesh.mesh.vocabulary import PeerState
from onionmesh.node.coordination_keys import ensure_join_onion_key
from onionmesh.node.join_tokens import decode_token
from onionmesh.testnet.daemonlab import DaemonLab
from onionmesh.testnet.meshlab import MESH_PORT, TUNNEL, WG_PORT
from onionmesh.testnet.netns import require_lab_tools
from onionmesh.testnet.network import TorNetwork
from onionmesh.transport.paths import PathConfig

from .helpers import node_served

pytestmark = [pytest.mark.netns, pytest.mark.tor, pytest.mark.tornet, pytest.mark.slow]

DEFAULTS = MeshConfig()
DEAD_AFTER = (DEFAULTS.dead_threshold + DEFAULTS.heartbeat_slack) * DEFAULTS.heartbeat_interval
PATHS = PathConfig.for_heartbeat(DEFAULTS.heartbeat_interval, DEAD_AFTER)
NODES = (1, 2, 3)
NEW = 4
EVERYONE = (*NODES, NEW)


@pytest.fixture(scope="module")
def joinlab(tornet: TorNetwork) -> Iterator[DaemonLab]:
    missing = require_lab_tools()
    if missing:
        pytest.fail(f"needs {', '.join(missing)}", pytrace=False)
    lab = DaemonLab(tornet, 4, nodes=3, tag="dj").start()
    try:
        yield lab
    finally:
        lab.stop(keep_logs_in=tornet.base_dir / "logs-daemonlab-join")
    assert lab.lab.leftovers() == []


def peer_states(lab: DaemonLab, nodes: tuple[int, ...]) -> dict[int, dict[str, PeerState]]:
    docs = {i: lab.status(i) for i in nodes}
    return {i: {n: p.state for n, p in doc.peers.items()} if doc else {}
            for i, doc in docs.items()}


def all_alive(lab: DaemonLab, nodes: tuple[int, ...]) -> bool:
    want = [PeerState.ALIVE] * (len(nodes) - 1)
    return all(sorted(view.values()) == want for view in peer_states(lab, nodes).values())


def leaders(lab: DaemonLab, nodes: tuple[int, ...]) -> set[tuple[str | None, int]]:
    """(publisher, term) as each of ``nodes`` sees it."""
    return {(doc.cluster.publisher, doc.cluster.term) if doc and doc.cluster else (None, -1)
            for doc in (lab.status(i) for i in nodes)}


def one_leader(lab: DaemonLab, nodes: tuple[int, ...]) -> bool:
    view = leaders(lab, nodes)
    return len(view) == 1 and None not in {pub for pub, _ in view}


def paths_of_new(lab: DaemonLab) -> set[str | None]:
    """The path of every mesh link to and from the new host."""
    return {lab.path(i, NEW) for i in NODES} | {lab.path(NEW, i) for i in NODES}


def log_lines(lab: DaemonLab, *words: str) -> str:
    """Every node's log lines holding any of ``words`` (what a failure needs)."""
    return "\n".join(f"n{i}: {line}" for i in EVERYONE
                     for line in lab.log_text(i).splitlines()
                     if any(word in line for word in words))


def test_a_new_host_joins_through_tor_only_and_is_published(
        joinlab: DaemonLab, tornet: TorNetwork) -> None:
    lab = joinlab
    # The new machine's WireGuard port is closed before anything of its node exists.
    lab.lab.block_udp_port(NEW, WG_PORT)
    new = lab.add_host(NEW)
    # Bound: tor streams to the peers' coordination onions and one election, as in
    # test_daemon_wireguard (the daemons were started by the fixture).
    lab.wait_until(lambda: all_alive(lab, NODES) and one_leader(lab, NODES), 180,
                   "3 daemons alive, one publisher")
    n1 = lab.hosts[1]
    issued = lab.cli(1, "add-node", "-c", str(n1.config_path), "--node-id", f"n{NEW}")
    assert issued.returncode == 0, issued.stderr
    token = issued.stdout.strip()
    # The inviter's join onion first, then every member's (they relay to n1).
    onions = [(f"n{i}", ensure_join_onion_key(load_config(lab.hosts[i].config_path))
               .onion_address) for i in NODES]
    assert decode_token(token).bootstrap == onions
    join_onion = onions[0][1]

    started = time.monotonic()
    # Bound: an attempt through a warm private network takes seconds (11-19 s in
    # tests/cluster/test_join_tornet.py); a first attempt that finds n1's join onion
    # descriptor not yet on the HSDirs fails at once and the next round starts 5 s later
    # (+-20 %); 180 s also covers one attempt running into its 120 s default timeout.
    joined = lab.cli(
        NEW, "join", "--via", "tor", "--tor-socks", f"unix:{new.sockets / 'socks.sock'}",
        "--dir", str(new.root), "--node-id", f"n{NEW}",
        "--listen", f"{TUNNEL.format(NEW)}:{MESH_PORT}",
        "--wireguard-address", f"{TUNNEL.format(NEW)}/24",
        "--wireguard-endpoint", f"{lab.lab.ip(NEW)}:{WG_PORT}",
        "--master-key", str(n1.root / "master" / "hs_ed25519_secret_key"),
        "--service-port", f"80 127.0.0.1:{new.backend_port}", "--no-ntp-check",
        stdin=token, timeout=180)
    joined_in = time.monotonic() - started
    assert joined.returncode == 0, joined.stderr
    assert f"attempt 1 through tor to n1 ({join_onion})" in joined.stderr, joined.stderr
    assert "admitted through n1" in joined.stderr, joined.stderr
    # The whole roster, persisted before the daemon ever ran.
    members = {f"n{i}" for i in EVERYONE}
    assert {m.node_id for m in load_roster(new.root / "roster").members()} == members

    lab.adopt_node(NEW)
    lab.start_node(NEW)
    run_at = time.monotonic()
    # Bound: the daemon's start on a running tor (WireGuard up, its coordination onion's
    # first descriptor upload: intro circuits first, tens of seconds on a loaded
    # machine), the peers' stream to it (their re-open backoff is capped at 30 s), the
    # fallback (fallback_after plus a probe) and a heartbeat: 150 s.
    lab.wait_until(lambda: all_alive(lab, EVERYONE) and paths_of_new(lab) == {"tor"},
                   150, "n4 alive to everyone, every path to and from it on tor")
    on_tor = time.monotonic() - run_at
    for i in EVERYONE:  # every node's roster file has it (gossip persisted)
        assert {m.node_id for m in load_roster(lab.hosts[i].root / "roster").members()} \
            == members, i
    assert all(lab.path(i, j) == "wireguard" for i in NODES for j in NODES if i != j)
    (leader,) = leaders(lab, NODES)
    # Twice the time to death: nobody dead, one publisher in one term, all on tor to n4.
    end = time.monotonic() + 2 * DEAD_AFTER
    while time.monotonic() < end:
        view = peer_states(lab, EVERYONE)
        assert all(PeerState.DEAD not in v.values() for v in view.values()), (
            view, log_lines(lab, "declared DEAD", "over tor"))
        assert leaders(lab, EVERYONE) == {leader}, (
            leaders(lab, EVERYONE), log_lines(lab, "publisher", "lease"))
        assert paths_of_new(lab) == {"tor"}, log_lines(lab, "WireGuard", "over tor")
        time.sleep(0.5)  # sampling period of the invariant check
    doc = lab.status(NEW)
    assert doc is not None and doc.coordination is not None
    assert doc.coordination.received["tor"] > 0 and doc.coordination.sent["tor"] > 0
    assert doc.coordination.received.get("wireguard", 0) == 0, doc.coordination.received

    client = tornet.add_client(f"{lab.lab.prefix}c")
    try:
        # Bound: n4's own descriptor (intro points) reaches the publisher in a heartbeat,
        # the publisher rebuilds within min_publish_interval and uploads; the poll fetches
        # afresh each round (3 s): 120 s leaves room for intro circuits on a loaded host.
        served_in = lab.wait_until(lambda: node_served(lab, NEW, client), 120,
                                   "n4's intro points in the served master descriptor",
                                   3.0)
    finally:
        client.stop()

    lab.lab.unblock_udp_port(NEW, WG_PORT)
    # Bound: the re-probe backoff at its cap with jitter, then two probes and a margin.
    restore = PATHS.backoff_cap * (1 + PATHS.jitter) + 2 * PATHS.probe_interval + 5
    back_in = lab.wait_until(lambda: paths_of_new(lab) == {"wireguard"}, restore,
                             "every path to and from n4 on WireGuard")
    assert all(a["kind"] != "node_dead" for i in EVERYONE for a in lab.alerts(i))
    assert "declared DEAD" not in log_lines(lab, "declared DEAD")
    assert leaders(lab, EVERYONE) == {leader}
    print(f"join {joined_in:.1f} s, run -> all on tor {on_tor:.1f} s, served "
          f"{served_in:.1f} s later, unblock -> WireGuard {back_in:.1f} s")
