"""Envelope authentication: cluster MAC, sender signature, replay and freshness.

Every datagram is ``Sealed(version, signed, signature, mac)``:

* ``signature`` is the sender's ed25519 node-key signature over the signed
  bytes (PyNaCl/libsodium), so one member cannot speak for another;
* ``mac`` is keyed BLAKE2b-256 over version, signed bytes and signature with a
  key derived from the cluster secret, so a datagram from outside the cluster
  is refused before any decoding of its content or any signature check (cheap
  to reject floods). The cluster secret itself never travels.
* the signed part carries ``(boot, seq)``: a per-boot id (by default the
  boot's start time in microseconds: unique, but NOT assumed to increase,
  since a restarted node's clock may have been stepped back) and a sequence
  number that increases per datagram. ``ReplayGuard`` keeps, per sender, the
  window of its current boot and the ids of its last ``RETIRED_BOOTS`` boots.
  A boot never seen before becomes the current one; a retired boot is
  refused as ``replayed``; in the current boot an unseen seq within a
  64-message window of the highest one is accepted (UDP reorders).
* ``ts_ms`` must be within ``datagram_max_age`` (``[coordination]``, 300 s by
  default) of the receiver's clock, which bounds how long any captured datagram
  is worth anything. It is only that bound, not the clock check: replays are
  refused by the windows above and the echo below. It is deliberately much
  wider than the clock tolerance (``[resilience] clock_skew_tolerance``, the
  config insists on 3x), so a peer whose clock is wrong by more than the
  tolerance is still heard, its timestamps reach the offset estimator
  (``clock_offset.py``) and the peers' median holds it back. Datagrams refused
  here are NOT fed to the estimator: they never complete the echo handshake,
  so nothing proves they were sent recently, and a recording replayed later
  would look exactly like a clock far off (an attacker could make an isolated
  node hold forever). A clock off by more than ``datagram_max_age`` leaves its
  node alone, judged by tor's consensus window and the kernel's NTP status.
* ``echo`` must equal the receiver's per-boot *challenge* (a 16-byte value
  derived from the receiver's key and boot id, carried in every message it
  sends). This closes the gap the two checks above leave: a receiver that
  restarts has lost its replay windows, and without the echo anything
  captured in the last ``datagram_max_age`` seconds would be accepted
  again. A message with another echo is refused as ``unverified``: nothing
  is applied. The core only notes the sender's challenge in a bounded
  handshake cache (handshake.py) so that what it sends that node next echoes
  it, and for a boot of that node it has never seen it answers once, at
  once, with a heartbeat. Two nodes that meet therefore complete the
  handshake in one round trip; a replay (whose boot is known) gets nothing.

Checks come strictly before state changes: ``verify`` returns the decoded
message and a ``ReplayGuard`` token; the core commits the token only after
every other check has passed.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from nacl.exceptions import CryptoError
from nacl.signing import SigningKey, VerifyKey

from onionmesh.mesh.codec import decode_sealed, decode_signed, encode, encode_sealed
from onionmesh.mesh.errors import MeshConfigError, RejectedDatagram
from onionmesh.mesh.messages import WIRE_VERSION, Message, Sealed, Signed
from onionmesh.mesh.vocabulary import RejectReason

_SIG_CONTEXT = b"onionmesh/mesh/v1 signed\x00"
_MAC_CONTEXT = b"onionmesh/mesh/v1 mac\x00"
REPLAY_WINDOW = 64
RETIRED_BOOTS = 16  # a sender restarting more often than this within a skew window is absurd


def _mac_key(cluster_secret: bytes) -> bytes:
    if not isinstance(cluster_secret, bytes) or len(cluster_secret) < 16:
        raise MeshConfigError("cluster secret must be at least 16 bytes")
    return hashlib.blake2b(cluster_secret, digest_size=32, person=b"onionmesh-mac-k1").digest()


class ClusterKey:
    """The MAC key derived from the cluster secret (the secret is not kept).

    During a secret rotation (``onionmesh rotate-secret``) a node also accepts MACs
    made with the other secret of the rotation (``accepted``), while it makes its own
    with the current one, so nodes at different steps keep hearing each other.
    """

    def __init__(self, cluster_secret: bytes, accepted: Sequence[bytes] = ()) -> None:
        self.set(cluster_secret, accepted)

    def set(self, cluster_secret: bytes, accepted: Sequence[bytes] = ()) -> None:
        """Replace the secrets (all checked before anything changes)."""
        key = _mac_key(cluster_secret)
        others = tuple(_mac_key(secret) for secret in accepted)
        self._key = key
        self._accepted = tuple(k for k in others if k != key)

    def __repr__(self) -> str:
        return "ClusterKey(<redacted>)"

    def tag(self, signed: bytes, signature: bytes) -> bytes:
        """MAC over the version, the signed bytes and the signature."""
        return self._tag(self._key, signed, signature)

    @staticmethod
    def _tag(key: bytes, signed: bytes, signature: bytes) -> bytes:
        h = hashlib.blake2b(key=key, digest_size=32)
        h.update(_MAC_CONTEXT + bytes([WIRE_VERSION]))
        h.update(len(signed).to_bytes(4, "big") + signed + signature)
        return h.digest()

    def check(self, signed: bytes, signature: bytes, mac: bytes) -> bool:
        """Constant-time MAC comparison (against each accepted secret too)."""
        ok = hmac.compare_digest(self._tag(self._key, signed, signature), mac)
        for key in self._accepted:
            ok |= hmac.compare_digest(self._tag(key, signed, signature), mac)
        return ok


def boot_challenge(signing_seed: bytes, boot: int) -> bytes:
    """This boot's challenge: unique per (node key, boot id); public, not a secret."""
    return hashlib.blake2b(
        boot.to_bytes(8, "big"), key=signing_seed, digest_size=16, person=b"onionmesh-chal"
    ).digest()


