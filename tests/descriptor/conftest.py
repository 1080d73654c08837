"""Shared helpers for the descriptor tests: keys, intro points and a fixed clock."""

from __future__ import annotations

import os

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from onionmesh.crypto.keys import Ed25519Identity
from onionmesh.descriptor.intro import IntroPoint, LinkSpecifier, ipv4_link_specifier
from onionmesh.hsdir.timeperiod import time_period_number

NOW = 1_764_000_000.0  # a fixed instant (2025-11-24); certificates are checked against it
PERIOD_LENGTH = 1440
PERIOD = time_period_number(NOW, PERIOD_LENGTH)


def random_intro_point(index: int = 0) -> IntroPoint:
    """An uncertified intro point with realistic link specifiers (IPv4, RSA id, ed25519 id)."""
    return IntroPoint(
        link_specifiers=(
            ipv4_link_specifier(f"10.0.{index % 256}.1", 9001 + index),
            LinkSpecifier(2, os.urandom(20)),
            LinkSpecifier(3, os.urandom(32)),
        ),
        onion_key=X25519PrivateKey.generate().public_key().public_bytes_raw(),
        auth_key=Ed25519Identity.generate().public_key,
        enc_key=X25519PrivateKey.generate().public_key().public_bytes_raw(),
    )


def keys_only(ip: IntroPoint) -> tuple:
    """What recertification must preserve: link specifiers and the three keys."""
    return (ip.link_specifiers, ip.onion_key, ip.auth_key, ip.enc_key)


@pytest.fixture(scope="module")
def master() -> Ed25519Identity:
    return Ed25519Identity.generate()
