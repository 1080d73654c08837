"""When and where ``onionmesh join`` tries the join exchange next, sans-IO.

The shell (``node/join_tor.py``) carries one attempt at a time to one bootstrap
peer's coordination onion through tor; this core decides everything else, from
an explicit ``now`` and a uniform draw in [0, 1) per decision (the shell's
randomness), and reports why it gave up:

* **Expired before anything.** A token whose expiry has passed gives ``GiveUp``
  (``EXPIRED``) on the first call, so no traffic ever leaves for it.
* **Which peer.** The token's inviter first, then the alternatives (the token's
  other bootstrap peers, then ``known_peers`` given on the command line), in
  order. A failed attempt moves on to the next peer at once: an inviter that is
  down costs one attempt, not a backoff.
* **Backoff.** Only after a whole round (every peer failed once) does the joiner
  wait: ``backoff_base`` doubling per round up to ``backoff_cap``, each wait
  jittered by +-``jitter`` so joiners retrying together do not move in lockstep.
* **A fresh circuit per attempt.** Each ``Attempt`` names SOCKS credentials
  never used before (tor's IsolateSOCKSAuth builds a fresh circuit for them).
* **Giving up.** After ``attempts`` attempts (``EXHAUSTED``); when the next
  attempt would start at or after the token's expiry (``EXPIRED``); at once on a
  refusal (``REFUSED``: the sponsor said no, which is final for this token).
  An answer that does not verify (``BAD_ANSWER``) counts against that peer only.
  The ``GiveUp`` message names every peer and what failed there.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from onionmesh.mesh.errors import MeshConfigError


class AttemptOutcome(enum.StrEnum):
    """How one attempt ended (the shell reports it)."""

    UNREACHABLE = "unreachable"  # no stream: descriptor, introduction, rendezvous failed
    TIMED_OUT = "timed_out"  # a stream, but no complete answer before the deadline
    BAD_ANSWER = "bad_answer"  # an answer that does not verify under the authority key
    REFUSED = "refused"  # the sponsor refused the token or this node's id/key


class GiveUpReason(enum.StrEnum):
    EXPIRED = "expired"
    REFUSED = "refused"
    EXHAUSTED = "exhausted"


@dataclass(frozen=True)
class JoinRetryConfig:
    attempts: int = 8
    backoff_base: float = 5.0  # the wait after the first failed round, seconds
    backoff_cap: float = 60.0
    jitter: float = 0.2  # fraction of each wait, both ways
    attempt_timeout: float = 120.0  # one attempt: tor stream + exchange

    def __post_init__(self) -> None:
        if not 1 <= self.attempts <= 1000:
            raise MeshConfigError(f"join attempts must be 1-1000, not {self.attempts}")
        if not 0 < self.backoff_base <= self.backoff_cap <= 86400:
            raise MeshConfigError(
                f"join backoff must satisfy 0 < base ({self.backoff_base:g} s) "
                f"<= cap ({self.backoff_cap:g} s) <= 86400 s")
        if not 0 <= self.jitter < 1:
            raise MeshConfigError(f"join jitter must be in [0, 1), not {self.jitter:g}")
        if not 1 <= self.attempt_timeout <= 3600:
            raise MeshConfigError(
                f"join attempt timeout must be 1-3600 s, not {self.attempt_timeout:g}")


@dataclass(frozen=True)
class BootstrapPeer:
    node_id: str
    onion: str  # "<56 base32>.onion": the peer's coordination onion


@dataclass(frozen=True)
class Attempt:
    number: int  # 1-based
    peer: BootstrapPeer
    deadline: float  # give this attempt up at this time
    socks_username: str  # fresh per attempt: a fresh tor circuit
    socks_password: str


@dataclass(frozen=True)
class Wait:
    until: float


@dataclass(frozen=True)
class GiveUp:
    reason: GiveUpReason
    message: str


@dataclass(frozen=True)
class Failure:
    number: int
    peer: BootstrapPeer
    outcome: AttemptOutcome
    detail: str


JoinAction = Attempt | Wait | GiveUp


@dataclass
class JoinAttempts:
    """The attempt schedule of one ``onionmesh join`` (pure: no clock, no I/O)."""

    peers: tuple[BootstrapPeer, ...]
    expires_at: float
    config: JoinRetryConfig
    isolation_tag: str  # random per join (hex), so credentials never repeat across joins
    failures: list[Failure] = field(default_factory=list)
    admitted_by: BootstrapPeer | None = None
    _started: int = 0
    _current: Attempt | None = None
    _wait_until: float | None = None
    _done: GiveUp | None = None
    _succeeded: bool = False

    def __post_init__(self) -> None:
        if not self.peers:
            raise MeshConfigError("a join needs at least one bootstrap peer")
        seen: set[str] = set()
        unique = []
        for peer in self.peers:  # the same onion named twice is tried once per round
            if peer.onion not in seen:
                seen.add(peer.onion)
                unique.append(peer)
        self.peers = tuple(unique)

    def next_action(self, now: float, draw: float) -> JoinAction:
        """What to do now; ``draw`` is uniform in [0, 1) (used for the jitter)."""
        if self._succeeded:
            raise MeshConfigError("the join already succeeded")
        if self._done is not None:
            return self._done
        if self._current is not None:
            return self._current  # still running: the shell reports its end first
        if now >= self.expires_at:
            return self._give_up(GiveUpReason.EXPIRED, now)
        if self._started >= self.config.attempts:
            return self._give_up(GiveUpReason.EXHAUSTED, now)
        if self._started and self._started % len(self.peers) == 0:
            if self._wait_until is None:
                round_no = self._started // len(self.peers)
                delay = min(self.config.backoff_cap,
                            self.config.backoff_base * 2 ** (round_no - 1))
                delay *= 1 + self.config.jitter * (2 * min(max(draw, 0.0), 1.0) - 1)
                self._wait_until = now + delay
            if now < self._wait_until:
                if self._wait_until >= self.expires_at:
                    return self._give_up(GiveUpReason.EXPIRED, now)
                return Wait(self._wait_until)
        self._wait_until = None
        self._started += 1
        peer = self.peers[(self._started - 1) % len(self.peers)]
        self._current = Attempt(
            self._started, peer, min(now + self.config.attempt_timeout, self.expires_at),
            f"onionmesh-join-{self.isolation_tag}-{self._started}",
            f"attempt-{self._started}")
        return self._current

    def attempt_failed(self, now: float, outcome: AttemptOutcome, detail: str) -> None:
        attempt = self._require_current()
        self._current = None
        self.failures.append(Failure(attempt.number, attempt.peer, outcome, detail))
        if outcome is AttemptOutcome.REFUSED:
            self._give_up(GiveUpReason.REFUSED, now)

    def attempt_succeeded(self, now: float) -> None:
        self.admitted_by = self._require_current().peer
        self._current = None
        self._succeeded = True

    def _require_current(self) -> Attempt:
        if self._current is None:
            raise MeshConfigError("no join attempt is running")
        return self._current

    def _give_up(self, reason: GiveUpReason, now: float) -> GiveUp:
        if reason is GiveUpReason.EXPIRED and not self.failures:
            message = ("the join token has expired; nothing was sent. Ask for a new one "
                       "(`onionmesh add-node` on a node with the authority key)")
        elif reason is GiveUpReason.EXPIRED:
            message = "the join token expired before any bootstrap peer answered"
        elif reason is GiveUpReason.REFUSED:
            last = self.failures[-1]
            message = (f"{last.peer.node_id} ({last.peer.onion}) refused the join: the token "
                       "is unknown, used or expired there, or this node's id or key is taken")
        else:
            message = f"no bootstrap peer admitted this node in {self._started} attempts"
        if reason is not GiveUpReason.REFUSED and self.failures:
            tried = "; ".join(f"attempt {f.number} to {f.peer.node_id} ({f.peer.onion}): "
                              f"{f.outcome}: {f.detail}" for f in self.failures)
            message = f"{message} ({tried})"
        self._done = GiveUp(reason, message)
        return self._done
