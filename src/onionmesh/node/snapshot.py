"""The status document ``onionmesh status`` reads from a running node (JSON).

Its shape is :class:`onionmesh.status_document.StatusDocument`; readers decode it there.

Sections: ``node`` (who am I), ``cluster`` (publisher, term, lease),
``peers`` (state, address, last heard, intro points, role), ``intro_points``
(count per node: what each contributes), ``plan`` (on the publisher: what
the master descriptors carry), ``uploads`` (last result per HSDir),
``descriptor_age`` (seconds since an HSDir last accepted our master
descriptor), ``conflicts`` (foreign master descriptors the checks found), ``clock``,
``coordination`` (with ``[wireguard]`` on: each peer's path, last handshake and fallback
since when). No key material, no cluster secret.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

from onionmesh.node.client_set import client_set_fingerprint
from onionmesh.status_document import SCHEMA_VERSION, StatusDocument

if TYPE_CHECKING:
    from onionmesh.node.daemon import NodeDaemon


def _round(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


def build_snapshot(daemon: NodeDaemon) -> dict[str, Any]:
    now = daemon.clock.now()
    config = daemon.config
    core = daemon.driver.core if daemon.driver is not None else None
    doc: dict[str, Any] = {
        "version": SCHEMA_VERSION,
        "time": now,
        "node": {
            "id": config.node_id,
            "pid": os.getpid(),
            "state": daemon.state,
            "uptime": _round(now - daemon.started_at),
            "priority": config.node.priority,
            "eligible": daemon.keys is not None and daemon.keys.master is not None,
            "master_key": daemon.master_key_source,
            "coordination_address": daemon.advertise,
            "onion_address": (daemon.tor.node_address + ".onion") if daemon.tor and
            daemon.tor.node_address else None,
            "tor_pid": daemon.tor.process.pid if daemon.tor and daemon.tor.process else None,
        },
        "master_address": config.master.address,
        "advertising": daemon.advertising.status() if daemon.advertising else None,
        "clock": daemon.clock_status(),
        "conflicts": daemon.conflicts.to_json(now),  # standby checks run before the mesh too
    }
    clients = config.master.authorized_clients
    if clients:
        doc["restricted_discovery"] = {"clients": len(clients),
                                       "fingerprint": client_set_fingerprint(clients)}
    onion, wiring = daemon.join_onion, daemon.join_wiring
    if onion is not None and onion.service_id is not None and wiring is not None:
        doc["join_onion"] = wiring.status(onion.service_id + ".onion", onion.answered)
    if core is None:
        return doc
    leader = core.election.leader
    doc["cluster"] = {
        "role": "publisher" if core.is_publisher else "standby",
        "publisher": core.publisher_id,
        "term": core.term,
        "lease": None if leader is None else {
            "holder": leader.node_id,
            "term": leader.term,
            "renewed_ago": _round(now - leader.renewed_at),
            "expires_in": _round(
                leader.renewed_at + core.config.lease_duration - now
            ) if leader.node_id != core.node_id else _round(core.config.lease_duration),
        },
    }
    peers = {}
    counts: dict[str, int] = {config.node_id: sum(len(v) for v in daemon.local_sets.values())}
    for node_id, view in sorted(core.peers().items()):
        peers[node_id] = {
            "state": view.state,
            "address": view.address,
            "last_seen_ago": None if view.last_seen is None else _round(now - view.last_seen),
            "intro_points": view.intro_count,
            "role": view.role,
            "priority": view.priority,
            "eligible": view.eligible,
            "term": view.term,
        }
        counts[node_id] = view.intro_count
    doc["peers"] = peers
    doc["intro_points"] = counts
    feed = daemon.feed
    if feed is not None:
        # The master descriptor for a period takes only each node's set for exactly it
        # (publish.period_sets); a period this node's set is unknown for leaves it out.
        doc["own_periods"] = {
            "master_periods": list(feed.periods),
            "fetchable_period": feed.fetch_period,
            "shared": sorted(feed.last_shared),
            "not_known_yet": feed.missing_periods(),
        }
    plan = core.publish_plan()
    requested = daemon.publisher_control.plan if daemon.publisher_control else None
    if plan is not None:
        doc["plan"] = {
            "term": plan.term,
            "generation": plan.generation,
            "count": plan.count,
            "per_period": {str(p): len(v) for p, v in sorted(plan.intro_points.items())},
            "offered": {str(p): len(v) for p, v in sorted(plan.offered.items())},
            "per_node": _per_node(plan.intro_points),
            "last_requested_generation": requested.generation if requested else None,
            "left_out": _left_out(core, daemon, plan.intro_points),
        }
    doc["uploads"] = daemon.uploads.to_json(now)
    doc["descriptor_age"] = _round(daemon.uploads.descriptor_age(now))
    publisher = daemon.publisher_control.publisher if daemon.publisher_control else None
    doc["publisher"] = None if publisher is None else {
        "builds": publisher.builds,
        "periods": {str(p): c for p, c in publisher.upload_counts().items()},
        "published": publisher.published(),
        "revisions": {str(p): r for p in sorted(publisher.targets)
                      if (r := publisher.tracker.revision(p)) is not None},
        "conflicts": publisher.core.conflicts,
        "descriptors": {str(p): n for p, n in sorted(publisher.core.descriptor_counts.items())
                        if p in publisher.targets},
    }
    doc["rejected_messages"] = dict(core.rejections)
    doc["coordination"] = daemon.link.status() if daemon.link is not None else None
    return doc


def _left_out(core: Any, daemon: NodeDaemon, intro_points: Any) -> dict[str, list[str]]:
    """Per master period: live nodes with intro points whose set for that period is unknown.

    Such a node is left out of that period's descriptor rather than filled in with
    intro points of another period, which tor closes at the SRV rotation.
    """
    publisher = daemon.publisher_control.publisher if daemon.publisher_control else None
    periods = sorted(publisher.targets) if publisher is not None else (
        list(daemon.feed.periods) if daemon.feed is not None else sorted(intro_points))
    live = {core.node_id} if daemon.local_sets else set()
    live |= {nid for nid, v in core.peers().items()
             if v.state in ("alive", "suspect") and v.intro_count}
    out: dict[str, list[str]] = {}
    for period in periods:
        present = {nid for nid, _ in intro_points.get(period, ())}
        missing = sorted(live - present)
        if missing:
            out[str(period)] = missing
    return out


def _per_node(intro_points: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for points in intro_points.values():
        for node_id, _ in points:
            counts[node_id] = counts.get(node_id, 0) + 1
    return counts


def _utc(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(at))


def format_status(doc: StatusDocument) -> str:
    """Human-readable ``onionmesh status``."""
    lines = [f"node {doc.node.id} ({doc.node.state}), master {doc.master_address}"]
    if doc.error:
        lines.append(f"STATUS INCOMPLETE: {doc.error}")
    cluster = doc.cluster
    if cluster is not None:
        lease = cluster.lease
        lines.append(
            f"role: {cluster.role}; publisher: {cluster.publisher or 'none'} "
            f"(term {cluster.term}); lease holder {lease.holder if lease else '-'}, "
            f"renewed {lease.renewed_ago if lease else '-'} s ago"
        )
    restricted = doc.restricted_discovery
    if restricted is not None:
        lines.append(f"restricted discovery: {restricted.clients} authorized client(s), key "
                     f"set {restricted.fingerprint} (the same on every node that may publish)")
    join = doc.join_onion
    if join is not None:
        what = (f"relays joins to the authority node ({join.relayed} relayed, "
                f"{join.relay_unanswered} without an answer, {join.relay_not_forwarded} "
                "not forwarded)" if join.role == "relays" else
                f"answers joins ({join.relayed} relayed by other members)")
        lines.append(f"join onion {join.address}: {what}")
    lines.append(f"peers ({len(doc.peers)}):")
    for node_id, peer in doc.peers.items():
        lines.append(
            f"  {node_id:<16} {peer.state:<8} {peer.role:<9} {peer.address:<22} "
            f"intro points {peer.intro_points:>2}  last heard {peer.last_seen_ago} s ago"
        )
    advertising = doc.advertising
    if advertising is not None:
        per_period = ", ".join(f"period {period}: {count}" for period, count
                               in advertising.intro_points_by_period.items())
        lines.append(
            f"advertising intro points ({per_period or 'none yet'})"
            if advertising.advertising else
            f"NOT advertising intro points (standby): {advertising.withdrawn_because}"
        )
    lines.append("intro points per node: "
                 + ", ".join(f"{k}={v}" for k, v in doc.intro_points.items()))
    if doc.plan is not None:
        lines.append(f"publishing {doc.plan.count} intro points "
                     f"(per period {doc.plan.per_period})")
        for period, nodes in doc.plan.left_out.items():
            lines.append(f"left out of period {period}: {', '.join(nodes)} (their descriptor "
                         "for it is not known yet; tor's next-period descriptor cannot be "
                         "fetched before that period starts)")
    if doc.uploads:
        lines.append("last upload per HSDir:")
        for fpr, up in doc.uploads.items():
            extra = f" ({up.reason})" if up.reason else ""
            lines.append(f"  {fpr} {up.result}{extra} {up.age} s ago")
    link = doc.coordination
    if link is not None:
        lines.append(f"coordination: WireGuard {link.interface} ({link.backend or 'not up'}) "
                     f"at {link.tunnel_address}, tor fallback "
                     f"{'on' if link.tor_fallback else 'off'}")
        for node_id, path in link.peers.items():
            since = "" if path.fallback_since is None else \
                f" since {_utc(path.fallback_since)} ({path.fallbacks} fallbacks)"
            handshake = "never" if path.last_handshake_age is None else \
                f"{path.last_handshake_age:.0f} s ago"
            lines.append(f"  {node_id:<16} over {path.path.value:<9} last handshake "
                         f"{handshake}{since}")
        for problem in link.problems + link.missing_peers:
            lines.append(f"  ! {problem}")
    seen = doc.conflicts
    if seen is not None:
        lines.append(f"! foreign master descriptors seen on the HSDirs: {seen.count}, the last "
                     f"{seen.last_age:.0f} s ago: {seen.message}")
    age = doc.descriptor_age
    lines.append(f"descriptor age: {'never published' if age is None else f'{age} s'}")
    clock = doc.clock
    offset = "" if clock.offset_hint is None else f", offset {clock.offset_hint:+.1f} s"
    basis = {"peers_median": f"median of {clock.peers} live peer(s) and this node",
             "consensus_window": "tor's consensus window (no live peer)",
             }.get(clock.basis, "kernel status only (no live peer, no consensus)")
    lines.append(f"clock: {clock.verdict} ({clock.message}); checked against {basis}{offset}")
    if clock.hold:
        lines.append(f"  ! neither claims the lease nor signs: {clock.hold}")
    return "\n".join(lines)
