"""Who the node's WireGuard interface and tor channel talk to (pure).

Everything comes from the signed roster: each member's WireGuard public key and
coordination onion, and (in entries made with ``[wireguard] endpoint`` set) its
WireGuard endpoint and its mesh address inside the tunnel, all signed by the
authority. So a joiner that persisted the roster knows every peer at its first
start, and a member added or revoked gains or loses its peer everywhere.

``[wireguard] peers`` in the config is an override of the addressing only (an
endpoint behind NAT, an entry made before entries carried addresses): a forged
config line can point at a wrong host but never make a stranger a peer, as the key
still comes from the roster. A member gets a WireGuard peer and a tor stream only
when its key and its addressing are there; ``missing`` names every member left out
and why, for the log and the status.
"""

from __future__ import annotations

import base64
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from onionmesh.config import Config
from onionmesh.mesh.identity import PeerSeed
from onionmesh.mesh.roster import MemberEntry, split_host_port
from onionmesh.transport.multipath import LinkPeer
from onionmesh.transport.tor_channel import TorPeer
from onionmesh.wireguard.spec import PeerSpec


@dataclass(frozen=True)
class CoordinationPeers:
    wireguard: tuple[PeerSpec, ...]
    links: tuple[LinkPeer, ...]
    missing: tuple[str, ...]  # "n4: no WireGuard endpoint ..." ...


def _mesh_ports(config: Config) -> dict[str, int]:
    """Mesh ports named in ``[coordination] peers`` (``node_id@IP:port``)."""
    ports: dict[str, int] = {}
    for entry in config.coordination.peers:
        node_id, sep, address = str(entry).rpartition("@")
        if sep:
            ports[node_id] = int(address.rpartition(":")[2])
    return ports


def entry_addresses(config: Config) -> tuple[str, str]:
    """What ``init``/``join`` sign into this node's roster entry: its WireGuard endpoint
    and its mesh address inside the tunnel (``("", "")`` unless ``[wireguard] endpoint``
    and ``address`` are both set)."""
    wireguard = config.wireguard
    tunnel = wireguard.tunnel_address
    if wireguard.endpoint is None or tunnel is None:
        return "", ""
    port = int(str(config.coordination.advertise or config.coordination.listen)
               .rpartition(":")[2])
    host = f"[{tunnel.ip}]" if tunnel.version == 6 else str(tunnel.ip)
    return str(wireguard.endpoint), f"{host}:{port}"


def _addressing(config: Config, member: MemberEntry, own_port: int,
                mesh_ports: dict[str, int]) -> tuple[str, str, int] | str:
    """(endpoint, tunnel IP, mesh port) for ``member``, or why there is none."""
    node_id = member.node_id
    where = config.wireguard.peers.get(node_id)
    if where is not None:  # the operator's override
        port = mesh_ports.get(node_id)
        if port is None and member.mesh_address:
            port = split_host_port(member.mesh_address)[1]
        return str(where.endpoint), str(ipaddress.ip_address(where.tunnel_ip)), \
            port or own_port
    if not (member.wg_endpoint and member.mesh_address):
        absent = " and ".join(name for name, value in (
            ("WireGuard endpoint", member.wg_endpoint),
            ("tunnel (mesh) address", member.mesh_address)) if not value)
        return (f"{node_id}: its roster entry has no {absent} (made before entries "
                "carried them, or without [wireguard] endpoint) and there is no "
                "[wireguard] peers entry for it")
    tunnel_ip, port = split_host_port(member.mesh_address)  # checked when it was verified
    return member.wg_endpoint, tunnel_ip, mesh_ports.get(node_id, port)


def coordination_peers(config: Config, members: Iterable[MemberEntry],
                       own_wg_key: bytes = b"") -> CoordinationPeers:
    """``own_wg_key``: this node's WireGuard public key; a member naming it (or a key
    another member already has) is left out, as WireGuard routes by key. So is a member
    whose tunnel address is this node's, another member's, or outside this node's
    tunnel network (WireGuard routes replies by tunnel address)."""
    own_port = int(str(config.coordination.listen).rpartition(":")[2])
    mesh_ports = _mesh_ports(config)
    own_tunnel = config.wireguard.tunnel_address
    wireguard: list[PeerSpec] = []
    links: list[LinkPeer] = []
    missing: list[str] = []
    keys: dict[bytes, str] = {own_wg_key: config.node_id} if own_wg_key else {}
    tunnel_ips: dict[str, str] = {str(own_tunnel.ip): config.node_id} if own_tunnel else {}
    for member in sorted(members, key=lambda m: m.node_id):
        node_id = member.node_id
        if node_id == config.node_id:
            continue
        if not member.wg_key:
            missing.append(f"{node_id}: its roster entry has no WireGuard key")
            continue
        if member.wg_key in keys:
            missing.append(f"{node_id}: its roster entry has the WireGuard key of "
                           f"{keys[member.wg_key]}")
            continue
        found = _addressing(config, member, own_port, mesh_ports)
        if isinstance(found, str):
            missing.append(found)
            continue
        endpoint, tunnel_text, port = found
        tunnel_ip = ipaddress.ip_address(tunnel_text)
        if own_tunnel is not None and tunnel_ip not in own_tunnel.network:
            missing.append(f"{node_id}: its tunnel address {tunnel_ip} is outside this "
                           f"node's tunnel network {own_tunnel.network}")
            continue
        if str(tunnel_ip) in tunnel_ips:
            missing.append(f"{node_id}: its tunnel address {tunnel_ip} is "
                           f"{tunnel_ips[str(tunnel_ip)]}'s")
            continue
        keys[member.wg_key] = node_id
        tunnel_ips[str(tunnel_ip)] = node_id
        public = base64.b64encode(member.wg_key).decode("ascii")
        wireguard.append(PeerSpec(node_id, public, endpoint, tunnel_ip))
        host = f"[{tunnel_ip}]" if tunnel_ip.version == 6 else str(tunnel_ip)
        tor = None
        if member.coord_onion:
            tor = TorPeer(node_id, member.coord_onion.removesuffix(".onion"), public)
        else:
            missing.append(f"{node_id}: its roster entry has no coordination onion "
                           "(no tor fallback for it)")
        links.append(LinkPeer(node_id, f"{host}:{port}", tor))
    return CoordinationPeers(tuple(wireguard), tuple(links), tuple(missing))


def with_roster_seeds(seeds: list[PeerSeed], peers: CoordinationPeers) -> list[PeerSeed]:
    """The mesh's bootstrap peers: ``[coordination] peers`` first, then every member the
    roster gives a mesh address (so a restart reaches every member at once, also when
    the inviter, often the only configured peer, is down)."""
    named = {s.node_id for s in seeds} | {s.address for s in seeds}
    return [*seeds, *(PeerSeed(link.node_id, link.address) for link in peers.links
                      if link.node_id not in named and link.address not in named)]
