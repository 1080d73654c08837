"""Layer encryption: tor's padding rule, MACs, and agreement with stem's independent code."""

from __future__ import annotations

import base64
import hashlib
import os
import warnings

import pytest

from onionmesh.crypto.keys import Ed25519Identity
from onionmesh.descriptor import MacMismatch, MalformedDescriptor, build_descriptor
from onionmesh.descriptor.layers import (
    ENCRYPTED_CONSTANT,
    SUPERENCRYPTED_CONSTANT,
    decrypt_layer,
    encrypt_layer,
    padded_length,
    subcredential,
)
from onionmesh.descriptor.parse import _parse_middle, _parse_outer, parse_descriptor
from tests.descriptor.conftest import NOW, PERIOD, PERIOD_LENGTH, random_intro_point

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import stem.descriptor.hidden_service as stem_hs


@pytest.mark.parametrize(("length", "padded"),
                         [(1, 10000), (9999, 10000), (10000, 10000), (10001, 20000),
                          (19393, 20000), (28412, 30000)])
def test_padding_is_next_multiple_of_10000(length: int, padded: int) -> None:
    assert padded_length(length) == padded


def test_middle_layer_padded_inner_layer_not(master: Ed25519Identity) -> None:
    for count in (0, 1, 8, 9, 20):
        text = build_descriptor(master, PERIOD, PERIOD_LENGTH, 5, [random_intro_point(i)
                                for i in range(count)], now=NOW)
        desc = parse_descriptor(text, master.onion_address, period_number=PERIOD, now=NOW)
        outer = _parse_outer(text)
        subcred = subcredential(master.public_key, desc.blinded_key)
        middle = decrypt_layer(outer.superencrypted, desc.blinded_key, subcred, 5,
                               SUPERENCRYPTED_CONSTANT, what="middle")
        assert desc.superencrypted_length % 10000 == 0
        assert desc.superencrypted_length - 10000 < len(middle) <= desc.superencrypted_length
        _, _, _, inner_blob = _parse_middle(middle.decode())
        inner = decrypt_layer(inner_blob, desc.blinded_key, subcred, 5, ENCRYPTED_CONSTANT,
                              what="inner")
        assert len(inner_blob) == len(inner) + 16 + 32  # salt + ciphertext + MAC, no padding


def test_stem_decrypts_our_layer_blobs() -> None:
    """stem's _decrypt_layer is an independent KDF/AES/MAC implementation."""
    blinded, subcred = os.urandom(32), os.urandom(32)
    plaintext = b"create2-formats 2\n" + os.urandom(8).hex().encode()
    blob = encrypt_layer(plaintext, blinded, subcred, 99, ENCRYPTED_CONSTANT, pad=False)
    armored = "-----BEGIN MESSAGE-----\n" + base64.encodebytes(blob).decode() + \
        "-----END MESSAGE-----"
    assert stem_hs._decrypt_layer(armored, ENCRYPTED_CONSTANT, 99, subcred, blinded) == \
        plaintext.decode()


def test_subcredential_matches_stem() -> None:
    identity = Ed25519Identity.generate()
    blinded = os.urandom(32)
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    public = Ed25519PublicKey.from_public_bytes(identity.public_key)
    assert subcredential(identity.public_key, blinded) == \
        stem_hs.HiddenServiceDescriptorV3._subcredential(public, blinded)
    # and the spec's formula written out
    cred = hashlib.sha3_256(b"credential" + identity.public_key).digest()
    assert subcredential(identity.public_key, blinded) == \
        hashlib.sha3_256(b"subcredential" + cred + blinded).digest()


def test_mac_detects_any_flipped_byte() -> None:
    blinded, subcred = os.urandom(32), os.urandom(32)
    blob = encrypt_layer(b"hello layer", blinded, subcred, 3, SUPERENCRYPTED_CONSTANT, pad=True)
    assert len(blob) == 16 + 10000 + 32
    for position in (0, 15, 16, 5000, len(blob) - 33, len(blob) - 1):
        damaged = bytearray(blob)
        damaged[position] ^= 0x01
        with pytest.raises(MacMismatch):
            decrypt_layer(bytes(damaged), blinded, subcred, 3, SUPERENCRYPTED_CONSTANT, what="x")
    # Wrong revision counter or constant derive other keys: the MAC fails too.
    with pytest.raises(MacMismatch):
        decrypt_layer(blob, blinded, subcred, 4, SUPERENCRYPTED_CONSTANT, what="x")
    with pytest.raises(MacMismatch):
        decrypt_layer(blob, blinded, subcred, 3, ENCRYPTED_CONSTANT, what="x")
    assert decrypt_layer(blob, blinded, subcred, 3, SUPERENCRYPTED_CONSTANT,
                         what="x") == b"hello layer"


def test_short_blob_is_malformed() -> None:
    with pytest.raises(MalformedDescriptor, match="too short"):
        decrypt_layer(b"\x00" * 48, b"k" * 32, b"s" * 32, 1, ENCRYPTED_CONSTANT, what="x")


@pytest.mark.parametrize("size", [0, 1, 47, 48, 49, 30048])
def test_multiline_base64_is_tor_format(size: int) -> None:
    from onionmesh.descriptor.layers import b64_multiline

    data = os.urandom(size)
    text = b64_multiline(data)
    lines = text.split("\n")
    assert lines[-1] == ""  # every line, the last included, ends with a newline
    assert all(len(line) == 64 for line in lines[:-2])
    assert 0 < len(lines[-2]) <= 64 if size else lines == [""]
    assert base64.b64decode("".join(lines)) == data
