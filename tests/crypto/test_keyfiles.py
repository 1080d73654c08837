"""Key files: tor's formats, PEM, atomic 0600 writes, overwrite protection, integrity."""

import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from onionmesh.crypto import keys
from onionmesh.crypto.keys import (
    HOSTNAME_FILE,
    PUBLIC_KEY_FILE,
    SECRET_KEY_FILE,
    Ed25519Identity,
    KeyFileError,
    KeyIntegrityError,
)
from onionmesh.crypto.securefile import SecureFileError, atomic_write

from . import tor_vectors as tv


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _no_temp_files(directory: Path) -> bool:
    return not [p for p in directory.iterdir() if p.name.endswith(".tmp")]


def test_secret_key_file_layout_matches_tor(tmp_path: Path) -> None:
    identity = Ed25519Identity.from_expanded(bytes.fromhex(tv.ED25519_EXPANDED_SECRET_KEYS[0]))
    path = tmp_path / SECRET_KEY_FILE
    keys.save_secret_key(identity, path)
    data = path.read_bytes()
    assert len(data) == 96
    assert data[:32] == b"== ed25519v1-secret: type0 ==\x00\x00\x00"
    assert data[32:] == identity.expanded
    assert _mode(path) == 0o600
    assert keys.load_secret_key(path) == identity


def test_public_key_and_hostname_files(tmp_path: Path) -> None:
    identity = Ed25519Identity.generate()
    keys.save_public_key(identity.public_key, tmp_path / PUBLIC_KEY_FILE)
    keys.save_hostname(identity.onion_address, tmp_path / HOSTNAME_FILE)
    public = (tmp_path / PUBLIC_KEY_FILE).read_bytes()
    assert public == b"== ed25519v1-public: type0 ==\x00\x00\x00" + identity.public_key
    assert (tmp_path / HOSTNAME_FILE).read_text() == identity.onion_address + "\n"
    assert keys.load_public_key(tmp_path / PUBLIC_KEY_FILE) == identity.public_key
    assert keys.load_hostname(tmp_path / HOSTNAME_FILE) == identity.onion_address


def test_hidden_service_dir_round_trip(tmp_path: Path) -> None:
    identity = Ed25519Identity.generate()
    directory = tmp_path / "hs"
    keys.save_hidden_service_dir(identity, directory)
    assert _mode(directory) == 0o700
    for name in (SECRET_KEY_FILE, PUBLIC_KEY_FILE, HOSTNAME_FILE):
        assert _mode(directory / name) == 0o600
    assert _no_temp_files(directory)
    loaded = keys.check_hidden_service_dir(directory, identity.onion_address)
    assert loaded == identity
    assert loaded.sign(b"x") == identity.sign(b"x")


def test_never_overwrites_a_secret_key_unless_asked(tmp_path: Path) -> None:
    first, second = Ed25519Identity.generate(), Ed25519Identity.generate()
    path = tmp_path / SECRET_KEY_FILE
    keys.save_secret_key(first, path)
    with pytest.raises(KeyFileError, match="refusing to overwrite"):
        keys.save_secret_key(second, path)
    assert keys.load_secret_key(path) == first
    with pytest.raises(KeyFileError, match="refusing to overwrite"):
        keys.save_hidden_service_dir(second, tmp_path)
    assert keys.load_secret_key(path) == first
    assert not (tmp_path / HOSTNAME_FILE).exists()  # nothing written after the refusal
    keys.save_secret_key(second, path, overwrite=True)
    assert keys.load_secret_key(path) == second
    assert _mode(path) == 0o600
    assert _no_temp_files(tmp_path)


def test_atomic_write_replaces_whole_file_and_fixes_mode(tmp_path: Path) -> None:
    path = tmp_path / "target"
    path.write_bytes(b"old contents that are longer")
    os.chmod(path, 0o644)
    inode_before = path.stat().st_ino
    atomic_write(path, b"new", overwrite=True)
    assert path.read_bytes() == b"new"
    assert _mode(path) == 0o600
    assert path.stat().st_ino != inode_before  # a rename, not an in-place rewrite
    assert _no_temp_files(tmp_path)


def test_atomic_write_failure_leaves_no_temp_file(tmp_path: Path) -> None:
    with pytest.raises(SecureFileError, match="cannot create a temporary file"):
        atomic_write(tmp_path / "missing-dir" / "key", b"data")
    target_is_dir = tmp_path / "adir"
    target_is_dir.mkdir()
    with pytest.raises(SecureFileError):
        atomic_write(target_is_dir, b"data", overwrite=True)
    assert _no_temp_files(tmp_path)
    with pytest.raises(KeyFileError):
        keys.save_secret_key(Ed25519Identity.generate(), tmp_path / "nope" / SECRET_KEY_FILE)


def test_pem_round_trip_and_mode(tmp_path: Path) -> None:
    identity = Ed25519Identity.generate()
    path = tmp_path / "key.pem"
    keys.save_pem(identity, path)
    assert _mode(path) == 0o600
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    loaded = keys.load_pem(path)
    assert loaded == identity and loaded.seed == identity.seed


def test_pem_from_seed_vector_matches_tor_expansion() -> None:
    seed = bytes.fromhex(tv.ED25519_SECRET_KEYS[3])
    identity = keys.identity_from_pem(keys.identity_to_pem(Ed25519Identity.from_seed(seed)))
    assert identity.expanded == bytes.fromhex(tv.ED25519_EXPANDED_SECRET_KEYS[3])


def test_pem_export_impossible_without_seed() -> None:
    identity = Ed25519Identity.from_expanded(bytes.fromhex(tv.ED25519_EXPANDED_SECRET_KEYS[1]))
    with pytest.raises(KeyFileError, match="no seed"):
        keys.identity_to_pem(identity)


