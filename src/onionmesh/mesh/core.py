"""MeshCore: the sans-IO state machine that wires the mesh modules together.

Modelled on aioquic's ``QuicConnection`` and h11: the shell feeds inputs
(``receive_datagram``, ``handle_timer``, ``set_local_intro_points``, ...) with
its own ``now`` and drains outputs (``datagrams_to_send``, ``next_event``,
``get_timer``). The core never reads a clock, a socket or a random source.

Where things live:
  auth.py        envelope MAC/signature, replay window, timestamp window
  membership.py  alive -> suspect -> dead -> removed, recovery, flap damping
  election.py    leases, terms, claims, step-down, conflict resolution
  plan.py        which intro points are published and when (rate limit)
  core.py        message handling, gossip, intro-point exchange, timers

Rejected datagrams change nothing except ``rejections`` (a Counter by reason)
and one ``MessageRejected`` event; ``receive_datagram`` never raises for bad
input. The one exception is documented in auth.py: an authentic, fresh but
``unverified`` message (first contact, or the sender does not know our new
boot yet) records the sender's challenge in a bounded handshake cache, which
only decides what we echo to that node, and the first one from a boot we
have never seen is answered with one heartbeat; no view or timer changes.
Nothing else escapes either: an unexpected error while applying an accepted
message is counted as ``internal_error`` instead of reaching the shell.

Roster mode (``roster=`` given; see roster.py and docs/security.md):
  * only roster members are peers: a datagram is verified against the key the
    roster names for its sender and refused as ``not_member`` otherwise; no
    key is ever taken from a message, gossip or first contact. The peer table
    and the handshake cache therefore hold at most the roster's members.
  * ``RosterUpdate`` gossip carries authority-signed entries and revocations;
    each is verified before it is merged (at most ``ROSTER_VERIFY_BUDGET``
    signature checks per sender per heartbeat interval), new ones are passed
    on at once, and a revoked key's node is dropped with its intro points
    (``RosterChanged``: the shell persists ``core.roster``).
  * a lease claim, or a heartbeat saying "publisher", from a member whose
    entry may not publish is refused (``ineligible``); terms in such a
    member's messages are ignored.
Without a roster the core runs as before (keys pinned on first contact), for
clusters not yet migrated; the bounds below apply in both modes.

Bounds that hold for every sender, member or not:
  * terms: never above ``MAX_TERM`` (refused as ``term_overflow``), and a
    term more than ``TERM_AHEAD`` above the highest one this node knows is
    taken as only ``TERM_AHEAD`` ahead, so no message can push terms far;
  * a publisher's ``plan_count`` counts only up to what this node itself can
    verify: the intro points it holds from live members (and its own);
  * gossip: PeerLists and RosterUpdates are split to fit the datagram limit;
    without a roster, the peer table is capped and each sender may introduce
    only ``GOSSIP_ADDS_PER_SENDER`` peers;
  * every datagram the core sends is first decoded and checked exactly as a
    receiver would; one that would be refused is dropped (``SendRefused``).
"""

from __future__ import annotations

import re
from collections import Counter, OrderedDict, deque
from collections.abc import Mapping, Sequence
from dataclasses import replace

from onionmesh.mesh.auth import ClusterKey, ReplayGuard, Sealer, Unverified, Verifier
from onionmesh.mesh.clock_offset import ClockSample, live_offsets
from onionmesh.mesh.codec import decode_sealed, decode_signed, encode, message_kind
from onionmesh.mesh.config import MeshConfig
from onionmesh.mesh.election import Election
from onionmesh.mesh.errors import RejectedDatagram
from onionmesh.mesh.events import (
    BecamePublisher,
    ConflictDetected,
    Event,
    IntroPointsRequested,
    MessageRejected,
    PeerDiscovered,
    PeerRecovered,
    PeerRemoved,
    PublishRequested,
    RosterChanged,
    SendRefused,
    SteppedDown,
    WokeFromPause,
)
from onionmesh.mesh.handshake import HandshakeCache
from onionmesh.mesh.identity import NodeIdentity, PeerSeed
from onionmesh.mesh.intro import EMPTY_DIGEST, check_intro_sets, intro_digest
from onionmesh.mesh.membership import (
    ALIVE,
    DEAD,
    SUSPECT,
    UNKNOWN,
    Membership,
    PeerRecord,
    PeerView,
    members_digest,
)
from onionmesh.mesh.messages import (
    MAX_GOSSIP_PEERS,
    MAX_TERM,
    Heartbeat,
    IntroPoints,
    IntroRequest,
    Join,
    LeaseClaim,
    LeaseRelease,
    Leave,
    Message,
    PeerInfo,
    PeerList,
    RosterUpdate,
    Signed,
)
from onionmesh.mesh.plan import (
    Contribution,
    PublishPlan,
    PublishScheduler,
    select_intro_points,
    select_offered,
)
from onionmesh.mesh.roster import (
    MergeResult,
    Roster,
    RosterError,
    RosterProblem,
    SignedEntry,
    SignedRevocation,
)
from onionmesh.mesh.vocabulary import (
    ConflictKind,
    ConflictResolution,
    ElectionOutcome,
    PublishTrigger,
    RejectReason,
    Role,
    StepDownCause,
    TakeoverCause,
)

_ADDRESS_RE = re.compile(r"[\x21-\x7e]{1,255}")  # printable, no spaces
TERM_AHEAD = 16  # how far a peer's term may run ahead of ours in one message
GOSSIP_BUDGET = 45_000  # bytes of PeerInfos / roster statements per datagram (limit 60,000)
MAX_PEERS = 512  # without a roster: peer-table cap (a roster caps it by itself)
GOSSIP_ADDS_PER_SENDER = 64  # without a roster: peers one sender may introduce
MAX_STRANGERS = 64  # without a roster: handshake entries of nodes not in the peer table
ROSTER_VERIFY_BUDGET = 64  # roster signature checks per sender per heartbeat interval
_FOREIGN_REMEMBERED = 16  # foreign revisions remembered so one conflict bumps one term
GOSSIP_DATAGRAMS_PER_WINDOW = 64  # PeerList/RosterUpdate datagrams per sender per resend_interval


