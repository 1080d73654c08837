"""Sans-IO: compare what the interface is with what it should be; say what to do.

The shell (manager.py) observes the link (`ip -j addr`), the device (`wg show dump`)
and, in userspace mode, whether its wireguard-go process lives, then applies the
actions in order. What cannot be repaired from here is returned as a problem, in
words an operator can act on.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from onionmesh.wireguard.dump import DeviceState, LinkState, PeerState
from onionmesh.wireguard.spec import InterfaceSpec, PeerSpec

# WireGuard rejects a session older than 180 s (REJECT_AFTER_TIME); a live peer with
# keepalive renews its handshake every ~2 min, so older than this means no tunnel.
DEFAULT_STALE_AFTER = 180.0


@dataclass(frozen=True)
class Observation:
    link: LinkState | None  # None: no such link in this network namespace
    device: DeviceState | None  # None: `wg show` failed (device_error says why)
    device_error: str | None = None
    process_alive: bool | None = None  # userspace mode only: our wireguard-go runs


@dataclass(frozen=True)
class CreateInterface:
    """(Re)create the link: stop our wireguard-go first if it still runs."""


@dataclass(frozen=True)
class ConfigureDevice:
    """Set the private key and listen port."""


@dataclass(frozen=True)
class SetPeer:
    peer: PeerSpec
    set_endpoint: bool


@dataclass(frozen=True)
class RemovePeer:
    public_key: str


@dataclass(frozen=True)
class AddAddress:
    address: ipaddress.IPv4Interface | ipaddress.IPv6Interface


@dataclass(frozen=True)
class RemoveAddress:
    address: ipaddress.IPv4Interface | ipaddress.IPv6Interface


@dataclass(frozen=True)
class SetLinkUp:
    pass


Action = CreateInterface | ConfigureDevice | SetPeer | RemovePeer | AddAddress | RemoveAddress \
    | SetLinkUp


@dataclass(frozen=True)
class Plan:
    actions: tuple[Action, ...] = ()
    problems: tuple[str, ...] = field(default=())


@dataclass(frozen=True)
class PeerHealth:
    node_id: str
    public_key: str
    configured: bool
    latest_handshake: float | None  # unix seconds, None = never
    handshake_age: float | None
    rx_bytes: int
    tx_bytes: int
    stale: bool
    endpoint: str | None


def _endpoint_key(endpoint: str | None) -> str | None:
    return None if endpoint is None else endpoint.replace("[", "").replace("]", "")


def plan_repairs(spec: InterfaceSpec, seen: Observation, now: float,
                 stale_after: float = DEFAULT_STALE_AFTER) -> Plan:
    if seen.link is None:
        if seen.device is not None:
            # `wg` reached a UAPI socket of this name but the link is not here: another
            # namespace's wireguard-go owns the name (the socket path is machine-wide).
            return Plan(problems=(
                f"WireGuard interface name {spec.name!r} is in use by another network "
                "namespace on this machine; set [wireguard] interface to a unique name",))
        return Plan(actions=(CreateInterface(), *_full_config(spec)))
    if seen.process_alive is False:
        return Plan(actions=(CreateInterface(), *_full_config(spec)))
    if seen.device is None:
        return Plan(problems=(
            f"link {spec.name!r} exists but is not a WireGuard device `wg` can read"
            + (f": {seen.device_error}" if seen.device_error else "")
            + "; delete it (ip link del) or choose another [wireguard] interface",))
    actions: list[Action] = []
    device = seen.device
    if (not device.has_private_key or device.public_key != spec.public_key
            or device.listen_port != spec.listen_port):
        actions.append(ConfigureDevice())
    actions.extend(_peer_actions(spec, device, now, stale_after))
    for address in seen.link.addresses:
        if address != spec.address and not address.ip.is_link_local:
            actions.append(RemoveAddress(address))
    if spec.address not in seen.link.addresses:
        actions.append(AddAddress(spec.address))
    if not seen.link.up:
        actions.append(SetLinkUp())
    return Plan(actions=tuple(actions))


def _full_config(spec: InterfaceSpec) -> list[Action]:
    return [ConfigureDevice(), *(SetPeer(peer, True) for peer in spec.peers),
            AddAddress(spec.address), SetLinkUp()]


def _stale(state: PeerState, now: float, stale_after: float) -> bool:
    return state.latest_handshake == 0 or now - state.latest_handshake > stale_after


def _peer_actions(spec: InterfaceSpec, device: DeviceState, now: float,
                  stale_after: float) -> list[Action]:
    actions: list[Action] = []
    present = device.peer_by_key()
    wanted = spec.peer_by_key()
    for key in present:
        if key not in wanted:
            actions.append(RemovePeer(key))
    for key, peer in wanted.items():
        state = present.get(key)
        if state is None:
            actions.append(SetPeer(peer, True))
            continue
        # A peer that handshook recently may have roamed to a new endpoint: that is
        # WireGuard working, not drift. Only a stale peer is pointed back at the roster.
        endpoint_wrong = _endpoint_key(state.endpoint) != _endpoint_key(peer.endpoint) and (
            state.endpoint is None or _stale(state, now, stale_after))
        if (endpoint_wrong or state.allowed_ips != (peer.allowed_ip,)
                or state.persistent_keepalive != spec.persistent_keepalive):
            actions.append(SetPeer(peer, endpoint_wrong))
    return actions


def peer_health(spec: InterfaceSpec, device: DeviceState | None, now: float,
                stale_after: float = DEFAULT_STALE_AFTER) -> list[PeerHealth]:
    present = device.peer_by_key() if device is not None else {}
    report = []
    for peer in spec.peers:
        state = present.get(peer.public_key)
        if state is None:
            report.append(PeerHealth(peer.node_id, peer.public_key, False, None, None, 0, 0,
                                     True, None))
            continue
        handshake = float(state.latest_handshake) if state.latest_handshake else None
        report.append(PeerHealth(
            node_id=peer.node_id,
            public_key=peer.public_key,
            configured=True,
            latest_handshake=handshake,
            handshake_age=None if handshake is None else max(0.0, now - handshake),
            rx_bytes=state.rx_bytes,
            tx_bytes=state.tx_bytes,
            stale=_stale(state, now, stale_after),
            endpoint=state.endpoint,
        ))
    return report
