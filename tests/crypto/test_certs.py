"""Tor ed25519 certificates: real tor certificates, round trips, tampering, strictness."""

import base64

import pytest

from onionmesh.crypto.blinding import blind_identity
from onionmesh.crypto.certs import (
    CERT_TYPE_HS_DESC_SIGNING,
    CERT_TYPE_HS_INTRO_AUTH,
    CERT_TYPE_HS_INTRO_ENC,
    CertExtension,
    CertificateError,
    Ed25519Certificate,
    create_certificate,
    parse_certificate,
    parse_certificate_pem,
)
from onionmesh.crypto.keys import Ed25519Identity

# Real certificates made by tor, from stem's test data (torproject/stem,
# test/unit/descriptor/data/...):
# hidden_service_v3: the descriptor-signing-key-cert (type 8, signed by the blinded key).
HS_DESC_CERT_PEM = """-----BEGIN ED25519 CERT-----
AQgABqKwAQVql1QZETyEwJjg+Cv6f2w/cp+c3juj01NPBaJqihboAQAgBACx+FKK
oDrFE1+ztSxzN8sApKOb5UuDtoe/E03DxZU5+r/K5AV6G0hYn21V7Xbu2pZHvIkT
2oVY4hypWNJE58eFBRFRzBA0J2h0GyFs1pIuRh5QDJuxB5j92V0aRCNZFgM=
-----END ED25519 CERT-----"""
HS_DESC_CERT_BLINDED_KEY = "b1f8528aa03ac5135fb3b52c7337cb00a4a39be54b83b687bf134dc3c59539fa"
HS_DESC_CERT_SIGNING_KEY = "056a975419113c84c098e0f82bfa7f6c3f729f9cde3ba3d3534f05a26a8a16e8"
HS_DESC_CERT_EXPIRY_HOURS = 434864  # 2019-08-11 08:00 UTC
# server_descriptor_with_ed25519 (Tor 0.2.7.2): identity-ed25519 (type 4) with its
# master-key-ed25519, and the ntor-onion-key-crosscert (type 0x0A), which certifies the
# master key, carries no signed-with-key extension and is signed with the ed25519 form
# of the relay's curve25519 ntor-onion-key (sign bit 0, as "ntor-onion-key-crosscert 0"
# says; tor-spec / dir-spec).
RELAY_IDENTITY_CERT_PEM = """-----BEGIN ED25519 CERT-----
AQQABhtZAaW2GoBED1IjY3A6f6GNqBEl5A83fD2Za9upGke51JGqAQAgBABnprVR
ptIr43bWPo2fIzo3uOywfoMrryprpbm4HhCkZMaO064LP+1KNuLvlc8sGG8lTjx1
g4k3ELuWYgHYWU5rAia7nl4gUfBZOEfHAfKES7l3d63dBEjEX98Ljhdp2w4=
-----END ED25519 CERT-----"""
RELAY_MASTER_KEY_B64 = "Z6a1UabSK+N21j6NnyM6N7jssH6DK68qa6W5uB4QpGQ"
RELAY_NTOR_ONION_KEY_B64 = "JCj8BOqk0Khfp1hfoJaDbSTzNgeA/u2pSAXnaR3vhl0="
RELAY_NTOR_CROSSCERT_PEM = """-----BEGIN ED25519 CERT-----
AQoABhtwAWemtVGm0ivjdtY+jZ8jOje47LB+gyuvKmulubgeEKRkAHj4IPqm+osx
vbKfvRHeZ0uaghFPZr76UVPYwuK4N+VcW75yq2vuFSsFTCJqamPB3PIdSz6rbx4U
4F3iroztLAQ=
-----END ED25519 CERT-----"""


def _master_key() -> bytes:
    return base64.b64decode(RELAY_MASTER_KEY_B64 + "=")


def _ntor_ed25519_key() -> bytes:
    """Birational map from curve25519 u to ed25519 y = (u - 1) / (u + 1), sign bit 0."""
    prime = 2**255 - 19
    u = int.from_bytes(base64.b64decode(RELAY_NTOR_ONION_KEY_B64), "little")
    y = (u - 1) * pow(u + 1, -1, prime) % prime
    return y.to_bytes(32, "little")


def _pem_bytes(pem: str) -> bytes:
    return base64.b64decode("".join(pem.splitlines()[1:-1]))


