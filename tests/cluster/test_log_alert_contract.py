"""The log-line and alert contract (docs/operator.md §6), against real processes.

Three ``onionmesh run`` nodes (fast timings) on the session's private Tor network; every
node's ``[alerts] command`` is a small script that appends what it receives (argv, the
``ONIONMESH_*`` variables, the JSON on stdin) as one line to a file of its own. Real faults
in sequence on the one cluster: a standby SIGKILLed (death) and restarted (recovery), the
publisher SIGKILLed (takeover), a responsible HSDir's tor SIGSTOPped so the publisher's
uploads to it time out (upload failure streak), a stray upload of the master descriptor
through another tor (conflict), a standby restarted with its clock 10 minutes ahead
(refused start). Each step asserts the exact log lines (a regex on the whole line: time,
level, logger, node ids, counts) and the alert the hook received. The refused start for a
bad key: tests/node/test_bad_inputs.py::test_refused_start_is_a_log_line_and_an_alert.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from onionmesh.config import load_config
from onionmesh.descriptor.parse import parse_descriptor
from onionmesh.hsdir.timeperiod import period_length_minutes
from onionmesh.node.errors import EXIT_CLOCK
from onionmesh.node.startup import load_master_key_file
from onionmesh.publish.core import plan_targets, tor_revision
from onionmesh.publish.master import MasterDescriptorBuilder
from onionmesh.publish.publisher import fetch_consensus
from onionmesh.publish.uploads import RetryPolicy
from onionmesh.testnet import TorClient, TorNetwork
from onionmesh.testnet.node_cluster import FAST_PROFILE, NodeCluster
from onionmesh.tor.control import TorController
from onionmesh.tor.intro_points import fetch_descriptor, read_own_descriptor
from tests.eventually import aeventually

from .helpers import (
    config_value,
    healthy_cluster,
    publisher_of,
    removal_bound,
    takeover_bound,
    wait_healthy,
)

pytestmark = [pytest.mark.tor, pytest.mark.tornet, pytest.mark.slow,
              pytest.mark.timeout(900)]  # ~200 s alone (5 tests, one cluster)

NODES = ("n1", "n2", "n3")
STAMP = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}"  # logging's asctime
DAEMON = "onionmesh.node"
PUBLISHER = "onionmesh.publish.publisher"
FPR = r"[0-9A-F]{40}"
UPLOAD_TIMEOUT = RetryPolicy().upload_timeout  # the default, 30 s
STRAY_AHEAD = 600  # the stray's revisions run this far ahead of the cluster's

HOOK = """\
import json, os, sys
record = {
    "argv": sys.argv[2:],
    "env": {k: v for k, v in os.environ.items()
            if k.startswith("ONIONMESH_ALERT_") or k == "ONIONMESH_NODE_ID"},
    "stdin": json.loads(sys.stdin.read()),
}
with open(sys.argv[1], "a", encoding="utf-8") as out:
    out.write(json.dumps(record) + "\\n")