class Unverified(RejectedDatagram):
    """Authentic and fresh, but not provably sent after this boot began.

    Carries the decoded message so the core can note the sender's challenge.
    """

    def __init__(self, signed: Signed) -> None:
        super().__init__(RejectReason.UNVERIFIED, f"{signed.sender}: echo does not match this boot")
        self.signed = signed


class Sealer:
    """Signs and MACs outgoing messages for one node boot."""

    def __init__(self, node_id: str, signing_seed: bytes, key: ClusterKey, boot: int) -> None:
        self._signing_key = SigningKey(signing_seed)
        self.public_key = bytes(self._signing_key.verify_key)
        self.node_id = node_id
        self.boot = boot
        self.challenge = boot_challenge(signing_seed, boot)
        self.seq = 0
        self._key = key

    def __repr__(self) -> str:
        return f"Sealer(node_id={self.node_id!r}, boot={self.boot}, seq={self.seq})"

    def seal(self, body: Message, now: float, to: str = "", echo: bytes = b"") -> bytes:
        """Encode, sign and MAC ``body`` for recipient ``to`` whose challenge is ``echo``."""
        self.seq += 1
        signed = encode(
            Signed(
                sender=self.node_id,
                public_key=self.public_key,
                boot=self.boot,
                seq=self.seq,
                ts_ms=max(0, int(now * 1000)),
                challenge=self.challenge,
                to=to,
                echo=echo,
                body=body,
            )
        )
        signature = self._signing_key.sign(_SIG_CONTEXT + signed).signature
        return encode_sealed(
            Sealed(WIRE_VERSION, signed, signature, self._key.tag(signed, signature))
        )


@dataclass
class _SenderWindow:
    boot: int
    top: int  # highest seq accepted in this boot
    bitmap: int  # bit i set = seq (top - i) accepted
    retired: tuple[int, ...] = ()  # the sender's earlier boots, newest last


@dataclass(frozen=True)
class ReplayToken:
    """What ``ReplayGuard.commit`` records once a datagram is fully accepted."""

    sender: str
    boot: int
    seq: int


