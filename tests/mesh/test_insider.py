"""Insider attacks against real cores (docs/security.md): a captured standby holds its node key
and the cluster secret and sends whatever it likes. After each attack the cluster is
undisturbed: same publisher, same intro points, nobody dead.

The stolen standby is a real ``MeshCore`` in the network (so it is a live member
with its own intro points); the attacker additionally seals its own messages with
that core's key, boot and the handshake challenges it has learnt, exactly what
someone holding the node's disk and memory can do.
"""

from __future__ import annotations

import pytest

from onionmesh.mesh.codec import decode_sealed, decode_signed
from onionmesh.mesh.config import MeshConfig
from onionmesh.mesh.core import TERM_AHEAD, MeshCore
from onionmesh.mesh.events import ConflictDetected, RosterChanged
from onionmesh.mesh.identity import PeerSeed
from onionmesh.mesh.intro import intro_digest
from onionmesh.mesh.messages import (
    MAX_TERM,
    Heartbeat,
    IntroPoints,
    LeaseClaim,
    LeaseRelease,
    Message,
    PeerInfo,
    PeerList,
    RosterUpdate,
)
from onionmesh.mesh.roster import MemberEntry, Revocation

from .netloop import AUTHORITY, SECRET, Net, identity
from .thief import Thief

CFG = MeshConfig()
HONEST = ("a", "b")
U32_MAX = 2**32 - 1


def cluster(roster: bool = True, thief_may_publish: bool = False) -> Net:
    """a (publisher), b (standby, may publish) and c (the stolen standby)."""
    net = Net(CFG, roster=roster, delay=0.01)
    net.add(identity("a", 200))
    net.add(identity("b", 100))
    net.add(identity("c", 50, eligible=thief_may_publish))
    for n in "abc":
        net.cores[n].set_local_intro_points(
            {1: [f"{n}-{i}".encode() for i in range(3)]}, net.local(n)
        )
        net.flush(n)
    net.run_until(40)
    assert net.publishers() == ["a"]
    return net


def seal(net: Net, thief: str, dst: str, body: Message) -> bytes:
    return Thief(net, thief).seal(body, dst)


def attack(net: Net, body: Message, thief: str = "c", targets=HONEST) -> None:
    for dst in targets:
        net.inject(dst, seal(net, thief, dst, body), f"{thief}:7000")


def snapshot(net: Net) -> tuple:
    plan = net.cores["a"].publish_plan()
    assert plan is not None
    return plan.term, {p: frozenset(v) for p, v in plan.intro_points.items()}


def assert_undisturbed(net: Net, before: tuple, check_plan: bool = True) -> None:
    assert net.publishers() == ["a"]
    for n, core in net.cores.items():
        assert core.publisher_id == "a", n
        for peer, view in core.peers().items():
            if peer in HONEST:
                assert view.state == "alive", (n, peer, view.state)
    if check_plan:
        assert snapshot(net) == before


def heartbeat(role: str = "standby", term: int = 1, plan_count: int = 0, **kw) -> Heartbeat:
    fields = dict(
        role=role, term=term, leader="", priority=2**31 - 1, eligible=True,
        address="c:7000", intro_digest=intro_digest({1: [b"c-0", b"c-1", b"c-2"]}),
        intro_count=3, members_digest=bytes(16), plan_count=plan_count,
    )
    fields.update(kw)
    return Heartbeat(**fields)


# -- the two worst: term overflow and an ineligible claim ----------------------------


@pytest.mark.parametrize("roster", [True, False], ids=["roster", "legacy"])
def test_term_overflow_is_refused(roster: bool) -> None:
    net = cluster(roster, thief_may_publish=True)  # even a member that may publish
    before = snapshot(net)
    for body in (
        LeaseClaim(2**63 - 1, 2**31 - 1, 0),
        heartbeat("publisher", 2**63 - 1),
        heartbeat("standby", 2**63 - 1),
        LeaseRelease(2**63 - 1, 0),
    ):
        attack(net, body)
        net.run_until(net.now + 1)
    for n in HONEST:
        assert net.cores[n].rejections["term_overflow"] >= 4
    net.run_until(net.now + 3 * CFG.heartbeat_interval)
    assert_undisturbed(net, before)
    assert all(core.term < 10 for core in net.cores.values())
    # The largest term the schema allows but a core never adopts beyond its bound:
    attack(net, heartbeat("standby", MAX_TERM))
    net.run_until(net.now + 3 * CFG.heartbeat_interval)
    assert all(core.term <= before[0] + TERM_AHEAD for core in net.cores.values())
    # A failover afterwards still works and its term fits the wire.
    net.kill("a")
    net.run_until(net.now + 60)
    assert net.publishers() == ["b"]
    assert net.cores["b"].term <= MAX_TERM


