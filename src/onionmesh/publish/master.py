"""The master descriptor itself: revision counter, intro-point certificates, tor-compatible build.

Pure functions (no I/O) used by the publisher shell.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from onionmesh.crypto.blinding import BlindedKey
from onionmesh.crypto.keys import Ed25519Identity
from onionmesh.descriptor.build import CERT_LIFETIME, build_descriptor
from onionmesh.descriptor.intro import IntroPoint, recertify
from onionmesh.descriptor.signer import FreshSigningKey
from onionmesh.hsdir.revision import revision_counter

IntroSource = Callable[[int], Sequence[IntroPoint]]  # period number -> intro points


def revision_for(blinded: BlindedKey, srv_start: int, now: float, last: int | None) -> int:
    """tor's time-based revision counter, forced above ``last`` (never reused)."""
    value = revision_counter(blinded, srv_start, now)
    return value if last is None or value > last else last + 1


# Cached intro-point certificates are renewed once fewer than this many seconds of
# validity remain: more than a descriptor lifetime (3 h) plus upload retries.
_CERT_RENEW_MARGIN = 6 * 3600


@dataclass
class _PeriodKeys:
    signing_key: FreshSigningKey
    revision: int | None = None
    certified: dict[IntroPoint, IntroPoint] = field(default_factory=dict)  # this revision
    before: dict[IntroPoint, IntroPoint] = field(default_factory=dict)  # the previous one


_OBSERVER_INFO = b"onionmesh master descriptor observer x25519 key v1"


def observer_secret_key(master: Ed25519Identity) -> bytes:
    """The x25519 client key the cluster's own descriptors always authorize when
    discovery is restricted: HKDF of the master's secret key, so the same on every node
    that holds it and useless to anyone who does not."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                info=_OBSERVER_INFO).derive(master.expanded)


class MasterDescriptorBuilder:
    """Builds the master descriptors, keeping one descriptor-signing key per time period.

    C tor keeps a descriptor's signing key for its whole time period and certifies each
    intro point once. Doing the same here means a republish after a membership change
    or an intro-point rotation signs only the intro points that are new, not all of
    them (two signatures each), and that the cluster's descriptors look like tor's.
    Certificates are renewed before they would expire under a published descriptor.

    ``client_auth_keys`` (x25519 public keys) restrict discovery to those clients. The
    builder then also authorizes a key of its own (``observer_secret_key``), so the
    publisher can still decrypt the descriptors it fetches back from the HSDirs. That key
    is derived from the master key (``reader_secret_key``): every node holding the master
    key can read what any of them published (a standby's conflict checks, a new publisher
    judging its predecessor's copies).
    """

    def __init__(self, master: Ed25519Identity, *, lifetime_minutes: int,
                 client_auth_keys: Sequence[bytes] = ()) -> None:
        self.master = master
        self.lifetime_minutes = lifetime_minutes
        self._periods: dict[int, _PeriodKeys] = {}
        self.reader_secret_key = observer_secret_key(master)
        self.observer_secret_key: bytes | None = None
        self.client_auth_keys: tuple[bytes, ...] = ()
        self.set_client_auth_keys(client_auth_keys)

    def set_client_auth_keys(self, keys: Sequence[bytes]) -> None:
        """Authorized clients from now on (empty: anyone who knows the address)."""
        if not keys:
            self.client_auth_keys, self.observer_secret_key = (), None
            return
        self.observer_secret_key = self.reader_secret_key
        observer = X25519PrivateKey.from_private_bytes(self.observer_secret_key)
        self.client_auth_keys = (*keys, observer.public_key().public_bytes_raw())

    def build(self, period: int, period_length: int, revision: int,
              points: Sequence[IntroPoint], *, now: float,
              blinded: BlindedKey | None = None) -> str:
        """The descriptor for ``period``; tor clients accept it (16-byte auth-client
        cookies, checked by tests/publish/test_master_descriptor.py)."""
        keys = self._periods.get(period)
        if keys is None:
            keys = self._periods[period] = _PeriodKeys(FreshSigningKey())
        if keys.revision != revision:
            # A revision may be several descriptors (more than 20 intro points, split):
            # certificates live for this revision and the one before, so intro points
            # gone from the plan are forgotten one revision later.
            keys.revision, keys.before, keys.certified = revision, keys.certified, {}
        for point in points:
            bare = _without_certs(point)
            cached = keys.certified.get(bare) or keys.before.get(bare)
            if cached is None or _expires_at(cached) - now < _CERT_RENEW_MARGIN:
                cached = recertify(point, keys.signing_key, now + CERT_LIFETIME)
            keys.certified[bare] = cached
        chosen = [keys.certified[b] for b in dict.fromkeys(map(_without_certs, points))]
        return build_descriptor(self.master, period, period_length, revision, chosen, now=now,
                                lifetime_minutes=self.lifetime_minutes,
                                signing_key=keys.signing_key, blinded=blinded,
                                client_auth_keys=self.client_auth_keys)

    def forget_periods(self, keep: Iterable[int]) -> None:
        """Drop the signing keys of periods no longer published."""
        wanted = set(keep)
        for period in [p for p in self._periods if p not in wanted]:
            del self._periods[period]


def _without_certs(point: IntroPoint) -> IntroPoint:
    """The identity of an intro point, whoever certified it."""
    return replace(point, auth_key_cert=None, enc_key_cert=None, legacy_key=None,
                   legacy_key_cert=None)


def _expires_at(point: IntroPoint) -> float:
    assert point.auth_key_cert is not None and point.enc_key_cert is not None
    return min(point.auth_key_cert.expires_at, point.enc_key_cert.expires_at)
