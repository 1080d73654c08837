"""tor's limits: at most 20 intro points, and descriptors under 50,000 bytes."""

from __future__ import annotations

import os

import pytest

from onionmesh.crypto.keys import Ed25519Identity
from onionmesh.descriptor import (
    MAX_DESCRIPTOR_SIZE,
    DescriptorError,
    DescriptorTooLarge,
    IntroPoint,
    LinkSpecifier,
    build_descriptor,
)
from tests.descriptor.conftest import NOW, PERIOD, PERIOD_LENGTH, random_intro_point


def test_twenty_one_intro_points_refused(master: Ed25519Identity) -> None:
    with pytest.raises(DescriptorTooLarge, match="21 intro points"):
        build_descriptor(master, PERIOD, PERIOD_LENGTH, 1,
                         [random_intro_point(i) for i in range(21)], now=NOW)


def test_twenty_intro_points_fit(master: Ed25519Identity) -> None:
    text = build_descriptor(master, PERIOD, PERIOD_LENGTH, 1,
                            [random_intro_point(i) for i in range(20)], now=NOW)
    assert len(text) < MAX_DESCRIPTOR_SIZE


def test_oversize_descriptor_refused(master: Ed25519Identity) -> None:
    bulky = [
        IntroPoint(
            link_specifiers=tuple(LinkSpecifier(200 + n, os.urandom(250)) for n in range(4)),
            onion_key=os.urandom(32), auth_key=Ed25519Identity.generate().public_key,
            enc_key=os.urandom(32),
        )
        for _ in range(20)
    ]
    with pytest.raises(DescriptorTooLarge, match="tor refuses 50000 or more"):
        build_descriptor(master, PERIOD, PERIOD_LENGTH, 1, bulky, now=NOW)


@pytest.mark.parametrize("kwargs", [
    {"revision_counter": -1},
    {"revision_counter": 2**64},
    {"lifetime_minutes": 0},
    {"lifetime_minutes": 721},
    {"flow_control": "1-2\n31"},
    {"pow_params": ""},
    {"client_auth_keys": [b"short"]},
])
def test_bad_arguments_are_typed_errors(master: Ed25519Identity, kwargs: dict) -> None:
    args = {"revision_counter": 1, **kwargs}
    counter = args.pop("revision_counter")
    with pytest.raises(DescriptorError):
        build_descriptor(master, PERIOD, PERIOD_LENGTH, counter, [random_intro_point()],
                         now=NOW, **args)
