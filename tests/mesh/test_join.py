"""The sans-IO join exchange: proofs, single use, expiry, refusals that reveal nothing."""

from __future__ import annotations

import hashlib
from dataclasses import replace

import msgspec
import pytest
from nacl.signing import SigningKey

from onionmesh.mesh import join as J
from onionmesh.mesh.join import Joiner, JoinError, JoinSponsor, TokenGrant
from onionmesh.mesh.roster import AuthorityKey, MemberEntry, Revocation, Roster

AUTH = AuthorityKey(b"\x07" * 32)
SECRET = b"cluster-secret-0123456789abcdef!"
NOW = 1_800_000_000.0


def seed(name: str) -> bytes:
    return hashlib.sha256(name.encode()).digest()


def pub(name: str) -> bytes:
    return bytes(SigningKey(seed(name)).verify_key)


def base_roster(extra: int = 0) -> Roster:
    roster = Roster(AUTH.public_key)
    roster.merge_entry(AUTH.sign_entry(MemberEntry("a", pub("a"), True, 1)))
    for i in range(extra):
        roster.merge_revocation(AUTH.sign_revocation(Revocation(f"r{i}", pub(f"r{i}"), 1)))
    return roster


class Tokens:
    """The sponsor's token bookkeeping, as i9b's shell keeps it (here in memory)."""

    def __init__(self) -> None:
        self.grants: dict[bytes, TokenGrant] = {}

    def issue(self, name: str, **kw) -> bytes:
        grant = TokenGrant(pub(name), kw.pop("expires_at", NOW + 3600), kw.pop("may_publish",
                                                                             False), **kw)
        self.grants[grant.join_key] = grant
        return seed(name)

    def apply(self, decision: J.JoinDecision) -> None:
        if decision.accepted is not None:
            g = self.grants[decision.join_key]
            self.grants[decision.join_key] = replace(g, used_by=decision.request_digest)


def joiner(join_seed: bytes, node: str = "n", **kw) -> Joiner:
    return Joiner(join_seed, AUTH.public_key, node, seed(node), kw.pop("now", NOW),
                  entropy=seed("entropy" + node).ljust(64, b"x"), **kw)


def run(sponsor: JoinSponsor, tokens: Tokens, j: Joiner, now: float = NOW):
    decision = sponsor.handle(j.request(), now, tokens.grants.get, b"\x09" * 32)
    tokens.apply(decision)
    result = None
    for d in decision.replies:
        try:
            result = j.receive(d, now)
        except JoinError:
            return decision, None
    return decision, result


def test_happy_path() -> None:
    tokens, sponsor = Tokens(), JoinSponsor(AUTH, base_roster(), SECRET)
    j = joiner(tokens.issue("t1", may_publish=True))
    decision, result = run(sponsor, tokens, j)
    assert result is not None and decision.refused is None
    assert result.cluster_secret == SECRET
    assert result.entry.node_id == "n" and result.entry.node_key == pub("n")
    assert result.entry.may_publish
    assert result.roster.key_of("a") == pub("a") and result.roster.key_of("n") == pub("n")
    assert SECRET not in b"".join(decision.replies)  # the secret only travels boxed


def test_token_is_single_use_and_resend_is_idempotent() -> None:
    tokens, sponsor = Tokens(), JoinSponsor(AUTH, base_roster(), SECRET)
    t = tokens.issue("t1")
    j = joiner(t)
    decision, _ = run(sponsor, tokens, j)
    sponsor.roster.merge_entry(decision.accepted)
    # The answer was lost: the same request is answered again, with the same entry.
    j2 = joiner(t)
    assert j2.request() == j.request()
    again, result = run(sponsor, tokens, j2)
    assert result is not None and again.accepted == decision.accepted
    # A different request (another node) with the used token: refused.
    refused, _ = run(sponsor, tokens, joiner(t, "m"))
    assert refused.refused == "used_token" and refused.accepted is None


@pytest.mark.parametrize("case", ["expired", "unknown", "used", "wrong_id"])
def test_refusals_look_the_same(case: str) -> None:
    tokens, sponsor = Tokens(), JoinSponsor(AUTH, base_roster(), SECRET)
    t = tokens.issue("t1", node_id="n")
    if case == "expired":
        tokens.grants[pub("t1")] = replace(tokens.grants[pub("t1")], expires_at=NOW - 1)
    elif case == "unknown":
        t = seed("never-issued")
    elif case == "used":
        tokens.grants[pub("t1")] = replace(tokens.grants[pub("t1")], used_by=b"\x00" * 32)
    j = joiner(t, "other" if case == "wrong_id" else "n")
    decision = sponsor.handle(j.request(), NOW, tokens.grants.get, b"\x09" * 32)
    assert decision.accepted is None and decision.refused
    assert decision.replies == [J.encode_message(J.JoinRefused())]
    with pytest.raises(JoinError) as exc:
        j.receive(decision.replies[0], NOW)
    assert exc.value.reason == "refused"


def test_proofs_required() -> None:
    tokens, sponsor = Tokens(), JoinSponsor(AUTH, base_roster(), SECRET)
    t = tokens.issue("t1")
    req = J.decode_message(joiner(t).request())
    assert isinstance(req, J.JoinRequest)
    other = SigningKey(seed("thief"))
    sub = msgspec.structs.replace

    def sig(key: SigningKey, context: bytes) -> bytes:
        return key.sign(context + req.body).signature

    for forged in (
        sub(req, token_signature=sig(other, J.TOKEN_CONTEXT)),
        sub(req, node_signature=sig(other, J.NODE_CONTEXT)),
        # The token proof is not a node proof (domain separation).
        sub(req, node_signature=sig(SigningKey(t), J.NODE_CONTEXT)),
    ):
        d = sponsor.handle(J.encode_message(forged), NOW, tokens.grants.get, b"\x09" * 32)
        assert d.accepted is None and d.refused in ("bad_token_proof", "bad_node_proof")
    stale = joiner(t, now=NOW - 600)
    d = sponsor.handle(stale.request(), NOW, tokens.grants.get, b"\x09" * 32)
    assert d.refused == "stale_request"


