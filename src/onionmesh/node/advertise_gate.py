"""What this node advertises to the cluster: its tor's intro points, filtered (pure, no I/O).

The intro feed reports the intro points in the node's tor's descriptors; the
mesh core shares what this gate lets through. A node advertises an intro
point only while

* its service answers its checks (``ServiceHealth``): otherwise it stays in
  the cluster as a standby with no intro points, and says why;
* its tor is up (the control connection stands): a dead tor's intro points
  lead nowhere, so they are withdrawn until the restarted tor has new ones;
* the intro circuit to that intro point's relay is established
  (docs/scenarios.md §2): when tor reports the circuit closed, that intro point is
  withdrawn at once, before tor re-uploads its own descriptor; tor's
  replacement passes as soon as its circuit is established and tor's
  descriptor lists it. Circuits are matched to intro points by the relay's
  legacy RSA identity, read from the intro point's own link specifiers
  (``onionmesh.mesh.relay``). Intro points without a relay identity cannot be
  matched and are not filtered by circuits.

Inputs carry an explicit ``now``; ``advertised()`` is the current output and
``next_event()`` drains what the shell should log and alert on.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from onionmesh.descriptor.intro import LS_LEGACY_ID
from onionmesh.mesh.relay import relay_keys, relay_label
from onionmesh.node.service_health import CheckPolicy, Health, ServiceHealth
from onionmesh.tor.intro_circuits import CircuitChange, IntroCircuit

IntroSets = Mapping[int, Sequence[bytes]]


class GateEventKind(enum.StrEnum):
    WITHDRAWN = "withdrawn"  # the node stopped advertising (standby): why
    RESTORED = "restored"  # it advertises again
    INTRO_POINT_WITHDRAWN = "intro_point_withdrawn"  # one intro circuit closed
    CHECK_FAILED = "check_failed"  # one failed check that did not (yet) withdraw


@dataclass(frozen=True)
class GateEvent:
    kind: GateEventKind
    message: str
    at: float


class AdvertiseGate:
    """See the module docstring."""

    def __init__(self, policy: CheckPolicy, now: float) -> None:
        self.health = ServiceHealth(policy)
        self.tor_up = False
        self.tor_down_since: float | None = now
        self.tor_down_reason = "tor not connected yet"
        self._feed: dict[int, tuple[bytes, ...]] = {}
        self._circuits: dict[str, bytes] = {}  # established intro circuit id -> relay id
        self._events: deque[GateEvent] = deque()
        self._withdrawn_reason: str | None = self._reason()

    # ------------------------------------------------------------------ inputs

    def feed_sets(self, sets: IntroSets, now: float) -> None:
        """The intro points tor's descriptors list now, per time period."""
        self._feed = {p: tuple(v) for p, v in sets.items()}
        self._update(now)

    def check_result(self, ok: bool, detail: str, now: float) -> None:
        change = self.health.record(ok, detail, now)
        if not ok and change is None and self.health.state is not Health.FAILING:
            self._events.append(GateEvent(
                GateEventKind.CHECK_FAILED,
                f"service check failed ({detail}); "
                f"{-self.health.streak}/{self.health.policy.failures} before withdrawing", now))
        self._update(now)

    def tor_lost(self, reason: str, now: float) -> None:
        """The node's tor is gone (control connection lost): withdraw everything."""
        if self.tor_up:
            self.tor_up = False
            self.tor_down_since, self.tor_down_reason = now, reason
        self._circuits.clear()
        self._update(now)

    def tor_connected(self, established: Mapping[str, bytes], now: float) -> None:
        """Tor answers again; ``established`` (circuit id -> relay) from circuit-status."""
        self.tor_up, self.tor_down_since = True, None
        self._circuits = dict(established)
        self._update(now)

    def intro_circuit(self, circuit: IntroCircuit, now: float) -> None:
        """A CIRC / CIRC_MINOR report about one of the service's intro circuits."""
        if circuit.change is CircuitChange.ESTABLISHED:
            self._circuits[circuit.circuit_id] = circuit.relay
        elif circuit.change is CircuitChange.CLOSED:
            relay = self._circuits.pop(circuit.circuit_id, None)
            if relay is not None and relay not in self._circuits.values():
                dropped = [ip for ip in self._all_points() if self._relay(ip) == relay]
                if dropped and self._withdrawn_reason is None:
                    self._events.append(GateEvent(
                        GateEventKind.INTRO_POINT_WITHDRAWN,
                        f"intro circuit {circuit.circuit_id} to {relay_label(dropped[0])} "
                        f"closed ({circuit.reason or 'no reason given'}): withdrawing that "
                        "intro point until tor has a replacement", now))
        self._update(now)

    # ------------------------------------------------------------------ outputs

    def advertised(self) -> dict[int, tuple[bytes, ...]]:
        """The intro points the node may share now (empty while withdrawn)."""
        if self._withdrawn_reason is not None:
            return {}
        live = set(self._circuits.values())
        out: dict[int, tuple[bytes, ...]] = {}
        for period, points in self._feed.items():
            kept = tuple(ip for ip in points if self._relay(ip) in live or
                         self._relay(ip) is None)
            if kept:
                out[period] = kept
        return out

    @property
    def service_failing(self) -> bool:
        """The node's own service fails its checks (withdrawn for that reason): the
        shell takes the onion service out of tor meanwhile, so that clients holding an
        older master descriptor are turned away at the intro points, not at a dead
        backend (``NodeTor.set_service_suspended``)."""
        return self.health.state is Health.FAILING

    @property
    def withdrawn_reason(self) -> str | None:
        """Why the node advertises nothing, or None while it advertises."""
        return self._withdrawn_reason

    def next_event(self) -> GateEvent | None:
        return self._events.popleft() if self._events else None

    def status(self, now: float) -> dict[str, object]:
        """The gate's part of the status document."""
        advertised = self.advertised()
        return {
            "advertising": self._withdrawn_reason is None,
            "withdrawn_because": self._withdrawn_reason,
            "service_check": {
                "kind": self.health.policy.kind.value,
                "state": self.health.state.value,
                "last": self.health.last_detail,
                "last_ago": None if self.health.last_at is None
                else round(now - self.health.last_at, 1),
            },
            "tor": "up" if self.tor_up else f"down ({self.tor_down_reason})",
            "intro_circuits_established": len(set(self._circuits.values())),
            "intro_points_from_tor": sum(len(v) for v in self._feed.values()),
            "intro_points_advertised": sum(len(v) for v in advertised.values()),
            "intro_points_by_period": {
                str(period): len(points) for period, points in sorted(advertised.items())
            },
        }

    # ------------------------------------------------------------------ internals

    def _all_points(self) -> list[bytes]:
        return [ip for points in self._feed.values() for ip in points]

    @staticmethod
    def _relay(ip: bytes) -> bytes | None:
        keys = relay_keys(ip)
        if not keys:
            return None
        return next((ident for kind, ident in keys if kind == LS_LEGACY_ID), None)

    def _reason(self) -> str | None:
        if not self.tor_up:
            return f"tor is down: {self.tor_down_reason}"
        if self.health.state is Health.UNKNOWN:
            return "service not checked yet"
        if self.health.state is Health.FAILING:
            return f"service check failing: {self.health.last_detail}"
        return None

    def _update(self, now: float) -> None:
        reason = self._reason()
        if reason == self._withdrawn_reason:
            return
        old, self._withdrawn_reason = self._withdrawn_reason, reason
        if reason is None:
            self._events.append(GateEvent(
                GateEventKind.RESTORED, f"advertising intro points (until now: {old})", now))
        elif old is None:  # a change of reason while withdrawn shows in the status only
            self._events.append(GateEvent(
                GateEventKind.WITHDRAWN,
                f"withdrawing this node's intro points, standby until it recovers: {reason}",
                now))
