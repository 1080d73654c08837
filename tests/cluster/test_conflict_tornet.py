"""Issue #10's conflict tests: what the HSDirs hold when a second publisher uploads.

Three real ``onionmesh run`` processes on the session's private Tor network (fast profile),
each with an alert command hook (``[alerts] command``) that appends every alert it gets
to ``<alerts dir>/<node>.jsonl``. Faults are real: kernel-level loss of the publisher's
coordination datagrams (nftables), and a fourth ``onionmesh run`` outside the cluster with
a copy of the master key (a restored old node: its own one-node cluster, in no member's
roster). What counts is seen from outside: each daemon's log, the ``conflict`` alerts its
hook received, ``onionmesh status`` (the ``conflicts`` section, the publisher's built
revisions and plan), and what every responsible HSDir serves when asked directly
(``HSFETCH ... SERVER=``, verified and decrypted with our decoder).

Only the *fetchable* period (tor's current one) can be asked for through tor's control port
(``onionmesh.publish.core``), so that is the descriptor compared on every HSDir.

Every bound is derived from the publish core's timing (``PublishTiming``: one HSFETCH of
one responsible HSDir every ``check_interval``, in turn, each answered or given up within
``fetch_timeout``) and the cluster's configured lease and heartbeat timings; see
``detection_bound``.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from onionmesh.crypto.keys import load_hidden_service_dir
from onionmesh.descriptor.errors import DescriptorError
from onionmesh.descriptor.parse import parse_descriptor
from onionmesh.hsdir.timeperiod import fetch_period, period_length_minutes
from onionmesh.mesh.vocabulary import ConflictResolution, PeerState
from onionmesh.node.cluster_setup import NodeFiles
from onionmesh.publish.core import PublishTiming, plan_targets
from onionmesh.publish.publisher import fetch_consensus
from onionmesh.status_document import StatusDocument
from onionmesh.testnet import TorClient, TorNetwork
from onionmesh.testnet.node_cluster import FAST_PROFILE, ClusterNode, Docs, NodeCluster
from onionmesh.tor.control import TorController
from onionmesh.tor.intro_points import IntroPointsError, fetch_descriptor
from tests.eventually import aeventually

from .faults import UdpPortBlock
from .helpers import config_value, healthy, healthy_cluster, publisher_of, wait_healthy

pytestmark = [pytest.mark.tor, pytest.mark.tornet, pytest.mark.slow]

NODES = {"n1", "n2", "n3"}
TIMING = PublishTiming()  # the daemon's conflict-check timing (not configurable)
ALERT_DELIVERY = 15.0  # the alert command runs with a 10 s timeout, plus scheduling
UPLOAD_MARGIN = 30.0  # build + HSPOST + the HSDirs' answers (as helpers.removal_bound)

# The publish core's finding followed by the mesh core's resolution (node/daemon.py).
FINDING = re.compile(
    r"Conflict: HSDir (?P<hsdir>[0-9A-F]{40}) serves a foreign master descriptor for period "
    r"(?P<period>\d+): revision (?P<revision>\d+) with (?P<intro>\d+) intro points \(ours: "
    r"revision (?P<ours>\d+|none) with (?P<our_intro>\d+)\); seen on \d+ HSDir\(s\): "
    r"(?P<hsdirs>[0-9A-F, ]+)")
RESOLUTION = re.compile(
    r"Publisher conflict \(foreign_descriptor\) with hsdir: we see (?P<we>\d+) intro points, "
    r"they (?P<they>\d+); resolution: (?P<resolution>\w+)")
ALERT_SCRIPT = ("import json, pathlib, sys; body = sys.stdin.buffer.read(); "
                "node = json.loads(body)['node']; "
                "(pathlib.Path({where!r}) / (node + '.jsonl')).open('ab').write(body + b'\\n')")


@pytest.fixture(scope="module")
def alerts_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("alerts")


@pytest.fixture(scope="module")
def cluster(tornet: TorNetwork, alerts_dir: Path) -> Iterator[NodeCluster]:
    hook = {"alerts": {"command": [sys.executable, "-c",
                                   ALERT_SCRIPT.format(where=str(alerts_dir))]}}
    with healthy_cluster(tornet, "omcf-", timeout=180,
                         settings={**FAST_PROFILE, **hook}) as nodes:
        yield nodes


# -- what the daemons say ---------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    """One ``conflict`` alert about a foreign descriptor, parsed."""

    node: str
    at: float
    summary: str
    hsdir: str
    period: int
    revision: int
    intro_points: int
    hsdirs: frozenset[str]
    resolution: ConflictResolution
    we: int
    they: int


def foreign_alerts(alerts_dir: Path, node_id: str) -> list[Finding]:
    """The ``conflict`` alerts about a foreign descriptor that ``node_id``'s hook got."""
    path = alerts_dir / f"{node_id}.jsonl"
    if not path.exists():
        return []
    found = []
    for line in path.read_text().splitlines():
        try:
            alert = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line being written right now
        finding = FINDING.search(alert.get("summary", ""))
        if alert.get("kind") != "conflict" or finding is None:
            continue
        resolution = RESOLUTION.search(alert["summary"])
        assert resolution is not None, alert  # the mesh core's decision is in the alert
        found.append(Finding(
            node_id, float(alert["time"]), alert["summary"], finding["hsdir"],
            int(finding["period"]), int(finding["revision"]), int(finding["intro"]),
            frozenset(h.strip() for h in finding["hsdirs"].split(",")),
            ConflictResolution(resolution["resolution"]), int(resolution["we"]),
            int(resolution["they"])))
    return found


