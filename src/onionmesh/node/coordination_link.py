"""The daemon's coordination link when ``[wireguard] enabled``: WireGuard + tor fallback.

Sets up, in order: the WireGuard interface (``WireGuardManager``: one peer per roster
member with a ``[wireguard] peers`` entry), the coordination onion on the node's own
tor (``TorChannel``: restricted discovery for the members' keys, one stream per peer
through the node's SOCKS port) and the ``MultipathTransport`` that the mesh driver
sends through (``open_transport``), with the sans-IO ``PathSelector`` deciding each
peer's path. ``update_members`` follows roster changes (a member added or revoked
gets or loses its WireGuard peer and tor stream). Path changes reach the daemon via
``on_path_event`` (log line + alert there).
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable, Iterable
from pathlib import Path

from onionmesh.clock import Clock
from onionmesh.config import Config
from onionmesh.mesh.roster import MemberEntry
from onionmesh.node.coordination_keys import CoordinationKeys
from onionmesh.node.coordination_peers import CoordinationPeers, coordination_peers
from onionmesh.node.keyfiles import state_dir, unix_socket_path
from onionmesh.node.settings import path_config
from onionmesh.tor.control import TorController
from onionmesh.transport.frames import Frame
from onionmesh.transport.multipath import MultipathTransport
from onionmesh.transport.paths import PathEvent, PathSelector
from onionmesh.transport.tor_channel import TorChannel, coordination_key
from onionmesh.wireguard.errors import WireGuardError
from onionmesh.wireguard.manager import RepairReport, WireGuardManager
from onionmesh.wireguard.names import default_interface_name
from onionmesh.wireguard.spec import InterfaceSpec

log = logging.getLogger("onionmesh.node")


def interface_name(config: Config) -> str:
    return config.wireguard.interface or default_interface_name(
        config.node_id, Path(state_dir(config)).resolve())


class CoordinationLink:
    def __init__(self, config: Config, keys: CoordinationKeys, clock: Clock,
                 controller: TorController, socks: tuple[str, int] | str,
                 on_path_event: Callable[[PathEvent], None]) -> None:
        self.config = config
        self.keys = keys
        self.clock = clock
        self.paths = path_config(config)
        self.selector = PathSelector(self.paths, clock.now())
        self.peers = CoordinationPeers((), (), ())
        address = config.wireguard.tunnel_address
        assert address is not None  # config: required when enabled
        self.spec = InterfaceSpec(interface_name(config), config.wireguard.listen_port,
                                  address, keys.wireguard.public_key,
                                  config.wireguard.persistent_keepalive)
        self.manager = WireGuardManager(self.spec, keys.wireguard.private_key)
        onion_key, _ = coordination_key(keys.onion)
        self.channel = TorChannel(
            controller, socks, config.node_id,
            socket_dir=unix_socket_path(config, "coord"), onion_key=onion_key,
            client_private_b64=keys.wireguard.private_key,
            on_frame=self._on_tor_frame) if config.resilience.tor_fallback_enabled else None
        self._on_path_event = on_path_event
        self.transport: MultipathTransport | None = None
        self.first_repair: RepairReport | None = None

    def _on_tor_frame(self, node_id: str, frame: Frame) -> None:
        if self.transport is not None:
            self.transport.on_tor_frame(node_id, frame)

    async def start(self, members: Iterable[MemberEntry]) -> None:
        """Interface up with the current members, then the coordination onion."""
        self.peers = coordination_peers(self.config, members, self.keys.wg_public_raw)
        for problem in self.peers.missing:
            log.warning("WireGuard: member %s", problem)
        self.spec = self._spec_with(self.peers)
        self.manager.update_spec(self.spec)
        self.first_repair = report = await self.manager.repair()
        for problem in report.problems:
            log.error("WireGuard %s: %s", self.spec.name, problem)
        log.info("WireGuard interface %s (%s) at %s, port %d, %d peer(s)", self.spec.name,
                 self.manager.backend.value if self.manager.backend else "not up",
                 self.spec.address, self.spec.listen_port, len(self.spec.peers))
        if self.channel is not None:
            await self.channel.start({})
            log.info("coordination onion %s.onion (clients: roster members only)",
                     self.channel.service_id)
        else:
            log.warning("tor fallback disabled ([resilience] tor_fallback_enabled = false): "
                        "a blocked WireGuard tunnel is a dead peer")

    def _spec_with(self, peers: CoordinationPeers) -> InterfaceSpec:
        return InterfaceSpec(self.spec.name, self.spec.listen_port, self.spec.address,
                             self.spec.public_key, self.spec.persistent_keepalive,
                             peers.wireguard)

    async def open_transport(self, listen: str,
                             on_datagram: Callable[[bytes, str], None]) -> MultipathTransport:
        """The mesh driver's transport opener: UDP on the tunnel address + tor channel."""
        self.transport = await MultipathTransport.open(
            listen, on_datagram, self.selector, channel=self.channel, wireguard=self.manager,
            clock=self.clock.now, on_path_event=self._on_path_event,
            repair_interval=self.config.wireguard.repair_interval)
        await self.transport.set_peers(self.peers.links)
        self.transport.start()
        return self.transport

    async def update_members(self, members: Iterable[MemberEntry]) -> None:
        """The roster changed: WireGuard peers and tor streams follow it."""
        peers = coordination_peers(self.config, members, self.keys.wg_public_raw)
        if peers == self.peers:
            return
        for problem in sorted(set(peers.missing) - set(self.peers.missing)):
            log.warning("WireGuard: member %s", problem)
        before = {p.node_id for p in self.peers.links}
        after = {p.node_id for p in peers.links}
        self.peers = peers
        self.spec = self._spec_with(peers)
        self.manager.update_spec(self.spec)
        if self.transport is not None:
            await self.transport.set_peers(peers.links)
        try:
            report = await self.manager.repair()
        except WireGuardError as exc:  # a failed repair is retried by the repair loop
            log.error("WireGuard %s: %s", self.spec.name, exc)
        else:
            for problem in report.problems:
                log.error("WireGuard %s: %s", self.spec.name, problem)
        if before != after:
            log.info("WireGuard peers now %s (added %s, removed %s)",
                     ", ".join(sorted(after)) or "none",
                     ", ".join(sorted(after - before)) or "none",
                     ", ".join(sorted(before - after)) or "none")

    def tunnel_ip(self) -> str:
        return str(ipaddress.ip_interface(self.spec.address).ip)

    def status(self) -> dict[str, object]:
        """The status document's ``coordination`` section (CoordinationStatus)."""
        view: dict[str, object] = self.transport.status() if self.transport else {}
        report = (self.transport.last_repair if self.transport else None) or self.first_repair
        service_id = self.channel.service_id if self.channel is not None else None
        return {
            "interface": self.spec.name,
            "tunnel_address": str(self.spec.address),
            "tor_fallback": self.channel is not None,
            "backend": self.manager.backend.value if self.manager.backend else None,
            "coordination_onion": f"{service_id}.onion" if service_id else None,
            "problems": list(report.problems) if report is not None else [],
            "missing_peers": list(self.peers.missing),
            "peers": view.get("peers", {}),
            "sent": view.get("sent", {}),
            "received": view.get("received", {}),
        }

    async def close(self) -> None:
        # The transport is closed by the mesh driver (after the lease release went out).
        if self.channel is not None:
            await self.channel.close()
        await self.manager.close()
