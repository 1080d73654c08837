"""Onion address encoding/decoding: tor's vectors and every malformed form."""

import base64
import hashlib

import pytest

from onionmesh.crypto.address import (
    AddressError,
    decode_onion_address,
    encode_onion_address,
    is_valid_onion_address,
    is_valid_public_key,
    normalize_onion_address,
)
from onionmesh.crypto.keys import Ed25519Identity
from onionmesh.errors import OnionmeshError

from .tor_vectors import (
    BAD_CHECKSUM_ADDRESSES,
    TOO_LONG_ADDRESS,
    WELL_FORMED_ADDRESS,
    ADDRESS_OF_0x42,
)


def _raw_address(public_key: bytes, version: int, checksum: bytes | None = None) -> str:
    """Build an address by hand so tests can vary one field at a time."""
    if checksum is None:
        checksum = hashlib.sha3_256(b".onion checksum" + public_key + bytes([version])).digest()
    return base64.b32encode(public_key + checksum[:2] + bytes([version])).decode().lower()


def test_tor_build_address_vector() -> None:
    assert encode_onion_address(b"\x42" * 32) == ADDRESS_OF_0x42 + ".onion"
    assert decode_onion_address(ADDRESS_OF_0x42) == b"\x42" * 32


def test_tor_well_formed_address_decodes() -> None:
    key = decode_onion_address(WELL_FORMED_ADDRESS + ".onion")
    assert encode_onion_address(key) == WELL_FORMED_ADDRESS + ".onion"


def test_with_and_without_suffix_and_any_case() -> None:
    identity = Ed25519Identity.generate()
    address = identity.onion_address
    bare = address.removesuffix(".onion")
    for form in (address, bare, address.upper(), bare.upper(), bare + ".ONION"):
        assert decode_onion_address(form) == identity.public_key
    assert normalize_onion_address(bare.upper()) == address


def test_real_keys_pass_the_strict_point_check() -> None:
    identity = Ed25519Identity.generate()
    assert decode_onion_address(identity.onion_address, check_key=True) == identity.public_key
    assert is_valid_public_key(identity.public_key)


def test_strict_check_rejects_points_outside_the_prime_order_subgroup() -> None:
    # 0x42 * 32 is not a point on the curve; the tor "valid" example has a torsion part.
    for address in (ADDRESS_OF_0x42, WELL_FORMED_ADDRESS):
        assert is_valid_onion_address(address)
        with pytest.raises(AddressError, match="public key"):
            decode_onion_address(address, check_key=True)
        assert not is_valid_onion_address(address, check_key=True)


@pytest.mark.parametrize("address", BAD_CHECKSUM_ADDRESSES)
def test_tor_bad_checksum_vectors(address: str) -> None:
    with pytest.raises(AddressError, match="checksum"):
        decode_onion_address(address)


def test_checksum_of_another_key_is_rejected() -> None:
    key = Ed25519Identity.generate().public_key
    other = Ed25519Identity.generate().public_key
    wrong = hashlib.sha3_256(b".onion checksum" + other + b"\x03").digest()
    with pytest.raises(AddressError, match="checksum"):
        decode_onion_address(_raw_address(key, 3, wrong))


def test_single_character_typo_is_caught() -> None:
    address = Ed25519Identity.generate().onion_address.removesuffix(".onion")
    caught = 0
    for pos in range(0, 56, 5):
        replacement = "a" if address[pos] != "a" else "b"
        typo = address[:pos] + replacement + address[pos + 1:]
        with pytest.raises(AddressError):
            decode_onion_address(typo)
        caught += 1
    assert caught == 12


@pytest.mark.parametrize("version", [0, 1, 2, 4, 255])
def test_wrong_version(version: int) -> None:
    key = Ed25519Identity.generate().public_key
    with pytest.raises(AddressError, match="version"):
        decode_onion_address(_raw_address(key, version))


@pytest.mark.parametrize("text", ["", "blah", "blah.onion", TOO_LONG_ADDRESS,
                                  TOO_LONG_ADDRESS[:-2], "a" * 16 + ".onion"])
def test_wrong_length(text: str) -> None:
    with pytest.raises(AddressError, match="56 base32 characters"):
        decode_onion_address(text)


@pytest.mark.parametrize("bad", ["?", "0", "1", "8", "9", "=", " ", "é", "\x00", "-", "\u212a"])
def test_alphabet(bad: str) -> None:
    address = ADDRESS_OF_0x42[:20] + bad + ADDRESS_OF_0x42[21:]
    with pytest.raises(AddressError, match="outside base32"):
        decode_onion_address(address)


def test_non_ascii_lookalikes_are_rejected() -> None:
    # U+212A KELVIN SIGN lowercases to ASCII "k"; it must not pass as base32.
    address = "\u212a" + ADDRESS_OF_0x42[1:]
    assert address.lower()[0] == "k"
    with pytest.raises(AddressError, match="non-ASCII"):
        decode_onion_address(address)


def test_tor_undecodable_vector() -> None:
    with pytest.raises(AddressError, match="outside base32"):
        decode_onion_address("?" * 56)


@pytest.mark.parametrize("template", [
    "{a}.onion.onion",
    "www.{a}.onion",
    "x.{a}",
    "{a}.onion.",
    "{a}.",
    "{a}.com",
    ".{a}.onion",
    " {a}.onion",
    "{a}.onion\n",
    "{a}onion",
])
def test_suffix_and_subdomain_forms_are_rejected(template: str) -> None:
    text = template.format(a=ADDRESS_OF_0x42)
    with pytest.raises(AddressError):
        decode_onion_address(text)
    assert not is_valid_onion_address(text)


def test_suffix_error_names_the_suffix() -> None:
    with pytest.raises(AddressError, match="suffix or subdomain"):
        decode_onion_address(f"www.{ADDRESS_OF_0x42}.onion")
    with pytest.raises(AddressError, match="suffix or subdomain"):
        decode_onion_address(f"{ADDRESS_OF_0x42}.onion.onion")


@pytest.mark.parametrize("value", [None, 42, b"abc", ADDRESS_OF_0x42.encode()])
def test_non_string_input(value: object) -> None:
    with pytest.raises(AddressError, match="string"):
        decode_onion_address(value)  # type: ignore[arg-type]


@pytest.mark.parametrize("key", [b"", b"\x00" * 31, b"\x00" * 33, "x" * 32])
def test_encode_rejects_bad_keys(key: object) -> None:
    with pytest.raises(AddressError, match="32 bytes"):
        encode_onion_address(key)  # type: ignore[arg-type]


def test_address_error_is_an_onionmesh_error() -> None:
    assert issubclass(AddressError, OnionmeshError)
