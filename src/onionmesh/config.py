"""The node configuration file (TOML): schema, defaults and validation.

One file per node, ``/etc/onionmesh/onionmesh.toml`` by default. Validation is
strict so a typo never silently falls back to a default (RustBalance ignored
unknown keys): every unknown section or key is an error, and every error names
the file, the ``[section] key`` and the problem. Paths are resolved relative
to the file's directory so a config can be moved together with its keys.

The ``[resilience]`` section carries exactly the options of the original
design, with its defaults.
"""

from __future__ import annotations

import ipaddress
import math
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from onionmesh.errors import OnionmeshError

DEFAULT_CONFIG_PATH = Path("/etc/onionmesh/onionmesh.toml")

_NODE_ID = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_ONION = re.compile(r"^[a-z2-7]{56}\.onion$")
_PORT_MAPPING = re.compile(r"^(\d{1,5})(?:\s+(\S+))?$")


class ConfigError(OnionmeshError):
    """A configuration file is unreadable or invalid; the message says where and why."""

    def __init__(self, path: Path | str, problem: str, section: str | None = None,
                 key: str | None = None) -> None:
        where = str(path)
        if section is not None:
            where += f": [{section}]"
            if key is not None:
                where += f" {key}"
        super().__init__(f"{where}: {problem}")
        self.path = str(path)
        self.section = section
        self.key = key
        self.problem = problem


# --- value checkers: each returns the cleaned value or raises ValueError(problem) ---

def _type_name(value: object) -> str:
    return type(value).__name__


def _integer(minimum: int | None = None, maximum: int | None = None) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"must be an integer, got {_type_name(value)} {value!r}")
        if minimum is not None and value < minimum:
            raise ValueError(f"must be >= {minimum}, got {value}")
        if maximum is not None and value > maximum:
            raise ValueError(f"must be <= {maximum}, got {value}")
        return value
    return check


def _seconds(minimum: float = 0.0, maximum: float = 86400.0 * 7) -> Callable[[Any], float]:
    def check(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"must be a number of seconds, got {_type_name(value)} {value!r}")
        seconds = float(value)
        if not math.isfinite(seconds) or seconds < minimum or seconds > maximum:
            raise ValueError(f"must be between {minimum:g} and {maximum:g} seconds, got {value}")
        return seconds
    return check


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"must be true or false, got {_type_name(value)} {value!r}")
    return value


def _string(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"must be a non-empty string, got {_type_name(value)} {value!r}")
    return value


def _node_id(value: Any) -> str:
    text = _string(value)
    if not _NODE_ID.match(text):
        raise ValueError(
            f"must be 1-64 characters of a-z, 0-9, '.', '_' or '-', starting with a letter or "
            f"digit, got {text!r}"
        )
    return text


def _onion_address(value: Any) -> str:
    text = _string(value).strip().lower()
    if not _ONION.match(text):
        raise ValueError(f"must be a v3 address (56 base32 characters + '.onion'), got {value!r}")
    # The checksum and version are checked where the key is loaded (crypto.address).
    return text


def _host_port(value: Any) -> str:
    text = _string(value)
    host, sep, port_text = text.rpartition(":")
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"must be 'host:port' with a port 1-65535, got {text!r}")
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        ipaddress.ip_address(bare)
    except ValueError:
        if not re.match(r"^[A-Za-z0-9.-]+$", bare):
            raise ValueError(f"host in {text!r} is neither an IP address nor a hostname") from None
    return text


def _port_mapping(value: Any) -> str:
    text = _string(value).strip()
    match = _PORT_MAPPING.match(text)
    if not match or not 0 < int(match.group(1)) < 65536:
        raise ValueError(
            f"must be 'VIRTPORT [TARGET]' as in tor's HiddenServicePort, got {text!r}"
        )
    return text


def _peer(value: Any) -> str:
    """``host:port`` or ``node_id@host:port`` (the id lets ``peer_keys`` pin its key)."""
    text = _string(value)
    node, sep, address = text.rpartition("@")
    if sep:
        _node_id(node)
    _host_port(address)
    return text