def test_term_saturates_instead_of_overflowing() -> None:
    """Even a node that has adopted MAX_TERM (first term heard) claims within the schema."""
    net = Net(CFG, roster=True, delay=0.01)
    net.add(identity("a", 200))
    core = net.cores["a"]
    core.election.observe_term(MAX_TERM)
    net.run_until(40)
    assert net.publishers() == ["a"] and core.term == MAX_TERM
    assert core.send_refused == {}


def test_ineligible_claim_is_refused() -> None:
    net = cluster(roster=True, thief_may_publish=False)
    before = snapshot(net)
    term = net.cores["a"].term
    for body in (
        LeaseClaim(term + 1, 2**31 - 1, U32_MAX),
        heartbeat("publisher", term + 1, U32_MAX),
        LeaseRelease(term, 0),  # "a released": only a itself could say so
    ):
        for _ in range(3):
            attack(net, body)
            net.run_until(net.now + CFG.heartbeat_interval)
    for n in HONEST:
        assert net.cores[n].rejections["ineligible"] >= 6
    net.run_until(net.now + 4 * CFG.lease_duration)
    assert_undisturbed(net, before)
    # c's own heartbeats kept it a live member meanwhile.
    assert net.cores["a"].peers()["c"].state == "alive"


def test_inflated_plan_count_of_a_publishing_member_is_capped() -> None:
    """A member that may publish wins a conflict only on counts the receiver verified."""
    net = cluster(roster=True, thief_may_publish=True)
    a = net.cores["a"]
    # Same term, lower priority: only the count could make c win the conflict.
    attack(net, heartbeat("publisher", a.term, U32_MAX, priority=0), targets=("a",))
    net.run_until(net.now + 0.5)
    assert net.publishers() == ["a"]
    assert all(e.their_intro_count <= 9 for e in net.of("a", ConflictDetected))
    # (A member that may publish holds the master key: it could publish on its own,
    # so a higher priority or term from it is within its role, not an attack.)


# -- trust on first use is gone ------------------------------------------------------


def test_no_key_from_gossip_or_first_contact() -> None:
    net = cluster()
    before = snapshot(net)
    thief_key = identity("c").public_key
    # Gossip fake keys for a member (b) and for a node that will join later (d).
    fake = [
        PeerInfo("b", "c:7000", thief_key, 99, bytes(16)),
        PeerInfo("d", "c:7000", thief_key, 99, bytes(16)),
    ]
    attack(net, PeerList(fake))
    # Squat the next joiner's id: sign as "d" with the thief's key.
    thief = Thief(net, "c")
    for dst in HONEST:
        net.inject(dst, thief.seal(heartbeat(), dst, as_id="d"), "c:7000")
    net.run_until(net.now + 2 * CFG.heartbeat_interval)
    for n in HONEST:
        assert "d" not in net.cores[n].peers()
        assert net.cores[n].rejections["not_member"] >= 1
    assert_undisturbed(net, before)
    # The real d joins (the authority admits it) and is accepted everywhere.
    net.add(identity("d", 10))
    net.run_until(net.now + 3 * CFG.heartbeat_interval)
    for n in ("a", "b", "c"):
        assert net.cores[n].peers()["d"].state == "alive"
    # After a restart, b cannot be impersonated either (its key comes from the roster).
    net.restart("a")
    net.run_until(net.now + 1)
    net.inject("a", Thief(net, "c").seal(heartbeat(), "a", as_id="b"), "c:7000")
    net.run_until(net.now + 1)
    assert net.cores["a"].rejections["forged"] >= 1


# -- removal -------------------------------------------------------------------------


