"""The node configuration file (TOML): one typed section per table, defaults, validation.

One file per node, ``/etc/onionmesh/onionmesh.toml`` by default. Each TOML table
is decoded into its own ``msgspec.Struct`` (``NodeSection``, ``MasterSection``...)
with unknown fields forbidden, so a typo never silently falls back to a default
(RustBalance ignored unknown keys). Every error is one line naming the file, the
``[section] key`` and the problem. Strings are matched in full (``\\A...\\Z``:
``$`` would accept a trailing newline) with length limits, and no string may hold
a control character, so nothing in a config can smuggle a second line into a
torrc, a log line or a control-port command. Addresses are IP literals: resolving
a name would block the event loop and let DNS steer the mesh.

Paths are resolved relative to the file's directory so a config can be moved
together with its keys.

The ``[resilience]`` section carries the failure-handling options of
docs/scenarios.md, with their defaults.

To add a key: add a field to its section's Struct (with an ``Annotated`` type
for its limits); consumers read ``config.<section>.<key>``.
"""

from __future__ import annotations

import base64
import binascii
import enum
import ipaddress
import logging
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, TypeVar

import msgspec

from onionmesh.errors import OnionmeshError

log = logging.getLogger(__name__)

DEFAULT_CONFIG_PATH = Path("/etc/onionmesh/onionmesh.toml")
# [coordination] datagram_max_age >= this x [resilience] clock_skew_tolerance, so a
# clock well past the tolerance is still heard by its peers (and held back by them).
DATAGRAM_AGE_FACTOR = 3
MAX_CONFIG_BYTES = 1 << 20  # a node's config is a few KiB; refuse before parsing more
MAX_PATH_CHARS = 4096
MAX_LIST_ITEMS = 256


class ConfigError(OnionmeshError):
    """A configuration file is unreadable or invalid; the message says where and why."""

    def __init__(self, path: Path | str, problem: str, section: str | None = None,
                 key: str | None = None) -> None:
        where = str(path)
        if section is not None:
            where += f": [{section}]"
            if key is not None:
                where += f" {key}"
        # One line whatever the problem text holds (it may quote operator input).
        problem = " ".join(problem.split())
        super().__init__(f"{where}: {problem}")
        self.path = str(path)
        self.section = section
        self.key = key
        self.problem = problem


class _Invalid(Exception):
    """Raised by a section's checks; not a ValueError, so msgspec passes it through."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(problem)
        self.key = key
        self.problem = problem


# --- value types: every string is a full match with a length limit ---------------------------

# Human descriptions of the patterns below, used in error messages instead of the regex.
_PATTERN_HELP: dict[str, str] = {}


def _text(pattern: str, help_text: str, max_length: int) -> Any:
    full = rf"\A(?:{pattern})\Z"
    _PATTERN_HELP[full] = help_text
    return Annotated[str, msgspec.Meta(pattern=full, min_length=1, max_length=max_length)]


_PRINTABLE = r"[^\x00-\x1f\x7f]+"  # no control characters: no newline, no NUL, no tab

NodeId = _text(r"[a-z0-9][a-z0-9._-]{0,63}",
               "1-64 characters of a-z, 0-9, '.', '_' or '-', starting with a letter or digit", 64)
OnionAddress = _text(r"[a-z2-7]{56}\.onion",
                     "a v3 onion address (56 base32 characters + '.onion', lowercase)", 62)
HostPort = _text(r"\[[0-9A-Fa-f:.]+\]:[0-9]{1,5}|[0-9.]+:[0-9]{1,5}",
                 "'IP:port' or '[IPv6]:port' (an IP literal, not a host name)", 64)
Peer = _text(r"(?:[a-z0-9][a-z0-9._-]{0,63}@)?(?:\[[0-9A-Fa-f:.]+\]|[0-9.]+):[0-9]{1,5}",
             "'IP:port' or 'node_id@IP:port' (an IP literal, not a host name)", 130)
PortMapping = _text(r"[0-9]{1,5}(?: +[^\x00-\x20\x7f]{1,200})?",
                    "'VIRTPORT [TARGET]' as in tor's HiddenServicePort", 210)
HexKey = _text(r"[0-9a-fA-F]{64}", "64 hex characters (an ed25519 public key)", 64)
TorrcLine = _text(_PRINTABLE, "text without control characters (no newlines)", 1024)
Text = _text(_PRINTABLE, "text without control characters (no newlines)", 1024)
Secret = _text(_PRINTABLE, "text without control characters (no newlines)", 256)
WebhookUrl = _text(r"https?://[^\x00-\x20\x7f]+", "an http:// or https:// URL", 2048)

Port = Annotated[int, msgspec.Meta(ge=1, le=65535)]
PortOrZero = Annotated[int, msgspec.Meta(ge=0, le=65535)]
Retries = Annotated[int, msgspec.Meta(ge=0, le=100)]
_T = TypeVar("_T")
Items = Annotated[tuple[_T, ...], msgspec.Meta(max_length=MAX_LIST_ITEMS)]


def _seconds(minimum: float, maximum: float) -> Any:
    return Annotated[float, msgspec.Meta(ge=minimum, le=maximum)]


class ClockCheck(enum.StrEnum):
    """``[resilience] clock_check``: what a bad clock does to signing."""

    REFUSE = "refuse"
    WARN = "warn"


class HealthCheck(enum.StrEnum):
    """``[health] check``: how the node probes its own HiddenServicePort targets."""

    TCP = "tcp"  # a TCP connect succeeds
    HTTP = "http"  # an HTTP GET of ``http_path`` answers with ``http_status``
    NONE = "none"  # no check: the service always counts as healthy


class LogLevel(enum.StrEnum):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


class _Section(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Base of every section: frozen, unknown keys refused."""


