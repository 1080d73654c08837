"""A descriptor built by a real C tor (riseup, 2019, via stem's test data) decodes with ours."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from onionmesh.descriptor import (
    ExpiredCertificate,
    WrongBlindedKey,
    parse_descriptor,
    x25519_to_ed25519,
)

FIXTURE = (Path(__file__).parent / "data" / "hidden_service_v3").read_text()
ADDRESS = "vww6ybal4bd7szmgncyruucpgfkqahzddi37ktceo3ah7ngmcopnpyyd.onion"
CERT_EXPIRY = 434864 * 3600  # hours field of its descriptor-signing-key-cert
WHEN = CERT_EXPIRY - 53 * 3600  # one hour after tor made it (54 h certificate lifetime)


def test_real_tor_descriptor_verifies_and_decrypts() -> None:
    desc = parse_descriptor(FIXTURE, ADDRESS, now=WHEN)
    assert desc.period_number == 18117
    assert desc.revision_counter == 15
    assert desc.lifetime_minutes == 180
    assert desc.create2_formats == (2,)
    assert len(desc.intro_points) == 3
    # C tor padded the middle layer to exactly one 10000-byte block.
    assert desc.superencrypted_length == 10000
    for ip in desc.intro_points:
        assert [spec.type for spec in ip.link_specifiers] == [0, 2, 3]
        # tor certified the ed25519 form (sign bit 0) of the x25519 enc key.
        assert ip.enc_key_cert.certified_key == x25519_to_ed25519(ip.enc_key)
        assert ip.auth_key_cert.signing_key == desc.signing_key


def test_real_tor_descriptor_pinned_period() -> None:
    assert parse_descriptor(FIXTURE, ADDRESS, period_number=18117, now=WHEN).period_number == 18117
    with pytest.raises(WrongBlindedKey):
        parse_descriptor(FIXTURE, ADDRESS, period_number=18118, now=WHEN)


def test_real_tor_descriptor_has_expired_now() -> None:
    with pytest.raises(ExpiredCertificate):
        parse_descriptor(FIXTURE, ADDRESS, period_number=18117)


def test_real_tor_descriptor_intro_points_reencode_identically() -> None:
    """Our encoder writes tor's exact intro point text (byte for byte)."""
    desc = parse_descriptor(FIXTURE, ADDRESS, now=WHEN)
    from onionmesh.crypto.address import decode_onion_address
    from onionmesh.descriptor.layers import (
        ENCRYPTED_CONSTANT,
        SUPERENCRYPTED_CONSTANT,
        decrypt_layer,
        subcredential,
    )
    from onionmesh.descriptor.parse import _parse_middle, _parse_outer

    identity = decode_onion_address(ADDRESS)
    subcred = subcredential(identity, desc.blinded_key)
    outer = _parse_outer(FIXTURE)
    middle = decrypt_layer(outer.superencrypted, desc.blinded_key, subcred, 15,
                           SUPERENCRYPTED_CONSTANT, what="middle").decode()
    inner = decrypt_layer(_parse_middle(middle)[3], desc.blinded_key, subcred, 15,
                          ENCRYPTED_CONSTANT, what="inner").decode()
    assert inner == "create2-formats 2\n" + "".join(ip.encode() for ip in desc.intro_points)


def _middle_layer_entries(text: str, address: str, now: float) -> list[tuple[int, int, int]]:
    """Shapes (client id, iv, encrypted cookie lengths) of a descriptor's auth-client lines."""
    from onionmesh.crypto.address import decode_onion_address
    from onionmesh.descriptor.layers import SUPERENCRYPTED_CONSTANT, decrypt_layer, subcredential
    from onionmesh.descriptor.parse import _parse_outer

    desc = parse_descriptor(text, address, now=now)
    outer = _parse_outer(text)
    subcred = subcredential(decode_onion_address(address), desc.blinded_key)
    middle = decrypt_layer(outer.superencrypted, desc.blinded_key, subcred,
                           outer.revision_counter, SUPERENCRYPTED_CONSTANT, what="middle")
    shapes = []
    for line in middle.decode().splitlines():
        if line.startswith("auth-client "):
            fields = line.split()[1:]
            shapes.append(tuple(len(base64.b64decode(f + "=" * (-len(f) % 4))) for f in fields))
    return shapes


def test_our_fake_auth_clients_have_tor_shape() -> None:
    """Tor clients refuse auth-client entries whose cookie is not 16 bytes (BAD_DESC)."""
    from onionmesh.crypto.keys import Ed25519Identity
    from onionmesh.descriptor import build_descriptor

    tor_shapes = set(_middle_layer_entries(FIXTURE, ADDRESS, WHEN))
    assert tor_shapes == {(8, 16, 16)}
    master = Ed25519Identity.generate()
    now = 1_700_000_000.0
    ours = build_descriptor(master, 19675, 1440, 1, [], now=now)
    assert set(_middle_layer_entries(ours, master.onion_address, now)) == tor_shapes
