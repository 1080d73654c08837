"""Parsers for what `wg show IF dump` and `ip -j addr show dev IF` print.

`wg show IF dump` (wg(8)) prints tab-separated lines: first the interface
(private-key, public-key, listen-port, fwmark), then one per peer (public-key,
preshared-key, endpoint, allowed-ips, latest-handshake, transfer-rx, transfer-tx,
persistent-keepalive). The private key is dropped here at once and never appears
in a parsed value or an error message.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass

from onionmesh.wireguard.errors import DumpParseError

_NONE = "(none)"


@dataclass(frozen=True)
class PeerState:
    public_key: str
    endpoint: str | None
    allowed_ips: tuple[str, ...]
    latest_handshake: int  # unix seconds; 0 = never
    rx_bytes: int
    tx_bytes: int
    persistent_keepalive: int  # 0 = off


@dataclass(frozen=True)
class DeviceState:
    public_key: str | None
    has_private_key: bool
    listen_port: int
    peers: tuple[PeerState, ...]

    def peer_by_key(self) -> dict[str, PeerState]:
        return {peer.public_key: peer for peer in self.peers}


@dataclass(frozen=True)
class LinkState:
    name: str
    up: bool
    addresses: tuple[ipaddress.IPv4Interface | ipaddress.IPv6Interface, ...]


def _int(text: str, what: str, line: int) -> int:
    if not text.isdigit():
        raise DumpParseError(f"wg dump line {line}: {what} must be a number, got {text[:20]!r}")
    return int(text)


def _off_or_int(text: str, what: str, line: int) -> int:
    return 0 if text == "off" else _int(text, what, line)


def parse_wg_dump(text: str) -> DeviceState:
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise DumpParseError("wg dump is empty (expected the interface line)")
    head = lines[0].split("\t")
    if len(head) != 4:
        raise DumpParseError(f"wg dump line 1: expected 4 tab-separated fields, got {len(head)}")
    _private, public, port, _fwmark = head
    peers = []
    for number, line in enumerate(lines[1:], start=2):
        fields = line.split("\t")
        if len(fields) != 8:
            raise DumpParseError(
                f"wg dump line {number}: expected 8 tab-separated fields, got {len(fields)}")
        key, _psk, endpoint, allowed, handshake, rx, tx, keepalive = fields
        peers.append(PeerState(
            public_key=key,
            endpoint=None if endpoint == _NONE else endpoint,
            allowed_ips=() if allowed == _NONE else tuple(allowed.split(",")),
            latest_handshake=_int(handshake, "latest-handshake", number),
            rx_bytes=_int(rx, "transfer-rx", number),
            tx_bytes=_int(tx, "transfer-tx", number),
            persistent_keepalive=_off_or_int(keepalive, "persistent-keepalive", number),
        ))
    return DeviceState(
        public_key=None if public == _NONE else public,
        has_private_key=_private != _NONE,
        listen_port=_int(port, "listen-port", 1),
        peers=tuple(peers),
    )


def parse_ip_addr_json(text: str, name: str) -> LinkState:
    """`ip -j addr show dev NAME` -> LinkState."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise DumpParseError(f"`ip -j addr show dev {name}` printed invalid JSON: {exc}") from None
    if not isinstance(data, list) or len(data) != 1 or not isinstance(data[0], dict):
        raise DumpParseError(f"`ip -j addr show dev {name}` did not print one link")
    link = data[0]
    flags = link.get("flags", [])
    addresses = []
    for info in link.get("addr_info", []):
        try:
            addresses.append(ipaddress.ip_interface(f"{info['local']}/{info['prefixlen']}"))
        except (KeyError, TypeError, ValueError):
            raise DumpParseError(f"`ip -j addr show dev {name}`: bad address entry") from None
    return LinkState(
        name=str(link.get("ifname", name)),
        up=isinstance(flags, list) and "UP" in flags,
        addresses=tuple(addresses),
    )