# --- the sections ----------------------------------------------------------------------------


class NodeSection(_Section):
    id: NodeId
    priority: Annotated[int, msgspec.Meta(ge=0, le=1_000_000)] = 100
    state_dir: Path = Path("/var/lib/onionmesh")
    # The node's Ed25519 key (PKCS#8 PEM): signs its mesh messages and is its onion
    # service key. Default: <state_dir>/node_key.pem.
    key_path: Path | None = None


ClientName = _text(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}",
                  "1-64 characters of A-Z, a-z, 0-9, '.', '_' or '-'", 64)
# tor's authorized_clients format: base32 of a 32-byte x25519 public key (52 characters),
# checked in MasterSection.__post_init__ so the error names the client.
_CLIENT_KEY_HELP = ("a client's x25519 public key: 52 base32 characters (optionally "
                    "'descriptor:x25519:' first, as in tor's .auth files)")
ClientKey = _text(r"[^\x00-\x20\x7f]+", "text without spaces or control characters "
                  f"({_CLIENT_KEY_HELP})", 71)


class MasterSection(_Section):
    address: OnionAddress  # checksum and version are checked where the key is loaded
    key_path: Path | None = None
    backup_key_path: Path | None = None
    # Restricted discovery (client authorization): name -> x25519 public key. Empty: the
    # master descriptor is readable by anyone who knows the address.
    authorized_clients: Annotated[dict[ClientName, ClientKey],
                                  msgspec.Meta(max_length=MAX_LIST_ITEMS)] = {}

    def __post_init__(self) -> None:
        for name, key in self.authorized_clients.items():
            try:
                client_public_key(key)
            except ValueError as exc:
                raise _Invalid("authorized_clients",
                               f"{name}: {exc}; expected {_CLIENT_KEY_HELP}") from None

    def client_auth_keys(self) -> list[bytes]:
        """The authorized clients' x25519 public keys (32 bytes each), in name order."""
        return [client_public_key(self.authorized_clients[n])
                for n in sorted(self.authorized_clients)]


def client_public_key(text: str) -> bytes:
    """A 32-byte x25519 key from tor's base32 form; ValueError names what is wrong."""
    bare = text.removeprefix("descriptor:x25519:").upper()
    if re.fullmatch(r"[A-Z2-7]{52}", bare) is None:
        raise ValueError(f"is not base32 of 32 bytes (52 characters of A-Z and 2-7; got "
                         f"{len(bare)} characters)")
    try:
        key = base64.b32decode(bare + "====")
    except (binascii.Error, ValueError):
        raise ValueError("is not base32") from None
    if len(key) != 32:
        raise ValueError(f"must decode to 32 bytes, got {len(key)}")
    return key


