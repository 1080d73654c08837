"""Smoke tests of the onionmesh.crypto contract that other modules code against."""

import os

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from onionmesh.crypto.address import decode_onion_address, encode_onion_address
from onionmesh.crypto.blinding import BlindedKey, blind_identity, blind_public_key
from onionmesh.crypto.certs import (
    CERT_TYPE_HS_DESC_SIGNING,
    Signer,
    create_certificate,
    parse_certificate,
    parse_certificate_pem,
)
from onionmesh.crypto.keys import Ed25519Identity, verify_signature


def test_identity_from_seed_matches_rfc8032_library() -> None:
    seed = os.urandom(32)
    identity = Ed25519Identity.from_seed(seed)
    reference = Ed25519PrivateKey.from_private_bytes(seed)
    public = reference.public_key().public_bytes(serialization.Encoding.Raw,
                                                 serialization.PublicFormat.Raw)
    assert identity.public_key == public
    assert identity.sign(b"message") == reference.sign(b"message")
    assert len(identity.expanded) == 64


def test_address_round_trip() -> None:
    identity = Ed25519Identity.generate()
    address = identity.onion_address
    assert address.endswith(".onion") and len(address) == 62
    assert decode_onion_address(address) == identity.public_key
    assert encode_onion_address(identity.public_key) == address


def test_blinded_signature_verifies_under_blinded_key() -> None:
    identity = Ed25519Identity.generate()
    blinded = blind_identity(identity, 20000, 1440)
    assert isinstance(blinded, BlindedKey)
    assert blinded.public_key == blind_public_key(identity.public_key, 20000, 1440)
    assert blinded.public_key != identity.public_key
    signature = blinded.sign(b"descriptor body")
    assert verify_signature(blinded.public_key, b"descriptor body", signature)
    assert not verify_signature(identity.public_key, b"descriptor body", signature)


def test_certificate_round_trip_with_both_signers() -> None:
    identity = Ed25519Identity.generate()
    blinded = blind_identity(identity, 1, 1440)
    desc_key = Ed25519Identity.generate()
    for signer in (identity, blinded):
        assert isinstance(signer, Signer)
        cert = create_certificate(CERT_TYPE_HS_DESC_SIGNING, desc_key.public_key, signer,
                                  expires_at=1_700_000_000)
        assert cert.signing_key == signer.public_key
        again = parse_certificate(cert.encode())
        assert again == cert
        assert parse_certificate_pem(cert.to_pem()) == cert
        again.verify()
        again.verify(signer.public_key, now=1_699_999_999)


def test_secret_material_not_in_repr() -> None:
    identity = Ed25519Identity.generate()
    blinded = blind_identity(identity, 5, 1440)
    for text in (repr(identity), repr(blinded), str(identity)):
        assert identity.expanded.hex() not in text
        assert identity.expanded[:32].hex() not in text
        assert blinded.expanded_secret[:32].hex() not in text