def test_revoked_node_is_refused_within_one_heartbeat_and_after_restarts() -> None:
    net = cluster()
    revocation = AUTHORITY.sign_revocation(Revocation("c", identity("c").public_key, 100))
    assert net.roster is not None
    net.roster.merge_revocation(revocation)
    # The operator's remove-node reaches one node (b); gossip does the rest.
    t0 = net.now
    net.cores["b"].add_roster_statements([], [revocation], net.local("b"))
    net.flush("b")
    net.run_until(t0 + CFG.heartbeat_interval)
    for n in HONEST:
        core = net.cores[n]
        assert "c" not in core.peers()
        assert core.roster is not None and core.roster.is_revoked(identity("c").public_key)
        assert any(isinstance(e, RosterChanged) for e in net.events[n])
    plan = net.cores["a"].publish_plan()
    assert plan is not None and all(node != "c" for v in plan.intro_points.values()
                                    for node, _ in v)
    # c keeps talking: refused. It comes back under a new id with its old key: refused.
    attack(net, heartbeat())
    net.run_until(net.now + 1)
    assert all(net.cores[n].rejections["not_member"] >= 1 for n in HONEST)
    # A restart of a (from the persisted roster) keeps refusing c.
    net.kill("c")
    net.restart("a")
    net.run_until(net.now + CFG.heartbeat_interval)
    assert "c" not in net.cores["a"].peers()
    # The node comes back under a new id with its old key: no entry, refused.
    c2 = identity("c")
    net.identities["c"] = c2
    rogue = MeshCore(CFG, identity("c2"), SECRET, [PeerSeed("a", "a:7000")], net.local("a"))
    for data, addr in rogue.datagrams_to_send(net.local("a")):
        net.inject(addr.split(":")[0], data, "c2:7000")
    net.run_until(net.now + 1)
    assert "c2" not in net.cores["a"].peers()
    # And a signed entry for the revoked key is refused even if replayed in gossip.
    old_entry = AUTHORITY.sign_entry(MemberEntry("c", identity("c").public_key, False, 1))
    attack_body = RosterUpdate([old_entry], [])
    net.inject("a", Thief(net, "b").seal(attack_body, "a"), "b:7000")
    net.run_until(net.now + 1)
    assert "c" not in net.cores["a"].peers()
    assert net.cores["a"].rejections["roster_revoked"] >= 1


# -- bounded state -------------------------------------------------------------------


def _fake_peers(n: int, tag: str, long_address: bool = False) -> list[PeerInfo]:
    addr = ("x" * 250) if long_address else "10.0.0.1:7000"
    return [
        PeerInfo(f"{tag}{i}", f"{addr}{i % 10}"[:255], bytes([i % 256]) * 32, 5, bytes(16))
        for i in range(n)
    ]


@pytest.mark.parametrize("roster", [True, False], ids=["roster", "legacy"])
def test_peer_list_flood_is_bounded(roster: bool) -> None:
    net = cluster(roster)
    before = snapshot(net)
    for k in range(40):
        attack(net, PeerList(_fake_peers(100, f"f{k}-")))
        net.run_until(net.now + 0.2)
    net.run_until(net.now + 2 * CFG.heartbeat_interval)
    for n in HONEST:
        peers = net.cores[n].peers()
        if roster:
            assert set(peers) <= {"a", "b", "c"}
        else:
            assert len(peers) <= 2 + 64  # the flooder's share: GOSSIP_ADDS_PER_SENDER
        assert len(net.cores[n].known_challenges()) <= len(peers) + 64
    assert_undisturbed(net, before)
    # A new member still gets in (the handshake cache was not filled by hearsay).
    net.add(identity("d", 10))
    net.run_until(net.now + 3 * CFG.heartbeat_interval)
    assert net.cores["a"].peers()["d"].state == "alive"


def test_own_oversized_peer_list_is_split_not_raised() -> None:
    """Legacy: a table of 500 peers with 255-byte addresses is 190 KB of PeerInfo."""
    net = cluster(roster=False)
    a = net.cores["a"]
    for i, info in enumerate(_fake_peers(500, "p", long_address=True)):
        a.membership.add(info.node_id, info.address, info.public_key).state = "alive"
        assert i < 500
    # b's heartbeat digest differs: a answers with its PeerLists.
    net.run_until(net.now + 2 * CFG.heartbeat_interval)
    sent = [d for t, src, dst, d in net.sent if src == "a"]
    assert all(len(d) <= 60_000 for d in sent)
    peer_lists = [
        body for d in sent
        if isinstance(body := decode_signed(decode_sealed(d).signed).body, PeerList)
    ]
    assert len(peer_lists) >= 4 and max(len(p.peers) for p in peer_lists) < 500
    assert a.send_refused == {}
    assert net.cores["b"].rejections["oversized"] == 0