"""


def line(level: str, logger: str, message: str) -> re.Pattern[str]:
    """The whole log line: ``<time> [LEVEL] logger: message`` (message is a regex)."""
    return re.compile(rf"{STAMP} \[{level}\] {re.escape(logger)}: {message}")


class Watch:
    """What each node logged and each node's hook received since the watch began."""

    def __init__(self, cluster: NodeCluster, hooks: dict[str, Path]) -> None:
        self.cluster = cluster
        self.hooks = hooks
        self.log_at = {n: _size(node.log_path) for n, node in cluster.nodes.items()}
        self.hook_at = {n: _size(path) for n, path in hooks.items()}

    def lines(self, node: str) -> list[str]:
        with open(self.cluster.nodes[node].log_path, "rb") as f:
            f.seek(self.log_at[node])
            return f.read().decode(errors="replace").splitlines()

    def alerts(self, node: str) -> list[dict[str, Any]]:
        path = self.hooks[node]
        if not path.exists():
            return []
        with open(path, "rb") as f:
            f.seek(self.hook_at[node])
            return [json.loads(x) for x in f.read().decode().splitlines() if x.strip()]

    def matches(self, node: str, pattern: re.Pattern[str]) -> list[re.Match[str]]:
        return [m for ln in self.lines(node) if (m := pattern.fullmatch(ln))]

    async def logged(self, node: str, pattern: re.Pattern[str], timeout: float) -> re.Match[str]:
        def found() -> re.Match[str] | None:
            got = self.matches(node, pattern)
            return got[0] if got else None

        return await aeventually(found, timeout=timeout, interval=0.5,
                                 what=f"{node} logs {pattern.pattern!r}",
                                 context=lambda: self.cluster.nodes[node].log_tail(30))

    async def alerted(self, node: str, kind: str, subject: str,
                      timeout: float) -> dict[str, Any]:
        def found() -> dict[str, Any] | None:
            got = [a for a in self.alerts(node)
                   if a["stdin"]["kind"] == kind and a["stdin"]["subject"] == subject]
            return got[0] if got else None

        return await aeventually(found, timeout=timeout, interval=0.5,
                                 what=f"{node}'s hook gets {kind} about {subject}",
                                 context=lambda: "\n".join(map(str, self.alerts(node))))


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def assert_payload(alert: dict[str, Any], node: str, kind: str, subject: str,
                   summary: str, details: dict[str, str]) -> None:
    """The hook's contract: JSON on stdin and the same facts in ``ONIONMESH_*``."""
    body = alert["stdin"]
    assert set(body) == {"node", "kind", "subject", "summary", "details", "time"}, body
    assert (body["node"], body["kind"], body["subject"], body["summary"]) == (
        node, kind, subject, summary), body
    assert body["details"] == details, body
    assert isinstance(body["time"], float) and abs(body["time"] - time.time()) < 600
    assert alert["env"] == {"ONIONMESH_ALERT_KIND": kind, "ONIONMESH_ALERT_SUBJECT": subject,
                            "ONIONMESH_ALERT_SUMMARY": summary, "ONIONMESH_NODE_ID": node}
    assert alert["argv"] == []


