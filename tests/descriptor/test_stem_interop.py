"""Cross-check with an independent implementation: stem 1.8.2 (test-only dependency).

* Descriptors we build are parsed and decrypted by stem.
* Descriptors stem builds are parsed, verified and decrypted by us.

Known stem differences (documented, not bugs of ours): stem pads the middle layer
with ``len % 10000`` NULs instead of up to the next multiple of 10000, so sizes are
not compared; stem's fake ``auth-client`` cookies are 16 bytes (we skip such entries,
as old tor wrote them too); ``IntroductionPointV3.create_for_link_specifiers`` puts
the *auth* key in the enc-key-cert, which our verifier rejects, so the stem-side
intro points below are assembled with correct certificates from stem's own classes.
"""

from __future__ import annotations

import base64
import datetime
import os
import warnings

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from onionmesh.crypto.blinding import blinding_factor
from onionmesh.crypto.keys import Ed25519Identity
from onionmesh.descriptor import (
    BadCertificate,
    build_descriptor,
    parse_descriptor,
    x25519_to_ed25519,
)
from tests.descriptor.conftest import NOW, PERIOD, PERIOD_LENGTH, random_intro_point

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import stem.client.datatype as stem_datatype
    import stem.descriptor.hidden_service as stem_hs
    from stem.client.datatype import CertType
    from stem.descriptor.certificate import (
        Ed25519CertificateV1,
        Ed25519Extension,
        ExtensionType,
    )

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _raw(key) -> bytes:
    return key.public_key().public_bytes_raw()


@pytest.mark.parametrize("count", [0, 1, 3, 20])
def test_stem_decrypts_what_we_build(master: Ed25519Identity, count: int) -> None:
    intros = [random_intro_point(i) for i in range(count)]
    text = build_descriptor(master, PERIOD, PERIOD_LENGTH, 4242, intros, now=NOW,
                            flow_control="1-2 31")
    parsed = stem_hs.HiddenServiceDescriptorV3.from_str(text, validate=True)
    assert parsed.revision_counter == 4242
    inner = parsed.decrypt(master.onion_address)
    assert len(inner.introduction_points) == count
    for ours, theirs in zip(intros, inner.introduction_points, strict=True):
        assert theirs.link_specifiers[0].address == ".".join(
            str(b) for b in ours.link_specifiers[0].data[:4])
        assert theirs.link_specifiers[1].value == ours.link_specifiers[1].data
        assert theirs.onion_key_raw.encode() == base64.b64encode(ours.onion_key)
        assert theirs.auth_key_cert.key == ours.auth_key
        assert theirs.enc_key_raw.encode() == base64.b64encode(ours.enc_key)
    # stem also sees the signing key cert chain pointing at the blinded key
    assert parsed.signing_cert.signing_key() is not None


def _stem_intro_point(signing_key: Ed25519PrivateKey, expiration: datetime.datetime):
    onion_key, enc_key = X25519PrivateKey.generate(), X25519PrivateKey.generate()
    auth_key = Ed25519PrivateKey.generate()
    extensions = [Ed25519Extension(ExtensionType.HAS_SIGNING_KEY, None, _raw(signing_key))]
    auth_cert = Ed25519CertificateV1(CertType.HS_V3_INTRO_AUTH, expiration, 1, _raw(auth_key),
                                     extensions, signing_key=signing_key)
    enc_cert = Ed25519CertificateV1(CertType.HS_V3_NTOR_ENC, expiration, 1,
                                    x25519_to_ed25519(_raw(enc_key)), extensions,
                                    signing_key=signing_key)
    specs = [stem_datatype.LinkByIPv4("192.0.2.7", 9001),
             stem_datatype.LinkByFingerprint(os.urandom(20))]
    return stem_hs.IntroductionPointV3(
        specs, base64.b64encode(_raw(onion_key)).decode(), auth_cert,
        base64.b64encode(_raw(enc_key)).decode(), enc_cert, None, None,
    )


def _stem_descriptor(count: int, *, bad_enc_cert: bool = False) -> tuple[str, str, list]:
    identity = Ed25519PrivateKey.generate()
    signing = Ed25519PrivateKey.generate()
    expiration = datetime.datetime.fromtimestamp(NOW + 24 * 3600, datetime.UTC).replace(
        tzinfo=None)
    if bad_enc_cert:
        intros = [stem_hs.IntroductionPointV3.create_for_link_specifiers(
            [stem_datatype.LinkByIPv4("192.0.2.7", 9001)], expiration=expiration,
            signing_key=signing)]
    else:
        intros = [_stem_intro_point(signing, expiration) for _ in range(count)]
    factor = blinding_factor(_raw(identity), PERIOD, PERIOD_LENGTH)
    text = stem_hs.HiddenServiceDescriptorV3.content(
        identity_key=identity, signing_key=signing, revision_counter=77,
        inner_layer=stem_hs.InnerLayer.create(introduction_points=intros),
        blinding_nonce=factor,
    ).decode()
    return text, stem_hs.HiddenServiceDescriptorV3.address_from_identity_key(identity), intros


@pytest.mark.parametrize("count", [1, 4, 10])
def test_we_verify_and_decrypt_what_stem_builds(count: int) -> None:
    text, address, intros = _stem_descriptor(count)
    desc = parse_descriptor(text, address, now=NOW)
    assert desc.period_number == PERIOD
    assert desc.revision_counter == 77
    assert len(desc.intro_points) == count
    for ours, theirs in zip(desc.intro_points, intros, strict=True):
        assert ours.auth_key == theirs.auth_key_cert.key
        assert ours.link_specifiers[0].data[:4] == bytes([192, 0, 2, 7])
        assert ours.auth_key_cert.signing_key == desc.signing_key


def test_stem_create_for_link_specifiers_enc_cert_is_rejected() -> None:
    """stem certifies the auth key in the enc-key-cert; we name that precisely."""
    text, address, _ = _stem_descriptor(1, bad_enc_cert=True)
    with pytest.raises(BadCertificate, match="enc-key-cert certifies a different key"):
        parse_descriptor(text, address, now=NOW)
