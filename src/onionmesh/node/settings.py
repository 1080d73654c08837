"""From a validated Config to what the daemon runs with: mesh timing, the advertised
address, peer seeds, the test clock; ``check_runnable`` runs the rules that only
matter for running a node (``config check`` runs them too).
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import math
import os
from collections.abc import Mapping

from onionmesh.alerts import AlertSink
from onionmesh.clock import Clock
from onionmesh.config import Config
from onionmesh.mesh.config import MeshConfig
from onionmesh.mesh.errors import MeshConfigError
from onionmesh.mesh.identity import PeerSeed
from onionmesh.node.errors import NodeConfigError
from onionmesh.node.service_health import CheckPolicy
from onionmesh.transport.paths import PathConfig, PathConfigError

CLOCK_OFFSET_ENV = "ONIONMESH_CLOCK_OFFSET"


def clock_from_env(environ: Mapping[str, str] = os.environ) -> Clock:
    """TESTING HOOK: ``ONIONMESH_CLOCK_OFFSET=<seconds>`` shifts this process's clock."""
    text = environ.get(CLOCK_OFFSET_ENV)
    if not text:
        return Clock()
    try:
        offset = float(text)
    except ValueError:
        offset = math.nan
    if not math.isfinite(offset):
        raise NodeConfigError(f"{CLOCK_OFFSET_ENV} must be a number of seconds, got {text!r}")
    return Clock(offset)


def mesh_config(config: Config) -> MeshConfig:
    """The mesh core's timing; a value the core refuses is a config error (exit 3)."""
    coordination, resilience = config.coordination, config.resilience
    publishing = config.publishing
    tiny = 1e-3  # MeshConfig wants every duration > 0; the config allows 0 for "none"
    try:
        return MeshConfig(
            heartbeat_interval=coordination.heartbeat_interval,
            dead_threshold=resilience.dead_threshold,
            removal_grace_period=max(tiny, resilience.removal_grace_period),
            lease_duration=coordination.lease_duration,
            lease_grace=max(tiny, coordination.lease_grace),
            min_publish_interval=max(tiny, publishing.min_publish_interval),
            refresh_interval=publishing.refresh_interval,
            datagram_max_age=coordination.datagram_max_age,
        )
    except MeshConfigError as exc:
        raise NodeConfigError(f"{config.path}: mesh settings: {exc}") from None


def path_config(config: Config) -> PathConfig:
    """Per-peer path selection timings (``[wireguard]``, ``[resilience]
    tor_fallback_enabled``): derived from the heartbeat unless set, and refused when a
    blocked tunnel would make a peer dead before its heartbeats could arrive over tor."""
    mesh = mesh_config(config)
    wireguard = config.wireguard
    dead_after = (mesh.dead_threshold + mesh.heartbeat_slack) * mesh.heartbeat_interval
    try:
        paths = PathConfig.for_heartbeat(mesh.heartbeat_interval, dead_after,
                                         config.resilience.tor_fallback_enabled)
        overrides: dict[str, float] = {"backoff_cap": wireguard.backoff_cap}
        if wireguard.probe_interval is not None:
            overrides["probe_interval"] = overrides["probe_timeout"] = wireguard.probe_interval
        if wireguard.fallback_after is not None:
            overrides["fallback_after"] = wireguard.fallback_after
        overrides["backoff_cap"] = max(overrides["backoff_cap"],
                                       overrides.get("probe_interval", paths.probe_interval))
        paths = dataclasses.replace(paths, **overrides)
        paths.check_timing(dead_after)
    except PathConfigError as exc:
        raise NodeConfigError(f"{config.path}: [wireguard] path timings: {exc}") from None
    return paths


def health_policy(config: Config) -> CheckPolicy:
    """The service check of this node, from ``[health]``."""
    h = config.health
    return CheckPolicy(kind=h.check, interval=h.interval, timeout=h.timeout,
                       failures=h.failures, successes=h.successes, http_path=h.http_path,
                       http_status=h.http_status, recheck=h.recheck_interval)


def advertise_address(config: Config) -> str:
    """Where peers reach this node: ``advertise``, else ``listen`` unless it is a wildcard."""
    coordination = config.coordination
    if coordination.advertise:
        return str(coordination.advertise)
    listen = str(coordination.listen)
    host = listen.rpartition(":")[0].strip("[]")
    with contextlib.suppress(ValueError):
        if ipaddress.ip_address(host).is_unspecified:
            raise NodeConfigError(
                f"{config.path}: [coordination] advertise: required when listen is {listen} "
                "(peers need this node's reachable address)"
            )
    return listen


def peer_seeds(config: Config) -> list[PeerSeed]:
    """``[coordination] peers`` (``[id@]host:port``) with keys pinned from ``peer_keys``."""
    coordination = config.coordination
    seeds = []
    for entry in coordination.peers:
        node_id, sep, address = entry.rpartition("@")
        if sep:
            seeds.append(PeerSeed(node_id, address, coordination.pinned_key(node_id)))
        else:
            seeds.append(PeerSeed(None, address))
    return seeds


def check_runnable(config: Config) -> None:
    """Config rules that only matter for running a node (``config check`` runs them too)."""
    advertise_address(config)
    peer_seeds(config)
    mesh_config(config)
    if config.wireguard.enabled:
        path_config(config)
    if config.alerts.webhook is not None:
        try:
            AlertSink(config.node_id, webhook=config.alerts.webhook)
        except ValueError as exc:
            raise NodeConfigError(f"{config.path}: [alerts] webhook: {exc}") from None