@pytest.fixture(scope="module")
def hooks(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("alert-hooks")
    (base / "hook.py").write_text(HOOK)
    return {n: base / f"{n}.alerts.jsonl" for n in NODES}


@pytest.fixture(scope="module")
def ccluster(tornet: TorNetwork, hooks: dict[str, Path]) -> Iterator[NodeCluster]:
    script = str(hooks["n1"].parent / "hook.py")
    settings = {n: {"alerts": {"command": [sys.executable, script, str(path)]}}
                for n, path in hooks.items()}
    with healthy_cluster(tornet, "omla-", timeout=180, settings=FAST_PROFILE,
                         node_settings=settings) as nodes:
        yield nodes


def peer_intro_points(cluster: NodeCluster, observer: str, peer: str) -> int:
    doc = cluster.nodes[observer].status()
    assert doc is not None and peer in doc.peers
    return doc.peers[peer].intro_points


async def test_death_and_recovery_of_a_standby(ccluster: NodeCluster, hooks):
    docs = await wait_healthy(ccluster)
    pub = publisher_of(docs)
    assert pub is not None
    victim = max(set(NODES) - {pub})
    other = min(set(NODES) - {pub, victim})
    carried = {obs: peer_intro_points(ccluster, obs, victim) for obs in (pub, other)}
    watch = Watch(ccluster, hooks)
    ccluster.nodes[victim].kill(signal.SIGKILL)

    bound = removal_bound(ccluster)
    dead_threshold = int(config_value(ccluster, "resilience", "dead_threshold"))
    for observer in (pub, other):
        for missed in range(1, dead_threshold):
            heartbeats = "heartbeat" if missed == 1 else "heartbeats"
            await watch.logged(observer, line(
                "INFO", DAEMON, rf"Peer {victim} missed {missed} {heartbeats}, "
                rf"{dead_threshold - missed} more until dead"), bound)
        points = "intro point" if carried[observer] == 1 else "intro points"
        dead = await watch.logged(observer, line(
            "WARN", DAEMON, rf"Peer {victim} declared DEAD, removing {carried[observer]} "
            rf"{points}"), bound)
        summary = dead.group(0).split(f"{DAEMON}: ", 1)[1]
        alert = await watch.alerted(observer, "node_dead", victim, 30.0)
        assert_payload(alert, observer, "node_dead", victim, summary,
                       {"intro_points": str(carried[observer])})
    # The publisher drops the dead node's intro points: "with N (was M)", N its plan now
    # (M: the last published count; an intro-point rotation may come in between).
    published = await watch.logged(pub, line(
        "INFO", DAEMON, r"Publishing updated descriptor with (\d+) intro points "
        rf"\(was (\d+)\) \(membership change: -{victim}\)"), bound)
    docs = await ccluster.wait_until(lambda d: pub in d and d[pub].plan is not None
                                     and victim not in d[pub].plan.per_node, 30.0,
                                     f"{victim} left {pub}'s plan")
    # (N need not be below M: one intro point per relay, so the relays the dead node
    # held may go to the other nodes' spare intro points.)
    assert int(published.group(1)) == docs[pub].plan.count

    # Recovery: the same node id back; its peers say so, ask for its intro points, alert.
    watch = Watch(ccluster, hooks)
    ccluster.nodes[victim].start()
    for observer in (pub, other):
        back = await watch.logged(observer, line(
            "INFO", DAEMON, rf"Peer {victim} came back! Adding to mesh"), 120.0)
        await watch.logged(observer, line(
            "INFO", DAEMON, r"Re-fetching intro points from recovered peer"), 30.0)
        alert = await watch.alerted(observer, "node_recovered", victim, 30.0)
        assert_payload(alert, observer, "node_recovered", victim,
                       f"Peer {victim} came back! Adding to mesh", {})
        assert back is not None
    docs = await wait_healthy(ccluster, timeout=150)
    await watch.logged(pub, line(
        "INFO", DAEMON, r"Publishing updated descriptor with \d+ intro points \(was \d+\) "
        rf"\(membership change: \+{victim}\)"), 30.0)


async def test_takeover_when_the_publisher_dies(ccluster: NodeCluster, hooks):
    docs = await wait_healthy(ccluster)
    old = publisher_of(docs)
    assert old is not None
    old_term = docs[old].cluster.term
    watch = Watch(ccluster, hooks)
    ccluster.nodes[old].kill(signal.SIGKILL)
    docs = await ccluster.wait_until(
        lambda d: (p := publisher_of(d)) is not None and p != old
        and d[p].cluster.term > old_term,
        takeover_bound(ccluster) + 10.0, "a standby takes over")
    new = publisher_of(docs)
    term = docs[new].cluster.term
    took = await watch.logged(new, line(
        "INFO", DAEMON, rf"Became publisher for term {term} \(lease of {old} expired\)"), 10.0)
    alert = await watch.alerted(new, "takeover", new, 30.0)
    assert_payload(alert, new, "takeover", new, took.group(0).split(f"{DAEMON}: ", 1)[1],
                   {"term": str(term), "cause": "lease_expired"})
    # Its first descriptor: every live node's intro points, "was" the old publisher's count.
    await watch.logged(new, line(
        "INFO", DAEMON, rf"Publishing updated descriptor with \d+ intro points \(was \d+\) "
        rf"\((takeover: lease of {old} expired|membership change: -{old})\)"), 60.0)
    # Exactly one takeover alert in the cluster: the standby that lost the race has none.
    others = set(NODES) - {old, new}
    assert not [a for n in others for a in watch.alerts(n) if a["stdin"]["kind"] == "takeover"]
    ccluster.nodes[old].start()
    await wait_healthy(ccluster, timeout=150)


async def test_upload_failure_streak_when_an_hsdir_hangs(ccluster: NodeCluster, hooks,
                                                         tornet: TorNetwork):
    docs = await wait_healthy(ccluster)
    pub = publisher_of(docs)
    assert pub is not None
    relays = {n.fingerprint.upper(): n for n in tornet.nodes if n.fingerprint}
    docs = await ccluster.wait_until(
        lambda d: pub in d and sum(u.result == "uploaded" for u in d[pub].uploads.values()) >= 8,
        60.0, f"{pub}'s descriptors accepted by the HSDirs")
    # The HSDir that accepted the latest upload: responsible for a current descriptor.
    hsdir = max((u.at, h) for h, u in docs[pub].uploads.items() if h in relays)[1]
    relay = relays[hsdir]
    assert relay.pid is not None
    leaving = min(set(NODES) - {pub})
    watch = Watch(ccluster, hooks)
    # The HSDir's tor hangs (SIGSTOP: a frozen machine; the consensus, made by the other
    # authorities, still lists it, and circuits through it stall instead of closing).
    # A standby leaves (SIGTERM, an operator's restart): the publisher republishes to
    # every responsible HSDir; the posts to the hung one never get an answer, so each
    # runs into the daemon's own upload timeout, which counts toward the failure streak.
    os.kill(relay.pid, signal.SIGSTOP)
    try:
        ccluster.nodes[leaving].stop()
        # (Its reason may be another change coalesced into the same publish.)
        await watch.logged(pub, line(
            "INFO", DAEMON, r"Publishing updated descriptor with \d+ intro points \(was \d+\) "
            r"\(.+\)"), 30.0)
        # One post in flight per HSDir: three timeouts in a row, plus the retry backoffs.
        bound = 3 * UPLOAD_TIMEOUT + 40.0
        streak = await watch.logged(pub, line(
            "WARN", PUBLISHER, rf"HSDir {hsdir} failed 3 uploads in a row \(last: TIMEOUT\)"),
            bound)
        alert = await watch.alerted(pub, "upload_failure_streak", hsdir, 30.0)
        assert_payload(alert, pub, "upload_failure_streak", hsdir,
                       streak.group(0).split(f"{PUBLISHER}: ", 1)[1],
                       {"hsdir": hsdir, "streak": "3"})
        timeouts = watch.matches(pub, line(
            "WARN", PUBLISHER, rf"HSDir {hsdir} did not answer for period \d+ within "
            rf"{UPLOAD_TIMEOUT:.0f} s \(health: \d+ ok, \d+ failed\)"))
        assert len(timeouts) >= 3, watch.lines(pub)[-40:]
        # Only the hung HSDir: no other one failed 3 in a row; the status says so too.
        streaks = watch.matches(pub, line("WARN", PUBLISHER,
                                          rf"HSDir ({FPR}) failed 3 uploads in a row .*"))
        assert {m.group(1) for m in streaks} == {hsdir}
        doc = ccluster.nodes[pub].status()
        assert doc is not None and doc.uploads[hsdir].failures_in_a_row >= 3, doc.uploads
    finally:
        os.kill(relay.pid, signal.SIGCONT)
    await wait_healthy(ccluster, timeout=180)


async def _stray_upload(client: TorClient, cluster: NodeCluster, standby: str) -> dict[int, int]:
    """What a restored old node with the master key does: build both master descriptors
    with one of the standby's intro points and HSPOST them, through another tor, to every
    responsible HSDir. Returns the revision per period."""
    config = load_config(cluster.nodes["n1"].config_path)
    master = load_master_key_file(config.master.key_path, config.master.address)
    address = master.onion_address.removesuffix(".onion")
    sock = cluster.nodes[standby].torrc_value("ControlSocket")
    assert sock
    node_ctl = await TorController.connect(socket_path=sock)
    ctl = await TorController.connect(port=client.control_port)
    try:
        own = cluster.nodes[standby].status()
        assert own is not None and own.node.onion_address
        consensus = await fetch_consensus(ctl)
        length = period_length_minutes(consensus)
        text = await read_own_descriptor(node_ctl, own.node.onion_address)
        assert text
        points = list(parse_descriptor(text, own.node.onion_address,
                                       period_length=length).intro_points)[:1]
        served = parse_descriptor(await fetch_descriptor(ctl, address, timeout=30.0),
                                  address, period_length=length)
        builder = MasterDescriptorBuilder(master, lifetime_minutes=180)
        revisions = {}
        now = time.time()
        for number, target in plan_targets(master, consensus, now).items():
            # Well ahead of the cluster's own time-based revisions, so a republish the
            # cluster happens to make meanwhile is refused by the HSDirs (and leads to a
            # fetch and a classification) instead of silently replacing the stray's copy.
            revision = tor_revision(target, now, served.revision_counter) + STRAY_AHEAD
            desc = builder.build(number, target.period.period_length, revision, points,
                                 now=now, blinded=target.blinded)
            revisions[number] = revision
            for hsdir in target.hsdirs:
                await ctl.hs_post(desc, server=hsdir, hs_address=address)
        return revisions
    finally:
        await node_ctl.close()
        await ctl.close()


async def test_conflict_from_a_stray_upload(ccluster: NodeCluster, hooks,
                                            tornet_client: TorClient):
    docs = await wait_healthy(ccluster)
    pub = publisher_of(docs)
    assert pub is not None
    standby = min(set(NODES) - {pub})
    watch = Watch(ccluster, hooks)
    revisions = await _stray_upload(tornet_client, ccluster, standby)
    # The publisher checks one HSDir every check_interval (30 s): bound two checks + fetch.
    found = await watch.logged(pub, line(
        "WARN", PUBLISHER, rf"Conflict: HSDir ({FPR}) serves a foreign master descriptor for "
        r"period (\d+): revision (\d+) with 1 intro points \(ours: revision \d+ with (\d+)\); "
        r"seen on 1 HSDir\(s\): \1"), 100.0)
    hsdir, period, revision = found.group(1), int(found.group(2)), int(found.group(3))
    assert revisions.get(period) == revision, (revisions, found.group(0))
    # The mesh decides: the side with more intro points keeps publishing (we: the plan's).
    decided = await watch.logged(pub, line(
        "WARN", DAEMON, r"Publisher conflict \(foreign_descriptor\) with hsdir: we see "
        r"(\d+) intro points, they 1; resolution: keep"), 10.0)
    alert = await watch.alerted(pub, "conflict", "hsdir", 30.0)
    finding = found.group(0).split(f"{PUBLISHER}: ", 1)[1]
    assert_payload(alert, pub, "conflict", "hsdir",
                   f"{finding}. {decided.group(0).split(f'{DAEMON}: ', 1)[1]}",
                   {"conflict": "foreign_descriptor", "resolution": "keep",
                    "our_intro_points": decided.group(1), "their_intro_points": "1",
                    "period": str(period), "revision": str(revision), "hsdirs": hsdir})
    # The publisher supersedes it: a publish for the conflict.
    await watch.logged(pub, line(
        "INFO", DAEMON, r"Publishing updated descriptor with \d+ intro points \(was \d+\) "
        r"\(conflict: superseding a foreign descriptor\)"), 30.0)


async def test_refused_start_with_a_clock_outside_the_consensus(ccluster: NodeCluster, hooks):
    """(A bad key: tests/node/test_bad_inputs.py.) A standby restarted with its clock 10
    minutes ahead, past the test network's consensus window: the default clock_check =
    "refuse" stops it once its tor has the consensus; the line and the alert say why."""
    docs = await wait_healthy(ccluster)
    pub = publisher_of(docs)
    assert pub is not None
    node_id = max(set(NODES) - {pub})
    node = ccluster.nodes[node_id]
    node.stop()
    watch = Watch(ccluster, hooks)
    node.env = {"ONIONMESH_CLOCK_OFFSET": "600"}
    try:
        node.start()
        assert node.proc is not None
        code = await asyncio.to_thread(node.proc.wait, 120.0)
        assert code == EXIT_CLOCK, node.log_tail()
    finally:
        node.env = {}
    refused = watch.matches(node_id, line(
        "ERROR", DAEMON, rf"Node {node_id} refused to start \(exit {EXIT_CLOCK}\): clock check "
        r"refused to start: clock is \d+ s past the consensus valid-until time .+"))
    assert len(refused) == 1, watch.lines(node_id)[-20:]
    alert = await watch.alerted(node_id, "start_refused", node_id, 5.0)
    assert_payload(alert, node_id, "start_refused", node_id,
                   refused[0].group(0).split(f"{DAEMON}: ", 1)[1], {})
    await wait_healthy(ccluster, timeout=150)