class ServiceSection(_Section):
    ports: Items[PortMapping] = ("80 127.0.0.1:8080",)
    key_dir: Path | None = None
    # How often the node's own descriptor is re-read from its tor (besides tor's
    # upload events, which trigger a read at once).
    intro_poll_interval: _seconds(0.5, 600) = 5.0

    def __post_init__(self) -> None:
        for index, mapping in enumerate(self.ports):
            if not 0 < int(mapping.split()[0]) < 65536:
                raise _Invalid("ports", f"item {index}: virtual port must be 1-65535, "
                                        f"got {mapping!r}")


class TorSection(_Section):
    managed: bool = True
    binary: Text = "tor"
    control_socket: Path | None = None
    control_port: Port | None = None
    control_password: Secret | None = None
    cookie_path: Path | None = None
    socks_port: PortOrZero = 0
    # An existing tor's SOCKS unix socket for the tor fallback's streams (instead of
    # socks_port); a managed tor gets one of its own.
    socks_socket: Path | None = None
    extra_torrc: Items[TorrcLine] = ()
    bootstrap_timeout: _seconds(5, 3600) = 300.0


class CoordinationSection(_Section):
    listen: HostPort = "0.0.0.0:7443"
    advertise: HostPort | None = None
    peers: Items[Peer] = ()
    peer_keys: Annotated[dict[NodeId, HexKey], msgspec.Meta(max_length=MAX_LIST_ITEMS)] = {}
    cluster_secret_path: Path | None = None
    heartbeat_interval: _seconds(0.1, 600) = 5.0
    lease_duration: _seconds(0.5, 3600) = 15.0
    lease_grace: _seconds(0, 600) = 2.0
    # How old (or how far in the future) a peer's datagram timestamp may be. Only a
    # bound on how long a captured datagram is worth anything: replays are refused by
    # the (boot, seq) windows and the echo challenge (mesh/auth.py). Wide on purpose:
    # a peer whose clock is off by less than this is still heard, so the peers' median
    # ([resilience] clock_skew_tolerance) can hold it back.
    datagram_max_age: _seconds(10, 3600) = 300.0
    # Deprecated spelling of datagram_max_age (before it was renamed); parse_config
    # moves its value over and logs a warning, so this field is always None after it.
    clock_skew_tolerance: _seconds(0.5, 3600) | None = None

    def __post_init__(self) -> None:
        _check_host_port("listen", self.listen)
        if self.advertise is not None:
            _check_host_port("advertise", self.advertise)
        for index, peer in enumerate(self.peers):
            _check_host_port("peers", peer.rpartition("@")[2], f"item {index}: ")
        if self.lease_duration <= self.heartbeat_interval:
            raise _Invalid(
                "lease_duration",
                f"must be longer than heartbeat_interval ({self.heartbeat_interval:g} s) "
                "or every lease lapses between two renewals",
            )

    def pinned_key(self, node_id: str) -> bytes | None:
        """The public key ``peer_keys`` pins for ``node_id``, if any."""
        key = self.peer_keys.get(node_id)
        return None if key is None else bytes.fromhex(key)


class PublishingSection(_Section):
    refresh_interval: _seconds(60, 86400) = 3600.0
    min_publish_interval: _seconds(0, 3600) = 10.0
    hsdir_max_retries: Retries | None = None  # overrides [resilience] when set


class MembershipSection(_Section):
    """The signed roster (docs/security.md). ``roster_path`` set: only roster members are
    peers, with the keys the roster names. Unset: a cluster not yet moved to the roster."""

    roster_path: Path | None = None
    # Only on nodes that admit (`add-node`, join answers) and remove nodes.
    authority_key_path: Path | None = None
    join_tokens_path: Path | None = None  # default <state_dir>/join_tokens
    token_lifetime: _seconds(60, 7 * 86400) = 3600.0

    def __post_init__(self) -> None:
        if self.authority_key_path is not None and self.roster_path is None:
            raise _Invalid("authority_key_path", "needs roster_path (the roster it signs)")


