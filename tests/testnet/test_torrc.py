"""Torrc generation (pure): option sets per role, validation, ob_config and key files."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import pytest
from nacl.signing import SigningKey

from onionmesh.errors import OnionmeshError
from onionmesh.tor import torrc
from onionmesh.tor.torrc import DirAuthority, NodeBase, TorrcError

FPR_A = "A" * 40
FPR_B = "0123456789ABCDEF0123456789ABCDEF01234567"


def auths() -> tuple[DirAuthority, ...]:
    return (
        DirAuthority("auth0", "127.0.0.1", 5000, 5020, FPR_A, FPR_B),
        DirAuthority("auth1", "127.0.0.1", 5001, 5021, FPR_B, FPR_A),
    )


def options(text: str) -> list[tuple[str, str]]:
    """Parse rendered torrc text back into (option, value) pairs."""
    pairs = []
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        pairs.append((key, value))
    return pairs


def lookup(text: str, key: str) -> list[str]:
    return [v for k, v in options(text) if k == key]


def base(tmp_path: Path, name: str = "node1") -> NodeBase:
    return NodeBase(name, tmp_path / name, 6000, auths())


def test_dir_authority_line_has_the_documented_shape():
    line = auths()[0].line()
    assert line == f"auth0 orport=5000 no-v2 v3ident={FPR_A} 127.0.0.1:5020 {FPR_B}"


def test_every_role_names_all_authorities_and_a_cookie_control_port(tmp_path):
    node = base(tmp_path)
    texts = [
        torrc.authority_torrc(node, or_port=5000, dir_port=5020),
        torrc.relay_torrc(node, or_port=5003),
        torrc.client_torrc(node, socks_port=6001),
        torrc.onion_service_torrc(node, hs_dir=tmp_path / "hs", target_port=7000),
    ]
    for text in texts:
        assert lookup(text, "DirAuthority") == [a.line() for a in auths()]
        assert lookup(text, "TestingTorNetwork") == ["1"]
        assert lookup(text, "ControlPort") == ["127.0.0.1:6000"]
        assert lookup(text, "CookieAuthentication") == ["1"]
        assert lookup(text, "DataDirectory") == [str(tmp_path / "node1")]
        assert lookup(text, "Log")[0] == f"notice file {tmp_path / 'node1'}/notice.log"
        assert text.endswith("\n")
    # Clients also keep the info-level log of introductions and rendezvous.
    assert lookup(texts[2], "Log")[1:] == [f"[rend]info file {tmp_path / 'node1'}/rend-info.log"]
    assert all(len(lookup(text, "Log")) == 1 for text in (texts[0], texts[1], texts[3]))


def test_authority_votes_every_20_seconds_and_flags_everyone(tmp_path):
    text = torrc.authority_torrc(base(tmp_path), or_port=5000, dir_port=5020)
    for key in ("V3AuthVotingInterval", "TestingV3AuthInitialVotingInterval"):
        assert lookup(text, key) == ["20"]
    for key in ("V3AuthVoteDelay", "V3AuthDistDelay", "TestingV3AuthInitialVoteDelay"):
        assert lookup(text, key) == ["4"]
    assert lookup(text, "TestingDirAuthVoteHSDir") == ["*"]
    assert lookup(text, "TestingDirAuthVoteGuard") == ["*"]
    assert lookup(text, "V3AuthoritativeDirectory") == ["1"]
    assert lookup(text, "DirPort") == ["127.0.0.1:5020"]
    assert lookup(text, "ORPort") == ["127.0.0.1:5000"]
    assert lookup(text, "SocksPort") == ["0"]


def test_custom_voting_interval_and_invalid_ones(tmp_path):
    text = torrc.authority_torrc(base(tmp_path), or_port=1, dir_port=2, voting_interval=30)
    assert lookup(text, "V3AuthVotingInterval") == ["30"]
    for interval, delay in ((22, 4), (20, 10), (0, 1), (20, 0)):
        with pytest.raises(TorrcError):
            torrc.authority_torrc(
                base(tmp_path), or_port=1, dir_port=2, voting_interval=interval, vote_delay=delay
            )


def test_client_socks_port_has_extended_errors(tmp_path):
    text = torrc.client_torrc(base(tmp_path), socks_port=6001)
    assert lookup(text, "SocksPort") == ["127.0.0.1:6001 ExtendedErrors"]


def test_onion_service_and_onionbalance_instance(tmp_path):
    plain = torrc.onion_service_torrc(base(tmp_path), hs_dir=tmp_path / "hs", target_port=7000)
    assert lookup(plain, "HiddenServiceDir") == [str(tmp_path / "hs")]
    assert lookup(plain, "HiddenServicePort") == ["80 127.0.0.1:7000"]
    assert lookup(plain, "HiddenServiceOnionbalanceInstance") == []
    inst = torrc.onion_service_torrc(
        base(tmp_path),
        hs_dir=tmp_path / "hs",
        target_port=7000,
        virtual_port=8080,
        socks_port=6002,
        onionbalance_instance=True,
    )
    assert lookup(inst, "HiddenServiceOnionbalanceInstance") == ["1"]
    assert lookup(inst, "HiddenServicePort") == ["8080 127.0.0.1:7000"]
    assert lookup(inst, "SocksPort") == ["127.0.0.1:6002"]


@pytest.mark.parametrize(
    "bad",
    [
        {"nickname": "has space"},
        {"nickname": "x" * 20},
        {"nickname": ""},
        {"control_port": 0},
        {"control_port": 70000},
        {"control_port": True},
        {"authorities": ()},
    ],
)
def test_invalid_node_settings_are_typed_errors(tmp_path, bad):
    kwargs = {"nickname": "n", "data_dir": tmp_path, "control_port": 6000, "authorities": auths()}
    kwargs.update(bad)
    with pytest.raises(TorrcError) as info:
        NodeBase(**kwargs)
    assert isinstance(info.value, OnionmeshError)


def test_values_cannot_inject_options(tmp_path):
    with pytest.raises(TorrcError, match="line break"):
        torrc.render([("Nickname", "a\nControlPort 9051")])
    with pytest.raises(TorrcError, match="option name"):
        torrc.render([("Bad Key", "x")])
    with pytest.raises(TorrcError, match="absolute"):
        torrc.client_torrc(NodeBase("n", Path("relative"), 6000, auths()), socks_port=1)
    with pytest.raises(TorrcError):
        DirAuthority("auth0", "127.0.0.1\n", 1, 2, FPR_A, FPR_B)
    with pytest.raises(TorrcError, match="v3ident"):
        DirAuthority("auth0", "127.0.0.1", 1, 2, "abc", FPR_B)


def address_of(public: bytes) -> str:
    checksum = hashlib.sha3_256(b".onion checksum" + public + b"\x03").digest()[:2]
    return base64.b32encode(public + checksum + b"\x03").decode().lower()


def test_ob_config_names_the_master_with_onion_suffix(tmp_path):
    master = address_of(bytes(SigningKey(b"\x07" * 32).verify_key))
    path = torrc.write_ob_config(tmp_path / "hs", master + ".onion")
    assert path.read_text() == f"MasterOnionAddress {master}.onion\n"
    assert (tmp_path / "hs").stat().st_mode & 0o777 == 0o700


@pytest.mark.parametrize("bad", ["", "abc", "a" * 56, 42, None, "z" * 55 + "!", "aaaa.onion"])
def test_bad_master_addresses_are_typed_errors(bad):
    with pytest.raises(TorrcError):
        torrc.ob_config_text(bad)


def test_onion_address_checksum_is_verified():
    good = address_of(bytes(SigningKey(b"\x01" * 32).verify_key))
    assert torrc.normalize_onion_address(good.upper() + ".ONION") == good
    flipped = good[:-3] + ("b" if good[-3] != "b" else "c") + good[-2:]
    with pytest.raises(TorrcError, match=r"checksum|version"):
        torrc.normalize_onion_address(flipped)


def test_hs_secret_key_from_seed_matches_ed25519_public_key(tmp_path):
    seed = bytes(range(32))
    expected = address_of(bytes(SigningKey(seed).verify_key))
    assert torrc.write_hs_secret_key(tmp_path / "hs", seed) == expected
    secret = (tmp_path / "hs" / "hs_ed25519_secret_key").read_bytes()
    public = (tmp_path / "hs" / "hs_ed25519_public_key").read_bytes()
    assert secret.startswith(b"== ed25519v1-secret: type0 ==") and len(secret) == 96
    assert public == b"== ed25519v1-public: type0 ==\x00\x00\x00" + bytes(
        SigningKey(seed).verify_key
    )
    assert (tmp_path / "hs" / "hs_ed25519_secret_key").stat().st_mode & 0o777 == 0o600
    # The 64-byte expanded form written above gives the same address when passed back in.
    assert torrc.write_hs_secret_key(tmp_path / "hs2", secret[32:]) == expected


def test_bad_secret_keys_are_typed_errors_without_key_bytes(tmp_path):
    with pytest.raises(TorrcError) as info:
        torrc.write_hs_secret_key(tmp_path / "hs", b"\xff" * 64)  # not a clamped scalar
    assert "ff" not in str(info.value).lower().replace("off", "")
    with pytest.raises(TorrcError):
        torrc.write_hs_secret_key(tmp_path / "hs", b"short")


def test_hs_key_file_matches_the_crypto_module_identity(tmp_path):
    from onionmesh.crypto.keys import Ed25519Identity, encode_secret_key_file
    from onionmesh.testnet.network import _secret_key_bytes

    identity = Ed25519Identity.generate()
    expanded = _secret_key_bytes(identity)
    assert len(expanded) == 64
    address = torrc.write_hs_secret_key(tmp_path / "hs", expanded)
    assert f"{address}.onion" == identity.onion_address.lower()
    written = (tmp_path / "hs" / "hs_ed25519_secret_key").read_bytes()
    assert written == encode_secret_key_file(identity)