def test_taken_id_and_revoked_key_refused() -> None:
    tokens = Tokens()
    roster = base_roster()
    roster.merge_revocation(AUTH.sign_revocation(Revocation("n", pub("n"), 5)))
    sponsor = JoinSponsor(AUTH, roster, SECRET)
    d, _ = run(sponsor, tokens, joiner(tokens.issue("t1"), "n"))
    assert d.refused == "revoked_key"
    d, _ = run(sponsor, tokens, Joiner(tokens.issue("t2"), AUTH.public_key, "a", seed("x"),
                                        NOW, entropy=b"e" * 64))
    assert d.refused == "node_id_taken"


def test_joiner_trusts_only_the_authority() -> None:
    """A sponsor without the authority key (a captured standby) cannot answer a join."""
    tokens = Tokens()
    fake_auth = AuthorityKey(b"\x08" * 32)
    fake_roster = Roster(fake_auth.public_key)
    impostor = JoinSponsor(fake_auth, fake_roster, b"attacker-secret-0123456789")
    j = joiner(tokens.issue("t1"))
    d = impostor.handle(j.request(), NOW, tokens.grants.get, b"\x09" * 32)
    assert d.accepted is not None
    assert all(j.receive(x, NOW) is None for x in d.replies)
    assert j.result is None


def test_big_roster_is_chunked_under_the_datagram_limit() -> None:
    tokens, sponsor = Tokens(), JoinSponsor(AUTH, base_roster(extra=1500), SECRET)
    j = joiner(tokens.issue("t1"))
    decision = sponsor.handle(j.request(), NOW, tokens.grants.get, b"\x09" * 32)
    assert len(decision.replies) > 3
    assert all(len(x) <= J.MAX_JOIN_DATAGRAM for x in decision.replies)
    # Chunks may arrive in any order; a missing one leaves the join incomplete.
    replies = list(reversed(decision.replies))
    assert all(j.receive(x, NOW) is None for x in replies[1:])
    result = j.receive(replies[0], NOW)
    assert result is not None and len(result.roster.revoked_keys()) == 1500


def test_garbage_never_raises() -> None:
    tokens, sponsor = Tokens(), JoinSponsor(AUTH, base_roster(), SECRET)
    j = joiner(tokens.issue("t1"))
    for data in (b"", b"OMJ1", b"OMJ1\xc1", b"\x94\x01", J.MAGIC + b"\x92\x01\x00" * 10):
        assert sponsor.handle(data, NOW, tokens.grants.get, b"\x09" * 32).accepted is None
        assert j.receive(data, NOW) is None


def test_the_joiners_endpoint_and_mesh_address_are_signed_into_its_entry() -> None:
    tokens, sponsor = Tokens(), JoinSponsor(AUTH, base_roster(), SECRET)
    j = joiner(tokens.issue("t1"), wg_endpoint="192.0.2.5:51820",
               mesh_address="[fd00::5]:7443")
    _, result = run(sponsor, tokens, j)
    assert result is not None
    assert (result.entry.wg_endpoint, result.entry.mesh_address) == (
        "192.0.2.5:51820", "[fd00::5]:7443")
    # Without them the request is byte for byte what sponsors before them expect.
    plain = joiner(tokens.issue("t2"), "m")
    body = J.decode_message(plain.request()).body
    assert len(msgspec.msgpack.decode(body)) == 8
    with pytest.raises(JoinError, match="bad_request"):
        joiner(tokens.issue("t3"), wg_endpoint="example.org:51820")
    # A crafted request with an endpoint that is no IP:port: refused, nothing signed.
    fields = [*msgspec.msgpack.decode(body), "300.1.1.1:1"]
    raw = msgspec.msgpack.encode(fields)
    crafted = J.encode_message(J.JoinRequest(
        raw, SigningKey(seed("t2")).sign(J.TOKEN_CONTEXT + raw).signature,
        SigningKey(seed("m")).sign(J.NODE_CONTEXT + raw).signature))
    decision = sponsor.handle(crafted, NOW, tokens.grants.get, b"\x09" * 32)
    assert decision.refused == "malformed" and decision.accepted is None


def test_the_joiners_join_onion_is_signed_into_its_entry() -> None:
    """A member's join onion travels in its request and entry (tokens then name it); the
    fields before it stay in the encoding, empty, when only it is set."""
    onion = "a" * 56 + ".onion"
    tokens, sponsor = Tokens(), JoinSponsor(AUTH, base_roster(), SECRET)
    j = joiner(tokens.issue("t1"), join_onion=onion)
    assert len(msgspec.msgpack.decode(J.decode_message(j.request()).body)) == 11
    _, result = run(sponsor, tokens, j)
    assert result is not None and result.entry.join_onion == onion
    assert (result.entry.wg_endpoint, result.entry.mesh_address) == ("", "")
    assert result.roster.member("n") == result.entry
    with pytest.raises(JoinError, match="bad_request"):
        joiner(tokens.issue("t2"), "m", join_onion="not-an-onion")