def _peer_keys(value: Any) -> dict[str, bytes]:
    """``{ node_id = "<64 hex chars>" }``: node public keys pinned for configured peers."""
    if not isinstance(value, dict):
        raise ValueError(f"must be a table of node id = public key hex, got {_type_name(value)}")
    keys: dict[str, bytes] = {}
    for node, key in value.items():
        _node_id(node)
        if not isinstance(key, str) or not re.fullmatch(r"[0-9a-fA-F]{64}", key):
            raise ValueError(f"key of {node!r} must be 64 hex characters (an ed25519 public key)")
        keys[node] = bytes.fromhex(key)
    return keys


def _list_of(item: Callable[[Any], Any]) -> Callable[[Any], tuple[Any, ...]]:
    def check(value: Any) -> tuple[Any, ...]:
        if not isinstance(value, list):
            raise ValueError(f"must be a list, got {_type_name(value)}")
        cleaned = []
        for index, element in enumerate(value):
            try:
                cleaned.append(item(element))
            except ValueError as exc:
                raise ValueError(f"item {index}: {exc}") from None
        return tuple(cleaned)
    return check


def _choice(*choices: str) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}, got {value!r}")
        return value
    return check


_PATH = "path"  # marker: a string resolved relative to the config file's directory


@dataclass(frozen=True)
class _Key:
    check: Callable[[Any], Any] | str
    default: Any = None
    required: bool = False


# The whole schema. Sections missing from the file take their defaults;
# keys missing from a section take theirs unless required.
_SCHEMA: dict[str, dict[str, _Key]] = {
    "node": {
        "id": _Key(_node_id, required=True),
        "priority": _Key(_integer(0, 1_000_000), 100),
        "state_dir": _Key(_PATH, "/var/lib/onionmesh"),
        # The node's Ed25519 key (PKCS#8 PEM): signs its mesh messages and is its onion
        # service key. Default: <state_dir>/node_key.pem.
        "key_path": _Key(_PATH),
    },
    "master": {
        "address": _Key(_onion_address, required=True),
        "key_path": _Key(_PATH),
        "backup_key_path": _Key(_PATH),
    },
    "service": {
        "ports": _Key(_list_of(_port_mapping), ("80 127.0.0.1:8080",)),
        "key_dir": _Key(_PATH),
        # How often the node's own descriptor is re-read from its tor (besides tor's
        # upload events, which trigger a read at once).
        "intro_poll_interval": _Key(_seconds(0.5, 600), 5.0),
    },
    "tor": {
        "managed": _Key(_boolean, True),
        "binary": _Key(_string, "tor"),
        "control_socket": _Key(_PATH),
        "control_port": _Key(_integer(1, 65535)),
        "control_password": _Key(_string),
        "cookie_path": _Key(_PATH),
        "socks_port": _Key(_integer(0, 65535), 0),
        "extra_torrc": _Key(_list_of(_string), ()),
        "bootstrap_timeout": _Key(_seconds(5, 3600), 300.0),
    },
    "coordination": {
        "listen": _Key(_host_port, "0.0.0.0:7443"),
        "advertise": _Key(_host_port),
        "peers": _Key(_list_of(_peer), ()),
        "peer_keys": _Key(_peer_keys, {}),
        "cluster_secret_path": _Key(_PATH),
        "heartbeat_interval": _Key(_seconds(0.1, 600), 5.0),
        "lease_duration": _Key(_seconds(0.5, 3600), 15.0),
        "lease_grace": _Key(_seconds(0, 600), 2.0),
        "clock_skew_tolerance": _Key(_seconds(0.5, 3600), 30.0),
    },
    "publishing": {
        "refresh_interval": _Key(_seconds(60, 86400), 3600.0),
        "min_publish_interval": _Key(_seconds(0, 3600), 10.0),
        "hsdir_max_retries": _Key(_integer(0, 100)),
    },
    "resilience": {
        "dead_threshold": _Key(_integer(1, 1000), 3),
        "removal_grace_period": _Key(_seconds(0, 86400), 30.0),
        "tor_fallback_enabled": _Key(_boolean, True),
        "hsdir_max_retries": _Key(_integer(0, 100), 3),
        "require_ntp_sync": _Key(_boolean, True),
        "clock_check": _Key(_choice("refuse", "warn"), "refuse"),
    },
    "metrics": {
        "listen": _Key(_host_port),
    },
    "alerts": {
        "command": _Key(_list_of(_string), ()),
        "webhook": _Key(_string),
    },
    "logging": {
        "level": _Key(_choice("debug", "info", "warning", "error"), "info"),
    },
}


