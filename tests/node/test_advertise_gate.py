"""What a node advertises: service checks, tor liveness and intro-circuit health (pure)."""

from __future__ import annotations

import asyncio
import json
import socket

import msgspec
import pytest

from onionmesh.config import HealthCheck
from onionmesh.node.advertise_filter import AdvertiseFilter
from onionmesh.node.advertise_gate import AdvertiseGate, GateEventKind
from onionmesh.node.service_health import CheckPolicy, Health, ServiceHealth
from onionmesh.node.service_probe import Target, check_service, service_targets
from onionmesh.status_document import AdvertisingStatus
from onionmesh.tor.control_protocol import ControlError, ControlEvent
from onionmesh.tor.intro_circuits import (
    CircuitChange,
    IntroCircuit,
    established_relays,
    intro_circuit_ids,
    parse_circuit_event,
    parse_circuit_line,
)
from tests.mesh.test_plan_relays import _rsa, ip_on

ADDR = "2fvhjskjet3n5syd6yfg5lhvwcs62bojmthr35ko5bllr3iqdb4ctdyd"
POLICY = CheckPolicy(failures=2, successes=2, interval=1.0)


def circ(cid: str, status: str, relay: int, state: str = "HSSI_ESTABLISHED", *,
         purpose: str = "HS_SERVICE_INTRO", extra: str = "") -> str:
    path = f"$0000000000000000000000000000000000000001~g,${_rsa(relay).hex().upper()}~r{relay}"
    return (f"{cid} {status} {path} BUILD_FLAGS=IS_INTERNAL,NEED_CAPACITY PURPOSE={purpose} "
            f"HS_STATE={state} REND_QUERY={ADDR} TIME_CREATED=2026-12-06T17:00:00.000000"
            f"{extra}")


def event(kind: str, text: str) -> ControlEvent:
    return ControlEvent(kind, text, None, 0.0)


# ---------------------------------------------------------------- circuit parsing

def test_circuit_lines_of_service_intro_circuits_parse():
    built = parse_circuit_event(event("CIRC", circ("7", "BUILT", 3)))
    assert built is not None and built.change is CircuitChange.ESTABLISHED
    assert built.relay == _rsa(3) and built.service == ADDR and built.circuit_id == "7"
    connecting = parse_circuit_line(circ("8", "BUILT", 3, "HSSI_CONNECTING"))
    assert connecting is not None and connecting.change is CircuitChange.OTHER
    minor = parse_circuit_event(event("CIRC_MINOR", circ("8", "PURPOSE_CHANGED", 3,
                                                         extra=" OLD_PURPOSE=HS_SERVICE_INTRO "
                                                         "OLD_HS_STATE=HSSI_CONNECTING")))
    assert minor is not None and minor.change is CircuitChange.ESTABLISHED
    closed = parse_circuit_event(event("CIRC", circ("7", "CLOSED", 3, extra=" REASON=DESTROYED "
                                                    "REMOTE_REASON=OR_CONN_CLOSED")))
    assert closed is not None and closed.change is CircuitChange.CLOSED
    assert closed.reason == "OR_CONN_CLOSED"
    assert parse_circuit_line(circ("9", "BUILT", 3, purpose="GENERAL")) is None
    assert parse_circuit_line("10 LAUNCHED BUILD_FLAGS=NEED_CAPACITY PURPOSE=HS_SERVICE_INTRO "
                              "HS_STATE=HSSI_CONNECTING") is None  # no path yet
    assert parse_circuit_event(event("HS_DESC", "whatever")) is None


@pytest.mark.parametrize("text", ["", "7", "x!y BUILT", "7 BUILT nohop PURPOSE=HS_SERVICE_INTRO",
                                  '7 BUILT $AB PURPOSE="unterminated'])
def test_bad_circuit_lines_raise_a_typed_error(text):
    with pytest.raises(ControlError):
        parse_circuit_line(text)


def test_established_relays_from_circuit_status_skip_junk_and_other_services():
    other = circ("3", "BUILT", 5).replace(ADDR, "a" * 56)
    status = "\n".join([circ("1", "BUILT", 1), circ("2", "BUILT", 2, "HSSI_CONNECTING"),
                        other, "garbage line", circ("4", "BUILT", 4, purpose="GENERAL")])
    assert established_relays(status, ADDR) == {_rsa(1)}


# ---------------------------------------------------------------- service health

