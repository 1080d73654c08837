"""Prometheus metrics of one node, served on an opt-in local port.

Each node has its own registry (not prometheus-client's global one) so tests
and several daemons in one process never share counters.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

PEER_STATES = ("alive", "suspect", "dead")


class NodeMetrics:
    """The metrics the operator asked for, with names that say what they count."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.peers = Gauge("onionmesh_peers", "Peers by state", ["state"], registry=r)
        self.is_publisher = Gauge(
            "onionmesh_is_publisher", "1 while this node holds the publisher lease", registry=r
        )
        self.lease_term = Gauge("onionmesh_lease_term", "Current publisher lease term", registry=r)
        self.uploads = Counter(
            "onionmesh_hsdir_uploads", "Descriptor uploads by HSDir and result",
            ["hsdir", "result"], registry=r,
        )
        self.republishes = Counter(
            "onionmesh_republishes", "Master descriptor publishes by reason", ["reason"],
            registry=r,
        )
        self.intro_points_published = Gauge(
            "onionmesh_intro_points_published",
            "Intro points in the last published master descriptor", ["period"], registry=r,
        )
        self.last_publish_timestamp = Gauge(
            "onionmesh_last_publish_timestamp_seconds",
            "Unix time of the last accepted master descriptor publish", registry=r,
        )
        self.descriptor_age = Gauge(
            "onionmesh_descriptor_age_seconds", "Seconds since the last accepted publish",
            registry=r,
        )
        self.messages_rejected = Counter(
            "onionmesh_messages_rejected", "Peer messages rejected, by reason", ["reason"],
            registry=r,
        )
        self._last_publish: float | None = None
        self.descriptor_age.set_function(self._descriptor_age)
        for state in PEER_STATES:
            self.peers.labels(state=state).set(0)

    def _descriptor_age(self) -> float:
        if self._last_publish is None:
            return float("nan")
        return max(0.0, time.time() - self._last_publish)

    def set_peer_counts(self, counts: Mapping[str, int]) -> None:
        for state in PEER_STATES:
            self.peers.labels(state=state).set(counts.get(state, 0))

    def record_upload(self, hsdir: str, ok: bool) -> None:
        self.uploads.labels(hsdir=hsdir, result="ok" if ok else "failed").inc()

    def record_publish(self, reason: str, intro_counts: Mapping[int, int], at: float) -> None:
        self.republishes.labels(reason=reason).inc()
        for period, count in intro_counts.items():
            self.intro_points_published.labels(period=str(period)).set(count)
        self._last_publish = at
        self.last_publish_timestamp.set(at)

    def record_rejection(self, reason: str) -> None:
        self.messages_rejected.labels(reason=reason).inc()

    def serve(self, host: str, port: int) -> Any:
        """Start the HTTP exporter; returns the server (``server.server_address`` has the port)."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return server