InterfaceName = _text(r"[A-Za-z0-9_=+.-]{1,15}",
                     "1-15 characters of A-Z, a-z, 0-9, '_', '=', '+', '.' or '-' "
                     "(a Linux interface name)", 15)
IpLiteral = _text(r"[0-9A-Fa-f:.]{2,45}", "an IPv4 or IPv6 address (no brackets, no port)", 45)
IpInterface = _text(r"[0-9A-Fa-f:.]{2,45}/[0-9]{1,3}",
                    "an address with its prefix length ('10.77.0.1/24')", 49)


class WireGuardPeer(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Where a member's tunnel ends: its underlay endpoint and its tunnel address.

    An override: by default both come from the member's signed roster entry, as its
    WireGuard public key and coordination onion always do.
    """

    endpoint: HostPort
    tunnel_ip: IpLiteral


class WireGuardSection(_Section):
    """Coordination over WireGuard with tor as the fallback (docs/coordination.md).

    ``enabled`` off: the mesh runs over plain UDP on ``[coordination] listen``.
    """

    enabled: bool = False
    # Default: "om" + a hash of node id and state directory (unique machine-wide, as
    # wireguard-go's UAPI socket path is).
    interface: InterfaceName | None = None
    listen_port: Port = 51820
    address: IpInterface | None = None  # this node's tunnel address, with prefix
    # This node's WireGuard endpoint as the other members reach it (underlay IP:port);
    # init/join sign it into the node's roster entry, so the others need no config line.
    endpoint: HostPort | None = None
    persistent_keepalive: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 5
    key_path: Path | None = None  # default <state_dir>/wireguard.key (0600, made at init/join)
    coordination_key_path: Path | None = None  # default <state_dir>/coordination_onion.key
    # Path selection; unset: derived from the heartbeat (transport/paths.py).
    probe_interval: _seconds(0.05, 600) | None = None
    fallback_after: _seconds(0.05, 3600) | None = None
    backoff_cap: _seconds(0.1, 86400) = 60.0
    repair_interval: _seconds(0.5, 3600) = 10.0
    peers: Annotated[dict[NodeId, WireGuardPeer], msgspec.Meta(max_length=MAX_LIST_ITEMS)] = {}

    def __post_init__(self) -> None:
        if self.enabled and self.address is None:
            raise _Invalid("address", "required when enabled = true (this node's tunnel "
                                      "address, e.g. '10.77.0.1/24')")
        if self.interface is not None and self.interface in (".", ".."):
            raise _Invalid("interface", "must be a Linux interface name")
        network = None
        if self.address is not None:
            try:
                own = ipaddress.ip_interface(self.address)
            except ValueError:
                raise _Invalid("address", f"{self.address!r} is not an address with a "
                                          "prefix length") from None
            network = own.network
        if self.endpoint is not None:
            _check_host_port("endpoint", self.endpoint)
        seen: dict[str, str] = {}
        for node_id, peer in self.peers.items():
            try:
                _check_host_port("peers", peer.endpoint, f"{node_id}: endpoint: ")
                tunnel_ip = ipaddress.ip_address(peer.tunnel_ip)
            except ValueError:
                raise _Invalid("peers", f"{node_id}: tunnel_ip {peer.tunnel_ip!r} is not an "
                                        "IP address") from None
            if network is not None:
                if tunnel_ip not in network:
                    raise _Invalid("peers", f"{node_id}: tunnel_ip {tunnel_ip} is outside "
                                            f"this node's tunnel network {network}")
                if tunnel_ip == own.ip:
                    raise _Invalid("peers", f"{node_id}: tunnel_ip {tunnel_ip} is this node's "
                                            "own tunnel address")
            if str(tunnel_ip) in seen:
                raise _Invalid("peers", f"{node_id} and {seen[str(tunnel_ip)]} share the "
                                        f"tunnel_ip {tunnel_ip}")
            seen[str(tunnel_ip)] = node_id
        if self.probe_interval is not None and self.backoff_cap < self.probe_interval:
            raise _Invalid("backoff_cap", f"must be at least probe_interval "
                                          f"({self.probe_interval:g} s)")

    @property
    def tunnel_address(self) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface | None:
        return None if self.address is None else ipaddress.ip_interface(self.address)


class ResilienceSection(_Section):
    dead_threshold: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 3
    removal_grace_period: _seconds(0, 86400) = 30.0
    tor_fallback_enabled: bool = True
    hsdir_max_retries: Retries = 3
    require_ntp_sync: bool = True
    clock_check: ClockCheck = ClockCheck.REFUSE
    # THE clock tolerance: how far this node's clock may be from the median of its
    # live peers' clocks (and its own), or outside tor's consensus window, before it
    # stops claiming the lease and signing. [coordination] datagram_max_age must be at
    # least DATAGRAM_AGE_FACTOR times this: peers refuse datagrams beyond that age, and
    # a node nobody hears from is judged by the consensus window alone.
    clock_skew_tolerance: _seconds(0.5, 3600) = 10.0


class MetricsSection(_Section):
    listen: HostPort | None = None

    def __post_init__(self) -> None:
        if self.listen is not None:
            _check_host_port("listen", self.listen)


class AlertsSection(_Section):
    command: Items[Text] = ()
    webhook: WebhookUrl | None = None


class LoggingSection(_Section):
    level: LogLevel = LogLevel.INFO


HttpPath = _text(r"/[\x21-\x7e]{0,1023}", "an absolute path ('/...') of printable ASCII, no spaces",
                 1024)


class HealthSection(_Section):
    """The node's check of its own service: it advertises intro points only while it passes."""

    check: HealthCheck = HealthCheck.TCP
    interval: _seconds(0.5, 3600) = 5.0
    timeout: _seconds(0.1, 600) = 3.0
    failures: Annotated[int, msgspec.Meta(ge=1, le=100)] = 2  # in a row, before withdrawing
    successes: Annotated[int, msgspec.Meta(ge=1, le=100)] = 2  # in a row, before returning
    # after a result that disagrees with the state, the next check comes this soon
    # (at most `interval`): a dead backend is confirmed in seconds
    recheck_interval: _seconds(0.1, 3600) = 1.0
    http_path: HttpPath = "/"
    http_status: Annotated[int, msgspec.Meta(ge=100, le=599)] = 200

    def __post_init__(self) -> None:
        if self.timeout > self.interval:
            raise _Invalid("timeout", f"must not exceed interval ({self.interval:g} s), "
                                      f"got {self.timeout:g} s")


def _check_host_port(key: str, text: str, prefix: str = "") -> None:
    host, _, port = text.rpartition(":")
    try:
        ipaddress.ip_address(host.removeprefix("[").removesuffix("]"))
    except ValueError:
        raise _Invalid(key, f"{prefix}{host!r} is not an IP address") from None
    if host.startswith("[") != (":" in host):
        raise _Invalid(key, f"{prefix}an IPv6 address needs brackets ('[::1]:7443'), "
                            f"an IPv4 address none")
    if not 0 < int(port) < 65536:
        raise _Invalid(key, f"{prefix}port must be 1-65535, got {port}")


# --- the whole file ---------------------------------------------------------------------------


class Config(msgspec.Struct, frozen=True, kw_only=True):
    """A validated configuration: one typed section per TOML table, defaults filled in."""

    path: Path
    node: NodeSection
    master: MasterSection
    service: ServiceSection = ServiceSection()
    tor: TorSection = TorSection()
    coordination: CoordinationSection = CoordinationSection()
    publishing: PublishingSection = PublishingSection()
    membership: MembershipSection = MembershipSection()
    resilience: ResilienceSection = ResilienceSection()
    wireguard: WireGuardSection = WireGuardSection()
    metrics: MetricsSection = MetricsSection()
    alerts: AlertsSection = AlertsSection()
    logging: LoggingSection = LoggingSection()
    health: HealthSection = HealthSection()

    @property
    def node_id(self) -> str:
        return self.node.id

    @property
    def hsdir_max_retries(self) -> int:
        """``[publishing]`` overrides ``[resilience]`` (where docs/scenarios.md §3 puts it)."""
        if self.publishing.hsdir_max_retries is not None:
            return self.publishing.hsdir_max_retries
        return self.resilience.hsdir_max_retries

    def changed_keys(self, other: Config) -> list[tuple[str, str]]:
        """``(section, key)`` of every value that differs from ``other`` (for SIGHUP)."""
        changed = []
        for name in SECTIONS:
            mine, theirs = getattr(self, name), getattr(other, name)
            for f in msgspec.structs.fields(mine):
                if getattr(mine, f.name) != getattr(theirs, f.name):
                    changed.append((name, f.name))
        return changed


SECTIONS: dict[str, type[_Section]] = {
    name: annotation for name, annotation in (
        (f.name, f.type) for f in msgspec.structs.fields(Config) if f.name != "path"
    )
}
_REQUIRED_SECTIONS = ("node", "master")


def _decode_path(base: Path) -> Any:
    def dec_hook(kind: type, value: Any) -> Any:
        if kind is not Path:
            raise NotImplementedError(kind)
        if not isinstance(value, str):
            raise TypeError(f"must be a path (a string), got {type(value).__name__}")
        if not value or len(value) > MAX_PATH_CHARS or re.search(r"[\x00-\x1f\x7f]", value):
            raise ValueError(f"must be a path of 1-{MAX_PATH_CHARS} characters without "
                             "control characters")
        return base / value
    return dec_hook


_AT = re.compile(r" - at `(?P<in_key>key` in `)?\$(?P<where>[^`]*)`$")
_UNKNOWN = re.compile(r"^Object contains unknown field `(?P<key>[^`]*)`")
_MISSING = re.compile(r"^Object missing required field `(?P<key>[^`]*)`")
_REGEX = re.compile(r"matching regex '(?P<regex>.*)'")


def _explain(section: str, schema: type[_Section], raw: dict[str, Any], path: Path,
             error: msgspec.ValidationError) -> ConfigError:
    """msgspec's message (``Expected `int` >= 1 - at `$.key[0]```) as one operator line."""
    message = str(error)
    if match := _UNKNOWN.match(message):
        known = ", ".join(f.name for f in msgspec.structs.fields(schema))
        return ConfigError(path, f"unknown key (known: {known})", section, match["key"][:64])
    if match := _MISSING.match(message):
        return ConfigError(path, "is required", section, match["key"])
    where, in_key = "", False
    if match := _AT.search(message):
        where, in_key = match["where"], bool(match["in_key"])
        message = message[: match.start()]
    key, _, rest = where.lstrip(".").partition("[")
    if match := _REGEX.search(message):
        help_text = _PATTERN_HELP.get(match["regex"].encode().decode("unicode_escape"))
        message = "must be " + (help_text or "well-formed")
    elif message.startswith("Invalid enum value"):
        choices = _enum_choices(schema, key)
        message = f"must be one of {', '.join(choices)}" if choices else "is not a known value"
    else:
        for name, words in _TYPE_WORDS.items():
            message = message.replace(name, words)
        message = message.replace("Expected", "must be").replace("`", "")
        value = raw.get(key)
        # Numbers only: a string may be a secret (a password, a webhook token).
        if isinstance(value, int | float) and not rest and "got" not in message:
            message += f", got {value!r}"
    if in_key:
        message = "a key: " + message
    elif rest:
        index = rest.rstrip("]")
        message = ("a value: " if index == "..." else f"item {index}: ") + message
    return ConfigError(path, message, section, key or None)


_TYPE_WORDS = {
    " | null": "", "got `bool`": "got a boolean", "`int`": "an integer", "`float`": "a number",
    "`str`": "a string",    "`bool`": "true or false", "`array`": "a list", "`object`": "a table",
}


def _enum_choices(schema: type[_Section], key: str) -> list[str]:
    for f in msgspec.structs.fields(schema):
        kind = f.type
        if f.name == key and isinstance(kind, type) and issubclass(kind, enum.Enum):
            return [str(member.value) for member in kind]
    return []


_Section_T = TypeVar("_Section_T", bound=_Section)


def _section(name: str, schema: type[_Section_T], raw: Any, path: Path, base: Path) -> _Section_T:
    if not isinstance(raw, dict):
        raise ConfigError(path, f"[{name}] must be a table, got {type(raw).__name__}")
    _check_tables(name, schema, raw, path)
    try:
        return msgspec.convert(raw, schema, strict=True, dec_hook=_decode_path(base))
    except msgspec.ValidationError as exc:
        raise _explain(name, schema, raw, path, exc) from None
    except _Invalid as exc:
        raise ConfigError(path, exc.problem, name, exc.key) from None


# Keys whose value is a table of tables: (section, key) -> the inner Struct. Each inner
# table is checked on its own first, so an error names its entry ("peers: n2: endpoint").
_TABLES_OF_TABLES: dict[tuple[str, str], type[msgspec.Struct]] = {
    ("wireguard", "peers"): WireGuardPeer,
}


def _check_tables(name: str, schema: type[_Section], raw: dict[str, Any], path: Path) -> None:
    for (section, key), inner in _TABLES_OF_TABLES.items():
        value = raw.get(key) if section == name else None
        if not isinstance(value, dict):
            continue
        for entry, table in list(value.items())[:MAX_LIST_ITEMS + 1]:
            label = str(entry)[:64]
            if not isinstance(table, dict):
                raise ConfigError(path, f"{label}: must be a table", section, key)
            try:
                msgspec.convert(table, inner, strict=True)
            except msgspec.ValidationError as exc:
                inner_error = _explain(section, inner, table, path, exc)  # type: ignore[arg-type]
                problem = inner_error.problem
                if inner_error.key:
                    problem = f"{inner_error.key}: {problem}"
                raise ConfigError(path, f"{label}: {problem}", section, key) from None


def parse_config(text: str, path: Path | str = "<string>") -> Config:
    """Validate TOML text; ``path`` locates relative paths and names the file in errors."""
    path = Path(path)
    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigError(path, f"larger than {MAX_CONFIG_BYTES} bytes; not a node config")
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, f"not valid TOML: {exc}") from None
    except RecursionError:
        raise ConfigError(path, "not valid TOML: nested too deeply") from None
    except ValueError:  # tomllib's int() of thousands of digits
        raise ConfigError(path, "not valid TOML: a number has too many digits") from None
    base = path.parent if str(path) != "<string>" else Path.cwd()
    for name in raw:
        if name not in SECTIONS:
            raise ConfigError(
                path, f"unknown section [{name[:64]}] (known: {', '.join(sorted(SECTIONS))})"
            )
    for name in _REQUIRED_SECTIONS:
        raw.setdefault(name, {})
    sections = {name: _section(name, SECTIONS[name], raw[name], path, base) for name in raw}
    if all("hsdir_max_retries" in raw.get(name, {}) for name in ("publishing", "resilience")):
        raise ConfigError(
            path, "set in both [publishing] and [resilience]; keep one", "publishing",
            "hsdir_max_retries",
        )
    coordination = sections.get("coordination", CoordinationSection())
    resilience = sections.get("resilience", ResilienceSection())
    assert isinstance(coordination, CoordinationSection)
    assert isinstance(resilience, ResilienceSection)
    tolerance = resilience.clock_skew_tolerance
    if coordination.clock_skew_tolerance is not None:
        sections["coordination"] = coordination = _renamed_datagram_max_age(
            coordination, raw["coordination"], path, DATAGRAM_AGE_FACTOR * tolerance)
    if coordination.datagram_max_age < DATAGRAM_AGE_FACTOR * tolerance:
        raise ConfigError(
            path, f"must be at least {DATAGRAM_AGE_FACTOR} x [resilience] "
            f"clock_skew_tolerance ({tolerance:g} s), got {coordination.datagram_max_age:g} "
            "s: peers refuse datagrams older than this, so a node whose clock is off by "
            "more is never heard and the peers' median cannot hold it back",
            "coordination", "datagram_max_age")
    config = Config(path=path, **sections)  # type: ignore[arg-type]
    _check_consistency(config)
    return config