def test_fake_ids_cannot_take_intro_point_slots() -> None:
    net = cluster()
    before = snapshot(net)
    # A PeerList naming 20 fake nodes, then IntroPoints "from" them: nobody accepts.
    attack(net, PeerList(_fake_peers(20, "ghost")))
    thief = Thief(net, "c")
    for i in range(20):
        sets = {1: [f"ghost{i}-ip".encode()]}
        body = IntroPoints(intro_digest(sets), sets)
        for dst in HONEST:
            net.inject(dst, thief.seal(body, dst, as_id=f"ghost{i}", echo=b""), "c:7000")
    # c's own slots: however many intro points it sends, the plan shares fairly.
    many = {1: [f"c-x{i}".encode() for i in range(20)]}
    attack(net, IntroPoints(intro_digest(many), many))
    net.run_until(net.now + 2 * CFG.heartbeat_interval)
    plan = net.cores["a"].publish_plan()
    assert plan is not None
    nodes = [n for v in plan.intro_points.values() for n, _ in v]
    assert set(nodes) <= {"a", "b", "c"} and nodes.count("a") == 3 and nodes.count("b") == 3
    assert_undisturbed(net, before, check_plan=False)


def test_receive_datagram_never_raises() -> None:
    net = cluster()
    a = net.cores["a"]
    bodies: list[Message] = [
        PeerList(_fake_peers(512, "z", long_address=True)),
        RosterUpdate([], []),
        IntroPoints(bytes(16), {1: [b"x"]}),  # digest mismatch
        heartbeat(address="bad address"),
    ]
    for body in bodies:
        try:
            data = seal(net, "c", "a", body)
        except Exception:
            continue  # the sealer refuses oversized datagrams: nothing to inject
        a.receive_datagram(data, "c:7000", net.local("a"))
    for data in (b"", b"\x94", b"\x94" + b"\x00" * 10, bytes(60_001)):
        a.receive_datagram(data, "c:7000", net.local("a"))
    assert a.rejections["internal_error"] == 0


def test_gossiped_boots_cannot_poison_the_handshake() -> None:
    """Hearsay of a 'new boot' for a live member would make its peers echo a wrong
    challenge, so the member refuses their messages and sees them die. Found by the
    stateful test; gossip now only updates members we do not hear ourselves."""
    net = cluster()
    before = snapshot(net)
    b_key = identity("b").public_key
    for k in range(8 * int(CFG.heartbeat_interval)):
        attack(net, PeerList([PeerInfo("b", "b:7000", b_key, 1000 + k, bytes([k % 256]) * 16)]),
               targets=("a",))
        net.run_until(net.now + 1)
    assert net.cores["b"].rejections["unverified"] <= 1
    assert_undisturbed(net, before)


def test_invented_ids_cannot_fill_the_handshake_cache_without_a_roster() -> None:
    """Legacy: anyone with the cluster secret can sign as new ids; they share a small
    pool of handshake entries, so a real joiner still gets its handshake."""
    net = cluster(roster=False)
    a = net.cores["a"]
    for i in range(300):
        ghost = MeshCore(CFG, identity(f"ghost{i}"), SECRET, [PeerSeed("a", "a:7000")],
                         net.local("a"))
        for data, addr in ghost.datagrams_to_send(net.local("a")):
            if addr.startswith("a:"):
                a.receive_datagram(data, f"ghost{i}:7000", net.local("a"))
    assert len(a.known_challenges()) <= 3 + 64
    net.add(identity("d", 10))
    net.run_until(net.now + 3 * CFG.heartbeat_interval)
    assert a.peers()["d"].state == "alive"


def test_gossip_flood_is_limited_per_sender() -> None:
    net = cluster()
    before = snapshot(net)
    body = PeerList(_fake_peers(100, "g"))
    datagrams = [seal(net, "c", "a", body) for _ in range(300)]
    for data in datagrams:
        net.inject("a", data, "c:7000")
    net.run_until(net.now + 0.5)
    assert net.cores["a"].rejections["gossip_limit"] >= 300 - 64
    net.run_until(net.now + 2 * CFG.heartbeat_interval)
    assert_undisturbed(net, before)
    # The limit is per sender and per window: b's and c's own gossip still flows.
    assert net.cores["a"].peers()["c"].state == "alive"