def test_pem_with_another_key_type_or_garbage() -> None:
    ec_pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption())
    with pytest.raises(KeyFileError, match="not an Ed25519"):
        keys.identity_from_pem(ec_pem)
    for junk in (b"", b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
                 b"\xff\xfe\x00garbage"):
        with pytest.raises(KeyFileError, match="PKCS#8"):
            keys.identity_from_pem(junk)


@pytest.mark.parametrize(("data", "message"), [
    (b"", "header"),
    (b"== ed25519v1-public: type0 ==\x00\x00\x00" + b"\x00" * 64, "header"),
    (b"== ed25519v1-secret: type0 ==\x00\x00\x00" + b"\x40" * 63, "96 bytes"),
    (b"== ed25519v1-secret: type0 ==\x00\x00\x00" + b"\x40" * 65, "96 bytes"),
    (b"== ed25519v1-secret: type0 ==\x00\x00\x00" + b"\x07" + b"\x40" * 63, "unclamped"),
    (b"== ed25519v1-secret: type0 ==\x00\x00\x00" + b"\x00" * 31 + b"\xc0" + b"\x00" * 32,
     "unclamped"),
])
def test_malformed_secret_key_files(data: bytes, message: str) -> None:
    with pytest.raises(KeyFileError, match=message):
        keys.decode_secret_key_file(data)


def test_loader_errors_are_typed(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="cannot read"):
        keys.load_secret_key(tmp_path / "absent")
    big = tmp_path / "big"
    big.write_bytes(b"\0" * (70 * 1024))
    with pytest.raises(KeyFileError, match="too large"):
        keys.load_secret_key(big)
    bad_host = tmp_path / "hostname"
    bad_host.write_bytes(b"\xff\xfe not ascii")
    with pytest.raises(KeyFileError, match="not ASCII"):
        keys.load_hostname(bad_host)
    bad_host.write_text("example.com\n")
    with pytest.raises(KeyFileError, match="hostname file"):
        keys.load_hostname(bad_host)


def test_integrity_check_names_each_failed_check(tmp_path: Path) -> None:
    identity, other = Ed25519Identity.generate(), Ed25519Identity.generate()
    keys.check_key_integrity(identity, public_key=identity.public_key,
                             onion_address=identity.onion_address)

    with pytest.raises(KeyIntegrityError) as info:
        keys.check_key_integrity(identity, public_key=other.public_key)
    assert info.value.check == "public-key-file"

    with pytest.raises(KeyIntegrityError) as info:
        keys.check_key_integrity(identity, onion_address=other.onion_address)
    assert info.value.check == "onion-address"
    assert other.onion_address in str(info.value)

    with pytest.raises(KeyIntegrityError) as info:
        keys.check_key_integrity(identity, onion_address="not-an-address")
    assert info.value.check == "onion-address"

    directory = tmp_path / "hs"
    keys.save_hidden_service_dir(identity, directory)
    keys.save_public_key(other.public_key, directory / PUBLIC_KEY_FILE, overwrite=True)
    with pytest.raises(KeyIntegrityError) as info:
        keys.check_hidden_service_dir(directory)
    assert info.value.check == "public-key-file"

    keys.save_public_key(identity.public_key, directory / PUBLIC_KEY_FILE, overwrite=True)
    keys.save_hostname(other.onion_address, directory / HOSTNAME_FILE, overwrite=True)
    with pytest.raises(KeyIntegrityError) as info:
        keys.check_hidden_service_dir(directory)
    assert info.value.check == "hostname-file"

    keys.save_hostname(identity.onion_address, directory / HOSTNAME_FILE, overwrite=True)
    assert keys.check_hidden_service_dir(directory) == identity
    with pytest.raises(KeyIntegrityError) as info:
        keys.check_hidden_service_dir(directory, other.onion_address)
    assert info.value.check == "onion-address"


def test_no_secret_bytes_in_errors_or_repr(tmp_path: Path) -> None:
    identity = Ed25519Identity.generate()
    secret_hex = identity.expanded.hex()
    texts = [repr(identity), str(identity)]
    other = Ed25519Identity.generate()
    for call in (
        lambda: keys.check_key_integrity(identity, public_key=other.public_key),
        lambda: keys.check_key_integrity(identity, onion_address=other.onion_address),
        lambda: keys.identity_to_pem(Ed25519Identity.from_expanded(identity.expanded)),
    ):
        with pytest.raises(KeyFileError) as info:
            call()
        texts.append(str(info.value))
    for text in texts:
        assert secret_hex[:16] not in text and secret_hex[64:80] not in text
        assert identity.expanded[:8].hex() not in text


def test_identity_constructor_validation() -> None:
    with pytest.raises(KeyFileError, match="64 bytes"):
        Ed25519Identity.from_expanded(b"\x40" * 63)
    with pytest.raises(KeyFileError, match="32 bytes"):
        Ed25519Identity.from_seed(b"\x00" * 31)
    a = Ed25519Identity.from_seed(b"\x01" * 32)
    assert a == Ed25519Identity.from_expanded(a.expanded)
    assert a != Ed25519Identity.from_seed(b"\x02" * 32)
    assert len({a, Ed25519Identity.from_expanded(a.expanded)}) == 1


def test_atomic_write_without_hard_links(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_links(src: str, dst: str) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    path = tmp_path / "secret"
    atomic_write(path, b"first")
    assert path.read_bytes() == b"first" and _mode(path) == 0o600
    with pytest.raises(SecureFileError, match="refusing to overwrite"):
        atomic_write(path, b"second")
    assert path.read_bytes() == b"first"
    assert _no_temp_files(tmp_path)