def built_by(node: ClusterNode, period: int, revision: int) -> int | None:
    """Intro points of the descriptor ``node`` logged it built (period, revision), if any."""
    pattern = re.compile(rf"period {period} \(\w+ descriptor\): built revision {revision} "
                         r"with (\d+) intro points")
    found = pattern.search(node.log_path.read_text(errors="replace"))
    return int(found[1]) if found else None


def latest_built(*nodes: ClusterNode, but_conflict_rebuilds: bool = False) -> dict[int, int]:
    """Per period, the highest revision any of ``nodes`` logged it built (optionally not
    counting rebuilds against a foreign descriptor: a node that then stepped down never
    sent those)."""
    latest: dict[int, int] = {}
    for node in nodes:
        text = node.log_path.read_text(errors="replace")
        for period, revision, reason in re.findall(
                r"period (\d+) \(\w+ descriptor\): built revision (\d+) with \d+ intro "
                r"points \(([\w-]+)\)", text):
            if not (but_conflict_rebuilds and reason == "conflict"):
                latest[int(period)] = max(latest.get(int(period), 0), int(revision))
    return latest


def check_finding(finding: Finding, detector: ClusterNode, builders: list[ClusterNode],
                  responsible: dict[int, tuple[str, ...]]) -> None:
    """The alert, the detector's log and another publisher's log tell one story."""
    log = detector.log_path.read_text(errors="replace")
    # The log has the publish core's line and the mesh core's resolution, as the alert.
    assert finding.summary.split(". Publisher conflict")[0] in log, finding
    assert (f"Publisher conflict (foreign_descriptor) with hsdir: we see {finding.we} intro "
            f"points, they {finding.they}; resolution: {finding.resolution}") in log
    # Which HSDirs: responsible ones of the fetched period (tor's period may have rolled
    # over since the test began: both planned periods are known).
    assert finding.period in responsible, (finding, responsible)
    assert finding.hsdir in finding.hsdirs <= set(responsible[finding.period]), finding
    # What: a descriptor the other publisher built, as it logged it (revision, intro points).
    counts = [built_by(node, finding.period, finding.revision) for node in builders]
    assert finding.intro_points in counts, (finding, [b.node_id for b in builders])
    assert finding.they == finding.intro_points
    # How the mesh core settled it: the side that sees more intro points keeps publishing.
    if finding.resolution is ConflictResolution.STEP_DOWN:
        assert finding.they > finding.we, finding
    elif finding.resolution is ConflictResolution.KEEP:
        assert finding.we >= finding.they, finding


