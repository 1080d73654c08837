"""Parsing, decrypting and fully verifying a v3 descriptor.

Unlike stem's ``decrypt`` (which checks nothing but the MACs), every link of the
chain is verified, in this order, each failure raising its own typed error:

1. grammar of the outer document (``MalformedDescriptor``);
2. the descriptor-signing-key certificate: type 0x08, signing-key extension present,
   not expired at ``now``, signature by the embedded blinded key (``BadCertificate``,
   ``ExpiredCertificate``, ``BadSignature``);
3. the blinded key equals ``blind(address key, period)`` for the given period, or for
   one of the periods around ``now`` (``WrongBlindedKey``);
4. the descriptor signature by the descriptor-signing key (``BadSignature``);
5. both layer MACs (``MacMismatch``; ``ClientAuthRequired`` when the inner layer needs
   a descriptor cookie we cannot obtain);
6. every intro point's auth-key and enc-key certificates (as in step 2, signed by the
   descriptor-signing key, certifying the listed keys).

Unlike tor, which silently skips an intro point it cannot parse, we refuse the whole
descriptor: a master descriptor must never carry a broken intro point.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from onionmesh.crypto.address import decode_onion_address
from onionmesh.crypto.blinding import blind_public_key
from onionmesh.crypto.certs import (
    CERT_TYPE_HS_DESC_SIGNING,
    CertificateError,
    Ed25519Certificate,
    parse_certificate,
)
from onionmesh.crypto.keys import verify_signature
from onionmesh.descriptor.build import SIGNATURE_PREFIX
from onionmesh.descriptor.errors import (
    BadCertificate,
    BadSignature,
    ClientAuthRequired,
    MacMismatch,
    MalformedDescriptor,
    WrongBlindedKey,
)
from onionmesh.descriptor.intro import (
    IntroPoint,
    check_certificate,
    parse_intro_point,
    verify_intro_point,
)
from onionmesh.descriptor.layers import (
    CLIENT_ID_LEN,
    COOKIE_LEN,
    ENCRYPTED_CONSTANT,
    IV_LEN,
    SUPERENCRYPTED_CONSTANT,
    AuthClient,
    b64_decode,
    decrypt_layer,
    find_descriptor_cookie,
    subcredential,
)
from onionmesh.descriptor.tokens import (
    Item,
    at_most_one,
    exactly_one,
    need_object,
    parse_uint,
    tokenize,
)
from onionmesh.tor_limits import MAX_INTRO_POINTS

MAX_LIFETIME_MINUTES = 720


@dataclass(frozen=True)
class Descriptor:
    """A verified, decrypted descriptor (no secret material is kept)."""

    lifetime_minutes: int
    revision_counter: int
    blinded_key: bytes
    period_number: int
    signing_key: bytes
    signing_key_cert: Ed25519Certificate
    create2_formats: tuple[int, ...]
    intro_auth_required: str | None
    single_onion: bool
    flow_control: str | None
    pow_params: str | None
    intro_points: tuple[IntroPoint, ...]
    client_auth: bool  # a descriptor cookie was needed to decrypt the inner layer
    auth_client_count: int
    superencrypted_length: int  # length of the (padded) middle-layer plaintext


@dataclass(frozen=True)
class _Outer:
    lifetime: int
    revision_counter: int
    cert: Ed25519Certificate
    superencrypted: bytes
    signature: bytes
    signed_text: bytes


def _parse_outer(text: str) -> _Outer:
    what = "descriptor"
    items = tokenize(text, what)
    if not items or items[0].keyword != "hs-descriptor":
        raise MalformedDescriptor("descriptor must start with 'hs-descriptor'")
    if items[-1].keyword != "signature":
        raise MalformedDescriptor("descriptor must end with 'signature'")
    version = exactly_one(items, "hs-descriptor", what)
    if version.args != ("3",):
        raise MalformedDescriptor("descriptor is not version 3")
    lifetime_item = exactly_one(items, "descriptor-lifetime", what)
    counter_item = exactly_one(items, "revision-counter", what)
    signature_item = exactly_one(items, "signature", what)
    for item in (lifetime_item, counter_item, signature_item):
        if len(item.args) != 1:
            raise MalformedDescriptor(f"{item.keyword!r} needs exactly one argument")
    lifetime = parse_uint(lifetime_item.args[0], "descriptor-lifetime")
    if not 1 <= lifetime <= MAX_LIFETIME_MINUTES:
        raise MalformedDescriptor(f"descriptor-lifetime {lifetime} is out of range")
    cert_bytes = need_object(exactly_one(items, "descriptor-signing-key-cert", what),
                             "ED25519 CERT", what)
    try:
        cert = parse_certificate(cert_bytes)
    except CertificateError as exc:
        raise BadCertificate(f"descriptor-signing-key-cert is unparseable: {exc}") from exc
    blob = need_object(exactly_one(items, "superencrypted", what), "MESSAGE", what)
    # The signed part runs up to and including the newline before "signature ";
    # object lines are base64 and cannot contain "\nsignature ", so this is unique.
    signed_end = text.rfind("\nsignature ") + 1
    if signed_end <= 0:
        raise MalformedDescriptor("descriptor signature line is malformed")
    return _Outer(
        lifetime=lifetime,
        revision_counter=parse_uint(counter_item.args[0], "revision-counter"),
        cert=cert,
        superencrypted=blob,
        signature=b64_decode(signature_item.args[0], "descriptor signature", length=64),
        signed_text=text[:signed_end].encode("ascii"),
    )


def _match_period(
    identity: bytes, blinded: bytes, period_number: int | None, period_length: int, now: float
) -> int:
    if period_number is not None:
        candidates = [period_number]
    else:
        # Imported here: only this path needs the hsdir time-period arithmetic.
        from onionmesh.hsdir.timeperiod import time_period_number

        current = time_period_number(now, period_length)
        candidates = [current, current + 1, current - 1]
    for candidate in candidates:
        if candidate >= 0 and blind_public_key(identity, candidate, period_length) == blinded:
            return candidate
    raise WrongBlindedKey(
        "blinded key does not match the onion address for time period(s) "
        + ", ".join(str(c) for c in candidates)
    )


def _parse_middle(text: str) -> tuple[bytes, list[AuthClient], int, bytes]:
    what = "superencrypted layer"
    items = tokenize(text, what)
    if not items or items[0].keyword != "desc-auth-type":
        raise MalformedDescriptor(f"{what} must start with 'desc-auth-type'")
    auth_type = exactly_one(items, "desc-auth-type", what)
    if not auth_type.args or auth_type.args[0] != "x25519":
        raise MalformedDescriptor(f"{what} has an unknown desc-auth-type")
    key_item = exactly_one(items, "desc-auth-ephemeral-key", what)
    if not key_item.args:
        raise MalformedDescriptor(f"{what}: 'desc-auth-ephemeral-key' needs a key")
    ephemeral = b64_decode(key_item.args[0], "desc-auth-ephemeral-key", length=32)
    odd_entries = 0
    clients = []
    for item in items:
        if item.keyword == "auth-client":
            if len(item.args) < 3:
                raise MalformedDescriptor(f"{what}: 'auth-client' needs three arguments")
            entry = AuthClient(*(b64_decode(arg, "auth-client field") for arg in item.args[:3]))
            # Entries of another shape (older encoders wrote 32-byte fake cookies) can never
            # hold our cookie, so they are kept out of the cookie search, not fatal.
            shape = (len(entry.client_id), len(entry.iv), len(entry.encrypted_cookie))
            if shape == (CLIENT_ID_LEN, IV_LEN, COOKIE_LEN):
                clients.append(entry)
            else:
                odd_entries += 1
    blob = need_object(exactly_one(items, "encrypted", what), "MESSAGE", what)
    return ephemeral, clients, odd_entries, blob


def _split_intro_blocks(text: str) -> tuple[str, list[str]]:
    marker = "\nintroduction-point "
    if text.startswith("introduction-point "):
        raise MalformedDescriptor("encrypted layer must start with 'create2-formats'")
    chunks = text.split(marker)
    header = chunks[0] if chunks[0].endswith("\n") else chunks[0] + "\n"
    return header, ["introduction-point " + chunk for chunk in chunks[1:]]


def _joined_args(items: list[Item], keyword: str, what: str) -> str | None:
    item = at_most_one(items, keyword, what)
    if item is None:
        return None
    if item.obj is not None:
        raise MalformedDescriptor(f"{what}: {keyword!r} takes no object")
    return " ".join(item.args)


def _parse_inner(text: str, signing_key: bytes, now: float) -> dict[str, Any]:
    what = "encrypted layer"
    header_text, blocks = _split_intro_blocks(text)
    items = tokenize(header_text, what)
    if not items or items[0].keyword != "create2-formats":
        raise MalformedDescriptor(f"{what} must start with 'create2-formats'")
    formats_item = exactly_one(items, "create2-formats", what)
    formats = tuple(parse_uint(arg, "create2 format", 65535) for arg in formats_item.args)
    if 2 not in formats:
        raise MalformedDescriptor(f"{what}: create2-formats does not include ntor (2)")
    single = at_most_one(items, "single-onion-service", what)
    if len(blocks) > MAX_INTRO_POINTS:
        raise MalformedDescriptor(
            f"{what} has {len(blocks)} intro points; at most {MAX_INTRO_POINTS} are allowed"
        )
    intro_points = tuple(parse_intro_point(block) for block in blocks)
    for index, ip in enumerate(intro_points):
        verify_intro_point(ip, signing_key, now, index)
    return {
        "create2_formats": formats,
        "intro_auth_required": _joined_args(items, "intro-auth-required", what),
        "single_onion": single is not None,
        "flow_control": _joined_args(items, "flow-control", what),
        "pow_params": _joined_args(items, "pow-params", what),
        "intro_points": intro_points,
    }


def _ascii(data: bytes, what: str) -> str:
    try:
        return data.decode("ascii")
    except UnicodeDecodeError as exc:
        raise MalformedDescriptor(f"{what} plaintext is not ASCII") from exc


def parse_descriptor(
    text: str,
    onion_address: str,
    *,
    period_number: int | None = None,
    period_length: int = 1440,
    now: float | None = None,
    client_secret_key: bytes | None = None,
) -> Descriptor:
    """Parse, verify and decrypt ``text`` as a descriptor of ``onion_address``.

    ``period_number`` pins the time period the blinded key must belong to; without
    it the periods around ``now`` (current, next, previous) are accepted.
    ``client_secret_key`` is a 32-byte x25519 secret key for client authorization.
    Raises a ``DescriptorError`` subclass naming the first failed check (see module
    docstring); a bad ``onion_address`` raises ``AddressError``.
    """
    identity = decode_onion_address(onion_address)
    if now is None:
        now = time.time()
    if client_secret_key is not None and (
        not isinstance(client_secret_key, bytes) or len(client_secret_key) != 32
    ):
        raise ClientAuthRequired("client secret key must be 32 bytes")
    outer = _parse_outer(text)

    cert = outer.cert
    if cert.signing_key is None:
        raise BadCertificate("descriptor-signing-key-cert does not include the blinded key")
    blinded = cert.signing_key
    check_certificate(cert, CERT_TYPE_HS_DESC_SIGNING, blinded, now, "descriptor-signing-key-cert")
    period = _match_period(identity, blinded, period_number, period_length, now)
    signing_key = cert.certified_key
    if not verify_signature(signing_key, SIGNATURE_PREFIX + outer.signed_text, outer.signature):
        raise BadSignature("descriptor signature does not verify")

    subcred = subcredential(identity, blinded)
    middle_bytes = decrypt_layer(outer.superencrypted, blinded, subcred, outer.revision_counter,
                                 SUPERENCRYPTED_CONSTANT, what="superencrypted layer")
    middle_text = _ascii(middle_bytes, "superencrypted layer")
    ephemeral, clients, odd_entries, inner_blob = _parse_middle(middle_text)

    cookie = None
    if client_secret_key is not None:
        cookie = find_descriptor_cookie(clients, ephemeral, client_secret_key, subcred)
    if cookie is not None:
        inner_bytes = decrypt_layer(inner_blob, blinded + cookie, subcred,
                                    outer.revision_counter, ENCRYPTED_CONSTANT,
                                    what="encrypted layer")
    else:
        try:
            inner_bytes = decrypt_layer(inner_blob, blinded, subcred, outer.revision_counter,
                                        ENCRYPTED_CONSTANT, what="encrypted layer")
        except MacMismatch as exc:
            reason = ("our client key is not authorized" if client_secret_key is not None
                      else "no client key was given")
            raise ClientAuthRequired(
                f"encrypted layer needs client authorization ({reason})"
            ) from exc
    inner = _parse_inner(_ascii(inner_bytes, "encrypted layer"), signing_key, now)
    return Descriptor(
        lifetime_minutes=outer.lifetime,
        revision_counter=outer.revision_counter,
        blinded_key=blinded,
        period_number=period,
        signing_key=signing_key,
        signing_key_cert=cert,
        client_auth=cookie is not None,
        auth_client_count=len(clients) + odd_entries,
        superencrypted_length=len(outer.superencrypted) - 48,
        **inner,
    )
