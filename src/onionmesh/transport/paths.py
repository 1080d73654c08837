"""Path selection per peer, sans-IO: WireGuard first, tor when WireGuard stops delivering.

The shell feeds probe acknowledgements, WireGuard handshake ages and a clock; the
selector says which path each peer's mesh datagrams take now, which probes to send,
and reports path changes as events (log line + alert). It never declares a peer dead:
that stays the mesh core's job, and the point of the fallback is that a blocked tunnel
does not look like a dead node.

Per peer:
* WIREGUARD: a PROBE goes over WireGuard every ``probe_interval``; each is answered
  with an ACK. When none has been acknowledged for ``fallback_after`` seconds (or the
  handshake is stale and the last probe went unanswered) and the fallback is enabled,
  the peer moves to TOR at once: the same authenticated mesh datagrams go over tor.
* TOR: WireGuard is re-probed with exponential backoff (``probe_interval`` doubling up
  to ``backoff_cap``) and jitter (+-``jitter`` of each delay, so peers blocked together
  do not probe in lockstep). The first WireGuard ACK moves the peer back. Tor itself is
  probed every ``probe_interval`` too, to measure its round trip. When the peer's
  WireGuard starts delivering to us again (the first frame over WireGuard after we fell
  back, or after ``fallback_after`` of WireGuard silence: its daemon restarted, its
  tunnel unblocked) we re-probe at once and restart the backoff instead of waiting
  out a delay of up to ``backoff_cap``: a restarted peer reaches us over WireGuard at
  once while our tor stream to its re-created coordination onion may take long to
  connect, and it must hear the publisher before its start-up listen window ends. A
  peer whose WireGuard delivers to us steadily while ours to it stays lost prompts
  no probes beyond the backoff (the edge, not every frame, prompts one).
With the fallback disabled the peer stays on WIREGUARD (then a blocked tunnel is a
dead peer, as configured) and probes still measure the tunnel.

Thresholds against tor's round trip: the core declares a peer dead after
``dead_after`` seconds of silence; the fallback must switch and get a heartbeat through
tor before that, so ``fallback_after + probe_interval + tor_round_trip_budget`` must
stay below ``dead_after`` (``check_timing``). The shell keeps each peer's tor stream
open (warm) and, on a switch, re-sends the last mesh datagram it sent that peer over
tor, so the peer hears from us one tor round trip after the switch rather than at
our next heartbeat (a copy the peer did get is refused as a replay, harmlessly).
"""

from __future__ import annotations

import enum
import random
from collections.abc import Iterable
from dataclasses import dataclass, field

from onionmesh.errors import OnionmeshError
from onionmesh.transport.frames import NONCE_BYTES


class PathConfigError(OnionmeshError):
    """Path timings that cannot work (the message says which and why)."""


class Path(enum.Enum):
    WIREGUARD = "wireguard"
    TOR = "tor"


@dataclass(frozen=True)
class PathConfig:
    probe_interval: float = 2.0
    fallback_after: float = 5.0  # no WireGuard ACK for this long -> tor
    probe_timeout: float = 2.0  # a WireGuard probe unanswered this long counts as lost
    backoff_cap: float = 60.0
    jitter: float = 0.2  # fraction of each backoff delay
    tor_round_trip_budget: float = 6.0  # what one heartbeat over a warm tor stream may take
    fallback_enabled: bool = True

    def __post_init__(self) -> None:
        for name in ("probe_interval", "fallback_after", "probe_timeout", "backoff_cap",
                     "tor_round_trip_budget"):
            if not getattr(self, name) > 0:
                raise PathConfigError(f"{name} must be > 0, got {getattr(self, name)}")
        if not 0 <= self.jitter < 1:
            raise PathConfigError(f"jitter must be a fraction in [0, 1), got {self.jitter}")
        if self.backoff_cap < self.probe_interval:
            raise PathConfigError("backoff_cap must be >= probe_interval")

    @classmethod
    def for_heartbeat(cls, heartbeat_interval: float, dead_after: float,
                      fallback_enabled: bool = True) -> PathConfig:
        """Timings derived from the mesh's: probe twice per heartbeat, fall back after
        two heartbeat intervals (or less if death comes sooner), leaving the rest of
        the time-to-death for tor's round trip."""
        probe = max(0.1, heartbeat_interval / 2)
        budget = max(probe, dead_after * 0.4)
        # 10 % margin under the time of death, never below one probe interval.
        fallback = max(probe, min(2 * heartbeat_interval, 0.9 * (dead_after - probe - budget)))
        return cls(probe_interval=probe, fallback_after=fallback, probe_timeout=probe,
                   tor_round_trip_budget=budget, fallback_enabled=fallback_enabled)

    def check_timing(self, dead_after: float) -> None:
        if not self.fallback_enabled:
            return
        needed = self.fallback_after + self.probe_interval + self.tor_round_trip_budget
        if needed >= dead_after:
            raise PathConfigError(
                f"a blocked tunnel would be a dead peer: falling back to tor takes up to "
                f"{needed:g} s (fallback_after {self.fallback_after:g} + probe_interval "
                f"{self.probe_interval:g} + tor round trip {self.tor_round_trip_budget:g}) but "
                f"peers are declared dead after {dead_after:g} s")


