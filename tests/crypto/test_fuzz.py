"""Hypothesis fuzzing: arbitrary input gives a result or a typed OnionmeshError, nothing else."""

import base64
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from onionmesh.crypto import keys
from onionmesh.crypto.address import AddressError, decode_onion_address, encode_onion_address
from onionmesh.crypto.certs import (
    CertificateError,
    Ed25519Certificate,
    create_certificate,
    parse_certificate,
    parse_certificate_pem,
)
from onionmesh.crypto.keys import Ed25519Identity, KeyFileError
from onionmesh.errors import OnionmeshError

FUZZ = settings(max_examples=300, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])
_SIGNER = Ed25519Identity.from_seed(b"\x11" * 32)
_VALID_CERT = create_certificate(8, b"\x22" * 32, _SIGNER, 1_800_000_000).encode()
_BASE32 = "abcdefghijklmnopqrstuvwxyz234567"


def _outcome(call: Callable[..., Any], *args: Any) -> Any:
    """Call; return the result or the typed error. Any other exception fails the test."""
    try:
        return call(*args)
    except OnionmeshError as exc:
        assert str(exc)  # the message names the problem
        return exc


@FUZZ
@given(st.text())
def test_address_decoder_on_arbitrary_text(text: str) -> None:
    try:
        key = decode_onion_address(text)
    except AddressError:
        return
    assert len(key) == 32
    assert encode_onion_address(key) == text.lower().removesuffix(".onion") + ".onion"


@FUZZ
@given(st.text(alphabet=_BASE32 + _BASE32.upper() + ".", min_size=50, max_size=70))
def test_address_decoder_on_near_miss_text(text: str) -> None:
    try:
        decode_onion_address(text, check_key=True)
    except AddressError as exc:
        assert str(exc)


@FUZZ
@given(st.binary(min_size=32, max_size=32))
def test_address_round_trip_for_any_key(key: bytes) -> None:
    assert decode_onion_address(encode_onion_address(key)) == key


@FUZZ
@given(st.binary(max_size=200))
def test_secret_key_loader_on_arbitrary_bytes(data: bytes) -> None:
    try:
        identity = keys.decode_secret_key_file(data)
    except KeyFileError:
        return
    assert keys.encode_secret_key_file(identity) == data


@FUZZ
@given(st.binary(min_size=64, max_size=64))
def test_secret_key_loader_with_valid_header(body: bytes) -> None:
    data = keys.SECRET_KEY_HEADER + body
    try:
        identity = keys.decode_secret_key_file(data)
    except KeyFileError as exc:
        assert "unclamped" in str(exc)
        return
    assert keys.verify_signature(identity.public_key, b"m", identity.sign(b"m"))


@FUZZ
@given(st.binary(max_size=120))
def test_public_key_and_pem_loaders_on_arbitrary_bytes(data: bytes) -> None:
    public = _outcome(keys.decode_public_key_file, data)
    assert isinstance(public, KeyFileError) or (len(public) == 32 and len(data) == 64)
    assert isinstance(_outcome(keys.identity_from_pem, data), KeyFileError)


@FUZZ
@given(st.binary(max_size=300))
def test_pem_loader_on_arbitrary_pem_bodies(body: bytes) -> None:
    pem = (b"-----BEGIN PRIVATE KEY-----\n" + base64.encodebytes(body)
           + b"-----END PRIVATE KEY-----\n")
    result = _outcome(keys.identity_from_pem, pem)
    assert isinstance(result, KeyFileError | Ed25519Identity)


@FUZZ
@given(st.binary(max_size=400))
def test_cert_parser_on_arbitrary_bytes(data: bytes) -> None:
    try:
        cert = parse_certificate(data)
    except CertificateError:
        return
    assert cert.encode() == data  # whatever parses re-encodes exactly
    verdict = _outcome(cert.verify, None, 0)
    assert verdict is None or isinstance(verdict, CertificateError)


@FUZZ
@given(st.lists(st.tuples(st.integers(0, len(_VALID_CERT) - 1), st.integers(1, 255)),
                min_size=1, max_size=4))
def test_cert_parser_on_mutated_valid_cert(flips: list[tuple[int, int]]) -> None:
    data = bytearray(_VALID_CERT)
    for pos, mask in flips:
        data[pos] ^= mask
    try:
        parse_certificate(bytes(data)).verify()
    except CertificateError:
        return
    assert bytes(data) == _VALID_CERT  # only an unchanged cert may verify


@FUZZ
@given(st.text(max_size=300))
def test_cert_pem_parser_on_arbitrary_text(text: str) -> None:
    wrapped = f"-----BEGIN ED25519 CERT-----\n{text}\n-----END ED25519 CERT-----"
    for candidate in (text, wrapped):
        result = _outcome(parse_certificate_pem, candidate)
        assert isinstance(result, CertificateError | Ed25519Certificate)


@FUZZ
@given(st.one_of(st.none(), st.integers(), st.floats(), st.lists(st.integers())))
def test_wrong_types_give_typed_errors(value: object) -> None:
    for call in (decode_onion_address, parse_certificate, parse_certificate_pem,
                 keys.decode_secret_key_file, keys.decode_public_key_file,
                 keys.identity_from_pem, Ed25519Identity.from_expanded,
                 Ed25519Identity.from_seed):
        assert isinstance(_outcome(call, value), OnionmeshError)