# -- what the HSDirs serve ----------------------------------------------------------------


@dataclass(frozen=True)
class Responsible:
    period: int  # the fetchable one
    period_length: int
    hsdirs: tuple[str, ...]
    planned: dict[int, tuple[str, ...]]  # both descriptor periods' responsible HSDirs


@dataclass(frozen=True)
class Served:
    period: int
    revision: int
    intro_keys: frozenset[bytes]


async def responsible_hsdirs(cluster: NodeCluster, client: TorClient) -> Responsible:
    """The fetchable period and its responsible HSDirs, from the client's consensus."""
    master = load_hidden_service_dir(NodeFiles(cluster.nodes["n1"].root).master_dir)
    controller = await TorController.connect(port=client.control_port)
    try:
        consensus = await fetch_consensus(controller)
    finally:
        await controller.close()
    now = time.time()
    period = fetch_period(consensus, now)[0]
    targets = plan_targets(master, consensus, now)
    return Responsible(period, period_length_minutes(consensus), targets[period].hsdirs,
                       {number: target.hsdirs for number, target in targets.items()})


async def sweep(cluster: NodeCluster, client: TorClient,
                where: Responsible) -> dict[str, Served | str]:
    """Ask every responsible HSDir directly (HSFETCH SERVER=) what it serves."""
    address = cluster.master_address.removesuffix(".onion")
    controller = await TorController.connect(port=client.control_port)
    served: dict[str, Served | str] = {}
    try:
        for hsdir in where.hsdirs:
            try:
                text = await fetch_descriptor(controller, address, servers=[hsdir],
                                              timeout=TIMING.fetch_timeout)
                desc = parse_descriptor(text, address, period_length=where.period_length)
            except (IntroPointsError, DescriptorError) as exc:
                served[hsdir] = str(exc)
                continue
            served[hsdir] = Served(desc.period_number, desc.revision_counter,
                                   frozenset(ip.auth_key for ip in desc.intro_points))
    finally:
        await controller.close()
    return served


async def wait_every_hsdir_serves(cluster: NodeCluster, client: TorClient, winner: str,
                                  timeout: float, newer_than: dict[int, int]
                                  ) -> tuple[Served, StatusDocument]:
    """Bounded: every responsible HSDir of the fetchable period serves the descriptor the
    winner's status says it built last for that period (same revision, one intro-point
    set, as many intro points as its plan has for that period, every node carried), and
    that revision is above ``newer_than[period]`` (what anyone had built before)."""
    last: list[object] = []

    async def converged() -> tuple[Served, StatusDocument] | None:
        where = await responsible_hsdirs(cluster, client)
        before = await asyncio.to_thread(cluster.nodes[winner].status)
        served = await sweep(cluster, client, where)
        after = await asyncio.to_thread(cluster.nodes[winner].status)
        last[:] = [where, served, after.publisher if after else None]
        if before is None or after is None or after.publisher is None or after.plan is None:
            return None
        if before.publisher is None or before.publisher.revisions != after.publisher.revisions:
            return None  # rebuilt during the sweep: look again
        expected = after.publisher.revisions.get(str(where.period))
        copies = set(served.values())
        if len(copies) != 1:
            return None
        copy = copies.pop()
        if not isinstance(copy, Served) or copy.period != where.period \
                or copy.revision != expected or copy.revision <= newer_than.get(copy.period, 0):
            return None
        if after.publisher.periods.get(str(where.period)) != {"uploaded": len(where.hsdirs)}:
            return None  # its own view lags the HSDirs' answers by an event
        assert len(copy.intro_keys) == after.plan.per_period[str(where.period)], after.plan
        return copy, after

    served, doc = await aeventually(
        converged, timeout=timeout, interval=1.0,
        what=f"every responsible HSDir serves {winner}'s descriptor",
        context=lambda: f"last sweep: {last}")
    assert doc.is_publisher and doc.carried_nodes() == NODES
    return served, doc


# -- bounds -------------------------------------------------------------------------------