def test_health_needs_failures_in_a_row_to_fail_and_successes_in_a_row_to_return():
    h = ServiceHealth(POLICY)
    assert h.state is Health.UNKNOWN
    assert h.record(True, "ok", 0).new is Health.HEALTHY  # first pass: at once
    assert h.record(False, "refused", 1) is None
    assert h.record(True, "ok", 2) is None  # the streak restarts
    assert h.record(False, "refused", 3) is None
    change = h.record(False, "refused", 4)
    assert change is not None and change.new is Health.FAILING and change.detail == "refused"
    assert h.record(True, "ok", 5) is None
    assert h.record(False, "refused", 6) is None
    assert h.record(True, "ok", 7) is None
    assert h.record(True, "ok", 8).new is Health.HEALTHY


def test_a_change_is_confirmed_after_the_recheck_delay_not_a_whole_interval():
    h = ServiceHealth(CheckPolicy(interval=5.0, recheck=1.0, failures=3, successes=2))
    h.record(True, "ok", 0)
    assert h.next_check_delay() == 5.0  # healthy and passing: the normal pace
    h.record(False, "refused", 5)
    assert h.next_check_delay() == 1.0  # a failure while healthy is confirmed quickly
    h.record(False, "refused", 6)
    assert h.next_check_delay() == 1.0
    assert h.record(False, "refused", 7).new is Health.FAILING
    assert h.next_check_delay() == 5.0  # failing and failing: the normal pace
    h.record(True, "ok", 12)
    assert h.next_check_delay() == 1.0  # a pass while failing too
    assert h.record(True, "ok", 13).new is Health.HEALTHY
    assert h.next_check_delay() == 5.0
    h.record(False, "refused", 18)
    h.record(True, "ok", 19)  # a lone failure: the streak restarts, the pace returns
    assert h.next_check_delay() == 5.0


def test_unknown_service_that_never_answers_becomes_failing():
    h = ServiceHealth(POLICY)
    assert h.record(False, "x", 0) is None
    assert h.record(False, "x", 1).new is Health.FAILING


def test_no_check_is_healthy_from_the_start_and_bounds_are_derived():
    assert ServiceHealth(CheckPolicy(kind=HealthCheck.NONE)).state is Health.HEALTHY
    p = CheckPolicy(interval=5.0, timeout=3.0, failures=2, successes=3)  # recheck 1 s
    assert p.withdraw_bound() == 12.0 and p.return_bound() == 16.0
    # the recheck never waits longer than the interval
    assert CheckPolicy(interval=0.5, timeout=0.2).recheck_delay == 0.5
    with pytest.raises(ValueError):
        ServiceHealth(CheckPolicy(failures=0))


# ---------------------------------------------------------------- the gate

def _gate_up() -> AdvertiseGate:
    g = AdvertiseGate(POLICY, 0.0)
    g.feed_sets({1: [ip_on(1, "a"), ip_on(2, "b")], 2: [ip_on(3, "c")]}, 0.0)
    assert g.advertised() == {}  # tor not connected, service not checked
    g.tor_connected({"c1": _rsa(1), "c2": _rsa(2), "c3": _rsa(3)}, 0.1)
    assert g.advertised() == {} and g.withdrawn_reason == "service not checked yet"
    g.check_result(True, "tcp ok", 0.2)
    assert g.withdrawn_reason is None
    return g


def drain(g: AdvertiseGate) -> list:
    out = []
    while (e := g.next_event()) is not None:
        out.append(e)
    return out


def test_gate_advertises_only_with_tor_up_and_service_checked():
    g = _gate_up()
    assert g.advertised() == {1: (ip_on(1, "a"), ip_on(2, "b")), 2: (ip_on(3, "c"),)}
    assert [e.kind for e in drain(g)] == [GateEventKind.RESTORED]


def test_failing_service_withdraws_everything_and_comes_back_after_successes():
    g = _gate_up()
    drain(g)
    g.check_result(False, "127.0.0.1:8080: Connection refused", 1.0)
    assert g.advertised() != {}
    assert [e.kind for e in drain(g)] == [GateEventKind.CHECK_FAILED]
    assert not g.service_failing  # one failure: not yet
    g.check_result(False, "127.0.0.1:8080: Connection refused", 2.0)
    assert g.advertised() == {} and g.service_failing
    assert g.withdrawn_reason == "service check failing: 127.0.0.1:8080: Connection refused"
    [withdrawn] = drain(g)
    assert withdrawn.kind is GateEventKind.WITHDRAWN and "Connection refused" in withdrawn.message
    g.check_result(True, "ok", 3.0)
    assert g.advertised() == {}
    g.check_result(True, "ok", 4.0)
    assert len(g.advertised()[1]) == 2 and not g.service_failing
    assert [e.kind for e in drain(g)] == [GateEventKind.RESTORED]
    status = g.status(4.5)
    assert status["advertising"] is True and status["service_check"]["state"] == "healthy"


