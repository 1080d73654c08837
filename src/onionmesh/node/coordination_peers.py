"""Who the node's WireGuard interface and tor channel talk to (pure).

Identity comes from the signed roster (each member's WireGuard public key and
coordination onion, signed by the authority), addressing from the operator's
``[wireguard] peers`` (each member's underlay endpoint and tunnel address), so a
forged config line can point at a wrong host but never make a stranger a peer.
A member gets a WireGuard peer and a tor stream only when both halves are there;
``missing`` names every member left out and why, for the log and the status.
"""

from __future__ import annotations

import base64
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from onionmesh.config import Config
from onionmesh.mesh.roster import MemberEntry
from onionmesh.transport.multipath import LinkPeer
from onionmesh.transport.tor_channel import TorPeer
from onionmesh.wireguard.spec import PeerSpec


@dataclass(frozen=True)
class CoordinationPeers:
    wireguard: tuple[PeerSpec, ...]
    links: tuple[LinkPeer, ...]
    missing: tuple[str, ...]  # "n4: no [wireguard] peers entry" ...


def _mesh_ports(config: Config) -> dict[str, int]:
    """Mesh ports named in ``[coordination] peers`` (``node_id@IP:port``)."""
    ports: dict[str, int] = {}
    for entry in config.coordination.peers:
        node_id, sep, address = str(entry).rpartition("@")
        if sep:
            ports[node_id] = int(address.rpartition(":")[2])
    return ports


def coordination_peers(config: Config, members: Iterable[MemberEntry],
                       own_wg_key: bytes = b"") -> CoordinationPeers:
    """``own_wg_key``: this node's WireGuard public key; a member naming it (or a key
    another member already has) is left out, as WireGuard routes by key."""
    own_port = int(str(config.coordination.listen).rpartition(":")[2])
    mesh_ports = _mesh_ports(config)
    wireguard: list[PeerSpec] = []
    links: list[LinkPeer] = []
    missing: list[str] = []
    keys: dict[bytes, str] = {own_wg_key: config.node_id} if own_wg_key else {}
    for member in sorted(members, key=lambda m: m.node_id):
        node_id = member.node_id
        if node_id == config.node_id:
            continue
        where = config.wireguard.peers.get(node_id)
        if where is None:
            missing.append(f"{node_id}: no [wireguard] peers entry (endpoint, tunnel_ip)")
            continue
        if not member.wg_key:
            missing.append(f"{node_id}: its roster entry has no WireGuard key")
            continue
        if member.wg_key in keys:
            missing.append(f"{node_id}: its roster entry has the WireGuard key of "
                           f"{keys[member.wg_key]}")
            continue
        keys[member.wg_key] = node_id
        public = base64.b64encode(member.wg_key).decode("ascii")
        tunnel_ip = ipaddress.ip_address(where.tunnel_ip)
        wireguard.append(PeerSpec(node_id, public, where.endpoint, tunnel_ip))
        host = f"[{tunnel_ip}]" if tunnel_ip.version == 6 else str(tunnel_ip)
        tor = None
        if member.coord_onion:
            tor = TorPeer(node_id, member.coord_onion.removesuffix(".onion"), public)
        else:
            missing.append(f"{node_id}: its roster entry has no coordination onion "
                           "(no tor fallback for it)")
        links.append(LinkPeer(node_id, f"{host}:{mesh_ports.get(node_id, own_port)}", tor))
    return CoordinationPeers(tuple(wireguard), tuple(links), tuple(missing))
