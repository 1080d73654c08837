"""Hypothesis drives sequences of insider messages from a member that may not publish.

The stolen standby ``c`` (its node key, boot, handshake challenges and the cluster
secret) sends any mix of heartbeats, claims, releases, gossip, intro points, roster
updates and replays of honest traffic, to either honest node, with time passing in
between. After every step: ``a`` still publishes and everyone follows it, ``a`` and
``b`` see each other alive, no term moved, ``a``'s plan still carries ``a``'s and
``b``'s intro points, and no input ever raised inside a core.
"""

from __future__ import annotations

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from onionmesh.mesh.intro import intro_digest
from onionmesh.mesh.messages import (
    Heartbeat,
    IntroPoints,
    IntroRequest,
    Join,
    LeaseClaim,
    LeaseRelease,
    Message,
    PeerInfo,
    PeerList,
    RosterUpdate,
)
from onionmesh.mesh.roster import AuthorityKey, MemberEntry

from .netloop import AUTHORITY, Net
from .test_insider import CFG, HONEST, cluster, identity
from .thief import Thief

U63 = st.integers(0, 2**63 - 1)
U32 = st.integers(0, 2**32 - 1)
SMALL_TERM = st.integers(0, 40)
TERMS = st.one_of(SMALL_TERM, U63)
NODE_IDS = st.sampled_from(["a", "b", "c", "d", "ghost", "x" * 64])
KEYS = st.one_of(
    st.sampled_from([identity(n).public_key for n in "abc"]), st.binary(min_size=32, max_size=32)
)
ADDRESSES = st.sampled_from(["c:7000", "a:7000", "evil:1", "", "x" * 255])
FAKE_AUTHORITY = AuthorityKey(b"\x66" * 32)


@st.composite
def heartbeats(draw: st.DrawFn) -> Heartbeat:
    kind = draw(st.sampled_from([Heartbeat, Join]))
    return kind(
        role=draw(st.sampled_from(["publisher", "standby"])),
        term=draw(TERMS),
        leader=draw(st.sampled_from(["", "a", "b", "c"])),
        priority=draw(st.integers(0, 2**31 - 1)),
        eligible=draw(st.booleans()),
        address=draw(st.sampled_from(["c:7000", "b:7000", ""])),
        intro_digest=draw(st.binary(min_size=16, max_size=16)),
        intro_count=draw(st.integers(0, 100)),
        members_digest=draw(st.binary(min_size=16, max_size=16)),
        plan_count=draw(U32),
    )


@st.composite
def peer_lists(draw: st.DrawFn) -> PeerList:
    infos = draw(st.lists(st.builds(
        PeerInfo, NODE_IDS, ADDRESSES, KEYS, U63, st.binary(min_size=16, max_size=16)
    ), max_size=30))
    return PeerList(infos)


@st.composite
def intro_points(draw: st.DrawFn) -> IntroPoints:
    sets = draw(st.dictionaries(
        st.integers(0, 2**32 - 1),
        st.lists(st.binary(min_size=1, max_size=40), max_size=20),
        max_size=4,
    ))
    digest = intro_digest(sets) if draw(st.booleans()) else draw(st.binary(min_size=16,
                                                                            max_size=16))
    return IntroPoints(digest, sets)


@st.composite
def roster_updates(draw: st.DrawFn) -> RosterUpdate:
    entries = []
    for node_id in draw(st.lists(NODE_IDS, max_size=4)):
        # c promoting itself, or anyone, under a key that is not the authority's;
        # or a genuine old statement replayed.
        signer = draw(st.sampled_from([FAKE_AUTHORITY, AUTHORITY]))
        may_publish = draw(st.booleans())
        if signer is AUTHORITY:
            # The thief only has genuine statements it has seen: its own, as issued.
            entries.append(AUTHORITY.sign_entry(MemberEntry("c", identity("c").public_key,
                                                            False, 1)))
        else:
            entries.append(signer.sign_entry(MemberEntry(
                node_id, draw(KEYS), may_publish, draw(st.integers(0, 2**40)))))
    return RosterUpdate(entries, [])


BODIES = st.one_of(
    heartbeats(),
    st.builds(LeaseClaim, TERMS, st.integers(0, 2**31 - 1), U32),
    st.builds(LeaseRelease, TERMS, st.integers(0, 3600)),
    st.builds(IntroRequest, st.binary(min_size=16, max_size=16)),
    peer_lists(),
    intro_points(),
    roster_updates(),
)


@settings(max_examples=25, stateful_step_count=12, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
class InsiderWithoutPublishRights(RuleBasedStateMachine):
    net: Net

    @initialize()
    def start(self) -> None:
        self.net = cluster(roster=True, thief_may_publish=False)
        self.term = self.net.cores["a"].term
        plan = self.net.cores["a"].publish_plan()
        assert plan is not None
        self.honest_ips = {
            (n, ip) for v in plan.intro_points.values() for n, ip in v if n in HONEST
        }

    def _inject(self, dst: str, body: Message, echo: bool) -> None:
        try:
            data = Thief(self.net, "c").seal(body, dst, echo=None if echo else b"")
        except Exception:
            return  # the thief's own sealer refuses (oversized): nothing sent
        self.net.inject(dst, data, "c:7000")

    @rule(body=BODIES, dst=st.sampled_from(HONEST), echo=st.booleans())
    def send(self, body: Message, dst: str, echo: bool) -> None:
        self._inject(dst, body, echo)
        self.net.run_until(self.net.now + 0.05)

    @rule(index=st.integers(0, 10_000), dst=st.sampled_from(HONEST))
    def replay(self, index: int, dst: str) -> None:
        sent = [d for _, src, _, d in self.net.sent if src in HONEST]
        if sent:
            self.net.inject(dst, sent[index % len(sent)], "c:7000")
            self.net.run_until(self.net.now + 0.05)

    @rule(dt=st.floats(0.1, 2 * CFG.heartbeat_interval))
    def wait(self, dt: float) -> None:
        self.net.run_until(self.net.now + dt)

    @invariant()
    def undisturbed(self) -> None:
        net = self.net
        assert net.publishers() == ["a"]
        for n in HONEST:
            core = net.cores[n]
            assert core.publisher_id == "a"
            assert core.term == self.term
            assert core.rejections["internal_error"] == 0
            other = "b" if n == "a" else "a"
            assert core.peers()[other].state == "alive"
            assert set(core.peers()) <= {"a", "b", "c"}
        plan = net.cores["a"].publish_plan()
        assert plan is not None
        ips = {(n, ip) for v in plan.intro_points.values() for n, ip in v}
        assert self.honest_ips <= ips


TestInsiderWithoutPublishRights = InsiderWithoutPublishRights.TestCase
