"""Introduction points: link specifiers, the text block, verification and recertification.

An intro point block in the inner descriptor layer (rend-spec-v3 [HS-DESC-ENCRYPTED]):

    introduction-point <base64 link specifiers>
    onion-key ntor <base64 x25519 key>
    auth-key
    -----BEGIN ED25519 CERT-----  (type 0x09, certifies the intro auth key)
    enc-key ntor <base64 x25519 key>
    enc-key-cert
    -----BEGIN ED25519 CERT-----  (type 0x0B, certifies the enc key in ed25519 form)
    [legacy-key / legacy-key-cert]

Both certificates are signed by the descriptor-signing key, so a master descriptor
must re-sign them with its own fresh signing key (``recertify``). The legacy RSA
cross-certificate also binds the signing key but cannot be re-signed without the
intro point's RSA key, so recertification drops it (tor 0.4.x no longer emits it).

The x25519 -> ed25519 conversion (birational map ``y = (u - 1) / (u + 1)``, sign bit
0, as tor's ``ed25519_public_key_from_curve25519_public_key``) is written here with
Python integers because neither PyNaCl nor cryptography exposes it (libsodium only
converts the other way).
"""

from __future__ import annotations

import functools
import ipaddress
import struct
from collections.abc import Sequence
from dataclasses import dataclass, replace

from onionmesh.crypto.certs import (
    CERT_TYPE_HS_INTRO_AUTH,
    CERT_TYPE_HS_INTRO_ENC,
    CertificateError,
    Ed25519Certificate,
    Signer,
    create_certificate,
    parse_certificate,
)
from onionmesh.crypto.keys import verify_signature
from onionmesh.descriptor.errors import (
    BadCertificate,
    BadIntroPoint,
    BadSignature,
    ExpiredCertificate,
    MalformedDescriptor,
)
from onionmesh.descriptor.layers import b64_decode, b64_padded
from onionmesh.descriptor.tokens import Item, at_most_one, exactly_one, tokenize

LS_IPV4, LS_IPV6, LS_LEGACY_ID, LS_ED25519_ID = 0, 1, 2, 3
_LS_LENGTHS = {LS_IPV4: 6, LS_IPV6: 18, LS_LEGACY_ID: 20, LS_ED25519_ID: 32}
_P = 2**255 - 19
_EXT_SIGNED_WITH_KEY = 4  # cert-spec: "signed-with-ed25519-key" extension


@dataclass(frozen=True)
class LinkSpecifier:
    """One link specifier (tor-spec EXTEND2): type and raw data."""

    type: int
    data: bytes


@dataclass(frozen=True)
class IntroPoint:
    """One introduction point as carried in the inner descriptor layer."""

    link_specifiers: tuple[LinkSpecifier, ...]
    onion_key: bytes  # 32-byte x25519 ntor onion key of the intro relay
    auth_key: bytes  # 32-byte ed25519 intro-point auth key
    enc_key: bytes  # 32-byte x25519 service encryption key for this intro point
    auth_key_cert: Ed25519Certificate | None = None
    enc_key_cert: Ed25519Certificate | None = None
    legacy_key: str | None = None  # "-----BEGIN RSA PUBLIC KEY-----..." block, as written
    legacy_key_cert: str | None = None  # "-----BEGIN CROSSCERT-----..." block, as written

    def __post_init__(self) -> None:
        for name in ("onion_key", "auth_key", "enc_key"):
            value = getattr(self, name)
            if not isinstance(value, bytes) or len(value) != 32:
                raise BadIntroPoint(f"intro point {name} must be 32 bytes")
        if not self.link_specifiers or not all(
            isinstance(spec, LinkSpecifier) for spec in self.link_specifiers
        ):
            raise BadIntroPoint("intro point needs a tuple of LinkSpecifier")

    def encode(self) -> str:
        """The text block, ending in a newline, exactly as tor writes it."""
        if self.auth_key_cert is None or self.enc_key_cert is None:
            raise BadIntroPoint("intro point has no certificates (recertify it first)")
        lines = [
            f"introduction-point {b64_padded(encode_link_specifiers(self.link_specifiers))}",
            f"onion-key ntor {b64_padded(self.onion_key)}",
            "auth-key",
            self.auth_key_cert.to_pem().rstrip("\n"),
            f"enc-key ntor {b64_padded(self.enc_key)}",
            "enc-key-cert",
            self.enc_key_cert.to_pem().rstrip("\n"),
        ]
        if self.legacy_key is not None and self.legacy_key_cert is not None:
            lines += ["legacy-key", self.legacy_key, "legacy-key-cert", self.legacy_key_cert]
        return "\n".join(lines) + "\n"