class ReplayGuard:
    """Per-sender (boot, seq) sliding window."""

    def __init__(self) -> None:
        self._windows: dict[str, _SenderWindow] = {}

    def check(self, sender: str, boot: int, seq: int) -> ReplayToken:
        """Raise ``RejectedDatagram(REPLAYED)`` if this (boot, seq) was seen or is too old."""
        w = self._windows.get(sender)
        if w is not None:
            if boot in w.retired:
                raise RejectedDatagram(
                    RejectReason.REPLAYED, f"{sender}: boot {boot} is an earlier boot"
                )
            if boot == w.boot:
                if seq > w.top:
                    pass
                elif w.top - seq >= REPLAY_WINDOW:
                    raise RejectedDatagram(
                        RejectReason.REPLAYED, f"{sender}: seq {seq} below window"
                    )
                elif (w.bitmap >> (w.top - seq)) & 1:
                    raise RejectedDatagram(RejectReason.REPLAYED, f"{sender}: seq {seq} seen")
        if seq == 0:
            raise RejectedDatagram(RejectReason.MALFORMED, f"{sender}: sequence number 0")
        return ReplayToken(sender, boot, seq)

    def commit(self, token: ReplayToken) -> bool:
        """Record an accepted datagram; return True if it started a new boot."""
        w = self._windows.get(token.sender)
        if w is None or token.boot != w.boot:
            retired = () if w is None else (*w.retired, w.boot)[-RETIRED_BOOTS:]
            self._windows[token.sender] = _SenderWindow(token.boot, token.seq, 1, retired)
            return True
        if token.seq > w.top:
            shift = token.seq - w.top
            w.bitmap = ((w.bitmap << shift) | 1) & ((1 << REPLAY_WINDOW) - 1)
            w.top = token.seq
        else:
            w.bitmap |= 1 << (w.top - token.seq)
        return False

    def is_retired(self, sender: str, boot: int) -> bool:
        """Whether ``boot`` is one of the sender's earlier boots."""
        w = self._windows.get(sender)
        return w is not None and boot in w.retired

    def current_boot(self, sender: str) -> int | None:
        w = self._windows.get(sender)
        return None if w is None else w.boot

    def forget(self, sender: str) -> None:
        """Drop a sender's window (operator removal)."""
        self._windows.pop(sender, None)


class Verifier:
    """Runs every envelope check in order, cheapest first; changes no state."""

    def __init__(self, key: ClusterKey, max_age: float) -> None:
        self._key = key
        self._max_age_ms = int(max_age * 1000)
        self._verify_keys: dict[bytes, VerifyKey] = {}

    def verify(
        self,
        data: bytes,
        now: float,
        own_id: str,
        own_challenge: bytes,
        pinned_key: Callable[[str], bytes | None],
        guard: ReplayGuard,
        *,
        members_only: bool = False,
    ) -> tuple[Signed, ReplayToken]:
        """Return the authenticated message, or raise ``RejectedDatagram``.

        ``members_only``: a sender ``pinned_key`` does not know is refused
        (roster mode: keys come from the signed roster, never from a message).
        """
        sealed = decode_sealed(data)
        if not self._key.check(sealed.signed, sealed.signature, sealed.mac):
            raise RejectedDatagram(RejectReason.UNKNOWN_CLUSTER, "cluster MAC does not verify")
        signed = decode_signed(sealed.signed)
        if signed.sender == own_id:
            raise RejectedDatagram(RejectReason.OWN_ID, "datagram claims to come from this node")
        if signed.to and signed.to != own_id:
            raise RejectedDatagram(RejectReason.MISDIRECTED, f"addressed to {signed.to}")
        expected = pinned_key(signed.sender)
        if expected is None and members_only:
            raise RejectedDatagram(
                RejectReason.NOT_MEMBER, f"{signed.sender} is not in the roster"
            )
        if expected is not None and not hmac.compare_digest(expected, signed.public_key):
            raise RejectedDatagram(
                RejectReason.FORGED, f"{signed.sender}: public key differs from pinned"
            )
        # Stateless checks on the claimed fields before the costly signature: a replay
        # or a stale copy is refused for the price of a MAC (flood resistance).
        if abs(signed.ts_ms - int(now * 1000)) > self._max_age_ms:
            raise RejectedDatagram(
                RejectReason.STALE, f"{signed.sender}: timestamp outside datagram_max_age"
            )
        token = guard.check(signed.sender, signed.boot, signed.seq)
        vk = self._verify_keys.get(signed.public_key)
        if vk is None:
            vk = VerifyKey(signed.public_key)
            if len(self._verify_keys) < 4096:  # bounded cache; misses only cost speed
                self._verify_keys[signed.public_key] = vk
        try:
            vk.verify(_SIG_CONTEXT + sealed.signed, sealed.signature)
        except (CryptoError, ValueError, TypeError):
            raise RejectedDatagram(RejectReason.FORGED, f"{signed.sender}: bad signature") from None
        if not hmac.compare_digest(signed.echo, own_challenge):
            raise Unverified(signed)
        return signed, token
