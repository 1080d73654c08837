"""The node service's intro circuits, as tor's control port reports them (pure parsing).

control-spec "Circuit status changed" (CIRC) and "Circuit status changed
slightly" (CIRC_MINOR), and the lines of ``GETINFO circuit-status``:

    <id> <status> [<path>] [BUILD_FLAGS=...] [PURPOSE=...] [HS_STATE=...]
         [REND_QUERY=...] [TIME_CREATED=...] [REASON=...] ...

A service intro circuit has ``PURPOSE=HS_SERVICE_INTRO``; ``HS_STATE`` is
``HSSI_CONNECTING`` until the intro point acknowledged ESTABLISH_INTRO and
``HSSI_ESTABLISHED`` after (tor announces that change as a CIRC_MINOR
PURPOSE_CHANGED event). The last hop of the path is the intro point's relay,
named by its legacy RSA identity (``$`` + 40 hex digits).
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from onionmesh.tor.control_protocol import ControlError, ControlEvent, parse_keywords

SERVICE_INTRO = "HS_SERVICE_INTRO"
ESTABLISHED = "HSSI_ESTABLISHED"
_HOP = re.compile(r"\$([0-9A-Fa-f]{40})(?:[~=][A-Za-z0-9]{1,19})?")
_CIRC_ID = re.compile(r"[0-9A-Za-z]{1,16}")


class CircuitChange(enum.StrEnum):
    """What happened to an intro circuit, as far as advertising goes."""

    ESTABLISHED = "established"  # the intro point accepted it: clients can be introduced
    CLOSED = "closed"  # gone (closed or failed): its intro point reaches nobody now
    OTHER = "other"  # launched, extended, still connecting


@dataclass(frozen=True)
class IntroCircuit:
    """One report about a service intro circuit."""

    circuit_id: str
    change: CircuitChange
    relay: bytes  # legacy RSA identity (20 bytes) of the last hop: the intro point's relay
    # (empty for a close reported without a path: the gate finds the circuit by its id)
    service: str | None  # REND_QUERY: the onion address without ".onion", when tor gives it
    reason: str | None  # REASON / REMOTE_REASON of a close


def parse_circuit_line(text: str, *, minor: bool = False) -> IntroCircuit | None:
    """One CIRC / CIRC_MINOR event text or circuit-status line; None unless it is a
    service intro circuit with a path, or the close of one (the path is optional in
    tor's CIRC events: a close without one still ends the circuit, found by its id).
    ``ControlError`` for a line that does not parse."""
    positional, keyed = parse_keywords(text)
    if len(positional) < 2 or not _CIRC_ID.fullmatch(positional[0]):
        raise ControlError(f"circuit line without id and status: {text[:80]!r}")
    if keyed.get("PURPOSE") != SERVICE_INTRO:
        return None
    status = positional[1]
    path = positional[2] if len(positional) > 2 else ""
    hops = path.split(",") if path else []
    closed = not minor and status in ("CLOSED", "FAILED")
    service = keyed.get("REND_QUERY")
    service = service.lower().removesuffix(".onion") if service else None
    reason = keyed.get("REMOTE_REASON") or keyed.get("REASON")
    if not hops:
        return IntroCircuit(positional[0], CircuitChange.CLOSED, b"", service, reason) \
            if closed else None
    last = _HOP.fullmatch(hops[-1])
    if last is None:
        raise ControlError(f"circuit {positional[0]}: bad last hop {hops[-1][:60]!r}")
    if closed:
        change = CircuitChange.CLOSED
    elif keyed.get("HS_STATE") == ESTABLISHED and (minor or status == "BUILT"):
        change = CircuitChange.ESTABLISHED
    else:
        change = CircuitChange.OTHER
    return IntroCircuit(positional[0], change, bytes.fromhex(last.group(1)), service, reason)


def parse_circuit_event(event: ControlEvent) -> IntroCircuit | None:
    """A CIRC or CIRC_MINOR event; None for any other circuit."""
    if event.type not in ("CIRC", "CIRC_MINOR"):
        return None
    return parse_circuit_line(event.text, minor=event.type == "CIRC_MINOR")


def established_relays(circuit_status: str, service: str) -> set[bytes]:
    """Relays (legacy ids) with an established intro circuit of ``service``, from
    ``GETINFO circuit-status``; lines that do not parse are skipped."""
    relays: set[bytes] = set()
    for line in circuit_status.splitlines():
        try:
            circ = parse_circuit_line(line.strip())
        except ControlError:
            continue
        if (circ is not None and circ.change is CircuitChange.ESTABLISHED
                and circ.service in (None, service)):
            relays.add(circ.relay)
    return relays


def intro_circuit_ids(circuit_status: str) -> list[str]:
    """Ids of every service intro circuit (any state) in ``GETINFO circuit-status``."""
    ids: list[str] = []
    for line in circuit_status.splitlines():
        try:
            circ = parse_circuit_line(line.strip())
        except ControlError:
            continue
        if circ is not None:
            ids.append(circ.circuit_id)
    return ids
