"""The master descriptor as tor clients need it (cross-checked with stem, test-only)."""

from __future__ import annotations

import base64
import time

from stem.descriptor.hidden_service import HiddenServiceDescriptorV3, OuterLayer

from onionmesh.crypto.keys import Ed25519Identity
from onionmesh.descriptor.layers import subcredential
from onionmesh.descriptor.parse import parse_descriptor
from onionmesh.hsdir.timeperiod import time_period_number
from onionmesh.publish.master import build_master_descriptor


def _b64(value: str) -> bytes:
    return base64.b64decode(value + "=" * (-len(value) % 4))


def test_fake_auth_clients_have_tors_16_byte_cookie():
    master = Ed25519Identity.generate()
    now = time.time()
    period = time_period_number(now, 8)
    text = build_master_descriptor(master, period, 8, 42, [], now=now, lifetime_minutes=180)
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
