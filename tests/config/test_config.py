"""The node configuration: defaults, strictness and error messages."""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from onionmesh.config import ConfigError, load_config, parse_config, schema_defaults

MASTER = "a" * 56 + ".onion"
MINIMAL = f"""
[node]
id = "node-1"

[master]
address = "{MASTER}"
"""


def test_minimal_config_takes_the_seed_defaults():
    config = parse_config(MINIMAL, "/etc/onionmesh/onionmesh.toml")
    resilience = config.resilience
    assert resilience.dead_threshold == 3
    assert resilience.removal_grace_period == 30.0
    assert resilience.tor_fallback_enabled is True
    assert resilience.hsdir_max_retries == 3
    assert resilience.require_ntp_sync is True
    assert config.hsdir_max_retries == 3
    assert config.node_id == "node-1"
    assert config.master.address == MASTER


def test_relative_paths_resolve_against_the_config_directory(tmp_path: Path):
    path = tmp_path / "onionmesh.toml"
    path.write_text(MINIMAL + '\nkey_path = "keys/master"\n')
    config = load_config(path)
    assert config.master.key_path == tmp_path / "keys" / "master"


@pytest.mark.parametrize(
    ("extra", "where", "problem"),
    [
        ("[resilience]\ndead_threshold = 0\n", "[resilience] dead_threshold",
         "must be an integer >= 1, got 0"),
        ('[resilience]\ndead_threshold = "3"\n', "[resilience] dead_threshold", "integer"),
        ("[resilience]\ndead_treshold = 3\n", "[resilience] dead_treshold", "unknown key"),
        ("[resilence]\n", "", "unknown section [resilence]"),
        ("[resilience]\nrequire_ntp_sync = 1\n", "require_ntp_sync", "true or false"),
        ('[coordination]\nlisten = "10.0.0.1"\n', "[coordination] listen", "'IP:port'"),
        ('[coordination]\npeers = ["10.0.0.2:99999"]\n', "peers", "item 0"),
        (
            "[coordination]\nheartbeat_interval = 5\nlease_duration = 5\n",
            "lease_duration",
            "longer than heartbeat_interval",
        ),
        ("[tor]\nmanaged = false\n", "[tor] managed", "needs control_socket or control_port"),
        (
            "[publishing]\nhsdir_max_retries = 2\n[resilience]\nhsdir_max_retries = 4\n",
            "hsdir_max_retries",
            "both",
        ),
        ('[service]\nports = ["eighty"]\n', "[service] ports", "HiddenServicePort"),
        ('[coordination]\npeers = ["N1@10.0.0.2:7443"]\n', "[coordination] peers", "item 0"),
        ('[coordination]\npeer_keys = { n1 = "xyz" }\n', "[coordination] peer_keys",
         "64 hex characters"),
        ("[coordination]\npeer_keys = [1]\n", "[coordination] peer_keys", "table"),
        ("[tor]\nbootstrap_timeout = 1\n", "[tor] bootstrap_timeout",
         "must be a number >= 5.0, got 1"),
        ("[service]\nintro_poll_interval = 0\n", "[service] intro_poll_interval",
         "must be a number >= 0.5, got 0"),
        ('[health]\ncheck = "ping"\n', "[health] check", "tcp"),
        ("[health]\ninterval = 2\ntimeout = 3\n", "[health] timeout", "must not exceed interval"),
        ("[health]\nfailures = 0\n", "[health] failures", ">= 1"),
        ('[health]\nhttp_path = "status"\n', "[health] http_path", "absolute path"),
        ("[health]\nhttp_status = 42\n", "[health] http_status", ">= 100"),
        ("[health]\nretries = 3\n", "[health] retries", "unknown key"),
    ],
)
def test_bad_values_name_file_section_key_and_problem(extra, where, problem):
    with pytest.raises(ConfigError) as excinfo:
        parse_config(MINIMAL + extra, "/etc/onionmesh/onionmesh.toml")
    message = str(excinfo.value)
    assert message.startswith("/etc/onionmesh/onionmesh.toml")
    assert where in message
    assert problem in message


def test_a_section_that_is_not_a_table_is_named():
    with pytest.raises(ConfigError, match=r"\[tor\] must be a table, got int"):
        parse_config("tor = 3\n" + MINIMAL)


@pytest.mark.parametrize(
    ("extra", "problem"),
    [
        # Full matches: a trailing newline must not pass a "$"-anchored pattern.
        ('[node]\nid = "n1\\n"\n', "[node] id: must be 1-64 characters"),
        ('[tor]\ncontrol_password = "pw\\r\\nSIGNAL HALT"\n',
         "[tor] control_password: must be text without control characters"),
        ('[alerts]\ncommand = ["notify\\u0000"]\n', "[alerts] command: item 0"),
        ('[alerts]\nwebhook = "https://x.example/\\nHost: y"\n',
         "[alerts] webhook: must be an http:// or https:// URL"),
        ('[node]\nstate_dir = "state\\n"\n', "[node] state_dir: must be a path"),
        ('[coordination]\nadvertise = "::1:7443"\n', "[coordination] advertise"),
        ('[coordination]\nadvertise = "[::1]:99999"\n', "port must be 1-65535"),
        ('[coordination]\nlisten = "999.1.1.1:7443"\n', "is not an IP address"),
        ('[metrics]\nlisten = "localhost:9100"\n', "[metrics] listen"),
        ('[coordination]\npeer_keys = { "Bad Id" = "' + "ab" * 32 + '" }\n',
         "[coordination] peer_keys: a key: must be 1-64 characters"),
        ('[coordination]\npeers = [' + ', '.join(['"10.0.0.1:1"'] * 300) + ']\n',
         "[coordination] peers: must be a list of length <= 256"),
        ("[tor]\nsocks_port = -1\n", "[tor] socks_port: must be an integer >= 0, got -1"),
        ('[logging]\nlevel = "loud"\n', "[logging] level: must be one of debug, info"),
        ("[logging]\nlevel = 3\n", "[logging] level: must be a string, got an integer"),
    ],
)
def test_strings_are_full_matches_with_limits(extra, problem):
    # A [node] case replaces the minimal [node] (a table cannot be declared twice).
    text = f'[master]\naddress = "{MASTER}"\n' if extra.startswith("[node]") else MINIMAL
    with pytest.raises(ConfigError) as excinfo:
        parse_config(text + extra, "/etc/onionmesh/onionmesh.toml")
    message = str(excinfo.value)
    assert problem in message
    assert "\n" not in message
    assert "SIGNAL" not in message  # strings are never echoed: they may be secrets