def detection_bound(n_responsible: int, holding: int = 1) -> float:
    """From a foreign upload landing on ``holding`` of the ``n_responsible`` HSDirs to a
    checker finding it: the checker asks one HSDir per ``check_interval`` in turn, so in
    the worst case it reaches one holding the foreign copy after ``n - holding + 1`` checks,
    and that answer (or its failure) comes within ``fetch_timeout``."""
    checks = n_responsible - holding + 1
    return checks * TIMING.check_interval + TIMING.fetch_timeout


def partition_settled(cluster: NodeCluster) -> float:
    """From the partition to both sides having uploaded their own descriptor: the
    majority claims after lease + grace, the isolated publisher drops its peers' intro
    points after dead_threshold heartbeats + removal grace; each then builds and uploads."""
    lease = config_value(cluster, "coordination", "lease_duration")
    grace = config_value(cluster, "coordination", "lease_grace")
    heartbeat = config_value(cluster, "coordination", "heartbeat_interval")
    dead = config_value(cluster, "resilience", "dead_threshold")
    removal = config_value(cluster, "resilience", "removal_grace_period")
    return max(lease + grace, dead * heartbeat + removal) + UPLOAD_MARGIN


def conflict_counts(docs: Docs) -> dict[str, int]:
    return {n: (d.conflicts.count if d.conflicts is not None else 0) for n, d in docs.items()}


# -- tests --------------------------------------------------------------------------------


@pytest.mark.timeout(900)
async def test_partitioned_publisher_conflict_is_seen_and_one_descriptor_remains(
        cluster: NodeCluster, alerts_dir: Path, tornet_client: TorClient):
    docs = await wait_healthy(cluster)
    isolated = publisher_of(docs)
    assert isolated is not None
    others = NODES - {isolated}
    where = await responsible_hsdirs(cluster, tornet_client)
    counts_before = conflict_counts(docs)
    alerts_before = {n: len(foreign_alerts(alerts_dir, n)) for n in NODES}
    bound = partition_settled(cluster) + detection_bound(len(where.hsdirs))
    blocked = time.monotonic()
    with UdpPortBlock(cluster.nodes[isolated].udp_port):
        # Both sides notice (real loss, no daemon flag): the connected majority elects a
        # publisher of its own and the isolated node no longer sees its peers alive.
        docs = await cluster.wait_until(
            lambda d: any(n in d and d[n].is_publisher for n in others)
            and isolated in d
            and all(n not in d[isolated].peers or d[isolated].peers[n].state != PeerState.ALIVE
                    for n in others),
            bound, "the partition is seen on both sides")
        majority = [n for n in others if docs[n].is_publisher]
        assert len(majority) == 1
        # Two publishers upload: a daemon's conflict check finds the other's descriptor on
        # a responsible HSDir, within the derived bound.
        docs = await cluster.wait_until(
            lambda d: any(c > counts_before[n] for n, c in conflict_counts(d).items()),
            max(1.0, bound - (time.monotonic() - blocked)),
            "a foreign descriptor seen on the HSDirs during the partition")
        detected_after = time.monotonic() - blocked
        detector = next(n for n, c in conflict_counts(docs).items() if c > counts_before[n])
        seen = docs[detector].conflicts
        assert seen is not None
        findings = await aeventually(
            lambda: foreign_alerts(alerts_dir, detector)[alerts_before[detector]:],
            timeout=ALERT_DELIVERY, interval=0.5, what=f"{detector}'s conflict alert")
        ring = await responsible_hsdirs(cluster, tornet_client)
        other_side = others if detector == isolated else {isolated}
        builders = [cluster.nodes[n] for n in other_side]
        for finding in findings:
            check_finding(finding, cluster.nodes[detector], builders, ring.planned)
        # The status says the same as the alert (the last finding, which may be a newer one).
        assert seen.message in cluster.nodes[detector].log_path.read_text(errors="replace")
        assert set(seen.hsdirs) <= set(ring.planned[seen.period])
        assert seen.intro_points in [built_by(b, seen.period, seen.revision) for b in builders]
        # What both sides had built by now: the winner's descriptor must come after it.
        newer_than = latest_built(*cluster.nodes.values())
    healed = time.time()
    print(f"partition: foreign descriptor seen by {detector} {detected_after:.1f} s after the "
          f"block (bound {bound:.0f} s)")

    # After the heal: one publisher, and every responsible HSDir serves its descriptor.
    docs = await cluster.wait_until(lambda d: healthy(cluster, d), 60.0,
                                    "one publisher after the heal")
    winner = publisher_of(docs)
    assert winner is not None
    # Its rebuild (plan with every node) lands everywhere; a loser's copy with a higher
    # revision is rejected, fetched, found foreign and superseded: one more round.
    served, _ = await wait_every_hsdir_serves(
        cluster, tornet_client, winner,
        timeout=2 * UPLOAD_MARGIN + detection_bound(len(where.hsdirs)), newer_than=newer_than)
    print(f"after the heal: every HSDir serves {winner}'s revision {served.revision} with "
          f"{len(served.intro_keys)} intro points {time.time() - healed:.1f} s after the heal")
    lease = config_value(cluster, "coordination", "lease_duration")
    end = time.monotonic() + 4 * lease
    publishers_seen: list[set[str]] = []
    while time.monotonic() < end:
        publishers_seen.append(cluster.publishers(await asyncio.to_thread(cluster.statuses)))
        await asyncio.sleep(0.5)  # observation period between real checks
    assert {winner} in publishers_seen and all(p <= {winner} for p in publishers_seen), \
        publishers_seen


