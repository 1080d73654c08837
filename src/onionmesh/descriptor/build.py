"""Building a complete, signed and encrypted v3 descriptor (rend-spec-v3 [DESC-OUTER]).

The text layout, line order, base64 flavours and padding match C tor's
``hs_descriptor.c`` (``desc_encode_v3`` and helpers), so a descriptor we build has
the same size as one tor would build with the same content:

* outer document lines joined with NL (and a final NL), signed with the prefix
  ``"Tor onion service descriptor sig v3"``, then ``signature <86 base64 chars>``;
* middle layer: ``desc-auth-type x25519``, ``desc-auth-ephemeral-key``, at least 16
  ``auth-client`` lines (a multiple of 16), ``encrypted`` + MESSAGE; NUL-padded to the
  next multiple of 10000 before encryption;
* inner layer: ``create2-formats 2``, optional ``intro-auth-required``,
  ``single-onion-service``, ``flow-control`` and ``pow-params`` lines, then the
  intro point blocks; not padded.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from onionmesh.crypto.blinding import BlindedKey, blind_identity
from onionmesh.crypto.certs import CERT_TYPE_HS_DESC_SIGNING, Signer, create_certificate
from onionmesh.crypto.keys import Ed25519Identity
from onionmesh.descriptor.errors import DescriptorError, DescriptorTooLarge
from onionmesh.descriptor.intro import IntroPoint, recertify
from onionmesh.descriptor.layers import (
    COOKIE_LEN,
    ENCRYPTED_CONSTANT,
    SUPERENCRYPTED_CONSTANT,
    auth_clients_for,
    b64_multiline,
    b64_nopad,
    b64_padded,
    encrypt_layer,
    subcredential,
)
from onionmesh.descriptor.signer import FreshSigningKey
from onionmesh.tor_limits import MAX_INTRO_POINTS

SIGNATURE_PREFIX = b"Tor onion service descriptor sig v3"
MAX_DESCRIPTOR_SIZE = 50_000  # HSV3MaxDescriptorSize default; tor refuses len >= this
CERT_LIFETIME = 54 * 3600  # tor's HS_DESC_CERT_LIFETIME
MAX_LIFETIME_MINUTES = 720  # tor's HS_DESC_MAX_LIFETIME (12 h)


def _check_line_args(value: str | None, name: str) -> None:
    if value is None:
        return
    if (
        not isinstance(value, str)
        or not value
        or not value.isascii()
        or not value.isprintable()
        or value != value.strip()
        or "  " in value
    ):
        raise DescriptorError(f"{name} must be single-line printable ASCII arguments")


def inner_plaintext(
    intro_points: Sequence[IntroPoint],
    *,
    flow_control: str | None = None,
    pow_params: str | None = None,
    single_onion: bool = False,
    intro_auth_required: str | None = None,
) -> str:
    """The plaintext of the inner (encrypted) layer."""
    parts = ["create2-formats 2\n"]
    if intro_auth_required is not None:
        parts.append(f"intro-auth-required {intro_auth_required}\n")
    if single_onion:
        parts.append("single-onion-service\n")
    if flow_control is not None:
        parts.append(f"flow-control {flow_control}\n")
    if pow_params is not None:
        parts.append(f"pow-params {pow_params}\n")
    parts.extend(ip.encode() for ip in intro_points)
    return "".join(parts)


def build_descriptor(
    master: Ed25519Identity,
    period_number: int,
    period_length: int,
    revision_counter: int,
    intro_points: Sequence[IntroPoint],
    *,
    now: float,
    signing_key: Signer | None = None,
    lifetime_minutes: int = 180,
    client_auth_keys: Sequence[bytes] = (),
    flow_control: str | None = None,
    pow_params: str | None = None,
    single_onion: bool = False,
    intro_auth_required: str | None = None,
    blinded: BlindedKey | None = None,
) -> str:
    """Build, sign and encrypt a descriptor for ``master`` in time period ``period_number``.

    Intro points are re-certified with the (fresh, unless given) descriptor-signing
    key. ``client_auth_keys`` are the x25519 public keys of authorized clients; with
    none, the inner layer is encrypted without a descriptor cookie. Raises
    ``DescriptorTooLarge`` for more than 20 intro points or a result of 50,000 bytes
    or more, and ``DescriptorError`` for out-of-range arguments. ``blinded`` may pass
    the already-computed blinded key for this period (the caller usually needed it for
    the revision counter); it must match ``master`` and ``period_number``.
    """
    if len(intro_points) > MAX_INTRO_POINTS:
        raise DescriptorTooLarge(
            f"{len(intro_points)} intro points; tor accepts at most {MAX_INTRO_POINTS}"
        )
    if not 0 <= revision_counter < 2**64:
        raise DescriptorError("revision counter must fit in 64 bits")
    if not 1 <= lifetime_minutes <= MAX_LIFETIME_MINUTES:
        raise DescriptorError(f"lifetime must be 1..{MAX_LIFETIME_MINUTES} minutes")
    for name, value in (("flow_control", flow_control), ("pow_params", pow_params),
                        ("intro_auth_required", intro_auth_required)):
        _check_line_args(value, name)
    for key in client_auth_keys:
        if not isinstance(key, bytes) or len(key) != 32:
            raise DescriptorError("client auth keys must be 32-byte x25519 public keys")

    if blinded is None:
        blinded = blind_identity(master, period_number, period_length)
    elif (blinded.period_number, blinded.period_length) != (period_number, period_length):
        raise DescriptorError("the given blinded key is for another time period")
    signer: Signer = signing_key if signing_key is not None else FreshSigningKey()
    # Certificates are valid for 54 h from now; the cert format rounds the expiry up to
    # the next whole hour, exactly as tor_cert_create_ed25519 does.
    expires_at = float(now + CERT_LIFETIME)
    signing_cert = create_certificate(
        CERT_TYPE_HS_DESC_SIGNING, signer.public_key, blinded, expires_at
    )
    certified = [
        ip
        if ip.auth_key_cert is not None
        and ip.enc_key_cert is not None
        and ip.auth_key_cert.signing_key == signer.public_key
        and ip.enc_key_cert.signing_key == signer.public_key
        else recertify(ip, signer, expires_at)
        for ip in intro_points
    ]
    subcred = subcredential(master.public_key, blinded.public_key)

    inner = inner_plaintext(
        certified,
        flow_control=flow_control,
        pow_params=pow_params,
        single_onion=single_onion,
        intro_auth_required=intro_auth_required,
    ).encode("ascii")
    cookie = os.urandom(COOKIE_LEN) if client_auth_keys else b""
    inner_blob = encrypt_layer(
        inner, blinded.public_key + cookie, subcred, revision_counter, ENCRYPTED_CONSTANT,
        pad=False,
    )

    ephemeral = X25519PrivateKey.generate()
    ephemeral_pk = ephemeral.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    clients = auth_clients_for(list(client_auth_keys), cookie, ephemeral, subcred)
    middle = (
        "desc-auth-type x25519\n"
        f"desc-auth-ephemeral-key {b64_padded(ephemeral_pk)}\n"
        + "".join(entry.encode() + "\n" for entry in clients)
        + "encrypted\n-----BEGIN MESSAGE-----\n"
        + b64_multiline(inner_blob)
        + "-----END MESSAGE-----"
    ).encode("ascii")
    outer_blob = encrypt_layer(
        middle, blinded.public_key, subcred, revision_counter, SUPERENCRYPTED_CONSTANT,
        pad=True,
    )

    body = (
        "hs-descriptor 3\n"
        f"descriptor-lifetime {lifetime_minutes}\n"
        "descriptor-signing-key-cert\n"
        f"{signing_cert.to_pem().rstrip(chr(10))}\n"
        f"revision-counter {revision_counter}\n"
        "superencrypted\n-----BEGIN MESSAGE-----\n"
        f"{b64_multiline(outer_blob)}-----END MESSAGE-----\n"
    )
    signature = signer.sign(SIGNATURE_PREFIX + body.encode("ascii"))
    text = f"{body}signature {b64_nopad(signature)}\n"
    if len(text) >= MAX_DESCRIPTOR_SIZE:
        raise DescriptorTooLarge(
            f"descriptor would be {len(text)} bytes; tor refuses {MAX_DESCRIPTOR_SIZE} or more"
        )
    return text