def encode_link_specifiers(specs: Sequence[LinkSpecifier]) -> bytes:
    """``NSPEC | (LSTYPE LSLEN LSPEC)*`` as in tor-spec's EXTEND2 cell."""
    if not 1 <= len(specs) <= 255:
        raise BadIntroPoint(f"an intro point needs 1..255 link specifiers, got {len(specs)}")
    out = bytearray([len(specs)])
    for spec in specs:
        if not 0 <= spec.type <= 255 or len(spec.data) > 255:
            raise BadIntroPoint("link specifier type or length out of range")
        out += bytes([spec.type, len(spec.data)]) + spec.data
    return bytes(out)


def decode_link_specifiers(data: bytes) -> tuple[LinkSpecifier, ...]:
    """Parse the binary link-specifier list; known types must have their fixed length."""
    if not data or data[0] == 0:
        raise BadIntroPoint("intro point has no link specifiers")
    specs, pos = [], 1
    for _ in range(data[0]):
        if pos + 2 > len(data):
            raise BadIntroPoint("link specifier list is truncated")
        ls_type, ls_len = data[pos], data[pos + 1]
        body = data[pos + 2 : pos + 2 + ls_len]
        if len(body) != ls_len:
            raise BadIntroPoint("link specifier list is truncated")
        if ls_type in _LS_LENGTHS and ls_len != _LS_LENGTHS[ls_type]:
            raise BadIntroPoint(f"link specifier type {ls_type} has bad length {ls_len}")
        specs.append(LinkSpecifier(ls_type, body))
        pos += 2 + ls_len
    if pos != len(data):
        raise BadIntroPoint("trailing bytes after the link specifier list")
    return tuple(specs)


def ipv4_link_specifier(address: str, port: int) -> LinkSpecifier:
    """Convenience: an IPv4 address:port link specifier."""
    try:
        packed = ipaddress.IPv4Address(address).packed
    except ValueError as exc:
        raise BadIntroPoint(f"{address!r} is not an IPv4 address") from exc
    if not 0 < port < 65536:
        raise BadIntroPoint(f"port {port} is out of range")
    return LinkSpecifier(LS_IPV4, packed + struct.pack(">H", port))


@functools.lru_cache(maxsize=4096)
def x25519_to_ed25519(u_bytes: bytes) -> bytes:
    """The ed25519 form of an x25519 public key with sign bit 0 (rend-spec-v3, enc-key-cert).

    Cached: the same intro point enc keys are re-certified on every master build.
    """
    u = int.from_bytes(u_bytes, "little") & ((1 << 255) - 1)
    denominator = (u + 1) % _P
    # u = -1 has no image; like tor's ref10 code (inverse of 0 is 0) it maps to y = 0.
    inverse = pow(denominator, -1, _P) if denominator else 0
    return ((u - 1) * inverse % _P).to_bytes(32, "little")


def _cert(item: Item, what: str) -> Ed25519Certificate:
    if item.obj is None or item.obj_type != "ED25519 CERT":
        raise BadIntroPoint(f"{what} needs an ED25519 CERT object")
    try:
        return parse_certificate(item.obj)
    except CertificateError as exc:
        raise BadCertificate(f"{what} certificate is unparseable: {exc}") from exc


def _ntor_key(items: list[Item], keyword: str) -> bytes:
    found = None
    for item in items:
        if item.keyword != keyword:
            continue
        if len(item.args) < 2:
            raise BadIntroPoint(f"{keyword!r} needs a key type and a key")
        if item.args[0] == "ntor":
            if found is not None:
                raise BadIntroPoint(f"{keyword!r} ntor is repeated")
            found = b64_decode(item.args[1], f"{keyword} ntor key", length=32)
    if found is None:
        raise BadIntroPoint(f"intro point has no {keyword!r} ntor key")
    return found