def test_closed_intro_circuit_withdraws_that_intro_point_at_once_until_reestablished():
    g = _gate_up()
    drain(g)
    closed = parse_circuit_line(circ("c2", "CLOSED", 2, extra=" REASON=FINISHED"))
    g.intro_circuit(closed, 1.0)
    assert g.advertised() == {1: (ip_on(1, "a"),), 2: (ip_on(3, "c"),)}
    status = g.status(1.5)
    assert status["intro_points_advertised"] == 2 and status["intro_points_from_tor"] == 3
    assert status["intro_points_by_period"] == {"1": 1, "2": 1}
    # as a reader of the status socket gets it
    section = msgspec.convert(json.loads(json.dumps(status)), AdvertisingStatus)
    assert section.intro_points_by_period == {"1": 1, "2": 1}
    [ev] = drain(g)
    assert ev.kind is GateEventKind.INTRO_POINT_WITHDRAWN and "FINISHED" in ev.message
    # tor retries the same intro point on a new circuit: it comes back once established
    g.intro_circuit(parse_circuit_line(circ("c9", "BUILT", 2, "HSSI_CONNECTING")), 2.0)
    assert len(g.advertised()[1]) == 1
    g.intro_circuit(parse_circuit_line(circ("c9", "PURPOSE_CHANGED", 2), minor=True), 3.0)
    assert len(g.advertised()[1]) == 2


def test_replacement_passes_when_tor_lists_it_and_its_circuit_is_up():
    g = _gate_up()
    g.intro_circuit(parse_circuit_line(circ("c2", "CLOSED", 2)), 1.0)
    g.intro_circuit(parse_circuit_line(circ("c7", "BUILT", 7)), 1.5)
    g.feed_sets({1: [ip_on(1, "a"), ip_on(7, "new")], 2: [ip_on(3, "c")]}, 2.0)
    assert g.advertised()[1] == (ip_on(1, "a"), ip_on(7, "new"))


def test_two_circuits_to_one_relay_keep_it_until_both_close():
    g = _gate_up()
    g.intro_circuit(parse_circuit_line(circ("c8", "BUILT", 1)), 0.5)
    g.intro_circuit(parse_circuit_line(circ("c1", "CLOSED", 1)), 1.0)
    assert ip_on(1, "a") in g.advertised()[1]
    g.intro_circuit(parse_circuit_line(circ("c8", "CLOSED", 1)), 1.5)
    assert ip_on(1, "a") not in g.advertised()[1]


def test_tor_down_withdraws_all_and_a_restarted_tor_needs_new_circuits():
    g = _gate_up()
    drain(g)
    g.tor_lost("control connection lost", 5.0)
    assert g.advertised() == {}
    [ev] = drain(g)
    assert ev.kind is GateEventKind.WITHDRAWN and "tor is down" in ev.message
    assert g.status(6.0)["tor"] == "down (control connection lost)"
    g.tor_connected({}, 8.0)  # the new tor has no intro circuits yet
    assert g.advertised() == {} and g.withdrawn_reason is None
    g.intro_circuit(parse_circuit_line(circ("n1", "BUILT", 9)), 9.0)
    g.feed_sets({1: [ip_on(9, "fresh")]}, 9.5)
    assert g.advertised() == {1: (ip_on(9, "fresh"),)}


def test_points_without_relay_identity_are_not_filtered_by_circuits():
    g = AdvertiseGate(CheckPolicy(kind=HealthCheck.NONE), 0.0)
    g.tor_connected({}, 0.0)
    g.feed_sets({1: [b"opaque"]}, 0.0)
    assert g.advertised() == {1: (b"opaque",)}


# ---------------------------------------------------------------- the probe (loopback I/O)

def test_service_targets_follow_hiddenserviceport_syntax():
    assert service_targets(["80 127.0.0.1:8080", "81", "443 [::1]:8443", "82 unix:/run/s.sock",
                            "83 127.0.0.1:8080"]) == [
        Target("127.0.0.1", 8080), Target("127.0.0.1", 81), Target("::1", 8443),
        Target(None, 0, "/run/s.sock")]
    assert str(Target("::1", 8443)) == "[::1]:8443"


async def _http_server(status: int):
    async def handle(reader, writer):
        try:
            await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:  # the TCP check connects and closes
            writer.close()
            return
        writer.write(f"HTTP/1.1 {status} X\r\nContent-Length: 0\r\n\r\n".encode())
        await writer.drain()
        writer.close()
    return await asyncio.start_server(handle, "127.0.0.1", 0)