def _renamed_datagram_max_age(coordination: CoordinationSection, raw: dict[str, Any],
                              path: Path, minimum: float) -> CoordinationSection:
    """The deprecated ``[coordination] clock_skew_tolerance`` (the datagram window, not
    a clock tolerance) is read as ``datagram_max_age``, with a warning; both is an error.

    An old value below the minimum is raised to it rather than refused: a config that
    ran before keeps running (a wider window only lets older datagrams be checked by
    the replay windows and the echo, which are what refuse replays)."""
    old = coordination.clock_skew_tolerance
    assert old is not None
    if "datagram_max_age" in raw:
        raise ConfigError(
            path, "is the deprecated name of datagram_max_age, and both are set; keep "
            "datagram_max_age (the clock tolerance is [resilience] clock_skew_tolerance)",
            "coordination", "clock_skew_tolerance")
    used = max(old, minimum)
    raised = "" if used == old else (
        f" raised to {used:g} s ({DATAGRAM_AGE_FACTOR} x [resilience] clock_skew_tolerance)")
    log.warning(
        "%s: [coordination] clock_skew_tolerance is deprecated: it was the peers' "
        "datagram timestamp window, now [coordination] datagram_max_age (default 300 s); "
        "using %g s from the old key%s. Rename it; the clock tolerance is [resilience] "
        "clock_skew_tolerance", path, old, raised)
    return msgspec.structs.replace(coordination, datagram_max_age=used,
                                   clock_skew_tolerance=None)