def test_ipv6_literals_and_every_address_kind_are_accepted():
    config = parse_config(
        MINIMAL + '[coordination]\nlisten = "[::]:7443"\nadvertise = "[fd00::1]:7443"\n'
        'peers = ["n2@[fd00::2]:7443", "10.0.0.3:7443"]\n[metrics]\nlisten = "127.0.0.1:9100"\n'
    )
    assert config.coordination.peers == ("n2@[fd00::2]:7443", "10.0.0.3:7443")
    assert config.metrics.listen == "127.0.0.1:9100"


def test_changed_keys_name_section_and_key():
    old = parse_config(MINIMAL)
    new = parse_config(MINIMAL + "[logging]\nlevel = \"debug\"\n[resilience]\ndead_threshold = 4\n")
    assert sorted(new.changed_keys(old)) == [("logging", "level"), ("resilience", "dead_threshold")]


def test_peers_may_name_their_node_id_and_pin_its_key():
    key = "ab" * 32
    config = parse_config(
        MINIMAL + '[coordination]\npeers = ["n2@10.0.0.2:7443", "10.0.0.3:7443"]\n'
        f'peer_keys = {{ n2 = "{key}" }}\n'
    )
    assert config.coordination.peers == ("n2@10.0.0.2:7443", "10.0.0.3:7443")
    assert config.coordination.pinned_key("n2") == bytes.fromhex(key)
    assert config.coordination.pinned_key("n3") is None


def test_node_daemon_keys_have_defaults():
    config = parse_config(MINIMAL)
    assert config.node.key_path is None  # <state_dir>/node_key.pem
    assert config.tor.bootstrap_timeout == 300.0
    assert config.service.intro_poll_interval == 5.0
    assert config.coordination.peer_keys == {}


def test_missing_required_keys_are_named():
    with pytest.raises(ConfigError, match=r"\[master\] address: is required"):
        parse_config('[node]\nid = "n1"\n')
    with pytest.raises(ConfigError, match=r"\[node\] id: is required"):
        parse_config(f'[master]\naddress = "{MASTER}"\n')


def test_bad_master_address_and_node_id():
    with pytest.raises(ConfigError, match=r"\[master\] address"):
        parse_config(MINIMAL.replace(MASTER, "example.onion"))
    with pytest.raises(ConfigError, match=r"\[node\] id"):
        parse_config(MINIMAL.replace("node-1", "Node 1"))


def test_publishing_overrides_the_resilience_retry_count():
    config = parse_config(MINIMAL + "[publishing]\nhsdir_max_retries = 7\n")
    assert config.hsdir_max_retries == 7


def test_unreadable_files_are_config_errors(tmp_path: Path):
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "missing.toml")
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(binary)
    broken = tmp_path / "broken.toml"
    broken.write_text("[node\nid=")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(broken)


def test_schema_defaults_lists_every_section():
    defaults = schema_defaults()
    assert defaults["resilience"]["dead_threshold"] == 3
    assert set(defaults) >= {"node", "master", "tor", "coordination", "publishing", "resilience"}


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=400))
def test_arbitrary_text_gives_only_config_errors(text):
    with contextlib.suppress(ConfigError):
        parse_config(text)


_scalars = st.one_of(
    st.integers(-(2**70), 2**70), st.floats(allow_nan=True), st.booleans(), st.text(max_size=20),
    st.lists(st.integers(), max_size=3), st.lists(st.text(max_size=5), max_size=3),
)


@settings(max_examples=300, deadline=None)
@given(section=st.sampled_from(sorted(schema_defaults())), data=st.data())
def test_arbitrary_values_for_known_keys_give_only_config_errors(section, data):
    key = data.draw(st.sampled_from(sorted(schema_defaults()[section])))
    document: dict[str, dict[str, object]] = {"node": {"id": "n1"}, "master": {"address": MASTER}}
    document.setdefault(section, {})[key] = data.draw(_scalars)
    with contextlib.suppress(ConfigError):
        parse_config(_to_toml(document))


def _to_toml(document: dict[str, dict[str, object]]) -> str:
    lines = []
    for section, keys in document.items():
        lines.append(f"[{section}]")
        lines.extend(f"{key} = {_toml_value(value)}" for key, value in keys.items())
    return "\n".join(lines) + "\n"


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(value)


def test_health_section_defaults_and_values():
    from onionmesh.config import HealthCheck

    default = parse_config(MINIMAL).health
    assert (default.check, default.interval, default.failures, default.successes) == (
        HealthCheck.TCP, 5.0, 2, 2)
    custom = parse_config(MINIMAL + '[health]\ncheck = "http"\nhttp_path = "/healthz"\n'
                                    'http_status = 204\ninterval = 1\ntimeout = 0.5\n').health
    assert (custom.check, custom.http_path, custom.http_status) == (HealthCheck.HTTP,
                                                                    "/healthz", 204)
