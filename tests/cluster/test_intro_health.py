"""Issue #11: every published intro point leads to a working service.

Three ``onionmesh run`` nodes with the DEFAULT timings (5 s heartbeats, 15 s lease,
min_publish_interval 10 s, a TCP check of the backend every 5 s, 2 failures to withdraw,
2 successes to return) on the session's private Tor network; one cluster shared by the
tests of this module. Faults are real: a backend process stopped, a node's tor SIGKILLed,
a relay hosting an intro point stopped, a node's intro circuits closed through its control
port. Clients behave like browsers: a fresh circuit per GET (SOCKS credentials), the
descriptor cache kept, never NEWNYM. What counts is seen from outside: status documents,
node logs and the master descriptor a tor client fetches from the HSDirs.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import re
import signal
import time
from collections.abc import Iterator
from datetime import datetime

import pytest

from onionmesh.config import load_config
from onionmesh.descriptor.intro import LS_LEGACY_ID
from onionmesh.descriptor.parse import parse_descriptor
from onionmesh.errors import OnionmeshError
from onionmesh.hsdir.timeperiod import period_length_minutes
from onionmesh.node.service_health import CheckPolicy
from onionmesh.node.settings import health_policy
from onionmesh.publish.publisher import fetch_consensus
from onionmesh.testnet import SocksError, TorClient, TorNetwork
from onionmesh.testnet.backend import start_backend_process
from onionmesh.testnet.node_cluster import NodeCluster
from onionmesh.tor.control import TorController
from onionmesh.tor.intro_circuits import CircuitChange, parse_circuit_line
from onionmesh.tor.intro_points import fetch_descriptor, read_own_descriptor
from onionmesh.tor.process import log_tail
from onionmesh.tor.torrc import REND_LOG
from tests.eventually import aeventually

from .helpers import (
    fetched_intro_keys,
    healthy_cluster,
    publisher_of,
    wait_healthy,
    wait_node_served,
)

pytestmark = [pytest.mark.tor, pytest.mark.tornet, pytest.mark.slow]

UPLOAD_MARGIN = 30.0  # build + HSPOST + the HSDirs' answers (as in helpers.removal_bound)
TOR_REPLACEMENT = 45.0  # tor picks a new intro point, builds and establishes its circuit
TOR_NOTICES = 120.0  # tor closes a circuit whose relay died (its DESTROY arrives): tor's delay
FETCH_TRY = 10.0  # one HSFETCH by the test's client; a slower one is abandoned and retried


@pytest.fixture(scope="module")
def dcluster(tornet: TorNetwork) -> Iterator[NodeCluster]:
    with healthy_cluster(tornet, "omih-", timeout=240) as nodes:  # default timings
        yield nodes


def policy(cluster: NodeCluster) -> CheckPolicy:
    return health_policy(load_config(cluster.nodes["n1"].config_path))


def timing(cluster: NodeCluster, section: str, key: str) -> float:
    return float(getattr(getattr(load_config(cluster.nodes["n1"].config_path), section), key))


def publish_bound(cluster: NodeCluster) -> float:
    """From a plan change on the publisher to the HSDirs serving it."""
    return timing(cluster, "publishing", "min_publish_interval") + UPLOAD_MARGIN


async def node_controller(cluster: NodeCluster, node_id: str) -> TorController:
    sock = cluster.nodes[node_id].torrc_value("ControlSocket")
    assert sock, f"{node_id} has no control socket"
    return await TorController.connect(socket_path=sock)


async def own_intro_points(cluster: NodeCluster, node_id: str, address: str):
    """The intro points of the node's current descriptor (from its own tor)."""
    controller = await node_controller(cluster, node_id)
    try:
        length = period_length_minutes(await fetch_consensus(controller))
        text = await read_own_descriptor(controller, address)
    finally:
        await controller.close()
    return [] if not text else list(parse_descriptor(text, address,
                                                     period_length=length).intro_points)


async def browser_gets(client: TorClient, master: str, count: int) -> tuple[list[str], int]:
    """``count`` browser-like GETs, each allowed one retry (a fresh circuit again);
    returns (who answered, first tries that failed). A GET failing twice fails the test."""
    answered, retried = [], 0
    for _ in range(count):
        try:
            response = await client.abrowser_get(master, timeout=30.0)
        except SocksError:
            retried += 1
            try:
                response = await client.abrowser_get(master, timeout=30.0)
            except SocksError as exc:
                # What the client's tor saw is the only account of a failed introduction.
                raise AssertionError(f"GET failed twice ({exc}); client tor's rend log:\n"
                                     f"{log_tail(client.data_dir / REND_LOG, 40)}") from exc
        assert response.status == 200
        answered.append(response.text.strip())
    return answered, retried