def test_real_hs_descriptor_signing_cert() -> None:
    cert = parse_certificate_pem(HS_DESC_CERT_PEM)
    assert cert.cert_type == CERT_TYPE_HS_DESC_SIGNING
    assert cert.expiration_hours == HS_DESC_CERT_EXPIRY_HOURS
    assert cert.expires_at == HS_DESC_CERT_EXPIRY_HOURS * 3600
    assert cert.key_type == 1
    assert cert.certified_key.hex() == HS_DESC_CERT_SIGNING_KEY
    assert cert.signing_key is not None
    assert cert.signing_key.hex() == HS_DESC_CERT_BLINDED_KEY
    assert [(e.ext_type, e.flags) for e in cert.extensions] == [(4, 0)]
    cert.verify()
    cert.verify(bytes.fromhex(HS_DESC_CERT_BLINDED_KEY), now=cert.expires_at)
    assert cert.encode() == _pem_bytes(HS_DESC_CERT_PEM)
    assert cert.to_pem() == HS_DESC_CERT_PEM


def test_real_cert_expiry_is_enforced() -> None:
    cert = parse_certificate_pem(HS_DESC_CERT_PEM)
    with pytest.raises(CertificateError, match="expired"):
        cert.verify(now=cert.expires_at + 1)


def test_real_relay_certs_with_and_without_signing_key_extension() -> None:
    identity_cert = parse_certificate_pem(RELAY_IDENTITY_CERT_PEM)
    assert identity_cert.cert_type == 4
    assert identity_cert.signing_key == _master_key()
    identity_cert.verify()

    crosscert = parse_certificate_pem(RELAY_NTOR_CROSSCERT_PEM)
    assert crosscert.cert_type == 0x0A
    assert crosscert.signing_key is None and crosscert.extensions == ()
    assert crosscert.certified_key == _master_key()
    with pytest.raises(CertificateError, match="no signing key"):
        crosscert.verify()
    crosscert.verify(_ntor_ed25519_key())
    with pytest.raises(CertificateError, match="does not verify"):
        crosscert.verify(_master_key())


@pytest.mark.parametrize("pem", [HS_DESC_CERT_PEM, RELAY_IDENTITY_CERT_PEM,
                                 RELAY_NTOR_CROSSCERT_PEM])
def test_every_single_byte_tamper_is_detected(pem: str) -> None:
    raw = _pem_bytes(pem)
    key = None if raw[39] else _ntor_ed25519_key()  # no extension: give the key
    parse_certificate(raw).verify(key)
    for pos in range(len(raw)):
        tampered = raw[:pos] + bytes([raw[pos] ^ 0x01]) + raw[pos + 1:]
        with pytest.raises(CertificateError):
            parse_certificate(tampered).verify(key)


def test_signing_key_argument_must_match_extension() -> None:
    cert = parse_certificate_pem(HS_DESC_CERT_PEM)
    with pytest.raises(CertificateError, match="another key"):
        cert.verify(_master_key())


@pytest.mark.parametrize("cert_type", [CERT_TYPE_HS_DESC_SIGNING, CERT_TYPE_HS_INTRO_AUTH,
                                       CERT_TYPE_HS_INTRO_ENC])
def test_round_trip_for_hs_cert_types(cert_type: int) -> None:
    signer = blind_identity(Ed25519Identity.generate(), 20100, 1440)
    subject = Ed25519Identity.generate().public_key
    cert = create_certificate(cert_type, subject, signer, expires_at=1_800_000_000)
    assert cert.cert_type == cert_type and cert.certified_key == subject
    parsed = parse_certificate(cert.encode())
    assert parsed == cert
    parsed.verify(signer.public_key, now=1_799_999_000)
    assert parse_certificate_pem(parsed.to_pem()) == cert


def test_without_signing_key_extension() -> None:
    signer = Ed25519Identity.generate()
    cert = create_certificate(CERT_TYPE_HS_INTRO_AUTH, b"\x01" * 32, signer, 1_800_000_000,
                              include_signing_key=False)
    assert cert.extensions == () and cert.signing_key is None
    assert len(cert.encode()) == 40 + 64
    parse_certificate(cert.encode()).verify(signer.public_key)
    with pytest.raises(CertificateError, match="no signing key"):
        cert.verify()


