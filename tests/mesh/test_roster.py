"""The signed roster: signatures, merge rules, revocations, limits and files."""

from __future__ import annotations

import os

import msgspec
import pytest
from nacl.signing import SigningKey

from onionmesh.mesh import roster as R
from onionmesh.mesh.roster import (
    AuthorityKey,
    MemberEntry,
    MergeResult,
    Revocation,
    Roster,
    RosterError,
    SignedEntry,
    load_authority_key,
    load_roster,
    save_authority_key,
    save_roster,
)

AUTH = AuthorityKey(b"\x01" * 32)
OTHER = AuthorityKey(b"\x02" * 32)


def key(name: str) -> bytes:
    return bytes(SigningKey(name.encode().ljust(32, b"\0")).verify_key)


def entry(node_id: str, may_publish: bool = False, added_at: int = 1000, **kw) -> MemberEntry:
    return MemberEntry(node_id, kw.pop("node_key", key(node_id)), may_publish, added_at, **kw)


def test_merge_and_queries() -> None:
    roster = Roster(AUTH.public_key)
    assert roster.merge_entry(AUTH.sign_entry(entry("a", True))) is MergeResult.ADDED
    assert roster.merge_entry(AUTH.sign_entry(entry("b"))) is MergeResult.ADDED
    assert roster.key_of("a") == key("a") and roster.may_publish("a")
    assert roster.key_of("b") == key("b") and not roster.may_publish("b")
    assert roster.key_of("c") is None and not roster.may_publish("c")
    assert [m.node_id for m in roster.members()] == ["a", "b"]
    # Same statement again: nothing changes, the digest neither.
    d = roster.digest()
    assert roster.merge_entry(AUTH.sign_entry(entry("a", True))) is MergeResult.UNCHANGED
    assert roster.digest() == d


def test_other_authority_and_tampering_refused() -> None:
    roster = Roster(AUTH.public_key)
    with pytest.raises(RosterError) as exc:
        roster.merge_entry(OTHER.sign_entry(entry("a", True)))
    assert exc.value.reason == "bad_signature"
    good = AUTH.sign_entry(entry("b", False))
    # Flip may_publish in the signed bytes: the signature no longer matches.
    forged_body = msgspec.msgpack.encode(entry("b", True))
    with pytest.raises(RosterError):
        roster.merge_entry(SignedEntry(forged_body, good.signature))
    assert len(roster) == 0


def test_domain_separation() -> None:
    """A revocation signature is no entry signature and the other way round, and a
    plain signature over the body (no context) counts as neither."""
    roster = Roster(AUTH.public_key)
    rev = AUTH.sign_revocation(Revocation("a", key("a"), 5))
    e = AUTH.sign_entry(entry("a"))
    with pytest.raises(RosterError):
        roster.merge_entry(SignedEntry(rev.body, rev.signature))
    with pytest.raises(RosterError):
        roster.merge_revocation(R.SignedRevocation(e.body, e.signature))
    raw = SigningKey(AUTH.seed).sign(e.body).signature
    with pytest.raises(RosterError):
        roster.merge_entry(SignedEntry(e.body, raw))
    assert not R.ENTRY_CONTEXT.startswith(b"\x01")  # tor certificates start with 0x01


def test_newest_entry_wins_in_any_order() -> None:
    old = AUTH.sign_entry(entry("a", False, 100))
    new = AUTH.sign_entry(entry("a", True, 200, node_key=key("a2")))
    r1, r2 = Roster(AUTH.public_key), Roster(AUTH.public_key)
    r1.merge_entry(old), r1.merge_entry(new)
    r2.merge_entry(new)
    assert r2.merge_entry(old) is MergeResult.UNCHANGED
    assert r1.digest() == r2.digest() and r1.key_of("a") == key("a2")


def test_revocation_removes_and_blocks_forever() -> None:
    roster = Roster(AUTH.public_key)
    roster.merge_entry(AUTH.sign_entry(entry("a", True)))
    rev = AUTH.sign_revocation(Revocation("a", key("a"), 2000))
    assert roster.merge_revocation(rev) is MergeResult.REVOKED
    assert "a" not in roster and roster.is_revoked(key("a"))
    # Re-adding the revoked key, even with a newer entry or another id, is refused.
    for e in (entry("a", True, 3000), entry("a-new", True, 3000, node_key=key("a"))):
        with pytest.raises(RosterError) as exc:
            roster.merge_entry(AUTH.sign_entry(e))
        assert exc.value.reason == "revoked"
    # The node may come back under a new key (operator re-adds it).
    roster.merge_entry(AUTH.sign_entry(entry("a", True, 3000, node_key=key("a3"))))
    assert roster.key_of("a") == key("a3")
    assert roster.merge_revocation(rev) is MergeResult.UNCHANGED


def test_revocation_before_entry_converges() -> None:
    e = AUTH.sign_entry(entry("x"))
    rev = AUTH.sign_revocation(Revocation("x", key("x"), 1))
    r1, r2 = Roster(AUTH.public_key), Roster(AUTH.public_key)
    r1.merge_entry(e), r1.merge_revocation(rev)
    r2.merge_revocation(rev)
    with pytest.raises(RosterError):
        r2.merge_entry(e)
    assert r1.digest() == r2.digest()


