"""The handshake cache: hearsay cannot roll a node's echo back to an earlier boot."""

from __future__ import annotations

from onionmesh.mesh.handshake import MAX_ENTRIES, HandshakeCache


def _never(_node: str, _boot: int) -> bool:
    return False


def test_verified_boots_replace_and_hearsay_cannot_roll_back():
    hs = HandshakeCache("me")
    hs.learn("a", 10, b"c10" * 5 + b"x", "a:1", verified=True, is_retired=_never)
    hs.learn("a", 20, b"c20" * 5 + b"x", "", verified=True, is_retired=_never)
    assert hs.echo_for("a") == b"c20" * 5 + b"x"
    assert hs.get("a").address == "a:1"  # kept when the new message names none
    hs.learn("a", 10, b"c10" * 5 + b"x", "", verified=False, is_retired=_never)  # a replay
    assert hs.echo_for("a") == b"c20" * 5 + b"x"
    hs.learn("a", 5, b"c05" * 5 + b"x", "", verified=False, is_retired=lambda n, b: b == 5)
    assert hs.echo_for("a") == b"c20" * 5 + b"x"
    hs.learn("a", 7, b"c07" * 5 + b"x", "", verified=False, is_retired=_never)  # unseen boot
    assert hs.echo_for("a") == b"c07" * 5 + b"x"


def test_own_id_and_bounds():
    hs = HandshakeCache("me")
    hs.learn("me", 1, b"x" * 16, "me:1", verified=True, is_retired=_never)
    assert hs.echo_for("me") == b""
    for k in range(MAX_ENTRIES + 10):
        hs.learn(f"n{k}", 1, b"x" * 16, "", verified=True, is_retired=_never)
    assert len(list(hs.items())) == MAX_ENTRIES
    hs.drop("n0")
    assert hs.echo_for("n0") == b""