# ---- outputs ----

@dataclass(frozen=True)
class SendProbe:
    node_id: str
    path: Path
    nonce: bytes


@dataclass(frozen=True)
class SendAck:
    node_id: str
    path: Path
    nonce: bytes


@dataclass(frozen=True)
class FellBackToTor:
    node_id: str
    since: float
    reason: str

    @property
    def message(self) -> str:
        return f"Peer {self.node_id}: WireGuard stopped delivering ({self.reason}); " \
               "mesh traffic now goes over tor"


@dataclass(frozen=True)
class WireGuardRestored:
    node_id: str
    after: float  # seconds on tor

    @property
    def message(self) -> str:
        return f"Peer {self.node_id}: WireGuard delivers again after {self.after:.1f} s on " \
               "tor; mesh traffic back on WireGuard"


@dataclass(frozen=True)
class WireGuardDown:
    """WireGuard stopped delivering and the tor fallback is disabled."""
    node_id: str
    reason: str

    @property
    def message(self) -> str:
        return f"Peer {self.node_id}: WireGuard stopped delivering ({self.reason}); " \
               "tor fallback disabled"


PathEvent = FellBackToTor | WireGuardRestored | WireGuardDown


@dataclass
class PeerPath:
    node_id: str
    path: Path = Path.WIREGUARD
    last_wg_ack: float | None = None
    watch_since: float = 0.0  # start of the current no-ACK window
    fallback_since: float | None = None
    wg_down_reported: bool = False
    handshake_age: float | None = None
    handshake_stale: bool = False
    next_wg_probe: float = 0.0
    next_tor_probe: float = 0.0
    backoff: float = 0.0
    last_wg_heard: float | None = None  # the peer's last frame over WireGuard
    rtt: dict[Path, float] = field(default_factory=dict)  # smoothed, seconds
    outstanding: dict[bytes, tuple[Path, float]] = field(default_factory=dict)
    fallbacks: int = 0

    def view(self, now: float) -> dict[str, object]:
        return {
            "path": self.path.value,
            "fallback_since": self.fallback_since,
            "last_wireguard_ack_age": None if self.last_wg_ack is None
            else round(now - self.last_wg_ack, 3),
            "last_handshake_age": self.handshake_age,
            "rtt_wireguard": self.rtt.get(Path.WIREGUARD),
            "rtt_tor": self.rtt.get(Path.TOR),
            "fallbacks": self.fallbacks,
        }


_MAX_OUTSTANDING = 16