@pytest.mark.timeout(900)
async def test_stray_publisher_outside_the_mesh_is_detected_and_overwritten(
        cluster: NodeCluster, alerts_dir: Path, tornet_client: TorClient):
    docs = await wait_healthy(cluster)
    pub = publisher_of(docs)
    assert pub is not None
    where = await responsible_hsdirs(cluster, tornet_client)
    counts_before = conflict_counts(docs)
    alerts_before = len(foreign_alerts(alerts_dir, pub))
    stray = cluster.outsiders.get("stray") or cluster.add_outsider("stray")
    lease = config_value(cluster, "coordination", "lease_duration")
    grace = config_value(cluster, "coordination", "lease_grace")
    stray.start()
    try:
        # The stray (alone, same master key) claims and uploads its own descriptor.
        def stray_uploaded() -> StatusDocument | None:
            doc = stray.status()
            ok = doc is not None and any(u.result == "uploaded" for u in doc.uploads.values())
            return doc if ok else None

        sdoc = await aeventually(stray_uploaded, timeout=180.0, interval=1.0,
                                 what="the stray publisher's upload accepted",
                                 gave_up=lambda: None if stray.running() else stray.log_tail())
        accepted = sum(1 for h, u in sdoc.uploads.items()
                       if u.result == "uploaded" and h in where.hsdirs)
        uploaded = time.monotonic()
        # The cluster's publisher finds it within the bound, keeps publishing (it sees more
        # intro points), alerts, and its status says what it found.
        bound = detection_bound(len(where.hsdirs), max(1, accepted))
        docs = await cluster.wait_until(
            lambda d: pub in d and conflict_counts(d)[pub] > counts_before[pub], bound,
            "the cluster's publisher sees the stray's descriptor")
        print(f"stray: detected {time.monotonic() - uploaded:.1f} s after its upload was "
              f"accepted by {accepted} responsible HSDir(s) (bound {bound:.0f} s)")
        findings = await aeventually(
            lambda: foreign_alerts(alerts_dir, pub)[alerts_before:], timeout=ALERT_DELIVERY,
            interval=0.5, what=f"{pub}'s conflict alert")
        ring = await responsible_hsdirs(cluster, tornet_client)
        for finding in findings:
            check_finding(finding, cluster.nodes[pub], [stray], ring.planned)
            assert finding.resolution is ConflictResolution.KEEP
        seen = docs[pub].conflicts
        assert seen is not None and seen.intro_points == built_by(stray, seen.period,
                                                                  seen.revision)
        assert docs[pub].is_publisher and docs[pub].publisher is not None
        assert docs[pub].publisher.conflicts >= 1

        # While the stray keeps running it keeps uploading (alone, it claims again after
        # each step-down) and the cluster keeps superseding it: the cluster's publisher
        # never changes, and each new foreign descriptor is a new conflict alert (a repeat
        # of the same one is held back for the alert interval).
        first = findings[0]
        again = (2 * lease + lease + grace + UPLOAD_MARGIN + detection_bound(len(where.hsdirs))
                 + ALERT_DELIVERY)

        publishers_seen: list[set[str]] = []

        async def alerted_again() -> list[Finding] | None:
            publishers_seen.append(cluster.publishers(await asyncio.to_thread(cluster.statuses)))
            later = [f for f in foreign_alerts(alerts_dir, pub)[alerts_before:]
                     if (f.period, f.revision) != (first.period, first.revision)]
            return later or None

        later = await aeventually(alerted_again, timeout=again, interval=1.0,
                                  what="a conflict alert for the stray's next upload")
        assert {pub} in publishers_seen and all(p <= {pub} for p in publishers_seen), \
            publishers_seen
        ring = await responsible_hsdirs(cluster, tornet_client)
        for finding in later:
            check_finding(finding, cluster.nodes[pub], [stray], ring.planned)
            assert finding.resolution is ConflictResolution.KEEP
        # The stray sees the cluster's descriptor (more intro points) and steps down; the
        # rebuild its publish core queued on finding it is never sent (the mesh decides
        # first), so no HSDir ever serves one of those.
        stray_log = stray.log_path.read_text(errors="replace")
        assert "resolution: step_down" in stray_log
        assert re.search(r"Stepped down as publisher of term \d+ \(foreign descriptor "
                         r"\(revision \d+\) has more intro points\)", stray_log)
        unsent = set(re.findall(r"period (\d+) \(\w+ descriptor\): built revision (\d+) "
                                r"with \d+ intro points \(conflict\)", stray_log))
        seen_by_cluster = {
            found for node in cluster.nodes.values() for found in re.findall(
                r"foreign master descriptor for period (\d+): revision (\d+)",
                node.log_path.read_text(errors="replace"))}
        assert not unsent & seen_by_cluster, unsent & seen_by_cluster
        print(f"stray: {len(unsent)} conflict rebuild(s) after its step-down, none uploaded")

        # Stop it right after one of its uploads landed and before the cluster found that
        # one, so that the cluster has to find its last copy on its own.
        async def stray_ahead() -> bool:
            sdoc, cdoc = await asyncio.gather(asyncio.to_thread(stray.status),
                                              asyncio.to_thread(cluster.nodes[pub].status))
            if sdoc is None or cdoc is None or cdoc.conflicts is None:
                return False
            landed = [u.at for u in sdoc.uploads.values() if u.result == "uploaded"]
            return bool(landed) and max(landed) > cdoc.conflicts.last_at

        await aeventually(stray_ahead, timeout=again, interval=0.5,
                          what="a stray upload the cluster has not found yet")
    finally:
        stray.stop()
    stopped = time.time()
    newer_than = latest_built(stray, but_conflict_rebuilds=True)  # those were not sent
    assert newer_than, "the stray never built a descriptor"
    ring = await responsible_hsdirs(cluster, tornet_client)
    left = [h for h, copy in (await sweep(cluster, tornet_client, ring)).items()
            if isinstance(copy, Served) and built_by(stray, copy.period, copy.revision)]

    # Once it is gone, the cluster's descriptor is back on every responsible HSDir: the
    # copies of the stray's left on them are found by the rotation and superseded.
    served, doc = await wait_every_hsdir_serves(
        cluster, tornet_client, pub, newer_than=newer_than,
        timeout=detection_bound(len(ring.hsdirs), max(1, len(left))) + UPLOAD_MARGIN)
    assert doc.node.id == pub
    print(f"stray stopped with its copy on {len(left)} of {len(ring.hsdirs)} responsible "
          f"HSDirs: every HSDir serves {pub}'s revision {served.revision} "
          f"{time.time() - stopped:.1f} s later")
