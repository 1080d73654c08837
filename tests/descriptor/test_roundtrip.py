"""Build -> parse round trips: every field survives, with and without client auth."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from onionmesh.crypto.keys import Ed25519Identity
from onionmesh.descriptor import (
    ClientAuthRequired,
    build_descriptor,
    parse_descriptor,
    verify_intro_point,
)
from tests.descriptor.conftest import NOW, PERIOD, PERIOD_LENGTH, keys_only, random_intro_point

FLOW = "1-2 31"
POW = "v1 AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8= 250 2025-11-24T17:00:00"


def _client() -> tuple[bytes, bytes]:
    private = X25519PrivateKey.generate()
    return private.private_bytes_raw(), private.public_key().public_bytes_raw()


@pytest.mark.parametrize("count", range(21))
def test_round_trip_without_client_auth(master: Ed25519Identity, count: int) -> None:
    intros = [random_intro_point(i) for i in range(count)]
    text = build_descriptor(master, PERIOD, PERIOD_LENGTH, 1000 + count, intros, now=NOW,
                            flow_control=FLOW, pow_params=POW)
    desc = parse_descriptor(text, master.onion_address, period_number=PERIOD, now=NOW)
    assert [keys_only(ip) for ip in desc.intro_points] == [keys_only(ip) for ip in intros]
    assert desc.revision_counter == 1000 + count
    assert desc.period_number == PERIOD
    assert desc.lifetime_minutes == 180
    assert desc.flow_control == FLOW
    assert desc.pow_params == POW
    assert desc.create2_formats == (2,)
    assert not desc.single_onion and desc.intro_auth_required is None
    assert not desc.client_auth and desc.auth_client_count == 16
    # Every intro point was re-signed by the descriptor-signing key (and verifies).
    for index, ip in enumerate(desc.intro_points):
        assert ip.auth_key_cert.signing_key == desc.signing_key
        verify_intro_point(ip, desc.signing_key, NOW, index)


@pytest.mark.parametrize(("count", "clients"), [(0, 1), (1, 1), (3, 2), (10, 16), (20, 17)])
def test_round_trip_with_client_auth(master: Ed25519Identity, count: int, clients: int) -> None:
    intros = [random_intro_point(i) for i in range(count)]
    keypairs = [_client() for _ in range(clients)]
    text = build_descriptor(master, PERIOD, PERIOD_LENGTH, 7, intros, now=NOW,
                            client_auth_keys=[pk for _, pk in keypairs])
    for secret, _ in (keypairs[0], keypairs[-1]):
        desc = parse_descriptor(text, master.onion_address, period_number=PERIOD, now=NOW,
                                client_secret_key=secret)
        assert desc.client_auth
        assert [keys_only(ip) for ip in desc.intro_points] == [keys_only(ip) for ip in intros]
    # tor pads the auth-client list with fakes to a multiple of 16.
    assert desc.auth_client_count == -(-clients // 16) * 16
    with pytest.raises(ClientAuthRequired, match="no client key"):
        parse_descriptor(text, master.onion_address, period_number=PERIOD, now=NOW)
    stranger, _ = _client()
    with pytest.raises(ClientAuthRequired, match="not authorized"):
        parse_descriptor(text, master.onion_address, period_number=PERIOD, now=NOW,
                         client_secret_key=stranger)


def test_optional_inner_lines_round_trip(master: Ed25519Identity) -> None:
    text = build_descriptor(master, PERIOD, PERIOD_LENGTH, 1, [random_intro_point()], now=NOW,
                            single_onion=True, intro_auth_required="ed25519",
                            lifetime_minutes=720)
    desc = parse_descriptor(text, master.onion_address, period_number=PERIOD, now=NOW)
    assert desc.single_onion
    assert desc.intro_auth_required == "ed25519"
    assert desc.lifetime_minutes == 720
    assert desc.flow_control is None and desc.pow_params is None


def test_period_derived_from_now(master: Ed25519Identity) -> None:
    """Without a period number, the current, next and previous periods are accepted."""
    for period in (PERIOD - 1, PERIOD, PERIOD + 1):
        text = build_descriptor(master, period, PERIOD_LENGTH, 1, [random_intro_point()],
                                now=NOW)
        assert parse_descriptor(text, master.onion_address, now=NOW).period_number == period


def test_given_signing_key_is_used(master: Ed25519Identity) -> None:
    signer = Ed25519Identity.generate()
    text = build_descriptor(master, PERIOD, PERIOD_LENGTH, 1, [random_intro_point()], now=NOW,
                            signing_key=signer)
    desc = parse_descriptor(text, master.onion_address, period_number=PERIOD, now=NOW)
    assert desc.signing_key == signer.public_key
    # tor: valid for 54 h from now, expiry rounded up to a whole hour
    assert desc.signing_key_cert.expires_at == -(-(int(NOW) + 54 * 3600) // 3600) * 3600


def test_fresh_signing_key_per_build(master: Ed25519Identity) -> None:
    intros = [random_intro_point()]
    keys = {
        parse_descriptor(build_descriptor(master, PERIOD, PERIOD_LENGTH, 1, intros, now=NOW),
                         master.onion_address, period_number=PERIOD, now=NOW).signing_key
        for _ in range(3)
    }
    assert len(keys) == 3