def test_expiry_rounds_up_to_the_hour_like_tor() -> None:
    signer = Ed25519Identity.generate()
    exact = create_certificate(8, b"\x02" * 32, signer, expires_at=3600 * 500_000)
    assert exact.expiration_hours == 500_000
    later = create_certificate(8, b"\x02" * 32, signer, expires_at=3600 * 500_000 + 1)
    assert later.expiration_hours == 500_001
    later.verify(now=3600 * 500_000 + 3600)
    with pytest.raises(CertificateError, match="expired"):
        later.verify(now=3600 * 500_000 + 3601)


def test_pem_lines_are_64_characters() -> None:
    signer = Ed25519Identity.generate()
    pem = create_certificate(8, b"\x03" * 32, signer, 1_800_000_000).to_pem()
    lines = pem.split("\n")
    assert lines[0] == "-----BEGIN ED25519 CERT-----"
    assert lines[-1] == "-----END ED25519 CERT-----"
    body = lines[1:-1]
    assert all(len(line) == 64 for line in body[:-1]) and 0 < len(body[-1]) <= 64


def _resign(cert: Ed25519Certificate, signer: Ed25519Identity,
            extensions: tuple[CertExtension, ...]) -> Ed25519Certificate:
    unsigned = Ed25519Certificate(cert.cert_type, cert.expiration_hours, cert.key_type,
                                  cert.certified_key, cert.signing_key, extensions, b"\0" * 64)
    return Ed25519Certificate(cert.cert_type, cert.expiration_hours, cert.key_type,
                              cert.certified_key, cert.signing_key, extensions,
                              signer.sign(unsigned.signed_body()))


def test_unknown_extension_affecting_validation_fails_verify() -> None:
    signer = Ed25519Identity.generate()
    cert = create_certificate(8, b"\x04" * 32, signer, 1_800_000_000)
    harmless = CertExtension(0x7F, 0, b"future")
    ok = parse_certificate(_resign(cert, signer, (*cert.extensions, harmless)).encode())
    ok.verify()
    assert ok.extensions[1] == harmless
    critical = CertExtension(0x7F, 1, b"future")
    bad = parse_certificate(_resign(cert, signer, (*cert.extensions, critical)).encode())
    with pytest.raises(CertificateError, match="AFFECTS_VALIDATION"):
        bad.verify()


def test_strict_parsing_errors() -> None:
    signer = Ed25519Identity.generate()
    raw = create_certificate(8, b"\x05" * 32, signer, 1_800_000_000).encode()
    cases = {
        "too short": raw[:50],
        "version": b"\x02" + raw[1:],
        "unexpected bytes": raw[:-64] + b"\x00" + raw[-64:],
        "runs past": raw[:39] + b"\x02" + raw[40:],
    }
    for expected, data in cases.items():
        with pytest.raises(CertificateError, match=expected):
            parse_certificate(data)
    # A duplicated or wrong-size signed-with-key extension, as tor's parser rejects.
    body = raw[:-64]
    ext = body[40:]
    dup = body[:39] + b"\x02" + ext + ext + raw[-64:]
    with pytest.raises(CertificateError, match="duplicate"):
        parse_certificate(dup)
    short_ext = body[:40] + b"\x00\x1f\x04\x00" + ext[4:-1] + raw[-64:]
    with pytest.raises(CertificateError, match="expected 32"):
        parse_certificate(short_ext)


@pytest.mark.parametrize("text", [
    "", "hello", "-----BEGIN ED25519 CERT-----\n-----END ED25519 CERT-----",
    "-----BEGIN ED25519 CERT-----\n!!!!\n-----END ED25519 CERT-----",
    "-----BEGIN ED25519 CERT-----\nQUJD\n-----END ED25519 CERT-----",
    "-----BEGIN RSA PUBLIC KEY-----\nQUJD\n-----END RSA PUBLIC KEY-----",
])
def test_bad_pem(text: str) -> None:
    with pytest.raises(CertificateError):
        parse_certificate_pem(text)


def test_create_rejects_bad_arguments() -> None:
    signer = Ed25519Identity.generate()
    with pytest.raises(CertificateError, match="32 bytes"):
        create_certificate(8, b"\x01" * 31, signer, 1_800_000_000)
    with pytest.raises(CertificateError, match="one byte"):
        create_certificate(256, b"\x01" * 32, signer, 1_800_000_000)
    with pytest.raises(CertificateError, match="expiry"):
        create_certificate(8, b"\x01" * 32, signer, float("nan"))
    with pytest.raises(CertificateError, match="32-bit"):
        create_certificate(8, b"\x01" * 32, signer, 3600.0 * 2**32 + 1)
