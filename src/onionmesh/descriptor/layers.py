"""Encryption of the two descriptor layers (rend-spec-v3 [HS-DESC-ENCRYPTION-KEYS]).

Everything here is pure byte manipulation on top of well-kept primitives:
SHAKE-256 and SHA3-256 from ``hashlib``, AES-256-CTR and X25519 from
``cryptography``. The construction itself is the spec's:

* ``SECRET_INPUT = SECRET_DATA | N_hs_subcred | INT_8(revision_counter)``
* ``keys = SHAKE-256(SECRET_INPUT | salt | STRING_CONSTANT)`` giving 32 bytes of
  AES key, 16 bytes of IV and 32 bytes of MAC key,
* ``blob = salt(16) | AES-256-CTR(plaintext) | MAC(32)`` with
  ``MAC = SHA3-256(INT_8(len(mac_key)) | mac_key | INT_8(len(salt)) | salt | ciphertext)``.

Padding follows C tor (``hs_descriptor.c:build_encrypted``): only the
superencrypted (middle) layer plaintext is NUL-padded, up to the *next multiple*
of 10000 bytes (``CEIL_DIV(len, 10000) * 10000``); the inner layer is not padded.
stem adds ``len % 10000`` bytes instead, which is a known bug we do not copy.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import random
import re
import struct
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from onionmesh.descriptor.errors import (
    ClientAuthRequired,
    MacMismatch,
    MalformedDescriptor,
)

SUPERENCRYPTED_CONSTANT = b"hsdir-superencrypted-data"
ENCRYPTED_CONSTANT = b"hsdir-encrypted-data"
PAD_MULTIPLE = 10000
SALT_LEN = 16
MAC_LEN = 32
KEY_LEN = 32
IV_LEN = 16
# hs_descriptor.h: the descriptor cookie (and so each encrypted cookie) is 16 bytes;
# the key that encrypts it for one client is 32. Tor clients refuse other sizes.
COOKIE_LEN = 16
COOKIE_KEY_LEN = 32
CLIENT_ID_LEN = 8
AUTH_CLIENT_MULTIPLE = 16
_SYSTEM_RANDOM = random.SystemRandom()


def credential(identity_key: bytes) -> bytes:
    """``N_hs_cred = SHA3-256("credential" | A)`` for the service identity key A."""
    return hashlib.sha3_256(b"credential" + identity_key).digest()


def subcredential(identity_key: bytes, blinded_key: bytes) -> bytes:
    """``N_hs_subcred = SHA3-256("subcredential" | N_hs_cred | A')`` ([SUBCRED])."""
    return hashlib.sha3_256(b"subcredential" + credential(identity_key) + blinded_key).digest()


def padded_length(length: int) -> int:
    """Length of a superencrypted plaintext after C tor's padding (next multiple of 10000)."""
    return -(-length // PAD_MULTIPLE) * PAD_MULTIPLE


def _aes_ctr(key: bytes, iv: bytes, data: bytes) -> bytes:
    encryptor = Cipher(algorithms.AES(key), modes.CTR(iv)).encryptor()
    return encryptor.update(data) + encryptor.finalize()


def _layer_keys(
    secret_data: bytes, subcred: bytes, revision_counter: int, salt: bytes, constant: bytes
) -> tuple[bytes, bytes, bytes]:
    secret_input = secret_data + subcred + struct.pack(">Q", revision_counter)
    keys = hashlib.shake_256(secret_input + salt + constant).digest(KEY_LEN + IV_LEN + MAC_LEN)
    return keys[:KEY_LEN], keys[KEY_LEN : KEY_LEN + IV_LEN], keys[KEY_LEN + IV_LEN :]


def _mac(mac_key: bytes, salt: bytes, ciphertext: bytes) -> bytes:
    header = struct.pack(">Q", len(mac_key)) + mac_key + struct.pack(">Q", len(salt)) + salt
    return hashlib.sha3_256(header + ciphertext).digest()


def encrypt_layer(
    plaintext: bytes,
    secret_data: bytes,
    subcred: bytes,
    revision_counter: int,
    constant: bytes,
    *,
    pad: bool,
    salt: bytes | None = None,
) -> bytes:
    """Encrypt one layer and return ``salt | ciphertext | mac`` (pad: the middle layer only)."""
    if salt is None:
        salt = os.urandom(SALT_LEN)
    if pad:
        plaintext = plaintext + b"\x00" * (padded_length(len(plaintext)) - len(plaintext))
    key, iv, mac_key = _layer_keys(secret_data, subcred, revision_counter, salt, constant)
    ciphertext = _aes_ctr(key, iv, plaintext)
    return salt + ciphertext + _mac(mac_key, salt, ciphertext)


def decrypt_layer(
    blob: bytes,
    secret_data: bytes,
    subcred: bytes,
    revision_counter: int,
    constant: bytes,
    *,
    what: str,
) -> bytes:
    """Check the MAC and decrypt one layer; return the plaintext up to the first NUL.

    Raises ``MacMismatch`` on a bad MAC and ``MalformedDescriptor`` on a blob too
    short to hold salt, MAC and one byte, or an empty plaintext (as tor does).
    """
    if len(blob) <= SALT_LEN + MAC_LEN:
        raise MalformedDescriptor(f"{what} blob is too short ({len(blob)} bytes)")
    salt, ciphertext, mac = blob[:SALT_LEN], blob[SALT_LEN:-MAC_LEN], blob[-MAC_LEN:]
    key, iv, mac_key = _layer_keys(secret_data, subcred, revision_counter, salt, constant)
    if not hmac.compare_digest(_mac(mac_key, salt, ciphertext), mac):
        raise MacMismatch(f"{what} MAC does not match")
    plaintext = _aes_ctr(key, iv, ciphertext)
    end = plaintext.find(b"\x00")
    if end >= 0:
        plaintext = plaintext[:end]
    if not plaintext:
        raise MalformedDescriptor(f"{what} decrypts to an empty plaintext")
    return plaintext


# --- base64 helpers ---------------------------------------------------------------------

_B64_CHARS = re.compile(r"^[A-Za-z0-9+/]*={0,2}$")


def b64_decode(text: str, what: str, *, length: int | None = None) -> bytes:
    """Decode base64 with or without ``=`` padding (tor writes both forms); typed errors."""
    if not _B64_CHARS.match(text):
        raise MalformedDescriptor(f"{what} is not base64")
    stripped = text.rstrip("=")
    if len(stripped) % 4 == 1:
        raise MalformedDescriptor(f"{what} has an impossible base64 length")
    try:
        data = base64.b64decode(stripped + "=" * (-len(stripped) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise MalformedDescriptor(f"{what} is not valid base64") from exc
    if length is not None and len(data) != length:
        raise MalformedDescriptor(f"{what} must be {length} bytes, got {len(data)}")
    return data


def b64_nopad(data: bytes) -> str:
    """Base64 without ``=`` padding (tor's ``base64_encode_nopad``)."""
    return base64.b64encode(data).decode("ascii").rstrip("=")


def b64_padded(data: bytes) -> str:
    """Base64 with padding and no line breaks (tor's ``base64_encode(..., 0)``)."""
    return base64.b64encode(data).decode("ascii")


def b64_multiline(data: bytes) -> str:
    """Base64 in 64-character lines, each ending with a newline (``BASE64_ENCODE_MULTILINE``)."""
    # 48 input bytes are exactly one 64-character line; b2a_base64 appends the newline.
    view = memoryview(data)
    return b"".join(
        binascii.b2a_base64(view[i : i + 48]) for i in range(0, len(data), 48)
    ).decode("ascii")


# --- client authorization ([CLIENT-AUTH] in rend-spec-v3) -----------------------------


@dataclass(frozen=True)
class AuthClient:
    """One ``auth-client`` line: client id, IV and encrypted descriptor cookie."""

    client_id: bytes
    iv: bytes
    encrypted_cookie: bytes

    def encode(self) -> str:
        return (
            f"auth-client {b64_nopad(self.client_id)} {b64_nopad(self.iv)} "
            f"{b64_nopad(self.encrypted_cookie)}"
        )


def _client_keys(subcred: bytes, shared_secret: bytes) -> tuple[bytes, bytes]:
    keys = hashlib.shake_256(subcred + shared_secret).digest(CLIENT_ID_LEN + COOKIE_KEY_LEN)
    return keys[:CLIENT_ID_LEN], keys[CLIENT_ID_LEN:]


def fake_auth_clients(count: int) -> list[AuthClient]:
    """Random entries, indistinguishable from real ones without a client key."""
    size = CLIENT_ID_LEN + IV_LEN + COOKIE_LEN
    pool = os.urandom(size * count)  # one system call for all of them
    entries = []
    for offset in range(0, size * count, size):
        iv_at, cookie_at = offset + CLIENT_ID_LEN, offset + CLIENT_ID_LEN + IV_LEN
        entries.append(AuthClient(pool[offset:iv_at], pool[iv_at:cookie_at],
                                  pool[cookie_at : offset + size]))
    return entries


def auth_clients_for(
    client_keys: list[bytes], cookie: bytes, ephemeral: X25519PrivateKey, subcred: bytes
) -> list[AuthClient]:
    """Real entries for each client x25519 public key, padded with fakes to a multiple of 16.

    With no clients, 16 fake entries are returned (tor always writes at least 16).
    The list is shuffled so real entries cannot be told apart by position.
    """
    entries = []
    for client_pk in client_keys:
        shared = ephemeral.exchange(X25519PublicKey.from_public_bytes(client_pk))
        client_id, cookie_key = _client_keys(subcred, shared)
        iv = os.urandom(IV_LEN)
        entries.append(AuthClient(client_id, iv, _aes_ctr(cookie_key, iv, cookie)))
    wanted = max(AUTH_CLIENT_MULTIPLE,
                 -(-len(entries) // AUTH_CLIENT_MULTIPLE) * AUTH_CLIENT_MULTIPLE)
    entries.extend(fake_auth_clients(wanted - len(entries)))
    _SYSTEM_RANDOM.shuffle(entries)  # OS randomness: the order must not reveal real entries
    return entries


def find_descriptor_cookie(
    entries: list[AuthClient], ephemeral_pk: bytes, client_sk: bytes, subcred: bytes
) -> bytes | None:
    """Return the cookie encrypted for this client secret key, or None if not listed."""
    try:
        private = X25519PrivateKey.from_private_bytes(client_sk)
        shared = private.exchange(X25519PublicKey.from_public_bytes(ephemeral_pk))
    except ValueError as exc:
        raise ClientAuthRequired("client-auth key exchange failed (bad key)") from exc
    client_id, cookie_key = _client_keys(subcred, shared)
    for entry in entries:
        if hmac.compare_digest(entry.client_id, client_id):
            return _aes_ctr(cookie_key, entry.iv, entry.encrypted_cookie)
    return None
