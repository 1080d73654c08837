"""What the node's WireGuard interface should look like.

Built by the daemon from its config (interface, port, tunnel address, keepalive)
and the roster (one ``PeerSpec`` per other member that has a WireGuard key).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from onionmesh.wireguard.errors import WireGuardError
from onionmesh.wireguard.keys import decode_key
from onionmesh.wireguard.names import check_interface_name

DEFAULT_LISTEN_PORT = 51820
# Seconds. Keeps NAT mappings open and, as measured, lets a restarted wireguard-go
# get its tunnels back in ~0.1 s instead of the 15 s keepalive+rekey timeouts.
DEFAULT_PERSISTENT_KEEPALIVE = 5


@dataclass(frozen=True)
class PeerSpec:
    node_id: str
    public_key: str
    endpoint: str  # underlay "host:port"
    tunnel_ip: ipaddress.IPv4Address | ipaddress.IPv6Address

    def __post_init__(self) -> None:
        decode_key(self.public_key, f"WireGuard public key of peer {self.node_id!r}")
        host, sep, port = self.endpoint.rpartition(":")
        if not sep or not port.isdigit() or not 0 < int(port) < 65536:
            raise WireGuardError(
                f"endpoint of peer {self.node_id!r} must be host:port, got {self.endpoint!r}")
        try:
            ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            raise WireGuardError(
                f"endpoint of peer {self.node_id!r} must be an IP literal, got {host!r}"
            ) from None

    @property
    def allowed_ip(self) -> str:
        bits = 32 if self.tunnel_ip.version == 4 else 128
        return f"{self.tunnel_ip}/{bits}"


@dataclass(frozen=True)
class InterfaceSpec:
    name: str
    listen_port: int
    address: ipaddress.IPv4Interface | ipaddress.IPv6Interface  # tunnel address with prefix
    public_key: str
    persistent_keepalive: int = DEFAULT_PERSISTENT_KEEPALIVE
    peers: tuple[PeerSpec, ...] = ()

    def __post_init__(self) -> None:
        check_interface_name(self.name)
        if not 0 < self.listen_port < 65536:
            raise WireGuardError(f"WireGuard listen port must be 1-65535, got {self.listen_port}")
        if not 0 <= self.persistent_keepalive <= 65535:
            raise WireGuardError("persistent-keepalive must be 0-65535 seconds, "
                                 f"got {self.persistent_keepalive}")
        seen: dict[str, str] = {}
        for peer in self.peers:
            if peer.public_key == self.public_key:
                raise WireGuardError(f"peer {peer.node_id!r} has this node's own WireGuard key")
            if peer.public_key in seen:
                raise WireGuardError(f"peers {seen[peer.public_key]!r} and {peer.node_id!r} "
                                     "share one WireGuard key")
            seen[peer.public_key] = peer.node_id
            if peer.tunnel_ip == self.address.ip:
                raise WireGuardError(f"peer {peer.node_id!r} has this node's tunnel address")

    def peer_by_key(self) -> dict[str, PeerSpec]:
        return {peer.public_key: peer for peer in self.peers}