def test_tcp_and_http_checks_against_real_loopback_sockets():
    async def run():
        ok_server = await _http_server(200)
        bad_server = await _http_server(503)
        ok_port = ok_server.sockets[0].getsockname()[1]
        bad_port = bad_server.sockets[0].getsockname()[1]
        with socket.socket() as s:  # a port nobody listens on
            s.bind(("127.0.0.1", 0))
            closed_port = s.getsockname()[1]
        tcp = CheckPolicy(kind=HealthCheck.TCP, timeout=2.0)
        http = CheckPolicy(kind=HealthCheck.HTTP, timeout=2.0)
        async with ok_server, bad_server:
            results = [
                await check_service([Target("127.0.0.1", ok_port)], tcp),
                await check_service([Target("127.0.0.1", closed_port)], tcp),
                await check_service([Target("127.0.0.1", ok_port)], http),
                await check_service([Target("127.0.0.1", bad_port)], http),
                await check_service([Target("127.0.0.1", ok_port),
                                     Target("127.0.0.1", closed_port)], tcp),
            ]
        return results
    results = asyncio.run(run())
    assert [ok for ok, _ in results] == [True, False, True, False, False]
    assert "refused" in results[1][1].lower()
    assert "HTTP 503, expected 200" in results[3][1]


def test_the_onion_service_is_out_of_tor_exactly_while_the_service_check_fails():
    """The filter's shell asks tor (``suspend_service``) to drop the onion service once
    the node withdraws for its service, retries a refused request at the next check,
    and puts it back when the service returns; a tor restart brings it back by itself."""
    calls: list[bool] = []
    refusals: list[Exception] = [ControlError("552 tor said no"), OSError("torrc unreadable")]

    async def suspend(wanted: bool) -> None:
        if refusals:
            raise refusals.pop(0)
        calls.append(wanted)

    f = AdvertiseFilter(None, "a" * 56, POLICY, [], lambda sets: None,  # type: ignore[arg-type]
                        lambda event: None, suspend_service=suspend, clock=lambda: 0.0)
    f.gate.tor_connected({}, 0.0)

    async def check(ok: bool) -> None:
        f.gate.check_result(ok, "detail", 0.0)
        await f._apply_suspension()

    async def run() -> None:
        await check(True)
        assert calls == [] and not f.service_suspended
        await check(False)
        assert calls == [] and not f.service_suspended  # one failure does not withdraw
        await check(False)  # withdrawn: tor refuses the first request ...
        assert calls == [] and not f.service_suspended
        await check(False)  # ... the torrc cannot be read for the second ...
        assert calls == [] and not f.service_suspended
        await check(False)  # ... and the next check tries again
        assert calls == [True] and f.service_suspended
        await check(False)
        assert calls == [True]  # once, not at every check
        await check(True)
        await check(True)  # returned (two successes): back in tor
        assert calls == [True, False] and not f.service_suspended

    asyncio.run(run())


def test_intro_circuit_ids_lists_every_service_intro_circuit_in_any_state():
    """What a stopping daemon closes before its tor exits (``NodeTor.stop``)."""
    status = "\n".join([
        circ("5", "BUILT", 1),
        circ("6", "EXTENDED", 2, state="HSSI_CONNECTING"),
        "7 BUILT $" + "AB" * 20 + "~x PURPOSE=GENERAL",
        "not a circuit line",
    ])
    assert intro_circuit_ids(status) == ["5", "6"]


def test_a_close_without_a_path_still_ends_the_intro_circuit():
    """tor's CIRC events may leave the path out; the gate finds the circuit by its id."""
    closed = parse_circuit_line(f"7 CLOSED BUILD_FLAGS=IS_INTERNAL PURPOSE=HS_SERVICE_INTRO "
                                f"HS_STATE=HSSI_ESTABLISHED REND_QUERY={ADDR} REASON=FINISHED")
    assert closed is not None and closed.change is CircuitChange.CLOSED
    assert closed.circuit_id == "7" and closed.relay == b"" and closed.reason == "FINISHED"
    assert parse_circuit_line("8 EXTENDED PURPOSE=HS_SERVICE_INTRO") is None  # no path
    g = _gate_up()
    drain(g)
    g.intro_circuit(IntroCircuit("c1", CircuitChange.CLOSED, b"", ADDR, "FINISHED"), 1.0)
    assert ip_on(1, "a") not in g.advertised().get(1, ())  # relay 1's point withdrawn
    assert [e.kind for e in drain(g)] == [GateEventKind.INTRO_POINT_WITHDRAWN]
