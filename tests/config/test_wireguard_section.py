"""The [wireguard] section and the path timings the daemon derives from it."""

from __future__ import annotations

import pytest

from onionmesh.config import ConfigError, parse_config
from onionmesh.node.errors import NodeConfigError
from onionmesh.node.settings import check_runnable, path_config

MINIMAL = '[node]\nid = "n1"\n[master]\naddress = "' + "a" * 56 + '.onion"\n'
ON = ('[coordination]\nlisten = "10.77.0.1:7443"\n[membership]\nroster_path = "roster"\n'
      '[wireguard]\nenabled = true\naddress = "10.77.0.1/24"\n')
PEER = 'peers = { n2 = { endpoint = "10.231.0.2:51820", tunnel_ip = "10.77.0.2" } }\n'


def test_off_by_default_and_defaults():
    wireguard = parse_config(MINIMAL).wireguard
    assert not wireguard.enabled
    assert (wireguard.listen_port, wireguard.persistent_keepalive, wireguard.interface) == (
        51820, 5, None)
    assert wireguard.peers == {}


def test_enabled_section_with_a_peer():
    config = parse_config(MINIMAL + ON + PEER)
    assert str(config.wireguard.tunnel_address) == "10.77.0.1/24"
    assert config.wireguard.peers["n2"].endpoint == "10.231.0.2:51820"
    check_runnable(config)


@pytest.mark.parametrize(("extra", "problem"), [
    ('[wireguard]\nenabled = true\n', "[wireguard] address: required when enabled = true"),
    (ON.replace('[membership]\nroster_path = "roster"\n', ""),
     "[wireguard] enabled: needs [membership] roster_path"),
    ('[wireguard]\nenabled = true\naddress = "10.77.0.1/24"\n',
     "[coordination] listen: must be on this node's tunnel address 10.77.0.1"),
    (ON.replace("/24", "/99"), "[wireguard] address: '10.77.0.1/99' is not an address"),
    (ON + PEER.replace("10.77.0.2", "10.78.0.2"),
     "[wireguard] peers: n2: tunnel_ip 10.78.0.2 is outside this node's tunnel network"),
    (ON + PEER.replace("10.77.0.2", "10.77.0.1"),
     "[wireguard] peers: n2: tunnel_ip 10.77.0.1 is this node's own tunnel address"),
    (ON + PEER.replace("10.231.0.2", "peer.example"),
     "[wireguard] peers: n2: endpoint: must be 'IP:port'"),
    (ON + PEER.replace('tunnel_ip = "10.77.0.2"', 'tunnel_ip = "10.77.0.2", mtu = 1'),
     "[wireguard] peers: n2: mtu: unknown key (known: endpoint, tunnel_ip)"),
    (ON + PEER.replace(', tunnel_ip = "10.77.0.2"', ""), "[wireguard] peers: n2: tunnel_ip: "
                                                         "is required"),
    (ON + 'peers = { n2 = 3 }\n', "[wireguard] peers: n2: must be a table"),
    (ON + 'peers = { n2 = { endpoint = "10.0.0.2:1", tunnel_ip = "10.77.0.5" }, '
          'n3 = { endpoint = "10.0.0.3:1", tunnel_ip = "10.77.0.5" } }\n', "share the tunnel_ip"),
    ('[wireguard]\ninterface = "wg 0"\n', "[wireguard] interface: must be 1-15 characters"),
    ('[wireguard]\ninterface = "a-much-too-long-name"\n', "[wireguard] interface"),
    ('[wireguard]\nlisten_port = 70000\n', "[wireguard] listen_port: must be an integer <= 65535"),
    ('[wireguard]\npersistent_keepalive = -1\n', "[wireguard] persistent_keepalive"),
    ('[wireguard]\nprobe_interval = 5\nbackoff_cap = 1\n',
     "[wireguard] backoff_cap: must be at least probe_interval"),
    ('[wireguard]\nenabled = "yes"\n', "[wireguard] enabled: must be true or false"),
    ('[wireguard]\nmtu = 1400\n', "[wireguard] mtu: unknown key"),
    ("[tor]\nmanaged = false\ncontrol_port = 9051\n" + ON,
     "[tor] socks_port: (or socks_socket) required with an existing tor"),
])
def test_bad_values_are_one_line_errors(extra, problem):
    with pytest.raises(ConfigError) as excinfo:
        parse_config(MINIMAL + extra, "/etc/onionmesh/onionmesh.toml")
    message = str(excinfo.value)
    assert message.startswith("/etc/onionmesh/onionmesh.toml: ")
    assert problem in message
    assert "\n" not in message


def test_path_timings_follow_the_heartbeat_and_the_fallback_switch():
    default = path_config(parse_config(MINIMAL + ON))
    # Heartbeat 5 s, dead after (3 + 0.25) x 5 = 16.25 s (docs/coordination.md).
    assert (default.probe_interval, default.fallback_enabled) == (2.5, True)
    assert default.fallback_after == pytest.approx(6.5, abs=0.05)
    off = path_config(parse_config(MINIMAL + '[resilience]\ntor_fallback_enabled = false\n'
                                   + ON))
    assert not off.fallback_enabled
    tuned = path_config(parse_config(MINIMAL + ON + "probe_interval = 1\nfallback_after = 3\n"
                                     "backoff_cap = 20\n"))
    assert (tuned.probe_interval, tuned.probe_timeout, tuned.fallback_after,
            tuned.backoff_cap) == (1, 1, 3, 20)


def test_timings_that_would_kill_a_blocked_peer_are_refused():
    config = parse_config(MINIMAL + ON + "fallback_after = 14\n")
    with pytest.raises(NodeConfigError, match=r"\[wireguard\] path timings: a blocked tunnel "
                                              r"would be a dead peer"):
        check_runnable(config)
    # Without the fallback nothing needs to fit before death.
    check_runnable(parse_config(MINIMAL + "[resilience]\ntor_fallback_enabled = false\n" + ON
                                + "fallback_after = 14\n"))
    # Timings only matter when WireGuard is on.
    check_runnable(parse_config(MINIMAL + '[coordination]\nadvertise = "10.0.0.1:7443"\n'
                                "[wireguard]\nfallback_after = 14\n"))
