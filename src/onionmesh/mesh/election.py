"""Publisher election with leases, terms and deterministic conflict resolution.

Rules (each one exists because RustBalance's coordination lacked it):

* Rank: among live eligible nodes the best is the highest ``priority``, then
  the lexicographically *smallest* node id. Everyone computes the same rank
  from the priorities carried in heartbeats.
* Lease: the publisher's heartbeats renew its lease. A standby judges the
  lease on its *own* clock from when it last heard a renewal, never from
  timestamps in messages, and may claim only ``lease_duration + lease_grace``
  after that (a leader that membership declares dead is no exception: its
  lease simply runs out). The best-ranked live candidate claims first; any other
  candidate claims after one more ``lease_duration`` (the best one may be
  unable to hear us). A claim takes term = highest term known + 1.
* No stealing: a better-ranked node never pre-empts a publisher whose lease
  is valid, and a freshly started core (a restart) listens for
  ``lease_duration + lease_grace`` before it may claim at all, by which time
  it has heard the current publisher if there is one.
* Two publishers (a healed partition, or simultaneous claims): the conflict
  key is (intro points in the publish plan, term, priority, smaller node id),
  larger wins. docs/scenarios.md §7 prefers the node that sees the most
  intro points; term, priority and id make the comparison total. Only the
  two publishers act: the loser steps down without operator action and
  follows the winner. Both keep comparing on every heartbeat they hear from
  each other until one is left, so a comparison made on counts that were a
  heartbeat stale is corrected at the next one; once both see the same
  intro points the counts are equal and the immutable (term, priority, id)
  decides, so it converges and cannot flap.
* A foreign descriptor reported by the publisher shell: if it carries more
  intro points than our plan, we step down (the other side sees more) and
  our release asks every node that hears it to hold off claiming for two
  lease periods, so our side does not keep re-electing publishers that would
  each hit the same conflict; otherwise we keep publishing and start a new
  term so the next upload supersedes it.
* A node that did not run for a while (SIGSTOP, VM pause; see
  ``MeshCore._notice_pause``) claims nothing for one heartbeat round; if it
  was publisher and its lease may have lapsed on the others' clocks, it steps
  down without contesting the term a healthy standby took over meanwhile.
"""

from __future__ import annotations

from dataclasses import dataclass

from onionmesh.mesh.config import MeshConfig
from onionmesh.mesh.messages import MAX_TERM
from onionmesh.mesh.vocabulary import ElectionOutcome


def rank_key(priority: int, node_id: str) -> tuple[int, str]:
    """Sort key: smallest is the best candidate (highest priority, then smallest id)."""
    return (-priority, node_id)


def conflict_key(
    plan_count: int, term: int, priority: int, node_id: str
) -> tuple[int, int, int, tuple[int, ...]]:
    """Larger wins when two publishers meet."""
    # Negated code points make a smaller node id compare larger.
    return (plan_count, term, priority, tuple(-ord(c) for c in node_id))


@dataclass
class LeaderInfo:
    node_id: str
    term: int
    priority: int
    plan_count: int
    renewed_at: float  # local time of the last renewal heard