def parse_intro_point(text: str) -> IntroPoint:
    """Parse one intro point block (structure only; see ``verify_intro_point``)."""
    try:
        items = tokenize(text, "intro point", BadIntroPoint)
        if not items or items[0].keyword != "introduction-point":
            raise BadIntroPoint("intro point must start with 'introduction-point'")
        first = exactly_one(items, "introduction-point", "intro point", BadIntroPoint)
        if len(first.args) != 1:
            raise BadIntroPoint("'introduction-point' needs exactly one argument")
        specs = decode_link_specifiers(b64_decode(first.args[0], "link specifiers"))
        onion_key = _ntor_key(items, "onion-key")
        enc_key = _ntor_key([exactly_one(items, "enc-key", "intro point", BadIntroPoint)],
                            "enc-key")
        auth_cert = _cert(exactly_one(items, "auth-key", "intro point", BadIntroPoint), "auth-key")
        enc_cert = _cert(exactly_one(items, "enc-key-cert", "intro point", BadIntroPoint),
                         "enc-key-cert")
        legacy = at_most_one(items, "legacy-key", "intro point", BadIntroPoint)
        legacy_cert = at_most_one(items, "legacy-key-cert", "intro point", BadIntroPoint)
    except BadCertificate:
        raise
    except MalformedDescriptor as exc:
        if isinstance(exc, BadIntroPoint):
            raise
        raise BadIntroPoint(str(exc)) from exc
    legacy_text = legacy_cert_text = None
    if legacy is not None or legacy_cert is not None:
        if legacy is None or legacy_cert is None:
            raise BadIntroPoint("'legacy-key' and 'legacy-key-cert' must appear together")
        if legacy.obj_type != "RSA PUBLIC KEY" or legacy_cert.obj_type != "CROSSCERT":
            raise BadIntroPoint("legacy key or cross-certificate has the wrong object type")
        legacy_text, legacy_cert_text = legacy.obj_text, legacy_cert.obj_text
    return IntroPoint(
        link_specifiers=specs,
        onion_key=onion_key,
        auth_key=auth_cert.certified_key,
        enc_key=enc_key,
        auth_key_cert=auth_cert,
        enc_key_cert=enc_cert,
        legacy_key=legacy_text,
        legacy_key_cert=legacy_cert_text,
    )


def check_certificate(
    cert: Ed25519Certificate, cert_type: int, signing_key: bytes, now: float, what: str
) -> None:
    """Type, embedded signing key, expiry and signature of one certificate; typed errors."""
    if cert.cert_type != cert_type:
        raise BadCertificate(f"{what} has type {cert.cert_type:#04x}, expected {cert_type:#04x}")
    if cert.signing_key is None:
        raise BadCertificate(f"{what} does not include its signing key")
    if cert.signing_key != signing_key:
        raise BadCertificate(f"{what} is signed by an unexpected key")
    for ext in cert.extensions:
        if ext.ext_type != _EXT_SIGNED_WITH_KEY and ext.affects_validation:
            raise BadCertificate(f"{what} has an unknown extension that affects validation")
    if now > cert.expires_at:
        raise ExpiredCertificate(f"{what} expired at {cert.expires_at} (now {int(now)})")
    try:
        body = cert.signed_body()
    except CertificateError as exc:
        raise BadCertificate(f"{what} is malformed: {exc}") from exc
    if not verify_signature(signing_key, body, cert.signature):
        raise BadSignature(f"{what} signature does not verify")


def verify_intro_point(ip: IntroPoint, signing_key: bytes, now: float, index: int = 0) -> None:
    """Check both certificates of ``ip`` against the descriptor-signing key at ``now``."""
    what = f"intro point {index}"
    if ip.auth_key_cert is None or ip.enc_key_cert is None:
        raise BadCertificate(f"{what} lacks a certificate")
    check_certificate(ip.auth_key_cert, CERT_TYPE_HS_INTRO_AUTH, signing_key, now,
                      f"{what} auth-key cert")
    if ip.auth_key_cert.certified_key != ip.auth_key:
        raise BadCertificate(f"{what} auth-key cert certifies a different key")
    check_certificate(ip.enc_key_cert, CERT_TYPE_HS_INTRO_ENC, signing_key, now,
                      f"{what} enc-key-cert")
    if ip.enc_key_cert.certified_key != x25519_to_ed25519(ip.enc_key):
        raise BadCertificate(f"{what} enc-key-cert certifies a different key")


def recertify(ip: IntroPoint, signer: Signer, expires_at: float) -> IntroPoint:
    """New auth-key (0x09) and enc-key (0x0B) certificates signed by ``signer``.

    Link specifiers, onion key, auth key and enc key are kept; the legacy RSA
    cross-certificate cannot be re-signed and is dropped.
    """
    auth_cert = create_certificate(CERT_TYPE_HS_INTRO_AUTH, ip.auth_key, signer, expires_at)
    enc_cert = create_certificate(
        CERT_TYPE_HS_INTRO_ENC, x25519_to_ed25519(ip.enc_key), signer, expires_at
    )
    return replace(ip, auth_key_cert=auth_cert, enc_key_cert=enc_cert,
                   legacy_key=None, legacy_key_cert=None)