@dataclass(frozen=True)
class Config:
    """A validated configuration: ``sections[name][key]`` holds every key, defaults filled in."""

    path: Path
    sections: Mapping[str, Mapping[str, Any]] = field(repr=False)

    def __getitem__(self, section: str) -> Mapping[str, Any]:
        return self.sections[section]

    @property
    def node_id(self) -> str:
        return str(self.sections["node"]["id"])

    @property
    def hsdir_max_retries(self) -> int:
        """``[publishing]`` overrides ``[resilience]`` (the seed's place for it)."""
        publishing = self.sections["publishing"]["hsdir_max_retries"]
        if publishing is not None:
            return int(publishing)
        return int(self.sections["resilience"]["hsdir_max_retries"])


def parse_config(text: str, path: Path | str = "<string>") -> Config:
    """Validate TOML text; ``path`` locates relative paths and names the file in errors."""
    path = Path(path)
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, f"not valid TOML: {exc}") from None
    base = path.parent if str(path) != "<string>" else Path.cwd()
    sections: dict[str, dict[str, Any]] = {}
    for name in raw:
        if name not in _SCHEMA:
            raise ConfigError(
                path, f"unknown section [{name}] (known: {', '.join(sorted(_SCHEMA))})"
            )
        if not isinstance(raw[name], dict):
            raise ConfigError(path, f"[{name}] must be a table, got {_type_name(raw[name])}")
    for name, keys in _SCHEMA.items():
        given = raw.get(name, {})
        for key in given:
            if key not in keys:
                raise ConfigError(
                    path, f"unknown key (known: {', '.join(sorted(keys))})", name, key
                )
        cleaned: dict[str, Any] = {}
        for key, spec in keys.items():
            if key not in given:
                if spec.required:
                    raise ConfigError(path, "is required", name, key)
                value = spec.default
                if spec.check == _PATH and value is not None:
                    value = Path(value)
                cleaned[key] = value
                continue
            try:
                if spec.check == _PATH:
                    value = base / _string(given[key])
                else:
                    assert callable(spec.check)
                    value = spec.check(given[key])
            except ValueError as exc:
                raise ConfigError(path, str(exc), name, key) from None
            cleaned[key] = value
        sections[name] = cleaned
    if all("hsdir_max_retries" in raw.get(name, {}) for name in ("publishing", "resilience")):
        raise ConfigError(
            path, "set in both [publishing] and [resilience]; keep one", "publishing",
            "hsdir_max_retries",
        )
    config = Config(path=path, sections=sections)
    _check_consistency(config)
    return config


def _check_consistency(config: Config) -> None:
    """Rules that relate several keys."""
    path = config.path
    coordination = config["coordination"]
    if coordination["lease_duration"] <= coordination["heartbeat_interval"]:
        raise ConfigError(
            path,
            f"must be longer than heartbeat_interval ({coordination['heartbeat_interval']:g} s) "
            "or every lease lapses between two renewals",
            "coordination", "lease_duration",
        )
    tor = config["tor"]
    if not tor["managed"] and tor["control_socket"] is None and tor["control_port"] is None:
        raise ConfigError(
            path, "an unmanaged tor needs control_socket or control_port", "tor", "managed"
        )
    if tor["control_socket"] is not None and tor["control_port"] is not None:
        raise ConfigError(
            path, "set control_socket or control_port, not both", "tor", "control_port"
        )


def load_config(path: Path | str = DEFAULT_CONFIG_PATH) -> Config:
    """Read and validate a config file; every problem is a ConfigError naming the file."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(path, "no such file") from None
    except OSError as exc:
        raise ConfigError(path, f"cannot be read: {exc.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(path, f"not UTF-8 text (byte {exc.start})") from None
    return parse_config(text, path)


def schema_defaults() -> dict[str, dict[str, Any]]:
    """Every section and key with its default (None where there is none), for docs and `init`."""
    return {
        name: {key: spec.default for key, spec in keys.items()}
        for name, keys in _SCHEMA.items()
    }
