"""The datagram window ([coordination] datagram_max_age) and the one clock tolerance
([resilience] clock_skew_tolerance): defaults, the rule relating them, the old name."""

from __future__ import annotations

import logging

import pytest

from onionmesh.config import DATAGRAM_AGE_FACTOR, ConfigError, parse_config
from onionmesh.node.cluster_setup import node_sections
from onionmesh.node.settings import mesh_config

MASTER = "a" * 56 + ".onion"
MINIMAL = f'[node]\nid = "node-1"\n\n[master]\naddress = "{MASTER}"\n'


def test_defaults_keep_a_wrong_clock_audible_to_its_peers() -> None:
    config = parse_config(MINIMAL)
    assert config.coordination.datagram_max_age == 300.0
    assert config.resilience.clock_skew_tolerance == 10.0
    # A node 120 s off (the issue's case) is still heard, so the peers' median catches it.
    assert config.coordination.datagram_max_age >= 120 + DATAGRAM_AGE_FACTOR * 10
    assert mesh_config(config).datagram_max_age == 300.0


def test_the_window_must_be_comfortably_wider_than_the_clock_tolerance() -> None:
    with pytest.raises(ConfigError) as error:
        parse_config(MINIMAL + "[coordination]\ndatagram_max_age = 20\n")
    message = str(error.value)
    assert "[coordination] datagram_max_age: must be at least 3 x [resilience] " \
           "clock_skew_tolerance (10 s), got 20 s" in message
    with pytest.raises(ConfigError, match=r"\(60 s\), got 120 s"):
        parse_config(MINIMAL + "[coordination]\ndatagram_max_age = 120\n"
                     "[resilience]\nclock_skew_tolerance = 60\n")
    ok = parse_config(MINIMAL + "[coordination]\ndatagram_max_age = 30\n")
    assert ok.coordination.datagram_max_age == 30.0


def test_the_old_name_is_read_with_a_deprecation_warning(caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="onionmesh.config"):
        config = parse_config(MINIMAL + "[coordination]\nclock_skew_tolerance = 45\n",
                              "/etc/onionmesh/onionmesh.toml")
    assert config.coordination.datagram_max_age == 45.0
    assert config.coordination.clock_skew_tolerance is None  # moved over, not kept twice
    assert config.resilience.clock_skew_tolerance == 10.0  # the clock tolerance is untouched
    [record] = caplog.records
    assert record.getMessage() == (
        "/etc/onionmesh/onionmesh.toml: [coordination] clock_skew_tolerance is deprecated: "
        "it was the peers' datagram timestamp window, now [coordination] datagram_max_age "
        "(default 300 s); using 45 s from the old key. Rename it; the clock tolerance is "
        "[resilience] clock_skew_tolerance")


def test_an_old_value_below_the_rule_is_raised_not_refused(caplog) -> None:
    """A config that ran before the rename keeps running (its value was the old 30 s
    default's neighbourhood); the warning says what is used."""
    with caplog.at_level(logging.WARNING, logger="onionmesh.config"):
        config = parse_config(MINIMAL + "[coordination]\nclock_skew_tolerance = 20\n")
    assert config.coordination.datagram_max_age == 30.0
    assert "using 20 s from the old key raised to 30 s (3 x [resilience] " \
           "clock_skew_tolerance)" in caplog.text


def test_both_names_at_once_is_an_error() -> None:
    with pytest.raises(ConfigError) as error:
        parse_config(MINIMAL + "[coordination]\nclock_skew_tolerance = 30\n"
                     "datagram_max_age = 300\n")
    assert "[coordination] clock_skew_tolerance: is the deprecated name of " \
           "datagram_max_age, and both are set; keep datagram_max_age" in str(error.value)


def test_the_old_name_in_the_resilience_section_is_not_deprecated(caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="onionmesh.config"):
        config = parse_config(MINIMAL + "[resilience]\nclock_skew_tolerance = 5\n")
    assert config.resilience.clock_skew_tolerance == 5.0
    assert not caplog.records


def test_a_join_token_from_before_the_rename_carries_the_window_over() -> None:
    sections = node_sections(
        node_id="n2", master_address=MASTER, listen="127.0.0.1:7443", advertise=None,
        priority=100, master_key=None,
        timing={"coordination": {"clock_skew_tolerance": 60.0, "heartbeat_interval": 2.0}},
    )
    assert sections["coordination"]["datagram_max_age"] == 60.0
    assert "clock_skew_tolerance" not in sections["coordination"]
