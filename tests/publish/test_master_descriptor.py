"""The master descriptor as tor clients need it (cross-checked with stem, test-only)."""

from __future__ import annotations

import base64
import time

from stem.descriptor.hidden_service import HiddenServiceDescriptorV3, OuterLayer

from onionmesh.crypto.keys import Ed25519Identity
from onionmesh.descriptor.layers import subcredential
from onionmesh.descriptor.parse import parse_descriptor
from onionmesh.hsdir.timeperiod import time_period_number
from onionmesh.publish.master import MasterDescriptorBuilder


def _b64(value: str) -> bytes:
    return base64.b64decode(value + "=" * (-len(value) % 4))


def test_fake_auth_clients_have_tors_16_byte_cookie():
    master = Ed25519Identity.generate()
    now = time.time()
    period = time_period_number(now, 8)
    text = MasterDescriptorBuilder(master, lifetime_minutes=180).build(period, 8, 42, [], now=now)
    ours = parse_descriptor(text, master.onion_address, period_number=period, period_length=8,
                            now=now)
    assert ours.revision_counter == 42 and ours.auth_client_count == 16
    desc = HiddenServiceDescriptorV3.from_str(text)
    blinded = desc.signing_cert.signing_key()
    outer = OuterLayer._decrypt(desc.superencrypted, desc.revision_counter,
                                subcredential(master.public_key, blinded), blinded)
    assert len(outer.clients) == 16
    for client in outer.clients.values():
        # tor: HS_DESC_CLIENT_ID_LEN 8, CIPHER_IV_LEN 16, HS_DESC_ENCRYPED_COOKIE_LEN 16;
        # other sizes make tor clients refuse the whole descriptor (BAD_DESC).
        assert len(_b64(client.id)) == 8
        assert len(_b64(client.iv)) == 16
        assert len(_b64(client.cookie)) == 16


def test_revision_never_repeats_within_a_second_and_grows_with_time():
    from onionmesh.crypto.blinding import blind_identity
    from onionmesh.publish.master import revision_for

    blinded = blind_identity(Ed25519Identity.generate(), 1000, 8)
    start = 1_000_000
    first = revision_for(blinded, start, start + 100.2, None)
    again = revision_for(blinded, start, start + 100.7, first)  # same second
    assert again == first + 1
    later = revision_for(blinded, start, start + 101.0, again)
    assert later > again
    # A restarted publisher (no memory of ``last``) still goes up with time.
    assert revision_for(blinded, start, start + 102.0, None) > later


def _intro_points(count: int, now: float) -> list:
    from onionmesh.descriptor import recertify
    from onionmesh.descriptor.intro import IntroPoint, LinkSpecifier
    from onionmesh.descriptor.signer import FreshSigningKey

    node_key = FreshSigningKey()  # the node's own descriptor-signing key
    points = []
    for index in range(count):
        bare = IntroPoint(
            link_specifiers=(LinkSpecifier(0, bytes([127, 0, 0, 1, 0x3A, 0x98 + index])),),
            onion_key=bytes([index + 1]) * 32,
            auth_key=Ed25519Identity.generate().public_key,
            enc_key=bytes([index + 100]) * 32,
            auth_key_cert=None, enc_key_cert=None, legacy_key=None, legacy_key_cert=None,
        )
        points.append(recertify(bare, node_key, now + 3600))
    return points


def test_a_period_keeps_its_signing_key_and_certifies_each_intro_point_once():
    master = Ed25519Identity.generate()
    now = time.time()
    period = time_period_number(now, 8)
    points = _intro_points(4, now)
    builder = MasterDescriptorBuilder(master, lifetime_minutes=180)

    def parsed(text: str):
        return parse_descriptor(text, master.onion_address, period_number=period,
                                period_length=8, now=now)

    first = parsed(builder.build(period, 8, 1, points[:3], now=now))
    # One intro point rotated out, a new one in: same signing key, old certs kept.
    second = parsed(builder.build(period, 8, 2, points[1:], now=now + 60))
    assert second.signing_key == first.signing_key
    first_certs = {ip.auth_key: ip.auth_key_cert for ip in first.intro_points}
    second_certs = {ip.auth_key: ip.auth_key_cert for ip in second.intro_points}
    for kept in (points[1].auth_key, points[2].auth_key):
        assert second_certs[kept] == first_certs[kept]
    assert points[3].auth_key in second_certs
    # Certificates close to expiry are renewed before they would outlive trust.
    late = now + 50 * 3600
    third = parse_descriptor(builder.build(period, 8, 3, points[1:], now=late),
                             master.onion_address, period_number=period, period_length=8,
                             now=late)
    assert all(ip.auth_key_cert.expires_at > late + 6 * 3600 for ip in third.intro_points)
    # Another period gets its own key; a forgotten period starts afresh.
    other = parse_descriptor(builder.build(period + 1, 8, 1, points[:1], now=now),
                             master.onion_address, period_number=period + 1, period_length=8,
                             now=now)
    assert other.signing_key != first.signing_key
    builder.forget_periods([period + 1])
    fresh = parsed(builder.build(period, 8, 4, points[:1], now=now))
    assert fresh.signing_key != first.signing_key


def test_descriptors_of_one_split_revision_share_the_key_and_keep_every_certificate():
    # More than 20 intro points: one revision is built as several descriptors. Each is
    # valid on its own; building the second does not drop the first one's certificates
    # (the next revision re-uses them, no intro point is signed twice).
    master = Ed25519Identity.generate()
    now = time.time()
    period = time_period_number(now, 8)
    points = _intro_points(4, now)
    builder = MasterDescriptorBuilder(master, lifetime_minutes=180)

    def certs(text: str, at: float):
        desc = parse_descriptor(text, master.onion_address, period_number=period,
                                period_length=8, now=at)
        return desc.signing_key, {ip.auth_key: ip.auth_key_cert for ip in desc.intro_points}

    key_a, a = certs(builder.build(period, 8, 1, points[:2], now=now), now)
    key_b, b = certs(builder.build(period, 8, 1, points[2:], now=now), now)
    assert key_a == key_b and set(a).isdisjoint(b)
    _, again_a = certs(builder.build(period, 8, 2, points[:2], now=now + 60), now + 60)
    _, again_b = certs(builder.build(period, 8, 2, points[2:], now=now + 60), now + 60)
    assert again_a == a and again_b == b
