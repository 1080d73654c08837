"""Intro points: text round trip, link specifiers, x25519->ed25519, recertification."""

from __future__ import annotations

import os

import nacl.bindings
import pytest

from onionmesh.crypto.certs import CERT_TYPE_HS_INTRO_AUTH, CERT_TYPE_HS_INTRO_ENC
from onionmesh.crypto.keys import Ed25519Identity
from onionmesh.descriptor import (
    BadIntroPoint,
    IntroPoint,
    LinkSpecifier,
    parse_intro_point,
    recertify,
    verify_intro_point,
    x25519_to_ed25519,
)
from onionmesh.descriptor.intro import decode_link_specifiers, encode_link_specifiers
from tests.descriptor.conftest import NOW, keys_only, random_intro_point

EXPIRES = NOW + 54 * 3600
LEGACY_KEY = ("-----BEGIN RSA PUBLIC KEY-----\n"
              "MIGJAoGBAMO3ZXrcA+PclKppGCh9TOG0H6mubTAgji4fLF87GelggQs5bnPdQeaS\n"
              "-----END RSA PUBLIC KEY-----")
LEGACY_CERT = "-----BEGIN CROSSCERT-----\nkuaA+ldVLn1ITJ0qPttG+8B25U6pC3e7\n-----END CROSSCERT-----"


def test_x25519_to_ed25519_inverts_libsodium() -> None:
    """libsodium maps ed25519 -> x25519; our map must be its inverse with sign bit 0."""
    for _ in range(50):
        ed_public = Ed25519Identity.generate().public_key
        u = nacl.bindings.crypto_sign_ed25519_pk_to_curve25519(ed_public)
        converted = x25519_to_ed25519(u)
        assert converted[31] & 0x80 == 0
        assert converted == ed_public[:31] + bytes([ed_public[31] & 0x7F])


def test_intro_point_text_round_trip() -> None:
    signer = Ed25519Identity.generate()
    ip = recertify(random_intro_point(3), signer, EXPIRES)
    text = ip.encode()
    assert text.startswith("introduction-point ") and text.endswith("\n")
    assert parse_intro_point(text) == ip
    verify_intro_point(ip, signer.public_key, NOW)


def test_legacy_key_survives_parse_but_not_recertify() -> None:
    signer = Ed25519Identity.generate()
    base = recertify(random_intro_point(), signer, EXPIRES)
    legacy = IntroPoint(**{**base.__dict__, "legacy_key": LEGACY_KEY,
                           "legacy_key_cert": LEGACY_CERT})
    parsed = parse_intro_point(legacy.encode())
    assert parsed.legacy_key == LEGACY_KEY and parsed.legacy_key_cert == LEGACY_CERT
    renewed = recertify(parsed, Ed25519Identity.generate(), EXPIRES)
    assert renewed.legacy_key is None and renewed.legacy_key_cert is None


def test_recertify_keeps_keys_and_uses_new_signer() -> None:
    first, second = Ed25519Identity.generate(), Ed25519Identity.generate()
    original = recertify(random_intro_point(), first, EXPIRES)
    renewed = recertify(original, second, EXPIRES)
    assert keys_only(renewed) == keys_only(original)
    assert renewed.auth_key_cert.cert_type == CERT_TYPE_HS_INTRO_AUTH
    assert renewed.enc_key_cert.cert_type == CERT_TYPE_HS_INTRO_ENC
    assert renewed.auth_key_cert.signing_key == second.public_key
    assert renewed.enc_key_cert.certified_key == x25519_to_ed25519(renewed.enc_key)
    verify_intro_point(renewed, second.public_key, NOW)


def test_uncertified_intro_point_cannot_be_encoded() -> None:
    with pytest.raises(BadIntroPoint, match="no certificates"):
        random_intro_point().encode()


def test_link_specifier_codec() -> None:
    specs = (LinkSpecifier(0, bytes([127, 0, 0, 1, 0x23, 0x29])), LinkSpecifier(3, os.urandom(32)),
             LinkSpecifier(99, b"future"))
    assert decode_link_specifiers(encode_link_specifiers(specs)) == specs


@pytest.mark.parametrize(("data", "reason"), [
    (b"", "no link specifiers"),
    (b"\x00", "no link specifiers"),
    (b"\x01\x00\x06\x01\x02", "truncated"),
    (b"\x01\x00\x05" + b"\x00" * 5, "bad length"),
    (b"\x01\x03\x20" + b"\x00" * 33, "trailing bytes"),
])
def test_bad_link_specifiers(data: bytes, reason: str) -> None:
    with pytest.raises(BadIntroPoint, match=reason):
        decode_link_specifiers(data)


def test_intro_point_missing_pieces() -> None:
    text = recertify(random_intro_point(), Ed25519Identity.generate(), EXPIRES).encode()
    without_enc = "\n".join(line for line in text.splitlines() if not line.startswith("enc-key "))
    with pytest.raises(BadIntroPoint, match="enc-key"):
        parse_intro_point(without_enc)
    with pytest.raises(BadIntroPoint, match="must start"):
        parse_intro_point(text.replace("introduction-point", "introduction-pointe", 1))


@pytest.mark.parametrize("field", ["onion_key", "auth_key", "enc_key"])
def test_intro_point_key_lengths_checked(field: str) -> None:
    good = random_intro_point()
    with pytest.raises(BadIntroPoint, match=field):
        IntroPoint(**{**good.__dict__, field: b"\x01" * 31})


@pytest.mark.parametrize(("address", "port"), [("300.1.1.1", 80), ("::1", 80), ("1.2.3.4", 0)])
def test_ipv4_link_specifier_checks(address: str, port: int) -> None:
    from onionmesh.descriptor.intro import ipv4_link_specifier

    with pytest.raises(BadIntroPoint):
        ipv4_link_specifier(address, port)