def _change_reason(old: PublishPlan | None, new: PublishPlan) -> tuple[PublishTrigger, str]:
    """Why the plan changed, for the PublishRequested log line."""
    if old is None:
        return PublishTrigger.NEW_PLAN, ""
    if old.term != new.term:
        return PublishTrigger.NEW_TERM, str(new.term)

    def nodes(plan: PublishPlan) -> set[str]:
        pools = (*plan.intro_points.values(), *plan.offered.values())
        return {node for entries in pools for node, _ in entries}

    gone, came = sorted(nodes(old) - nodes(new)), sorted(nodes(new) - nodes(old))
    if gone or came:
        parts = [f"-{n}" for n in gone] + [f"+{n}" for n in came]
        return PublishTrigger.MEMBERSHIP_CHANGE, " ".join(parts)
    return PublishTrigger.INTRO_POINT_ROTATION, ""


class MeshCore:
    """One node's view of the cluster (see the module docstring)."""

    def __init__(
        self,
        config: MeshConfig,
        identity: NodeIdentity,
        cluster_secret: bytes,
        bootstrap_peers: Sequence[PeerSeed],
        now: float,
        *,
        boot_id: int | None = None,
        roster: Roster | None = None,
    ) -> None:
        """``roster``: the verified roster (roster mode); the core owns and updates it
        from gossip and reports each change as ``RosterChanged``."""
        self.config = config
        self.roster = roster
        self.identity = identity
        self.node_id = identity.node_id
        key = self._cluster_key = ClusterKey(cluster_secret)
        # The boot id orders this core's messages after those of any earlier
        # core with the same identity (a restart): microseconds of its start.
        self.boot_id = boot_id if boot_id is not None else max(1, int(now * 1_000_000))
        self._sealer = Sealer(identity.node_id, identity.signing_seed, key, self.boot_id)
        self.challenge = self._sealer.challenge
        # node id -> (boot, challenge, address): what we echo to that node (see auth.py)
        self._handshake = HandshakeCache(identity.node_id)
        self._verifier = Verifier(key, config.datagram_max_age)
        self._guard = ReplayGuard()
        self.membership = Membership(config)
        # Why this node may not claim the lease now (set by the shell's clock check).
        self._claim_hold: str | None = None
        self._clock_samples: dict[str, ClockSample] = {}
        self.election = Election(
            config, identity.node_id, identity.priority, self._may_publish_self(), now
        )
        self._scheduler = PublishScheduler(config.min_publish_interval, config.refresh_interval)
        self.rejections: Counter[RejectReason] = Counter()
        self.send_refused: Counter[RejectReason] = Counter()
        self._events: deque[Event] = deque()
        self._outbox: list[tuple[bytes, str]] = []
        self._local_sets: dict[int, tuple[bytes, ...]] = {}
        self._local_first_seen: dict[bytes, float] = {}
        self._local_digest = EMPTY_DIGEST
        self._plan: PublishPlan | None = None
        self._plan_dirty = False
        self._generation = 0
        self._published_count = 0
        self._warm_until = float("-inf")
        # the ids the members digest was last computed from, and that digest
        self._members_key: tuple[str, ...] = ()
        self._members_digest = b""
        self._pending_addrs: set[str] = set()
        self._conflicts_seen: set[tuple[str, int]] = set()
        self._intro_seq: dict[str, tuple[int, int]] = {}
        self._last_full_state: dict[str, float] = {}
        self._shut_down = False
        self._foreign_handled: dict[int, float] = {}  # foreign revision -> when handled
        self._last_now = now  # the latest ``now`` any input carried
        self._stale_until = float("-inf")  # after a pause: no publishing before this
        self._gossip_adds: Counter[str] = Counter()  # without a roster: peers added per sender
        self._strangers: OrderedDict[str, None] = OrderedDict()  # handshake-only node ids
        self._verify_budget: dict[str, tuple[float, int]] = {}  # sender -> (window start, used)
        self._gossip_window: dict[str, tuple[float, int]] = {}  # sender -> (start, datagrams)
        if roster is not None:
            for member in roster.members():
                if member.node_id != self.node_id:
                    self.membership.add(member.node_id, "", member.node_key)
        for seed in bootstrap_peers:
            if seed.node_id == self.node_id:
                continue
            if seed.node_id is None:
                self._pending_addrs.add(seed.address)
            elif roster is None:
                self.membership.add(seed.node_id, seed.address, seed.public_key)
            elif (rec := self.membership.peers.get(seed.node_id)) is not None:
                rec.address = rec.address or seed.address  # a seed outside the roster: ignored
        self._next_heartbeat = now + config.heartbeat_interval
        # The second heartbeat of the round (see handle_timer); None once sent.
        self._heartbeat_copy_at: float | None = None
        # Announce ourselves at once: the first message of a boot asks for full state.
        self._broadcast(self._heartbeat_body(Join), now, include_dead=True)

    # ------------------------------------------------------------------ views

    @property
    def is_publisher(self) -> bool:
        return self.election.is_publisher and not self._shut_down

    @property
    def term(self) -> int:
        leader = self.election.leader
        if self.election.is_publisher and leader is not None:
            return leader.term
        return self.election.term

    @property
    def publisher_id(self) -> str | None:
        return None if self._shut_down else self.election.publisher_id

    def publish_plan(self) -> PublishPlan | None:
        """The current plan (only on the publisher; None elsewhere)."""
        return self._plan if self.is_publisher else None

    def peers(self) -> Mapping[str, PeerView]:
        return {node_id: rec.view() for node_id, rec in self.membership.peers.items()}

    def peer_clock_offsets(self) -> dict[str, float]:
        """How far our clock is ahead of each live peer's (from its latest datagram)."""
        return live_offsets(self._clock_samples, self.membership.live_ids())

    @property
    def claim_hold(self) -> str | None:
        return self._claim_hold

    def hold_claims(self, reason: str | None, now: float) -> None:
        """While ``reason`` is set this node neither claims the lease nor keeps it.

        The shell's clock check sets it (a clock off the cluster's median, or an
        unsynchronised kernel clock); None lifts it. Peers keep the node as a standby.
        """
        if reason == self._claim_hold:
            return
        self._claim_hold = reason
        self.election.eligible = self._may_publish_self()
        if reason is not None and self.election.is_publisher:
            self._step_down(now, StepDownCause.CLOCK, reason, None)

    def known_intro_points(self) -> dict[int, list[bytes]]:
        """Every intro point this node knows, its own and its peers', per period.

        A standby's conflict checks compare what the HSDirs serve with these.
        """
        known: dict[int, list[bytes]] = {p: list(v) for p, v in self._local_sets.items()}
        for rec in self.membership.peers.values():
            for period, points in rec.intro_sets.items():
                known.setdefault(period, []).extend(points)
        return known

    # ------------------------------------------------------------------ outputs

    def known_challenges(self) -> dict[str, bytes]:
        """node id -> the challenge of its current boot, learnt from its messages.

        What this node echoes in every datagram to that node (challenges are public:
        each message carries its sender's); bounded by the handshake cache's size.
        """
        return {node_id: entry.challenge for node_id, entry in self._handshake.items()}

    def seal(self, body: Message, to: str, now: float, echo: bytes | None = None) -> bytes:
        """``body`` sealed as this node for ``to``: this boot, the next sequence number and
        (unless ``echo`` is given) the challenge learnt from ``to``.

        Neither checked nor queued, unlike what the core sends by itself: for whoever
        speaks as this node outside the protocol (tools; tests playing a captured node).
        """
        return self._sealer.seal(body, now, to,
                                 self._handshake.echo_for(to) if echo is None else echo)

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, str]]:
        out, self._outbox = self._outbox, []
        return out

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def get_timer(self) -> float | None:
        """The local time at which ``handle_timer`` must next be called."""
        if self._shut_down:
            return None
        times = [self._next_heartbeat]
        if self._heartbeat_copy_at is not None:
            times.append(self._heartbeat_copy_at)
        t = self.membership.next_deadline()
        if t is not None:
            times.append(t)
        t = self.election.free_at()
        if t is not None:
            # Scanning the candidates is O(N): only needed once the lease is free.
            if t <= self._last_now:
                t = self.election.claim_at(self._candidates())
            if t is not None:
                times.append(t)
        if self.election.is_publisher and self._plan is not None and self._plan.count > 0:
            t = self._scheduler.next_deadline()
            if t is not None:
                if self._last_now < self._warm_until and not self._warm():
                    t = max(t, self._warm_until)
                times.append(max(t, self._stale_until))
        return min(times)

    # ------------------------------------------------------------------ inputs

    def transport_up(self, now: float) -> None:
        """The shell's transport is open: peers' datagrams can reach us from ``now``.

        The start-up listen window (lease + grace before any claim) counts from here,
        so what a start spends before the node can hear (setting up WireGuard, the
        coordination onion) does not shorten it."""
        self.election.started_at = max(self.election.started_at, now)

    def receive_datagram(self, data: bytes, addr: str, now: float) -> None:
        """Authenticate and apply one datagram; never raises for bad input."""
        if self._shut_down:
            return
        self._notice_pause(now)
        try:
            signed, token = self._verifier.verify(
                data,
                now,
                self.node_id,
                self.challenge,
                self._pinned_key,
                self._guard,
                members_only=self.roster is not None,
            )
            if signed.sender in self.membership.removed:
                raise RejectedDatagram(
                    RejectReason.REMOVED, f"{signed.sender} was removed by the operator"
                )
            self._validate_body(signed.body)
            self._check_rights(signed, now)
        except Unverified as exc:
            self._reject(exc.reason, exc.detail, addr)
            try:
                self._note_unverified(exc.signed)
            except Exception as bug:  # bad input must never reach the shell
                self._reject(RejectReason.INTERNAL_ERROR, type(bug).__name__, addr)
            return
        except RejectedDatagram as exc:
            self._reject(exc.reason, exc.detail, addr)
            return
        except Exception as exc:  # a decoder or crypto surprise is a bad datagram
            self._reject(RejectReason.MALFORMED, type(exc).__name__, addr)
            return
        new_boot = self._guard.commit(token)
        try:
            self._handle(signed, addr, now, new_boot)
            self._after_input(now)
        except Exception as bug:  # a bug here must not take the node down
            self._reject(RejectReason.INTERNAL_ERROR, type(bug).__name__, addr)

    def _reject(self, reason: RejectReason, detail: str, addr: str) -> None:
        self.rejections[reason] += 1
        self._events.append(MessageRejected(reason, detail, addr))

    def handle_timer(self, now: float) -> None:
        if self._shut_down:
            return
        self._notice_pause(now)
        events, changed = self.membership.tick(now)
        if events or changed:
            self._events.extend(events)
            self._plan_dirty = True
        free = self.election.free_at()
        if free is not None and now >= free:
            t = self.election.claim_at(self._candidates())
            if t is not None and now >= t:
                self._claim(now)
        if now >= self._next_heartbeat:
            self._next_heartbeat = now + self.config.heartbeat_interval
            self._heartbeat_copy_at = now + self.config.heartbeat_interval / 2
            self.election.renew_own(now)
            self._broadcast(self._heartbeat_body(Heartbeat), now, include_dead=True)
        elif self._heartbeat_copy_at is not None and now >= self._heartbeat_copy_at:
            # Every heartbeat goes out twice, the second half an interval later as a
            # datagram of its own (fresh seq): one lost datagram is then never a missed
            # heartbeat, and a false death needs 2 x dead_threshold losses in a row
            # (1e-6 at 10 % independent loss, not 1e-3). Dead peers get only the first.
            self._heartbeat_copy_at = None
            self._broadcast(self._heartbeat_body(Heartbeat), now)
        self._after_input(now)

    def set_local_intro_points(self, sets: Mapping[int, Sequence[bytes]], now: float) -> None:
        """The intro points this node's tor has now, per time period; shared at once."""
        clean = check_intro_sets(sets)
        if not self._shut_down:
            self._notice_pause(now)
        digest = intro_digest(clean)
        if digest == self._local_digest:
            return
        self._local_first_seen = {
            ip: self._local_first_seen.get(ip, now) for v in clean.values() for ip in v
        }
        self._local_sets, self._local_digest = clean, digest
        self._plan_dirty = True
        if not self._shut_down:
            # Immediately, not on the next heartbeat (docs/scenarios.md §2).
            self._broadcast(self._intro_body(), now, verified_only=True)
            self._after_input(now)

    def report_foreign_descriptor(self, revision: int, intro_count: int, now: float) -> None:
        """The publisher shell found a descriptor on the HSDirs that is not ours."""
        if self._shut_down:
            return
        self._notice_pause(now)
        ours = self._plan.count if self._plan is not None else 0
        # One foreign descriptor is usually found on several HSDirs, one report each:
        # it is one conflict (one new term at most), until a lease period has passed.
        seen = self._foreign_handled.get(revision)
        if seen is not None and now - seen < self.config.lease_duration:
            return
        self._foreign_handled[revision] = now
        while len(self._foreign_handled) > _FOREIGN_REMEMBERED:
            del self._foreign_handled[next(iter(self._foreign_handled))]
        if not self.election.is_publisher:
            self._events.append(
                ConflictDetected(ConflictKind.FOREIGN_DESCRIPTOR, "hsdir", ours, intro_count,
                                 ConflictResolution.NONE)
            )
            return
        if intro_count > ours:
            # The other publisher sees more intro points: prefer it, and give it
            # two lease periods before we consider claiming again.
            self._events.append(
                ConflictDetected(ConflictKind.FOREIGN_DESCRIPTOR, "hsdir", ours, intro_count,
                                 ConflictResolution.STEP_DOWN)
            )
            self._step_down(
                now,
                StepDownCause.FOREIGN_DESCRIPTOR,
                f"foreign descriptor (revision {revision}) has more intro points",
                None,
                hold_off=2 * self.config.lease_duration,
            )
        else:
            self._events.append(
                ConflictDetected(ConflictKind.FOREIGN_DESCRIPTOR, "hsdir", ours, intro_count,
                                 ConflictResolution.KEEP)
            )
            term = self.election.bump_term(now)
            self._broadcast(LeaseClaim(term, self.identity.priority, ours), now)
            self._plan_dirty = True
            self._scheduler.request(PublishTrigger.CONFLICT, "superseding a foreign descriptor")
        self._after_input(now)

    def set_cluster_secrets(self, current: bytes, accepted: Sequence[bytes] = ()) -> None:
        """A cluster-secret rotation step: MAC with ``current``, also accept ``accepted``.

        Raises MeshConfigError for a secret that is too short (nothing changes then).
        """
        self._cluster_key.set(current, accepted)

    def add_peer(self, seed: PeerSeed, now: float) -> None:
        """A peer the operator added at runtime (config reload): greeted like a bootstrap peer."""
        if seed.node_id == self.node_id:
            return
        if seed.node_id is None:
            self._pending_addrs.add(seed.address)
        elif self.membership.add(seed.node_id, seed.address, seed.public_key) is None:
            return  # removed by the operator: stays removed
        self._broadcast(self._heartbeat_body(Join), now, include_dead=True)
        self._after_input(now)

    def remove_peer(self, node_id: str, now: float) -> None:
        """Operator removal: the peer is forgotten and stays removed (gossip cannot re-add it)."""
        self.membership.remove(node_id)
        self._guard.forget(node_id)
        self._handshake.drop(node_id)
        self._events.append(PeerRemoved(node_id))
        if self.election.publisher_id == node_id:
            self.election.on_release(node_id, self.election.term, now)
        self._plan_dirty = True
        self._after_input(now)

    def shutdown(self, now: float) -> None:
        """Leave the cluster: release the lease if we hold it."""
        if self._shut_down:
            return
        if self.election.is_publisher:
            self._step_down(now, StepDownCause.SHUTDOWN, "shutdown", None)
        self._broadcast(Leave(self.election.term), now, verified_only=True)
        self._shut_down = True

    # ------------------------------------------------------------------ internals

    def pause_threshold(self) -> float:
        """A gap between two inputs longer than this means we did not run (SIGSTOP, VM pause).

        The shell calls ``handle_timer`` at least once per heartbeat interval, so
        two intervals without any input cannot be ordinary scheduling delay.
        """
        return 2 * self.config.heartbeat_interval

    def _notice_pause(self, now: float) -> None:
        """After a pause our view is stale: listen for one heartbeat round first.

        Nothing was heard while we were stopped, so that silence declares nobody
        dead (membership resumes as if no time had passed), nobody claims and we
        do not publish before a full heartbeat round has been heard, and a
        publisher whose lease may have lapsed meanwhile steps down quietly rather
        than contesting the term a healthy node took over.
        """
        gap = now - self._last_now
        if gap <= self.pause_threshold():
            return
        self._last_now = now
        cfg = self.config
        listen = cfg.heartbeat_interval * (1 + cfg.heartbeat_slack)
        self._stale_until = now + listen
        self.membership.resume_after_pause(gap)
        term = self.term
        self._events.append(WokeFromPause(gap, self._stale_until))
        if self.election.resume_after_pause(gap, now, listen):
            self._scheduler.reset()
            self._plan = None
            self._events.append(
                SteppedDown(term, StepDownCause.PAUSED,
                            f"paused {gap:.0f} s: our lease may have lapsed", None)
            )
            # Say at once that we are standby, so no node compares our stale term.
            self._broadcast(self._heartbeat_body(Heartbeat), now, include_dead=True)
        self._plan_dirty = True


    def _learn_challenge(
        self, node_id: str, boot: int, challenge: bytes, address: str, verified: bool = False
    ) -> bool:
        if node_id in self.membership.removed:
            return False
        return self._handshake.learn(
            node_id,
            boot,
            challenge,
            address,
            verified=verified,
            is_retired=self._guard.is_retired,
        )

    def _note_unverified(self, signed: Signed) -> None:
        """An authentic message we cannot prove fresh: note its challenge for our next heartbeat."""
        rec = self.membership.peers.get(signed.sender)
        body = signed.body
        # Only the signed body's address is trusted: the source address may be spoofed.
        address = rec.address if rec is not None and rec.address else ""
        if not address and isinstance(body, Heartbeat):
            address = body.address
        if rec is None:
            # Without a roster any holder of the cluster secret can invent node ids:
            # those not (yet) in the peer table share MAX_STRANGERS entries, oldest out.
            self._strangers[signed.sender] = None
            self._strangers.move_to_end(signed.sender)
            while len(self._strangers) > MAX_STRANGERS:
                oldest, _ = self._strangers.popitem(last=False)
                self._handshake.drop(oldest)
        if self._learn_challenge(signed.sender, signed.boot, signed.challenge, address):
            # First word from a boot we have never seen: answer with one heartbeat
            # echoing its challenge, so the handshake takes one round trip rather
            # than up to a heartbeat interval. At most one reply per (node, boot),
            # and only a node holding its key can make a new boot, so a replay
            # (whose boot is known) gets nothing and this cannot be used to flood.
            entry = self._handshake.get(signed.sender)
            if entry is not None:
                self._send_to(
                    signed.sender,
                    entry.address,
                    self._heartbeat_body(Heartbeat),
                    self._last_now,
                    entry.challenge,
                )

    def _pinned_key(self, node_id: str) -> bytes | None:
        if self.roster is not None:
            return self.roster.key_of(node_id)
        rec = self.membership.peers.get(node_id)
        return None if rec is None else rec.public_key

    def _may_publish_self(self) -> bool:
        if self._claim_hold is not None:
            return False
        if self.roster is None:
            return self.identity.eligible
        return self.identity.eligible and self.roster.may_publish(self.node_id)

    def _trusted_publisher(self, node_id: str) -> bool:
        """Whether this peer's terms and publisher claims count (roster: may publish)."""
        return self.roster is None or self.roster.may_publish(node_id)

    def _bounded_term(self, node_id: str, term: int) -> int | None:
        """The term to adopt from ``node_id``'s message, or None to ignore it.

        A node that knows no term yet (just started) takes the first it hears; after
        that a term may run at most TERM_AHEAD ahead per message, so a liar cannot
        push everyone's terms far (and MAX_TERM caps them all: no overflow).
        """
        if not self._trusted_publisher(node_id):
            return None
        known = self.election.term
        ceiling = MAX_TERM if known == 0 else min(MAX_TERM, known + TERM_AHEAD)
        return min(term, ceiling)

    def _plan_bound(self, now: float) -> int:
        """The most intro points a plan can hold from what this node has verified itself."""
        per_period: Counter[int] = Counter()
        for period, points in self._local_sets.items():
            per_period[period] += len(points)
        for rec in self.membership.peers.values():
            if rec.intro_sets and self.membership.contributes(rec, now):
                for period, points in rec.intro_sets.items():
                    per_period[period] += len(points)
        return min(self.config.max_intro_points, max(per_period.values(), default=0))

    def _check_rights(self, signed: Signed, now: float) -> None:
        """What the sender's roster entry allows; raise before any state changes."""
        body = signed.body
        claims = isinstance(body, LeaseClaim) or (
            isinstance(body, Heartbeat) and body.role == "publisher"
        )
        if claims and not self._trusted_publisher(signed.sender):
            raise RejectedDatagram(RejectReason.INELIGIBLE, f"{signed.sender} may not publish")
        if isinstance(body, (PeerList, RosterUpdate)) and signed.sender in self.membership.peers:
            # Honest gossip is a few datagrams per resend interval per peer (a split
            # PeerList and roster); far more is a flood, each costing its processing.
            start, count = self._gossip_window.get(signed.sender, (now, 0))
            if now - start >= self.config.resend_interval:
                start, count = now, 0
            if count >= GOSSIP_DATAGRAMS_PER_WINDOW:
                raise RejectedDatagram(
                    RejectReason.GOSSIP_LIMIT, f"{signed.sender}: gossip beyond its share"
                )
            self._gossip_window[signed.sender] = (start, count + 1)

    @staticmethod
    def _validate_body(body: Message) -> None:
        """Checks the schema cannot express; raise before any state changes."""
        term = getattr(body, "term", None)
        if term is not None and term > MAX_TERM:
            raise RejectedDatagram(RejectReason.TERM_OVERFLOW, f"term {term} > {MAX_TERM}")
        if isinstance(body, IntroPoints) and intro_digest(body.sets) != body.digest:
            raise RejectedDatagram(
                RejectReason.MALFORMED, "intro-point digest does not match the sets"
            )
        if isinstance(body, (Heartbeat, PeerList)):
            addrs = (
                [body.address] if isinstance(body, Heartbeat) else [p.address for p in body.peers]
            )
            for a in addrs:
                if a and not _ADDRESS_RE.fullmatch(a):
                    raise RejectedDatagram(
                        RejectReason.MALFORMED, "address has unprintable characters"
                    )

    def _members(self) -> bytes:
        ids = (self.node_id, *self.membership.live_ids())
        if self.roster is not None:
            # Any roster difference shows as a digest mismatch: peers then resend.
            ids = (*ids, "roster:" + self.roster.digest().hex())
        # Keyed on its inputs, so no change of members or roster can leave it stale.
        if ids != self._members_key:
            self._members_key = ids
            self._members_digest = members_digest(ids)
        return self._members_digest

    def _candidates(self) -> list[tuple[int, str]]:
        return [
            (r.priority, r.node_id)
            for r in self.membership.peers.values()
            if r.state == ALIVE and r.eligible
        ]

    def _heartbeat_body(self, kind: type[Heartbeat]) -> Heartbeat:
        publishing = self.election.is_publisher
        plan_count = self._plan.count if publishing and self._plan is not None else 0
        return kind(
            role=Role.PUBLISHER if publishing else Role.STANDBY,
            term=self.term,
            leader=self.election.publisher_id or "",
            priority=self.identity.priority,
            eligible=self.identity.eligible and self._claim_hold is None,
            address=self.identity.address,
            intro_digest=self._local_digest,
            intro_count=sum(len(v) for v in self._local_sets.values()),
            members_digest=self._members(),
            plan_count=plan_count,
        )

    def _intro_body(self) -> IntroPoints:
        return IntroPoints(self._local_digest, {p: list(v) for p, v in self._local_sets.items()})

    def _peer_list_bodies(self) -> list[PeerList]:
        """Our view of the members, split so every PeerList fits one datagram."""
        me = PeerInfo(
            self.node_id,
            self.identity.address,
            self._sealer.public_key,
            self.boot_id,
            self.challenge,
        )
        infos = [me]
        for rec in self.membership.peers.values():
            if rec.state in (ALIVE, SUSPECT) and rec.public_key is not None and rec.address:
                hs = self._handshake.get(rec.node_id)
                boot, challenge = (hs.boot, hs.challenge) if hs else (0, bytes(16))
                infos.append(PeerInfo(rec.node_id, rec.address, rec.public_key, boot, challenge))
        bodies: list[PeerList] = []
        part: list[PeerInfo] = []
        size = 0
        for info in infos:
            n = len(encode(info))
            if part and (size + n > GOSSIP_BUDGET or len(part) >= MAX_GOSSIP_PEERS):
                bodies.append(PeerList(part))
                part, size = [], 0
            part.append(info)
            size += n
        bodies.append(PeerList(part))
        return bodies

    def _roster_bodies(
        self,
        entries: Sequence[SignedEntry] | None = None,
        revocations: Sequence[SignedRevocation] | None = None,
    ) -> list[RosterUpdate]:
        """Roster statements (all, or the given ones), split to fit the datagram limit."""
        if self.roster is None:
            return []
        if entries is None:
            entries = self.roster.signed_entries()
        if revocations is None:
            revocations = self.roster.signed_revocations()
        bodies: list[RosterUpdate] = []
        es: list[SignedEntry] = []
        rs: list[SignedRevocation] = []
        size = 0
        statements: list[SignedEntry | SignedRevocation] = [*revocations, *entries]
        for item in statements:
            n = len(item.body) + 80
            if size + n > GOSSIP_BUDGET:
                bodies.append(RosterUpdate(es, rs))
                es, rs, size = [], [], 0
            (es if isinstance(item, SignedEntry) else rs).append(item)  # type: ignore[arg-type]
            size += n
        if es or rs:
            bodies.append(RosterUpdate(es, rs))
        return bodies

    def _send_members(self, rec: PeerRecord, now: float) -> None:
        """Gossip our member view (and the roster) to one peer."""
        for body in self._peer_list_bodies():
            self._send(rec, body, now)
        for update in self._roster_bodies():
            self._send(rec, update, now)
        rec.last_peerlist_sent = now

    def _broadcast(
        self, body: Message, now: float, include_dead: bool = False, verified_only: bool = False
    ) -> None:
        """Send ``body`` to every known peer, sealed per recipient (each echoes its challenge).

        Also to nodes we only know from the handshake cache (first contact), and
        to bootstrap addresses whose node id we do not know yet.
        """
        for rec in self.membership.peers.values():
            if include_dead or rec.state != DEAD:
                echo = self._handshake.echo_for(rec.node_id)
                if echo or not verified_only:
                    self._send_to(rec.node_id, rec.address, body, now, echo)
        if verified_only:
            return
        for node_id, hs in self._handshake.items():
            if node_id not in self.membership.peers:
                self._send_to(node_id, hs.address, body, now, hs.challenge)
        for addr in sorted(self._pending_addrs):
            self._send_to("", addr, body, now, b"")

    def _send_to(self, node_id: str, address: str, body: Message, now: float, echo: bytes) -> None:
        if not address:
            return
        try:
            data = self._sealer.seal(body, now, node_id, echo)
            # Decode and check it exactly as a receiver would: never send what peers refuse.
            self._validate_body(decode_signed(decode_sealed(data).signed).body)
        except RejectedDatagram as exc:
            self.send_refused[exc.reason] += 1
            self._events.append(SendRefused(message_kind(body), exc.reason))
            return
        self._outbox.append((data, address))

    def _send(self, rec: PeerRecord, body: Message, now: float) -> None:
        self._send_to(rec.node_id, rec.address, body, now, self._handshake.echo_for(rec.node_id))

    def _send_full_state(self, rec: PeerRecord, now: float) -> None:
        """Answer a Join / new boot / recovery: our heartbeat, intro points and members."""
        last = self._last_full_state.get(rec.node_id, float("-inf"))
        if now - last < self.config.resend_interval:
            return
        self._last_full_state[rec.node_id] = now
        self._send(rec, self._heartbeat_body(Heartbeat), now)
        if self._local_sets:
            self._send(rec, self._intro_body(), now)
        self._send_members(rec, now)

    def _handle(self, signed: Signed, addr: str, now: float, new_boot: bool) -> None:
        sender, body = signed.sender, signed.body
        rec = self.membership.peers.get(sender)
        if rec is None:
            if self.roster is None and len(self.membership.peers) >= MAX_PEERS:
                self._reject(RejectReason.PEER_TABLE_FULL, sender, addr)
                return
            rec = self.membership.add(sender, addr, signed.public_key)
            if rec is None:  # removed (checked earlier; kept for type narrowing)
                return
            self._events.append(PeerDiscovered(sender, addr))
        if rec.public_key is None and self.roster is None:
            rec.public_key = signed.public_key  # pin on first contact (no roster only)
        self._strangers.pop(sender, None)
        self._learn_challenge(sender, signed.boot, signed.challenge, rec.address, verified=True)
        self._pending_addrs.discard(addr)
        self._pending_addrs.discard(rec.address)
        self._clock_samples[sender] = ClockSample(signed.ts_ms / 1000, now)
        if isinstance(body, Leave):
            self._on_leave(rec, body, now)  # a goodbye is not a sign of life
            return
        before = rec.state
        events = self.membership.heard(rec, now)
        self._events.extend(events)
        recovered = any(isinstance(e, PeerRecovered) for e in events)
        if rec.state != before:
            self._plan_dirty = True
        restarted = new_boot and rec.boot not in (0, signed.boot)
        if new_boot:
            rec.boot = signed.boot
        if isinstance(body, Heartbeat):  # Join is a Heartbeat subclass
            self._on_heartbeat(rec, body, addr, now, restarted)
            if isinstance(body, Join) or new_boot or recovered:
                self._send_full_state(rec, now)
        elif isinstance(body, IntroPoints):
            # Ignore a reordered older set of the same boot. Boot ids are not ordered;
            # the replay guard has already refused every earlier boot of this sender.
            last_boot, last_seq = self._intro_seq.get(sender, (0, 0))
            if signed.boot != last_boot or signed.seq > last_seq:
                self._intro_seq[sender] = (signed.boot, signed.seq)
                if rec.set_intro_points(body.sets, now):
                    self._plan_dirty = True
        elif isinstance(body, IntroRequest):
            self._send(rec, self._intro_body(), now)
        elif isinstance(body, LeaseClaim):
            self._on_publisher_signal(rec, body.term, body.priority, body.plan_count, now)
        elif isinstance(body, LeaseRelease):
            term = self._bounded_term(sender, body.term)
            if term is not None:
                self.election.on_release(sender, term, now, body.hold_off)
        elif isinstance(body, PeerList):
            self._on_peer_list(body, now, sender)
        elif isinstance(body, RosterUpdate):
            self._on_roster_update(sender, body, now)
        if recovered:
            self._events.append(IntroPointsRequested(sender))
            self._send(rec, IntroRequest(rec.intro_digest), now)
            rec.last_intro_request = now

    def _on_leave(self, rec: PeerRecord, body: Leave, now: float) -> None:
        """A clean shutdown: the peer stops being a candidate and its intro points go now,
        so a standby takes over after one heartbeat instead of a lease period."""
        term = self._bounded_term(rec.node_id, body.term)
        if self.election.publisher_id == rec.node_id and term is not None:
            self.election.on_release(rec.node_id, term, now)
        events = self.membership.depart(rec, now)
        if events:
            self._events.extend(events)
            self._plan_dirty = True

    def _on_heartbeat(
        self, rec: PeerRecord, hb: Heartbeat, addr: str, now: float, restarted: bool
    ) -> None:
        rec.address = hb.address or addr
        eligible = hb.eligible if self.roster is None else self.roster.may_publish(rec.node_id)
        rec.priority, rec.eligible, rec.role = hb.priority, eligible, hb.role
        term = self._bounded_term(rec.node_id, hb.term)
        rec.term, rec.plan_count = term or 0, min(hb.plan_count, self._plan_bound(now))
        rec.advertised_digest, rec.advertised_count = hb.intro_digest, hb.intro_count
        stale = (restarted and not rec.intro_synced) or hb.intro_count == 0
        # A new boot advertising other intro points, or none: what we hold is stale.
        if stale and rec.clear_intro_points():
            self._plan_dirty = True
        if hb.role is Role.PUBLISHER:
            self._on_publisher_signal(rec, hb.term, hb.priority, hb.plan_count, now)
        elif term is not None:
            self.election.on_standby(rec.node_id, term, now)
        if not rec.intro_synced and now - rec.last_intro_request >= self.config.resend_interval:
            rec.last_intro_request = now
            self._send(rec, IntroRequest(rec.intro_digest), now)
        if hb.members_digest != self._members() and (
            now - rec.last_peerlist_sent >= self.config.resend_interval
        ):
            self._send_members(rec, now)

    def _on_peer_list(self, body: PeerList, now: float, sender: str) -> None:
        for info in body.peers:
            if info.node_id == self.node_id or info.node_id in self.membership.removed:
                continue
            rec = self.membership.peers.get(info.node_id)
            if self.roster is not None:
                # Hearsay may tell us where a member is and which boot to echo, never its key.
                if rec is None or self.roster.key_of(info.node_id) != info.public_key:
                    continue
                if rec.state == UNKNOWN and not rec.address and info.address:
                    rec.address = info.address
                    self._learn_hearsay(rec, info)
                    self._send(rec, self._heartbeat_body(Join), now)
                else:
                    self._learn_hearsay(rec, info)
                continue
            if rec is None:
                if (
                    not info.address
                    or len(self.membership.peers) >= MAX_PEERS
                    or self._gossip_adds[sender] >= GOSSIP_ADDS_PER_SENDER
                ):
                    continue
                rec = self.membership.add(info.node_id, info.address, info.public_key)
                if rec is None:
                    continue
                self._gossip_adds[sender] += 1
                self._learn_challenge(info.node_id, info.boot, info.challenge, rec.address)
                self._events.append(PeerDiscovered(info.node_id, info.address))
                self._send(rec, self._heartbeat_body(Join), now)
                continue
            if rec.public_key is None:
                rec.public_key = info.public_key
            if rec.state == UNKNOWN and not rec.address:
                rec.address = info.address
            if rec.public_key == info.public_key:
                self._learn_hearsay(rec, info)

    def _learn_hearsay(self, rec: PeerRecord, info: PeerInfo) -> None:
        """A boot and challenge for ``rec`` from someone else's gossip.

        Only for a peer we do not currently hear from ourselves: for a live peer
        its own signed messages tell us its boot, and a gossiped "newer boot"
        (which nobody can check: a challenge is keyed by the node's secret) would
        make us echo a wrong challenge, so that peer would refuse our messages.
        """
        if rec.state in (ALIVE, SUSPECT):
            return
        self._learn_challenge(info.node_id, info.boot, info.challenge, rec.address)

    # ------------------------------------------------------------------ roster

    def add_roster_statements(
        self,
        entries: Sequence[SignedEntry],
        revocations: Sequence[SignedRevocation],
        now: float,
    ) -> list[str]:
        """Statements from the operator or a join (no budget); return refusal reasons.

        New ones are applied at once (a revoked node is dropped now) and gossiped.
        """
        if self.roster is None:
            return ["no_roster"] * (len(entries) + len(revocations))
        refused, _ = self._merge_statements(entries, revocations, now, budget=None)
        self._after_input(now)
        return refused

    def _on_roster_update(self, sender: str, body: RosterUpdate, now: float) -> None:
        if self.roster is None:
            return
        start, used = self._verify_budget.get(sender, (now, 0))
        if now - start >= self.config.heartbeat_interval:
            start, used = now, 0
        _, checked = self._merge_statements(
            body.entries, body.revocations, now, budget=ROSTER_VERIFY_BUDGET - used
        )
        self._verify_budget[sender] = (start, used + checked)

    def _merge_statements(
        self,
        entries: Sequence[SignedEntry],
        revocations: Sequence[SignedRevocation],
        now: float,
        budget: int | None,
    ) -> tuple[list[str], int]:
        """Verify and merge statements not yet in effect; gossip the new ones on.

        Returns the refusal reasons and how many signatures were checked
        (at most ``budget``, when given: the rest is dropped and counted).
        """
        assert self.roster is not None
        refused: list[str] = []
        new_entries: list[SignedEntry] = []
        new_revocations: list[SignedRevocation] = []
        checked = 0
        # Revocations first: an entry for a key revoked in the same message never counts.
        statements: list[SignedEntry | SignedRevocation] = [*revocations, *entries]
        for item in statements:
            if self.roster.holds(item):
                continue
            if budget is not None and checked >= budget:
                self.rejections[RejectReason.GOSSIP_LIMIT] += 1
                break
            checked += 1
            try:
                if isinstance(item, SignedRevocation):
                    self.roster.merge_revocation(item)
                    new_revocations.append(item)
                elif self.roster.merge_entry(item) is MergeResult.ADDED:
                    new_entries.append(item)
            except RosterError as exc:
                refused.append(exc.reason)
                self.rejections[
                    RejectReason.ROSTER_REVOKED
                    if exc.reason == RosterProblem.REVOKED
                    else RejectReason.ROSTER_INVALID
                ] += 1
        if new_entries or new_revocations:
            self._sync_members(now)
            for update in self._roster_bodies(new_entries, new_revocations):
                self._broadcast(update, now, verified_only=True)
        return refused, checked

    def _sync_members(self, now: float) -> None:
        """Make the peer table match the roster after it changed."""
        assert self.roster is not None
        added: list[str] = []
        removed: list[str] = []
        for node_id, rec in list(self.membership.peers.items()):
            key = self.roster.key_of(node_id)
            if key != rec.public_key:  # revoked, or re-added under a new key
                self._forget_peer(node_id, now)
                removed.append(node_id)
        for member in self.roster.members():
            if member.node_id != self.node_id and member.node_id not in self.membership.peers:
                self.membership.add(member.node_id, "", member.node_key)
                added.append(member.node_id)
        may_publish = self._may_publish_self()
        if self.election.eligible != may_publish:
            self.election.eligible = may_publish
            if not may_publish and self.election.is_publisher:
                self._step_down(now, StepDownCause.NOT_ALLOWED,
                                "this node's roster entry may no longer publish", None)
        self._plan_dirty = True
        self._events.append(
            RosterChanged(
                len(self.roster), len(self.roster.revoked_keys()), tuple(added), tuple(removed)
            )
        )

    def _forget_peer(self, node_id: str, now: float) -> None:
        """Drop every trace of a peer (its key is no longer in the roster)."""
        self.membership.peers.pop(node_id, None)
        self._guard.forget(node_id)
        self._handshake.drop(node_id)
        self._intro_seq.pop(node_id, None)
        self._last_full_state.pop(node_id, None)
        self._verify_budget.pop(node_id, None)
        self._gossip_window.pop(node_id, None)
        self._clock_samples.pop(node_id, None)
        self._events.append(PeerRemoved(node_id))
        if self.election.publisher_id == node_id:
            self.election.on_release(node_id, self.election.term, now)

    def _on_publisher_signal(
        self, rec: PeerRecord, term: int, priority: int, plan_count: int, now: float
    ) -> None:
        bounded = self._bounded_term(rec.node_id, term)
        if bounded is None:
            return
        term = bounded
        plan_count = min(plan_count, self._plan_bound(now))
        was_publisher = self.election.is_publisher
        if was_publisher:
            self._refresh_plan(now)
        own = self._plan.count if self._plan is not None else 0
        outcome = self.election.on_publisher(rec.node_id, term, priority, plan_count, own, now)
        if outcome is None:
            return
        seen_key = (rec.node_id, term)
        if outcome is ElectionOutcome.STEP_DOWN:
            self._events.append(
                ConflictDetected(ConflictKind.TWO_PUBLISHERS, rec.node_id, own, plan_count,
                                 ConflictResolution.STEP_DOWN)
            )
            old_term = self.term if self._plan is None else self._plan.term
            self._scheduler.reset()
            self._plan = None
            self._events.append(
                SteppedDown(old_term, StepDownCause.LOST_CONFLICT,
                            f"{rec.node_id} wins the publisher conflict", rec.node_id)
            )
            # Tell everyone at once that we are standby now (no release: the winner
            # holds a valid lease and standbys must not start an election).
            self._broadcast(self._heartbeat_body(Heartbeat), now, include_dead=False)
        elif seen_key not in self._conflicts_seen:
            if len(self._conflicts_seen) >= 256:
                self._conflicts_seen.clear()  # only dedupes log lines: bounded, not exact
            self._conflicts_seen.add(seen_key)
            self._events.append(
                ConflictDetected(ConflictKind.TWO_PUBLISHERS, rec.node_id, own, plan_count,
                                 ConflictResolution.KEEP)
            )
            # Make sure the loser hears us now rather than at our next heartbeat.
            self._send(rec, self._heartbeat_body(Heartbeat), now)

    def _claim(self, now: float) -> None:
        leader = self.election.leader
        if leader is not None:
            cause, reason = TakeoverCause.LEASE_EXPIRED, f"lease of {leader.node_id} expired"
        elif self.election.released_at is not None:
            cause, reason = TakeoverCause.LEASE_RELEASED, "previous publisher released the lease"
        else:
            cause, reason = TakeoverCause.NO_PUBLISHER, "no publisher heard"
        # "was N" in the first publish log line refers to the old publisher's plan.
        self._published_count = leader.plan_count if leader is not None else 0
        term = self.election.claim(now)
        self._events.append(BecamePublisher(term, cause, reason))
        self._plan = None
        self._plan_dirty = True
        self._warm_until = now + self.config.heartbeat_interval
        self._scheduler.request(PublishTrigger.TAKEOVER, reason)
        self._refresh_plan(now)
        count = self._plan.count if self._plan is not None else 0
        self._broadcast(LeaseClaim(term, self.identity.priority, count), now)

    def _step_down(
        self, now: float, cause: StepDownCause, reason: str, new_publisher: str | None,
        hold_off: float = 0.0,
    ) -> None:
        term = self.term
        self.election.step_down(now, hold_off)
        self._scheduler.reset()
        self._plan = None
        self._events.append(SteppedDown(term, cause, reason, new_publisher))
        self._broadcast(LeaseRelease(term, min(3600, round(hold_off))), now)

    def _warm(self) -> bool:
        """A new publisher waits (at most one heartbeat) until it holds every live peer's set."""
        for rec in self.membership.peers.values():
            if rec.state in (ALIVE, SUSPECT) and not rec.intro_synced:
                return False
        return True

    def _refresh_plan(self, now: float) -> None:
        if not self._plan_dirty and self._plan is not None:
            return
        self._plan_dirty = False
        contributions = [Contribution(self.node_id, self._local_sets, self._local_first_seen)]
        for rec in self.membership.peers.values():
            if rec.intro_sets and self.membership.contributes(rec, now):
                contributions.append(
                    Contribution(rec.node_id, rec.intro_sets, rec.intro_first_seen)
                )
        selected = select_intro_points(contributions, self.config.max_intro_points)
        offered = select_offered(contributions, self.config.max_intro_points)
        term = self.term
        if (
            self._plan is not None
            and self._plan.intro_points == selected
            and self._plan.offered == offered
            and (self._plan.term == term)
        ):
            return
        self._generation += 1
        old = self._plan
        self._plan = PublishPlan(term, self._generation, selected, self._published_count,
                                 offered)
        self._scheduler.request(*_change_reason(old, self._plan))

    def _after_input(self, now: float) -> None:
        """Plan bookkeeping and publishing after any input (publisher only)."""
        self._last_now = max(self._last_now, now)
        if not self.election.is_publisher or self._shut_down:
            return
        self._refresh_plan(now)
        plan = self._plan
        if plan is None or plan.count == 0:
            return
        if now < self._stale_until:
            return  # woke from a pause: our view is not trusted yet
        if now < self._warm_until and not self._warm():
            return
        due = self._scheduler.due(now)
        if due is None:
            return
        plan = replace(plan, previous_count=self._published_count)
        self._plan = plan
        self._scheduler.published(now)
        self._published_count = plan.count
        self._events.append(PublishRequested(plan, *due))
