"""Tor ed25519 certificates, version 1 (cert-spec.txt section 2.1).

Wire format (all integers big-endian)::

    VERSION          1 byte   = 0x01
    CERT_TYPE        1 byte
    EXPIRATION_DATE  4 bytes  hours since the epoch
    CERT_KEY_TYPE    1 byte   1 = ed25519
    CERTIFIED_KEY   32 bytes
    N_EXTENSIONS     1 byte
    EXTENSIONS       N times: ExtLength (2) | ExtType (1) | ExtFlags (1) | ExtData (ExtLength)
    SIGNATURE       64 bytes  Ed25519 over every byte above

Extension type 4 ("signed-with-ed25519-key") carries the 32-byte signing key.
Flag bit 1 (AFFECTS_VALIDATION) on an extension we do not understand makes the
certificate invalid. The parser follows tor's (``torcert.c``/trunnel) strictness:
trailing bytes, a wrong-size type-4 extension and a duplicated type-4 extension
are parse errors. An unknown AFFECTS_VALIDATION extension parses (so it can be
inspected) but never verifies. Expiry follows tor: expired when ``now > hours*3600``;
creation rounds the expiry *up* to the next hour as tor does.

Written here rather than borrowed: the format is tiny and stem is a test-only
dependency of this project.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from onionmesh.crypto.ed25519 import verify_signature
from onionmesh.errors import OnionmeshError

CERT_VERSION = 1
CERT_TYPE_HS_DESC_SIGNING = 0x08  # descriptor-signing key, signed by the blinded key
CERT_TYPE_HS_INTRO_AUTH = 0x09  # intro point auth key, signed by the descriptor-signing key
CERT_TYPE_HS_INTRO_ENC = 0x0B  # intro point enc key (ntor), signed by the descriptor-signing key
KEY_TYPE_ED25519 = 1
EXT_SIGNED_WITH_ED25519_KEY = 4
EXT_FLAG_AFFECTS_VALIDATION = 1

PEM_BEGIN = "-----BEGIN ED25519 CERT-----"
PEM_END = "-----END ED25519 CERT-----"
_HEADER_LEN = 1 + 1 + 4 + 1 + 32 + 1
_SIGNATURE_LEN = 64
_MAX_UINT32 = 2**32 - 1
_PEM_RE = re.compile(
    r"\A\s*-----BEGIN ED25519 CERT-----\s*\n(?P<body>[A-Za-z0-9+/=\s]*?)"
    r"-----END ED25519 CERT-----\s*\Z"
)


class CertificateError(OnionmeshError):
    """A certificate is malformed, mis-signed, expired or otherwise invalid."""


@runtime_checkable
class Signer(Protocol):
    """Anything with an ed25519 ``public_key`` and a ``sign`` method (identity, blinded key)."""

    public_key: bytes

    def sign(self, message: bytes) -> bytes: ...


@dataclass(frozen=True)
class CertExtension:
    """One certificate extension, kept verbatim so encoding round-trips exactly."""

    ext_type: int
    flags: int
    data: bytes

    def encode(self) -> bytes:
        if not 0 <= self.ext_type <= 255 or not 0 <= self.flags <= 255:
            raise CertificateError("extension type and flags must fit in one byte")
        if len(self.data) > 0xFFFF:
            raise CertificateError("extension data longer than 65535 bytes")
        return (len(self.data).to_bytes(2, "big") + bytes([self.ext_type, self.flags])
                + self.data)

    @property
    def affects_validation(self) -> bool:
        return bool(self.flags & EXT_FLAG_AFFECTS_VALIDATION)


@dataclass(frozen=True)
class Ed25519Certificate:
    """A parsed or freshly created tor ed25519 certificate."""

    cert_type: int
    expiration_hours: int  # hours since the epoch, as in the spec
    key_type: int  # CERTIFIED_KEY_TYPE, 1 = ed25519
    certified_key: bytes  # 32 bytes
    signing_key: bytes | None  # from the signed-with-ed25519-key extension (type 4), if present
    extensions: tuple[CertExtension, ...]
    signature: bytes

    @property
    def expires_at(self) -> int:
        """Expiry as a Unix timestamp (seconds)."""
        return self.expiration_hours * 3600

    def signed_body(self) -> bytes:
        """Every byte the signature covers (the encoding without the signature)."""
        if not 0 <= self.cert_type <= 255 or not 0 <= self.key_type <= 255:
            raise CertificateError("cert type and key type must fit in one byte")
        if not 0 <= self.expiration_hours <= _MAX_UINT32:
            raise CertificateError("expiration hours must fit in 32 bits")
        if len(self.certified_key) != 32:
            raise CertificateError("certified key must be 32 bytes")
        if len(self.extensions) > 255:
            raise CertificateError("at most 255 extensions")
        return (bytes([CERT_VERSION, self.cert_type])
                + self.expiration_hours.to_bytes(4, "big")
                + bytes([self.key_type]) + self.certified_key
                + bytes([len(self.extensions)])
                + b"".join(ext.encode() for ext in self.extensions))

    def encode(self) -> bytes:
        """The binary certificate."""
        if len(self.signature) != _SIGNATURE_LEN:
            raise CertificateError("signature must be 64 bytes")
        return self.signed_body() + self.signature

    def to_pem(self) -> str:
        """``-----BEGIN ED25519 CERT-----`` block with 64-character base64 lines."""
        b64 = base64.b64encode(self.encode()).decode("ascii")
        lines = [b64[i:i + 64] for i in range(0, len(b64), 64)]
        return "\n".join([PEM_BEGIN, *lines, PEM_END])

    def verify(self, signing_key: bytes | None = None, now: float | None = None) -> None:
        """Raise ``CertificateError`` unless the certificate is valid.

        The signing key is ``signing_key`` if given, else the type-4 extension's key;
        if both are present they must agree. With ``now`` (Unix seconds) an expired
        certificate fails. An unknown extension flagged AFFECTS_VALIDATION always fails.
        """
        for ext in self.extensions:
            if ext.ext_type != EXT_SIGNED_WITH_ED25519_KEY and ext.affects_validation:
                raise CertificateError(
                    f"certificate has unknown extension type {ext.ext_type} "
                    "flagged AFFECTS_VALIDATION"
                )
        key = signing_key if signing_key is not None else self.signing_key
        if key is None:
            raise CertificateError("no signing key: none given and no type-4 extension")
        if len(key) != 32:
            raise CertificateError("signing key must be 32 bytes")
        if self.signing_key is not None and signing_key is not None and \
                bytes(signing_key) != self.signing_key:
            raise CertificateError("certificate's signed-with-key extension names another key")
        if now is not None and now > self.expires_at:
            raise CertificateError(
                f"certificate expired at {self.expires_at} (hour {self.expiration_hours}), "
                f"now is {int(now)}"
            )
        if not verify_signature(bytes(key), self.signed_body(), self.signature):
            raise CertificateError("certificate signature does not verify")


def create_certificate(cert_type: int, certified_key: bytes, signer: Signer, expires_at: float,
                       *, key_type: int = KEY_TYPE_ED25519,
                       include_signing_key: bool = True) -> Ed25519Certificate:
    """Create and sign a certificate valid until at least ``expires_at`` (Unix seconds)."""
    if not 0 <= cert_type <= 255:
        raise CertificateError("cert type must fit in one byte")
    if not isinstance(certified_key, bytes | bytearray) or len(certified_key) != 32:
        raise CertificateError("certified key must be 32 bytes")
    if not math.isfinite(expires_at) or expires_at < 0:
        raise CertificateError("expiry must be a finite, non-negative Unix time")
    hours = math.ceil(expires_at / 3600)
    if hours > _MAX_UINT32:
        raise CertificateError("expiry is beyond what 32-bit hours can hold")
    extensions: tuple[CertExtension, ...] = ()
    signing_key = None
    if include_signing_key:
        signing_key = bytes(signer.public_key)
        extensions = (CertExtension(EXT_SIGNED_WITH_ED25519_KEY, 0, signing_key),)
    unsigned = Ed25519Certificate(cert_type, hours, key_type, bytes(certified_key), signing_key,
                                  extensions, b"\0" * _SIGNATURE_LEN)
    signature = signer.sign(unsigned.signed_body())
    return Ed25519Certificate(cert_type, hours, key_type, bytes(certified_key), signing_key,
                              extensions, bytes(signature))


def parse_certificate(data: bytes) -> Ed25519Certificate:
    """Parse a binary certificate. Raises ``CertificateError`` for any malformed input."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise CertificateError("certificate must be bytes")
    data = bytes(data)
    if len(data) < _HEADER_LEN + _SIGNATURE_LEN:
        raise CertificateError(f"certificate too short ({len(data)} bytes)")
    if data[0] != CERT_VERSION:
        raise CertificateError(f"unsupported certificate version {data[0]}")
    cert_type = data[1]
    expiration_hours = int.from_bytes(data[2:6], "big")
    key_type = data[6]
    certified_key = data[7:39]
    n_extensions = data[39]
    pos = _HEADER_LEN
    end = len(data) - _SIGNATURE_LEN
    extensions = []
    signing_key = None
    for index in range(n_extensions):
        if pos + 4 > end:
            raise CertificateError(f"extension {index} header runs past the certificate body")
        length = int.from_bytes(data[pos:pos + 2], "big")
        ext_type, flags = data[pos + 2], data[pos + 3]
        pos += 4
        if pos + length > end:
            raise CertificateError(f"extension {index} data runs past the certificate body")
        ext = CertExtension(ext_type, flags, data[pos:pos + length])
        pos += length
        if ext_type == EXT_SIGNED_WITH_ED25519_KEY:
            if length != 32:
                raise CertificateError(f"signed-with-ed25519-key extension has {length} bytes, "
                                       "expected 32")
            if signing_key is not None:
                raise CertificateError("duplicate signed-with-ed25519-key extension")
            signing_key = ext.data
        extensions.append(ext)
    if pos != end:
        raise CertificateError(f"{end - pos} unexpected bytes after the extensions")
    return Ed25519Certificate(cert_type, expiration_hours, key_type, certified_key, signing_key,
                              tuple(extensions), data[end:])


def parse_certificate_pem(text: str) -> Ed25519Certificate:
    """Parse a ``-----BEGIN ED25519 CERT-----`` block (as found in descriptors)."""
    if isinstance(text, bytes | bytearray):
        try:
            text = bytes(text).decode("ascii")
        except UnicodeDecodeError as exc:
            raise CertificateError("certificate PEM is not ASCII") from exc
    if not isinstance(text, str):
        raise CertificateError("certificate PEM must be text")
    match = _PEM_RE.match(text)
    if match is None:
        raise CertificateError(f"not a '{PEM_BEGIN}' ... '{PEM_END}' block")
    body = "".join(match.group("body").split())
    try:
        raw = base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise CertificateError("certificate PEM body is not valid base64") from exc
    return parse_certificate(raw)