def _check_consistency(config: Config) -> None:
    """Rules that relate several keys of one section."""
    path, tor = config.path, config.tor
    if not tor.managed and tor.control_socket is None and tor.control_port is None:
        raise ConfigError(
            path, "an unmanaged tor needs control_socket or control_port", "tor", "managed"
        )
    if tor.control_socket is not None and tor.control_port is not None:
        raise ConfigError(
            path, "set control_socket or control_port, not both", "tor", "control_port"
        )
    wireguard, coordination = config.wireguard, config.coordination
    if wireguard.enabled and config.resilience.tor_fallback_enabled and not tor.managed \
            and not tor.socks_port and tor.socks_socket is None:
        raise ConfigError(
            path, "(or socks_socket) required with an existing tor when [wireguard] "
            "enabled = true and [resilience] tor_fallback_enabled = true (the tor "
            "fallback's streams)", "tor", "socks_port")
    if wireguard.enabled and wireguard.tunnel_address is not None:
        # Mesh datagrams travel inside the tunnel: peers reach this node at its tunnel
        # address, and a socket on the underlay would bypass WireGuard.
        key = "advertise" if coordination.advertise is not None else "listen"
        mesh_address = str(coordination.advertise or coordination.listen)
        host = mesh_address.rpartition(":")[0].strip("[]")
        if ipaddress.ip_address(host) != wireguard.tunnel_address.ip:
            raise ConfigError(
                path, f"must be on this node's tunnel address {wireguard.tunnel_address.ip} "
                f"when [wireguard] enabled = true, got {mesh_address}", "coordination", key)
    if wireguard.enabled and config.membership.roster_path is None:
        raise ConfigError(
            path, "needs [membership] roster_path: the members' WireGuard keys and "
            "coordination onions come from the signed roster", "wireguard", "enabled")


def load_config(path: Path | str = DEFAULT_CONFIG_PATH) -> Config:
    """Read and validate a config file; every problem is a ConfigError naming the file."""
    path = Path(path)
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(path, "no such file") from None
    except OSError as exc:
        raise ConfigError(path, f"cannot be read: {exc.strerror}") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(path, f"larger than {MAX_CONFIG_BYTES} bytes; not a node config")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(path, f"not UTF-8 text (byte {exc.start})") from None
    return parse_config(text, path)


def schema_defaults() -> dict[str, dict[str, Any]]:
    """Every section and key with its default (None where required), for docs and tests."""
    defaults: dict[str, dict[str, Any]] = {}
    for name, schema in SECTIONS.items():
        defaults[name] = {
            f.name: None if f.required else (
                f.default if f.default is not msgspec.NODEFAULT else f.default_factory()
            )
            for f in msgspec.structs.fields(schema)
        }
    return defaults
