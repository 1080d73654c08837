"""Tampering anywhere in a descriptor gives the typed error naming that link of the chain.

Where a change would be caught first by the descriptor signature, the test re-signs the
altered descriptor with the descriptor-signing key (and re-encrypts layers as needed),
so the deeper check is the one exercised.
"""

from __future__ import annotations

import base64
from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from onionmesh.crypto.blinding import blind_identity
from onionmesh.crypto.certs import (
    CERT_TYPE_HS_DESC_SIGNING,
    CERT_TYPE_HS_INTRO_AUTH,
    create_certificate,
)
from onionmesh.crypto.keys import Ed25519Identity
from onionmesh.descriptor import (
    BadCertificate,
    BadSignature,
    ClientAuthRequired,
    DescriptorError,
    ExpiredCertificate,
    MacMismatch,
    MalformedDescriptor,
    WrongBlindedKey,
    build_descriptor,
    parse_descriptor,
)
from onionmesh.descriptor.build import SIGNATURE_PREFIX
from onionmesh.descriptor.layers import (
    ENCRYPTED_CONSTANT,
    SUPERENCRYPTED_CONSTANT,
    b64_multiline,
    b64_nopad,
    decrypt_layer,
    encrypt_layer,
    find_descriptor_cookie,
    subcredential,
)
from onionmesh.descriptor.parse import _parse_middle, _parse_outer
from tests.descriptor.conftest import NOW, PERIOD, PERIOD_LENGTH, random_intro_point