class PathSelector:
    def __init__(self, config: PathConfig, now: float, rng: random.Random | None = None) -> None:
        self.config = config
        self._rng = rng or random.Random()
        self._now = now
        self.peers: dict[str, PeerPath] = {}
        self._actions: list[SendProbe | SendAck] = []
        self._events: list[PathEvent] = []

    # ---- roster ----
    def set_peers(self, node_ids: Iterable[str], now: float) -> None:
        wanted = set(node_ids)
        for gone in set(self.peers) - wanted:
            del self.peers[gone]
        for node_id in sorted(wanted - set(self.peers)):
            self.peers[node_id] = PeerPath(node_id, watch_since=now, next_wg_probe=now,
                                           next_tor_probe=now + self.config.probe_interval)

    # ---- decisions ----
    def path_for(self, node_id: str) -> Path:
        peer = self.peers.get(node_id)
        return Path.WIREGUARD if peer is None else peer.path

    def get_timer(self) -> float | None:
        times = []
        for peer in self.peers.values():
            times.append(peer.next_wg_probe)
            if peer.path is Path.TOR:
                times.append(peer.next_tor_probe)
            elif self.config.fallback_enabled:
                times.append(self._fallback_deadline(peer))
        return min(times) if times else None

    def _fallback_deadline(self, peer: PeerPath) -> float:
        since = peer.watch_since if peer.last_wg_ack is None else max(peer.watch_since,
                                                                      peer.last_wg_ack)
        return since + self.config.fallback_after

    def handle_timer(self, now: float) -> None:
        self._now = now
        cfg = self.config
        for peer in self.peers.values():
            self._expire_probes(peer, now)
            if peer.path is Path.WIREGUARD:
                reason = self._wg_failing(peer, now)
                if reason is not None:
                    self._on_wg_failing(peer, reason, now)
            if now >= peer.next_wg_probe:
                self._probe_wg(peer, now)
            if peer.path is Path.TOR and now >= peer.next_tor_probe:
                self._probe(peer, Path.TOR, now)
                peer.next_tor_probe = now + cfg.probe_interval

    def _probe_wg(self, peer: PeerPath, now: float) -> None:
        """A WireGuard probe now; the next one after ``probe_interval`` (on WireGuard) or
        after the next backoff delay with jitter (on tor)."""
        cfg = self.config
        self._probe(peer, Path.WIREGUARD, now)
        if peer.path is Path.WIREGUARD:
            peer.next_wg_probe = now + cfg.probe_interval
            return
        peer.backoff = min(cfg.backoff_cap, max(cfg.probe_interval, peer.backoff * 2))
        spread = peer.backoff * cfg.jitter
        peer.next_wg_probe = now + peer.backoff + self._rng.uniform(-spread, spread)

    def _wg_failing(self, peer: PeerPath, now: float) -> str | None:
        if now >= self._fallback_deadline(peer):
            quiet = now - max(peer.watch_since, peer.last_wg_ack or 0.0)
            return f"no probe acknowledged for {quiet:.1f} s"
        if peer.handshake_stale and peer.last_wg_ack is not None and \
                now - peer.last_wg_ack > self.config.probe_interval + self.config.probe_timeout:
            return "handshake stale and the last probe unanswered"
        return None

    def _on_wg_failing(self, peer: PeerPath, reason: str, now: float) -> None:
        if not self.config.fallback_enabled:
            if not peer.wg_down_reported:
                peer.wg_down_reported = True
                self._events.append(WireGuardDown(peer.node_id, reason))
            return
        peer.path = Path.TOR
        peer.fallback_since = now
        peer.fallbacks += 1
        peer.backoff = 0.0
        peer.next_wg_probe = now  # first re-probe at once, then back off
        peer.next_tor_probe = now
        self._events.append(FellBackToTor(peer.node_id, now, reason))

    def _probe(self, peer: PeerPath, path: Path, now: float) -> None:
        nonce = self._rng.randbytes(NONCE_BYTES)
        if len(peer.outstanding) >= _MAX_OUTSTANDING:
            oldest = min(peer.outstanding, key=lambda n: peer.outstanding[n][1])
            del peer.outstanding[oldest]
        peer.outstanding[nonce] = (path, now)
        self._actions.append(SendProbe(peer.node_id, path, nonce))

    def _expire_probes(self, peer: PeerPath, now: float) -> None:
        horizon = max(self.config.probe_timeout, self.config.tor_round_trip_budget) * 4
        for nonce, (_, sent) in list(peer.outstanding.items()):
            if now - sent > horizon:
                del peer.outstanding[nonce]

    # ---- inputs ----
    def wireguard_heard(self, node_id: str, now: float) -> None:
        """A frame (mesh datagram, probe or ACK) from ``node_id`` arrived over WireGuard.

        On tor, the first such frame after the fallback or after ``fallback_after`` of
        WireGuard silence means the peer's tunnel delivers to us again (a restarted
        daemon, an unblocked port): re-probe at once with the backoff restarted."""
        peer = self.peers.get(node_id)
        if peer is None:
            return
        self._now = max(self._now, now)
        last, peer.last_wg_heard = peer.last_wg_heard, now
        if peer.path is not Path.TOR:
            return
        since = peer.fallback_since if peer.fallback_since is not None else now
        if last is not None and last > since and now - last < self.config.fallback_after:
            return  # it has been delivering all along: the backoff goes on
        peer.backoff = 0.0
        self._probe_wg(peer, now)

    def probe_received(self, node_id: str, nonce: bytes, path: Path) -> None:
        """Answer on the path it came in on (only for known peers)."""
        if node_id in self.peers and len(nonce) == NONCE_BYTES:
            self._actions.append(SendAck(node_id, path, nonce))

    def ack_received(self, node_id: str, nonce: bytes, path: Path, now: float) -> None:
        self._now = now
        peer = self.peers.get(node_id)
        if peer is None:
            return
        sent = peer.outstanding.pop(nonce, None)
        if sent is None or sent[0] is not path:
            return  # unknown, duplicate or crossed paths: proves nothing
        rtt = max(0.0, now - sent[1])
        old = peer.rtt.get(path)
        peer.rtt[path] = rtt if old is None else 0.875 * old + 0.125 * rtt
        if path is not Path.WIREGUARD:
            return
        if rtt > self.config.probe_timeout:
            # Its probe already counts as lost: a tunnel this slow neither keeps the
            # peer on WireGuard nor brings it back (else it would carry the mesh late).
            return
        peer.last_wg_ack = now
        peer.wg_down_reported = False
        if peer.path is Path.TOR:
            since = peer.fallback_since if peer.fallback_since is not None else now
            peer.path = Path.WIREGUARD
            peer.fallback_since = None
            peer.watch_since = now
            peer.backoff = 0.0
            peer.next_wg_probe = now + self.config.probe_interval
            self._events.append(WireGuardRestored(node_id, now - since))

    def handshake_seen(self, node_id: str, age: float | None, stale: bool) -> None:
        peer = self.peers.get(node_id)
        if peer is not None:
            peer.handshake_age = age
            peer.handshake_stale = stale

    # ---- outputs ----
    def actions(self) -> list[SendProbe | SendAck]:
        out, self._actions = self._actions, []
        return out

    def events(self) -> list[PathEvent]:
        out, self._events = self._events, []
        return out

    def status(self, now: float) -> dict[str, dict[str, object]]:
        return {node_id: peer.view(now) for node_id, peer in sorted(self.peers.items())}