def test_member_limit() -> None:
    roster = Roster(AUTH.public_key)
    for i in range(R.MAX_MEMBERS):
        roster.merge_entry(AUTH.sign_entry(entry(f"n{i}")))
    with pytest.raises(RosterError) as exc:
        roster.merge_entry(AUTH.sign_entry(entry("one-more")))
    assert exc.value.reason == "full"
    # Updating an existing member is still possible.
    roster.merge_entry(AUTH.sign_entry(entry("n0", True, 5000)))
    assert roster.may_publish("n0")


def test_entry_schema_is_strict() -> None:
    with pytest.raises(msgspec.ValidationError):
        msgspec.msgpack.decode(
            msgspec.msgpack.encode(["A!", key("a"), True, 1, b"", ""]), type=MemberEntry
        )
    with pytest.raises(RosterError):
        AUTH.sign_entry(entry("a", wg_key=b"short"))
    onion = "a" * 56 + ".onion"
    e = entry("a", wg_key=key("wg"), coord_onion=onion)
    roster = Roster(AUTH.public_key)
    roster.merge_entry(AUTH.sign_entry(e))
    assert roster.member("a") == e


def test_encode_decode_roundtrip_and_strictness() -> None:
    roster = Roster(AUTH.public_key)
    roster.merge_entry(AUTH.sign_entry(entry("a", True)))
    roster.merge_entry(AUTH.sign_entry(entry("b")))
    roster.merge_revocation(AUTH.sign_revocation(Revocation("z", key("z"), 1)))
    again = Roster.decode(roster.encode())
    assert again.digest() == roster.digest()
    # A document with one bad statement is refused as a whole.
    doc = roster.to_document()
    bad = msgspec.structs.replace(doc, entries=[*doc.entries, OTHER.sign_entry(entry("c"))])
    with pytest.raises(RosterError):
        Roster.decode(msgspec.msgpack.encode(bad))
    with pytest.raises(RosterError):
        Roster.decode(b"\xc1garbage")
    with pytest.raises(RosterError):
        Roster.decode(b"\x00" * (R.MAX_ROSTER_FILE_BYTES + 1))


def test_files(tmp_path) -> None:
    roster = Roster(AUTH.public_key)
    roster.merge_entry(AUTH.sign_entry(entry("a", True)))
    path = tmp_path / "roster"
    save_roster(path, roster)
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert load_roster(path, AUTH.public_key).digest() == roster.digest()
    with pytest.raises(RosterError) as exc:
        load_roster(path, OTHER.public_key)
    assert exc.value.reason == "wrong_authority"
    os.chmod(path, 0o666)
    with pytest.raises(RosterError) as exc:
        load_roster(path)
    assert exc.value.reason == "unsafe_file"
    os.chmod(path, 0o600)
    link = tmp_path / "link"
    link.symlink_to(path)
    with pytest.raises(RosterError):
        load_roster(link)
    path.write_bytes(b"junk")
    with pytest.raises(RosterError) as exc:
        load_roster(path)
    assert "roster file" in str(exc.value)

    kpath = tmp_path / "authority_key"
    save_authority_key(kpath, AUTH)
    assert load_authority_key(kpath).public_key == AUTH.public_key
    with pytest.raises(RosterError):
        save_authority_key(kpath, OTHER)  # never overwritten
    os.chmod(kpath, 0o640)
    with pytest.raises(RosterError) as exc:
        load_authority_key(kpath)
    assert exc.value.reason == "unsafe_file"
    assert AUTH.seed.hex() not in repr(AUTH)


def test_entries_without_addresses_keep_their_old_encoding_and_bad_ones_are_refused():
    import msgspec as _msgspec

    from onionmesh.mesh.roster import RosterError, encode_entry

    authority = AuthorityKey(b"\x05" * 32)
    roster = Roster(authority.public_key)
    old = MemberEntry("n1", b"\x01" * 32, True, 5, b"\x02" * 32, "")
    # What an older node signed and still verifies: six fields, nothing after them.
    assert _msgspec.msgpack.decode(encode_entry(old)) == ["n1", b"\x01" * 32, True, 5,
                                                         b"\x02" * 32, ""]
    assert roster.verify_entry(authority.sign_entry(old)) == old
    new = MemberEntry("n2", b"\x03" * 32, True, 5, b"\x04" * 32, "", "192.0.2.2:51820",
                      "10.77.0.2:7443")
    assert roster.verify_entry(authority.sign_entry(new)) == new
    for bad in ("192.0.2.2:0", "::1:51820", "[10.0.0.1]:5", "999.1.1.1:5"):
        with pytest.raises(RosterError, match="malformed: member entry"):
            authority.sign_entry(MemberEntry("n3", b"\x05" * 32, True, 5, b"", "", bad))


def test_an_entry_with_a_join_onion_keeps_the_fields_before_it():
    import msgspec as _msgspec

    from onionmesh.mesh.roster import RosterError, encode_entry

    authority = AuthorityKey(b"\x05" * 32)
    roster = Roster(authority.public_key)
    onion = "b" * 56 + ".onion"
    entry = MemberEntry("n1", b"\x01" * 32, True, 5, b"", "", "", "", onion)
    assert _msgspec.msgpack.decode(encode_entry(entry))[-3:] == ["", "", onion]
    assert roster.verify_entry(authority.sign_entry(entry)) == entry
    with pytest.raises(RosterError, match="malformed"):
        authority.sign_entry(MemberEntry("n1", b"\x01" * 32, True, 5, join_onion="x.onion"))