def log_lines_after(cluster: NodeCluster, node_id: str, pattern: str, since: float):
    """(timestamp, line) of the node's log lines matching ``pattern`` logged after ``since``."""
    found = []
    for line in cluster.nodes[node_id].log_path.read_text(errors="replace").splitlines():
        stamp = re.match(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ", line)
        if stamp is None or not re.search(pattern, line):
            continue
        at = datetime.strptime(stamp.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
        if at >= since:
            found.append((at, line))
    return found


def standby(docs) -> str:
    pub = publisher_of(docs)
    return max(n for n in docs if n != pub)


async def cached_intro_keys(client: TorClient, master: str) -> set[bytes]:
    """The intro keys of the master descriptor in the client's own cache (no fetch)."""
    controller = await TorController.connect(port=client.control_port)
    try:
        length = period_length_minutes(await fetch_consensus(controller))
        info = await controller.get_info(f"hs/client/desc/id/{master.removesuffix('.onion')}")
    finally:
        await controller.close()
    text = next(iter(info.values()), "")
    return {ip.auth_key for ip in parse_descriptor(text, master, period_length=length)
            .intro_points}


async def test_stopped_backend_withdraws_the_node_and_it_returns(dcluster, tornet,
                                                                 tornet_client):
    docs = await wait_healthy(dcluster)
    pub, victim = publisher_of(docs), standby(docs)
    node = dcluster.nodes[victim]
    address = docs[victim].node.onion_address.removesuffix(".onion")
    check = policy(dcluster)
    master = dcluster.master_address
    # A browser that fetched the master descriptor while the victim was in it, and keeps
    # it: the publisher's republish does not reach it before its period ends.
    await wait_node_served(dcluster, tornet_client, victim, address)
    keys_before = await node_keys(dcluster, tornet_client, victim, address)
    browser = await tornet.aadd_client("ihcache")
    await browser_gets(browser, master, 1)

    stopped_at = time.monotonic()
    node.stop_backend()
    try:
        docs = await dcluster.wait_until(
            lambda d: victim in d and d[victim].advertising is not None
            and d[victim].advertising.advertising is False
            and pub in d and victim not in d[pub].carried_nodes(),
            check.withdraw_bound() + 2 * check.interval, f"{victim} withdraws (backend down)")
        why = docs[victim].advertising.withdrawn_because
        assert why.startswith("service check failing") and "refused" in why.lower(), why
        assert docs[victim].role == "standby"  # it keeps heartbeating
        assert docs[pub].peers[victim].state == "alive"
        assert log_lines_after(dcluster, victim, "withdrawing this node's intro points", 0)

        # Clients stop landing there: the served master descriptor drops the node's keys,
        # those of both its descriptors (the master's copy for the client's period may carry
        # the node's other set than its tor's current one).
        victim_keys: set[bytes] = set()  # every key of the node seen so far
        elapsed = time.monotonic() - stopped_at
        remaining = check.withdraw_bound() + publish_bound(dcluster) - elapsed

        async def gone() -> bool:
            victim_keys.update(await node_keys(dcluster, tornet_client, victim, address))
            try:  # tor may find every HSDir "recently asked" and send nothing: try again
                served = await fetched_intro_keys(tornet_client, master, timeout=FETCH_TRY)
            except OnionmeshError:
                return False
            return not victim_keys & served

        await aeventually(gone, timeout=max(5.0, remaining), interval=2.0,
                          what=f"{victim}'s intro points leave the served descriptor")
        answered, _ = await browser_gets(tornet_client, master, 6)
        assert victim not in answered, answered

        # The browser still holds its older copy, with the victim's intro points: they
        # must turn it away at the intro point (the node's onion service is out of tor),
        # so tor tries another node's; never a rendezvous with the dead backend.
        await aeventually(
            lambda: log_lines_after(dcluster, victim, "onion service taken out of tor", 0),
            timeout=2 * check.interval + 5.0, interval=0.5,
            what=f"{victim} takes its onion service out of tor")
        cached = await cached_intro_keys(browser, master)
        answered, retried = await browser_gets(browser, master, 6)
        assert victim not in answered, answered
        print(f"browser with a cached descriptor carrying {len(cached & keys_before)} intro "
              f"points of the stopped node: 6 GETs answered by {sorted(set(answered))}, "
              f"{retried} retried")
    finally:
        # Back up even when an assertion above failed: the module's next tests share it.
        node.backend = start_backend_process(victim, node.backend_port,
                                             node.root / "backend.log")
    # It recovers: advertised again within the return bound, and clients reach it.
    docs = await dcluster.wait_until(
        lambda d: victim in d and d[victim].advertising is not None
        and d[victim].advertising.advertising is True
        and pub in d and victim in d[pub].carried_nodes(),
        check.return_bound() + 2 * check.interval, f"{victim} advertises again")
    await wait_healthy(dcluster, timeout=publish_bound(dcluster) + 30.0)
    assert log_lines_after(dcluster, victim, "onion service back in tor", 0)


async def test_killed_tor_withdraws_restarts_and_readvertises(dcluster):
    docs = await wait_healthy(dcluster)
    victim = standby(docs)
    node = dcluster.nodes[victim]
    old_tor = node.tor_pid()
    assert old_tor is not None
    killed_at = time.time()
    os.kill(old_tor, signal.SIGKILL)  # only the tor: the daemon lives on
    await aeventually(lambda: log_lines_after(dcluster, victim, "tor is down", killed_at),
                      timeout=10.0, interval=0.5, what="the daemon notices its tor died")
    docs = await wait_healthy(dcluster, timeout=TOR_REPLACEMENT + publish_bound(dcluster))
    assert node.tor_pid() not in (None, old_tor)
    assert docs[victim].node.pid == node.pid  # the same daemon process
    assert docs[victim].advertising.advertising is True
    assert log_lines_after(dcluster, victim, "advertising intro points", killed_at)


async def served_intro_points(client: TorClient, master: str, timeout: float = 30.0):
    """The intro points of the master descriptor a client fetches now (verified)."""
    controller = await TorController.connect(port=client.control_port)
    try:
        length = period_length_minutes(await fetch_consensus(controller))
        text = await fetch_descriptor(controller, master, timeout=timeout)
    finally:
        await controller.close()
    return list(parse_descriptor(text, master, period_length=length).intro_points)


async def node_keys(cluster: NodeCluster, client: TorClient, node_id: str, address: str):
    """The node's intro keys in both its descriptors (its tor's current one + HSFETCH)."""
    keys = {ip.auth_key for ip in await own_intro_points(cluster, node_id, address)}
    with contextlib.suppress(OnionmeshError):
        keys |= await fetched_intro_keys(client, address)
    return keys


def relay_of(point) -> bytes:
    return next(s.data for s in point.link_specifiers if s.type == LS_LEGACY_ID)


async def live_intro_relays(cluster: NodeCluster, node_id: str, address: str) -> set[bytes]:
    """The relays the node's tor holds an established intro circuit to, now."""
    controller = await node_controller(cluster, node_id)
    try:
        info = await controller.get_info("circuit-status")
    finally:
        await controller.close()
    relays = set()
    for line in next(iter(info.values()), "").splitlines():
        circ = parse_circuit_line(line.strip())
        if circ is not None and circ.change is CircuitChange.ESTABLISHED and \
                circ.service in (None, address):
            relays.add(circ.relay)
    return relays


async def first_hops(port: int | None = None, socket_path: str | None = None) -> set[bytes]:
    """The relays a tor uses as the first hop of its circuits now (its guards)."""
    controller = await TorController.connect(port=port, socket_path=socket_path)
    try:
        info = await controller.get_info("circuit-status")
    finally:
        await controller.close()
    hops = set()
    for line in next(iter(info.values()), "").splitlines():
        fields = line.split()
        if len(fields) > 2 and fields[2].startswith("$"):
            hops.add(bytes.fromhex(fields[2].split(",")[0][1:41]))
    return hops


async def test_killed_intro_relay_withdraws_that_point_and_the_replacement_appears(
        dcluster, tornet, tornet_client):
    docs = await wait_healthy(dcluster)
    master = dcluster.master_address
    relays = {n.fingerprint.upper(): n for n in tornet.nodes if n.fingerprint}
    pub = publisher_of(docs)
    # The lower standby first: the earlier tests' faults (backend stopped, tor killed) hit
    # the higher one, and tor allows a service 28 intro circuit launches per 5 minutes,
    # which those faults may have used up (its replacement would then wait for tor).
    standbys = sorted(n for n in docs if n != pub)

    # One of a standby's intro points that clients are served now AND that its tor holds
    # an established circuit to (the served copy may still carry points of the tor the
    # previous test killed: stopping such a relay would test nothing), on a relay that is
    # not the guard of that node, of the publisher or of the client: on this 10-relay
    # network a guard often hosts an intro point too, and stopping it would cut every
    # circuit of that tor, a different fault from the one this test is about. (Another
    # standby's guard may go: that node withdraws and returns, the others serve.)
    async def live_served_points():
        guards = {n: await first_hops(socket_path=node.torrc_value("ControlSocket"))
                  for n, node in dcluster.nodes.items()}
        common = await first_hops(port=tornet_client.control_port) | guards[pub]
        try:  # a fetch that hangs (the HSDir's circuit) is abandoned and tried again
            served = await served_intro_points(tornet_client, master, timeout=FETCH_TRY)
        except OnionmeshError:
            return None
        for node_id in standbys:
            address = docs[node_id].node.onion_address.removesuffix(".onion")
            live = await live_intro_relays(dcluster, node_id, address) - common \
                - guards[node_id]
            mine = await node_keys(dcluster, tornet_client, node_id, address)
            points = [ip for ip in served if ip.auth_key in mine]
            if any(relay_of(ip) in live for ip in points):
                return node_id, address, [ip for ip in points if relay_of(ip) in live], mine
        return None

    for node_id in standbys:
        await wait_node_served(dcluster, tornet_client, node_id,
                               docs[node_id].node.onion_address.removesuffix(".onion"))
    victim, address, points, keys_before = await aeventually(
        live_served_points, interval=2.0, timeout=publish_bound(dcluster) + FETCH_TRY,
        what="a served intro point of a standby with a live circuit, on no guard in use")
    target = points[0]
    fpr = relay_of(target).hex().upper()
    relay = relays[fpr]
    before = dcluster.nodes[victim].status()
    assert before is not None and before.advertising is not None
    advertised_before = before.advertising.intro_points_by_period
    assert advertised_before, "the victim advertises intro points before the fault"

    own_before = {ip.auth_key for ip in await own_intro_points(dcluster, victim, address)}
    stopped_at, stopped_wall = time.monotonic(), time.time()
    relay.process.stop()  # the relay is gone (no supervisor restart) until the test ends
    try:
        # First tor must learn that the relay is gone: the DESTROY travels back along the
        # intro circuit (measured 19 s to over 50 s after the relay's exit on this
        # network). That delay is tor's, so it gets its own generous bound; the product's
        # bounds below start from the node's log line saying tor closed the circuit.
        closed_line = rf"intro circuit \S+ to \${fpr[:12]} closed"

        async def node_knows() -> str | None:
            # The node's log says tor closed the circuit (the usual way), or tor already
            # dropped the intro point from its own descriptor (seen once when the stopped
            # relay was also a middle hop of the node's other intro circuits).
            if log_lines_after(dcluster, victim, closed_line, stopped_wall - 1):
                return "circuit closed"
            if target.auth_key not in own_before:  # it is in the node's other descriptor
                return None
            own = {ip.auth_key for ip in await own_intro_points(dcluster, victim, address)}
            return "tor's own descriptor" if own and target.auth_key not in own else None

        how = await aeventually(node_knows, timeout=TOR_NOTICES, interval=1.0,
                                what=f"{victim} learns that the stopped relay's intro point "
                                     "is gone")
        closed_at = time.monotonic()
        noticed_after = closed_at - stopped_at
        gone_bound = publish_bound(dcluster)

        async def served_now() -> set[bytes] | None:
            # One HSFETCH asks one HSDir: it may be the stopped relay (an HSDir too), or
            # the client's circuits may have run through it (its guard): such a fetch
            # fails or hangs, so each one is kept short and simply tried again.
            with contextlib.suppress(OnionmeshError):
                return await fetched_intro_keys(tornet_client, master, timeout=FETCH_TRY)
            return None

        async def withdrawn() -> bool:
            fetched = await served_now()
            return fetched is not None and target.auth_key not in fetched

        # The bound is the publisher's, plus one failed observation (not the product's).
        await aeventually(withdrawn, timeout=gone_bound + FETCH_TRY, interval=1.0,
                          what="the dead relay's intro point leaves the served descriptor")
        gone_after = time.monotonic() - closed_at
        _, retried = await browser_gets(tornet_client, master, 4)
        assert retried <= 1

        replace_bound = TOR_REPLACEMENT + timing(dcluster, "service", "intro_poll_interval") \
            + publish_bound(dcluster)

        replacement_served = False

        async def replaced() -> bool:
            # tor's replacement is advertised by the node (as many intro points per
            # period as before the fault) and the node is still served. Whether the
            # replacement's own key is in the served descriptor depends on the plan: one
            # intro point per relay, fair across nodes, on 10 relays of which 6-9 are
            # Stable; the replacement's relay may go to another node. That is reported,
            # not required.
            nonlocal replacement_served, replaced_why
            # Compared per time period: a midpoint passing meanwhile drops the older
            # period's whole set (issue 8), which is no lost intro point.
            doc = dcluster.nodes[victim].status()
            if doc is None or doc.advertising is None:
                replaced_why = "no status"
                return False
            now_by_period = doc.advertising.intro_points_by_period
            replaced_why = f"advertised per period {now_by_period}, before {advertised_before}"
            common = now_by_period.keys() & advertised_before.keys()
            if not common or any(now_by_period[p] < advertised_before[p] for p in common):
                return False
            fetched = await served_now()
            if fetched is None or target.auth_key in fetched:
                replaced_why += "; the fetch failed" if fetched is None else \
                    "; the dead point is served again"
                return False
            keys = await node_keys(dcluster, tornet_client, victim, address)
            replacement_served = bool(fetched & (keys - keys_before))
            replaced_why += "; none of its keys served" if not fetched & keys else ""
            return bool(fetched & keys)

        replaced_why = ""
        await aeventually(replaced, timeout=replace_bound, interval=2.0,
                          what="the node advertises a replacement and is still served",
                          context=lambda: replaced_why)
        print(f"the node learned it ({how}) {noticed_after:.1f} s after the relay stopped "
              f"(bound {TOR_NOTICES:.0f} s); from there the intro point was withdrawn after "
              f"{gone_after:.1f} s (bound {gone_bound:.0f} s) and replaced after "
              f"{time.monotonic() - closed_at:.1f} s (bound {replace_bound:.0f} s); the "
              f"replacement's own key served: {replacement_served}")
    finally:
        relay.process.start()
        await relay.process.wait_control_ready(60.0)


async def test_burst_of_intro_rotations_republishes_at_most_once_per_interval(dcluster):
    """Last in the module: tor limits how many intro circuits a service launches per
    5 minutes, so after a burst the node may rightly have no working intro point (and
    advertise none) until that window ends."""
    docs = await wait_healthy(dcluster)
    pub, victim = publisher_of(docs), standby(docs)
    interval = timing(dcluster, "publishing", "min_publish_interval")
    address = docs[victim].node.onion_address.removesuffix(".onion")
    since = time.time()
    controller = await node_controller(dcluster, victim)
    closed, last_close = 0, since
    try:
        for burst_round in range(3):  # a burst: close every established intro circuit, 3 times
            if burst_round:
                await asyncio.sleep(6.0)  # the burst's pace (3 rounds > one publish window)
            info = await controller.get_info("circuit-status")
            for line in next(iter(info.values()), "").splitlines():
                circ = parse_circuit_line(line.strip())
                if circ is not None and circ.change is CircuitChange.ESTABLISHED and \
                        circ.service in (None, address):
                    await controller.request(f"CLOSECIRCUIT {circ.circuit_id}", check=False)
                    closed += 1
                    # (Taken before the pause: its publish may follow at once.)
                    last_close = time.time()
    finally:
        await controller.close()
    assert closed >= 3
    # The withdrawals reach the publisher at once; the coalesced publish follows within
    # one window after the last change.
    await aeventually(
        lambda: log_lines_after(dcluster, pub, "Publishing updated descriptor", last_close),
        timeout=interval + 10.0, interval=0.5, what="a publish after the burst")
    pubs = log_lines_after(dcluster, pub, "Publishing updated descriptor", since)
    # At least the publish after the burst (a round whose circuits tor re-established
    # within the window coalesces into nothing to publish); never two within a window.
    assert pubs, "the burst changed the plan but nothing was republished"
    span = pubs[-1][0] - since
    assert len(pubs) <= span // interval + 1, (len(pubs), span)
    gaps = [b - a for (a, _), (b, _) in itertools.pairwise(pubs)]
    assert all(g >= interval - 0.01 for g in gaps), gaps  # log stamps are to the ms
    changes = log_lines_after(dcluster, victim, "intro points changed", since)
    assert len(changes) > len(pubs)  # coalesced: many plan changes, few publishes
    print(f"{closed} intro circuits closed in a burst; {len(changes)} changes shared, "
          f"{len(pubs)} republishes, "
          f"gaps {[round(g, 1) for g in gaps]} s (min_publish_interval {interval:g} s)")