MESSAGE = "-----BEGIN MESSAGE-----\n"
EXPIRES = float(-(-(int(NOW) + 54 * 3600) // 3600) * 3600)  # when our signing cert expires


def _same(value):
    return value


class Built:
    """A descriptor plus the keys needed to alter and re-sign it."""

    def __init__(self, count: int = 2, client: bool = False) -> None:
        self.master = Ed25519Identity.generate()
        self.signer = Ed25519Identity.generate()
        self.blinded = blind_identity(self.master, PERIOD, PERIOD_LENGTH)
        self.client_sk = None
        keys = []
        if client:
            private = X25519PrivateKey.generate()
            self.client_sk = private.private_bytes_raw()
            keys = [private.public_key().public_bytes_raw()]
        self.text = build_descriptor(self.master, PERIOD, PERIOD_LENGTH, 31,
                                     [random_intro_point(i) for i in range(count)], now=NOW,
                                     signing_key=self.signer, client_auth_keys=keys)

    def parse(self, text: str, **kwargs) -> object:
        kwargs.setdefault("period_number", PERIOD)
        kwargs.setdefault("now", NOW)
        kwargs.setdefault("client_secret_key", self.client_sk)
        return parse_descriptor(text, self.master.onion_address, **kwargs)

    def sign(self, body: str) -> str:
        signature = self.signer.sign(SIGNATURE_PREFIX + body.encode())
        return f"{body}signature {b64_nopad(signature)}\n"

    def body(self) -> str:
        return self.text[: self.text.rindex("signature ")]

    def rewrap(
        self,
        *,
        inner: Callable[[str], str] = _same,
        inner_blob: Callable[[bytes], bytes] = _same,
        middle: Callable[[str], str] = _same,
        outer_blob: Callable[[bytes], bytes] = _same,
    ) -> str:
        key = self.blinded.public_key
        subcred = subcredential(self.master.public_key, key)
        outer = _parse_outer(self.text)
        mid = decrypt_layer(outer.superencrypted, key, subcred, 31, SUPERENCRYPTED_CONSTANT,
                            what="middle").decode()
        ephemeral, clients, _, blob = _parse_middle(mid)
        cookie = b""
        if self.client_sk is not None:
            cookie = find_descriptor_cookie(clients, ephemeral, self.client_sk, subcred)
        plain = decrypt_layer(blob, key + cookie, subcred, 31, ENCRYPTED_CONSTANT,
                              what="inner").decode()
        new_blob = inner_blob(encrypt_layer(inner(plain).encode(), key + cookie, subcred, 31,
                                            ENCRYPTED_CONSTANT, pad=False))
        mid = mid[: mid.index("encrypted\n" + MESSAGE)] + "encrypted\n" + MESSAGE + \
            b64_multiline(new_blob) + "-----END MESSAGE-----"
        new_outer = outer_blob(encrypt_layer(middle(mid).encode(), key, subcred, 31,
                                             SUPERENCRYPTED_CONSTANT, pad=True))
        head = self.text[: self.text.index("superencrypted\n")]
        return self.sign(f"{head}superencrypted\n{MESSAGE}{b64_multiline(new_outer)}"
                         "-----END MESSAGE-----\n")


def _flip(data: bytes, position: int = -40) -> bytes:
    damaged = bytearray(data)
    damaged[position] ^= 0x20
    return bytes(damaged)


def _first_cert(text: str, after: str) -> tuple[int, int]:
    start = text.index("-----BEGIN ED25519 CERT-----\n", text.index(after))
    end = text.index("-----END ED25519 CERT-----", start) + len("-----END ED25519 CERT-----")
    return start, end


def _swap_first_cert(text: str, after: str, pem: str) -> str:
    start, end = _first_cert(text, after)
    return text[:start] + pem + text[end:]


def test_untouched_rewrap_still_parses() -> None:
    built = Built()
    assert len(built.parse(built.rewrap()).intro_points) == 2


def test_signature_changed() -> None:
    built = Built()
    head, sig = built.text.rsplit("signature ", 1)
    other = ("A" if sig[0] != "A" else "B") + sig[1:]
    with pytest.raises(BadSignature, match="descriptor signature"):
        built.parse(head + "signature " + other)


@pytest.mark.parametrize(("old", "new"), [("descriptor-lifetime 180", "descriptor-lifetime 179"),
                                          ("revision-counter 31", "revision-counter 32")])
def test_signed_field_changed(old: str, new: str) -> None:
    built = Built()
    with pytest.raises(BadSignature, match="descriptor signature"):
        built.parse(built.text.replace(old, new))


def test_descriptor_signed_by_another_key() -> None:
    built = Built()
    built.signer = Ed25519Identity.generate()
    with pytest.raises(BadSignature, match="descriptor signature"):
        built.parse(built.sign(built.body()))


def test_outer_mac() -> None:
    built = Built()
    with pytest.raises(MacMismatch, match="superencrypted"):
        built.parse(built.rewrap(outer_blob=_flip))


def test_inner_mac_with_client_auth() -> None:
    built = Built(client=True)
    assert built.parse(built.rewrap()).client_auth
    with pytest.raises(MacMismatch, match="encrypted layer"):
        built.parse(built.rewrap(inner_blob=_flip))


def test_inner_mac_without_client_auth_reads_as_auth_required() -> None:
    """Without a cookie, a bad inner MAC cannot be told from a client-auth descriptor."""
    built = Built()
    with pytest.raises(ClientAuthRequired):
        built.parse(built.rewrap(inner_blob=_flip))


def test_signing_cert_signature_broken() -> None:
    built = Built()
    body = built.body()
    start, end = _first_cert(body, "descriptor-signing-key-cert")
    pem = body[start:end]
    last_line = pem.splitlines()[-2]
    changed = last_line[:5] + ("A" if last_line[5] != "A" else "B") + last_line[6:]
    with pytest.raises(BadSignature, match="descriptor-signing-key-cert signature"):
        built.parse(built.sign(body.replace(last_line, changed)))


def test_signing_cert_wrong_type() -> None:
    built = Built()
    wrong = create_certificate(CERT_TYPE_HS_INTRO_AUTH, built.signer.public_key, built.blinded,
                               EXPIRES)
    text = built.sign(_swap_first_cert(built.body(), "descriptor-signing-key-cert",
                                       wrong.to_pem()))
    with pytest.raises(BadCertificate, match="type 0x09"):
        built.parse(text)


def test_signing_cert_without_signing_key_extension() -> None:
    built = Built()
    bare = create_certificate(CERT_TYPE_HS_DESC_SIGNING, built.signer.public_key, built.blinded,
                              EXPIRES, include_signing_key=False)
    text = built.sign(_swap_first_cert(built.body(), "descriptor-signing-key-cert",
                                       bare.to_pem()))
    with pytest.raises(BadCertificate, match="blinded key"):
        built.parse(text)


def test_blinded_key_of_another_service() -> None:
    built = Built()
    other = blind_identity(Ed25519Identity.generate(), PERIOD, PERIOD_LENGTH)
    cert = create_certificate(CERT_TYPE_HS_DESC_SIGNING, built.signer.public_key, other, EXPIRES)
    text = built.sign(_swap_first_cert(built.body(), "descriptor-signing-key-cert", cert.to_pem()))
    with pytest.raises(WrongBlindedKey):
        built.parse(text)


def test_wrong_address() -> None:
    built = Built()
    with pytest.raises(WrongBlindedKey):
        parse_descriptor(built.text, Ed25519Identity.generate().onion_address,
                         period_number=PERIOD, now=NOW)


@pytest.mark.parametrize("period", [PERIOD - 1, PERIOD + 1, PERIOD + 5])
def test_wrong_period(period: int) -> None:
    built = Built()
    with pytest.raises(WrongBlindedKey):
        built.parse(built.text, period_number=period)


def test_period_far_from_now() -> None:
    built = Built()
    with pytest.raises(WrongBlindedKey):
        built.parse(built.text, period_number=None, now=NOW - 5 * 86400)


def test_expired_signing_cert() -> None:
    built = Built()
    with pytest.raises(ExpiredCertificate, match="descriptor-signing-key-cert"):
        built.parse(built.text, now=EXPIRES + 1)


def test_intro_cert_signed_by_another_key() -> None:
    built = Built()
    stranger = Ed25519Identity.generate()

    def swap(inner: str) -> str:
        desc = built.parse(built.text)
        cert = create_certificate(CERT_TYPE_HS_INTRO_AUTH, desc.intro_points[0].auth_key,
                                  stranger, EXPIRES)
        return _swap_first_cert(inner, "auth-key", cert.to_pem())

    with pytest.raises(BadCertificate, match="intro point 0 auth-key cert is signed by"):
        built.parse(built.rewrap(inner=swap))


def test_intro_cert_signature_broken() -> None:
    built = Built()

    def corrupt(inner: str) -> str:
        start, end = _first_cert(inner, "enc-key-cert")
        lines = inner[start:end].splitlines()
        lines[-2] = lines[-2][:3] + ("A" if lines[-2][3] != "A" else "B") + lines[-2][4:]
        return inner[:start] + "\n".join(lines) + inner[end:]

    with pytest.raises(BadSignature, match="intro point 0 enc-key-cert signature"):
        built.parse(built.rewrap(inner=corrupt))


def test_intro_enc_key_swapped() -> None:
    built = Built()
    other = X25519PrivateKey.generate().public_key().public_bytes_raw()

    def swap(inner: str) -> str:
        line_start = inner.index("enc-key ntor ")
        line_end = inner.index("\n", line_start)
        return inner[:line_start] + "enc-key ntor " + base64.b64encode(other).decode() + \
            inner[line_end:]

    with pytest.raises(BadCertificate, match="enc-key-cert certifies a different key"):
        built.parse(built.rewrap(inner=swap))


def test_intro_cert_expired() -> None:
    built = Built()

    def expire(inner: str) -> str:
        desc = built.parse(built.text)
        cert = create_certificate(CERT_TYPE_HS_INTRO_AUTH, desc.intro_points[1].auth_key,
                                  built.signer, NOW - 7200)
        start = inner.index("introduction-point ", inner.index("introduction-point ") + 1)
        return inner[:start] + _swap_first_cert(inner[start:], "auth-key", cert.to_pem())

    with pytest.raises(ExpiredCertificate, match="intro point 1 auth-key cert"):
        built.parse(built.rewrap(inner=expire))


def test_inner_without_ntor_create2() -> None:
    built = Built()
    with pytest.raises(MalformedDescriptor, match="create2-formats"):
        built.parse(built.rewrap(
            inner=lambda s: s.replace("create2-formats 2", "create2-formats 7")))


def test_inner_with_too_many_intro_points() -> None:
    built = Built(count=1)

    def multiply(inner: str) -> str:
        block = inner[inner.index("introduction-point "):]
        return inner + block * 20

    with pytest.raises(MalformedDescriptor, match="21 intro points"):
        built.parse(built.rewrap(inner=multiply))


def test_middle_with_unknown_auth_type() -> None:
    built = Built()
    with pytest.raises(MalformedDescriptor, match="desc-auth-type"):
        built.parse(built.rewrap(middle=lambda s: s.replace("desc-auth-type x25519",
                                                            "desc-auth-type rot13")))


def test_every_single_character_change_is_caught() -> None:
    """Changing any one character of the descriptor never yields a successful parse
    with different content: it is refused with a DescriptorError or parses identically."""
    built = Built(count=1)
    reference = built.parse(built.text)
    step = max(1, len(built.text) // 300)
    for position in range(0, len(built.text), step):
        char = built.text[position]
        replacement = "B" if char != "B" else "C"
        changed = built.text[:position] + replacement + built.text[position + 1:]
        try:
            result = built.parse(changed)
        except DescriptorError:
            continue
        assert result == reference