class Election:
    """Who publishes, under which term, and when a standby may claim."""

    def __init__(
        self, config: MeshConfig, node_id: str, priority: int, eligible: bool, now: float
    ) -> None:
        self.config = config
        self.node_id = node_id
        self.priority = priority
        self.eligible = eligible
        self.started_at = now
        self.term = 0  # highest term known
        self.leader: LeaderInfo | None = None
        self.released_at: float | None = None  # when the last leader released its lease
        self.hold_off_until = float("-inf")  # no claims before this (after a forced step-down)

    @property
    def is_publisher(self) -> bool:
        return self.leader is not None and self.leader.node_id == self.node_id

    @property
    def publisher_id(self) -> str | None:
        return None if self.leader is None else self.leader.node_id

    def _lease_valid(self, now: float) -> bool:
        if self.leader is None:
            return False
        if self.is_publisher:
            return True
        cfg = self.config
        return now < self.leader.renewed_at + cfg.lease_duration + cfg.lease_grace

    # -- inputs -------------------------------------------------------------

    def observe_term(self, term: int) -> None:
        self.term = min(MAX_TERM, max(self.term, term))

    def renew_own(self, now: float) -> None:
        """Our own heartbeat went out: renew our lease."""
        if self.is_publisher and self.leader is not None:
            self.leader.renewed_at = now

    def on_publisher(
        self,
        sender: str,
        term: int,
        priority: int,
        plan_count: int,
        own_plan_count: int,
        now: float,
    ) -> ElectionOutcome | None:
        """A peer says it is publisher (heartbeat or claim).

        Returns STEP_DOWN if we were publisher and lose to it, KEEP if we were
        publisher and win, None otherwise.
        """
        self.observe_term(term)
        incoming = LeaderInfo(sender, term, priority, plan_count, now)
        if self.is_publisher:
            assert self.leader is not None
            ours = conflict_key(own_plan_count, self.leader.term, self.priority, self.node_id)
            theirs = conflict_key(plan_count, term, priority, sender)
            if theirs > ours:
                self.leader = incoming
                return ElectionOutcome.STEP_DOWN
            return ElectionOutcome.KEEP
        cur = self.leader
        if cur is None or cur.node_id == sender:
            if cur is None or term >= cur.term:
                self.leader = incoming
                self.released_at = None
            return None
        if not self._lease_valid(now) or conflict_key(
            plan_count, term, priority, sender
        ) > conflict_key(cur.plan_count, cur.term, cur.priority, cur.node_id):
            self.leader = incoming
            self.released_at = None
        return None

    def on_standby(self, sender: str, term: int, now: float) -> None:
        """A peer says it is standby: if it was our leader (same or newer term), it let go."""
        self.observe_term(term)
        if self.leader is not None and self.leader.node_id == sender and term >= self.leader.term:
            self.leader = None
            self.released_at = now

    def on_release(self, sender: str, term: int, now: float, hold_off: float = 0.0) -> None:
        """A LeaseRelease from ``sender``, optionally asking everyone to hold off claims."""
        was_leader = self.leader is not None and self.leader.node_id == sender
        self.on_standby(sender, term, now)
        if was_leader and self.leader is None and hold_off > 0:
            self.hold_off_until = max(self.hold_off_until, now + hold_off)

    # -- decisions ----------------------------------------------------------

    def free_at(self) -> float | None:
        """The earliest local time a claim could happen (O(1); ignores other candidates)."""
        if not self.eligible or self.is_publisher:
            return None
        cfg = self.config
        free_at = self.started_at + cfg.lease_duration + cfg.lease_grace
        if self.leader is not None:
            free_at = max(free_at, self.leader.renewed_at + cfg.lease_duration + cfg.lease_grace)
        elif self.released_at is not None:
            # Wait one heartbeat (plus grace) after a release: if another publisher
            # is active (the releaser lost a conflict to it) we hear it first.
            free_at = max(free_at, self.released_at + cfg.heartbeat_interval + cfg.lease_grace)
        return max(free_at, self.hold_off_until)

    def claim_at(self, candidates: list[tuple[int, str]]) -> float | None:
        """The local time at which this node may claim, given live eligible candidates.

        ``candidates`` are (priority, node_id) of live eligible peers (not us).
        Returns None when this node can never claim (not eligible, or publisher).
        """
        free_at = self.free_at()
        if free_at is None:
            return None
        cfg = self.config
        leader_id = self.publisher_id
        mine = rank_key(self.priority, self.node_id)
        better = [c for c in candidates if c[1] != leader_id and rank_key(*c) < mine]
        if better:
            return free_at + cfg.lease_duration
        return free_at

    def claim(self, now: float) -> int:
        """Become publisher with a new term; return it (saturates at MAX_TERM, never overflows)."""
        self.term = min(self.term + 1, MAX_TERM)
        self.leader = LeaderInfo(self.node_id, self.term, self.priority, 0, now)
        self.released_at = None
        return self.term

    def step_down(self, now: float, hold_off: float = 0.0) -> None:
        """Stop publishing (shutdown, conflict loss handled by on_publisher, foreign descriptor)."""
        if self.is_publisher:
            self.leader = None
            self.released_at = now
        self.hold_off_until = now + hold_off

    def resume_after_pause(self, gap: float, now: float, listen: float) -> bool:
        """This node did not run for ``gap`` seconds; True if it must stop publishing.

        A publisher whose lease may have run out on the others' clocks (someone
        may have claimed meanwhile) stops quietly; it never contests the term that
        a healthy node took over. A standby moves the leader's renewal forward by
        the gap (it could not hear it) and nobody claims for ``listen`` seconds.
        """
        self.hold_off_until = max(self.hold_off_until, now + listen)
        if self.leader is None:
            return False
        if not self.is_publisher:
            self.leader.renewed_at += gap
            return False
        # Standbys may claim lease + grace after hearing our last renewal; the grace
        # is left as margin for our first heartbeat to reach them.
        if now - self.leader.renewed_at < self.config.lease_duration:
            return False
        self.leader = None
        self.released_at = now
        return True

    def bump_term(self, now: float) -> int:
        """Publisher starts a new term (after a foreign-descriptor conflict)."""
        assert self.is_publisher and self.leader is not None
        self.term = min(self.term + 1, MAX_TERM)
        self.leader.term = self.term
        self.leader.renewed_at = now
        return self.term
