"""Builders for realistic microdesc consensus and md/all texts (dir-spec 3.3 and 3.4.1).

Hand written from dir-spec for the tests; the line layout follows what
tor 0.4.x emits for ``GETINFO dir/status-vote/current/consensus-microdesc``
and ``GETINFO md/all``.
"""

from __future__ import annotations

import base64
import hashlib
import time
from dataclasses import dataclass, field
from functools import cache

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

FULL_PR = (
    "Conflux=1 Cons=1-2 Desc=1-2 DirCache=2 FlowCtrl=1-2 HSDir=2 HSIntro=4-5 HSRend=1-2 "
    "Link=1-5 LinkAuth=1,3 Microdesc=1-2 Padding=2 Relay=1-4"
)


def b64(data: bytes) -> str:
    """Unpadded base64, as consensus identities and digests are written."""
    return base64.b64encode(data).decode().rstrip("=")


def fmt_time(ts: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts))


@cache
def _rsa_onion_key_pem() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.PKCS1)
        .decode()
    )


def make_microdescriptor(i: int, ed25519_id: bytes | None, *, onion_key: bool = True) -> str:
    """One microdescriptor body, final newline included (as tor stores it)."""
    lines = ["onion-key"]
    if onion_key:
        lines.extend(_rsa_onion_key_pem().strip().split("\n"))
    ntor = hashlib.sha256(b"ntor%d" % i).digest()
    lines.append(f"ntor-onion-key {base64.b64encode(ntor).decode()}")
    if i % 3 == 0:
        lines.append(f"family ${'AB' * 20} ${'CD' * 20}")
    lines.append("p accept 80,443" if i % 2 else "p reject 1-65535")
    lines.append(f"id rsa1024 {b64(hashlib.sha1(b'rsa%d' % i).digest())}")
    if ed25519_id is not None:
        lines.append(f"id ed25519 {b64(ed25519_id)}")
    return "\n".join(lines) + "\n"


def md_digest(body: str) -> bytes:
    return hashlib.sha256(body.encode()).digest()


@dataclass
class RelaySpec:
    nickname: str
    identity: bytes
    md_body: str
    address: str = "10.0.0.1"
    or_port: int = 9001
    flags: tuple[str, ...] = ("Fast", "Guard", "HSDir", "Running", "Stable", "V2Dir", "Valid")
    pr: str | None = FULL_PR
    ed25519_id: bytes | None = None


def make_relays(n: int, *, seed: int = 0, onion_key: bool = True) -> list[RelaySpec]:
    specs = []
    for i in range(n):
        identity = hashlib.sha1(b"identity-%d-%d" % (seed, i)).digest()
        ed = hashlib.sha256(b"ed-%d-%d" % (seed, i)).digest()
        specs.append(
            RelaySpec(
                nickname=f"relay{seed}x{i}",
                identity=identity,
                md_body=make_microdescriptor(i, ed, onion_key=onion_key),
                address=f"10.{seed % 256}.{i // 256}.{i % 256}",
                or_port=9001 + i,
                ed25519_id=ed,
            )
        )
    return specs


@dataclass
class ConsensusSpec:
    valid_after: int
    voting_interval: int = 3600
    params: dict[str, int] = field(
        default_factory=lambda: {"CircuitPriorityHalflifeMsec": 30000, "hsdir_spread_store": 4}
    )
    srv_previous: bytes | None = None
    srv_current: bytes | None = None
    relays: list[RelaySpec] = field(default_factory=list)


def make_consensus(spec: ConsensusSpec) -> str:
    va = spec.valid_after
    vi = spec.voting_interval
    out = [
        "network-status-version 3 microdesc",
        "vote-status consensus",
        "consensus-method 34",
        f"valid-after {fmt_time(va)}",
        f"fresh-until {fmt_time(va + vi)}",
        f"valid-until {fmt_time(va + 3 * vi)}",
        "voting-delay 300 300",
        "client-versions 0.4.8.1-alpha,0.4.8.12,0.4.9.1-alpha",
        "server-versions 0.4.8.12,0.4.9.1-alpha",
        "known-flags Authority BadExit Exit Fast Guard HSDir MiddleOnly Running Stable "
        "StaleDesc Sybil V2Dir Valid",
        "recommended-client-protocols Cons=2 Desc=2 DirCache=2 HSDir=2 HSIntro=4 HSRend=2 "
        "Link=4-5 Microdesc=2 Relay=2",
        "recommended-relay-protocols Cons=2 Desc=2 DirCache=2 HSDir=2 HSIntro=4 HSRend=2 "
        "Link=4-5 LinkAuth=3 Microdesc=2 Relay=2",
        "required-client-protocols Cons=2 Desc=2 Link=4 Microdesc=2 Relay=2",
        "required-relay-protocols Cons=2 Desc=2 DirCache=2 HSDir=2 HSIntro=4 HSRend=2 Link=4-5 "
        "LinkAuth=3 Microdesc=2 Relay=2",
    ]
    if spec.params:
        out.append("params " + " ".join(f"{k}={v}" for k, v in sorted(spec.params.items())))
    if spec.srv_previous is not None:
        out.append(f"shared-rand-previous-value 9 {base64.b64encode(spec.srv_previous).decode()}")
    if spec.srv_current is not None:
        out.append(f"shared-rand-current-value 9 {base64.b64encode(spec.srv_current).decode()}")
    for n in range(3):
        fpr = hashlib.sha1(b"auth%d" % n).hexdigest().upper()
        out.append(f"dir-source auth{n} {fpr} 192.0.2.{n + 1} 192.0.2.{n + 1} 80 443")
        out.append(f"contact Ops Team <auth{n}@example.org>")
        out.append(f"vote-digest {hashlib.sha1(b'vote%d' % n).hexdigest().upper()}")
    for relay in sorted(spec.relays, key=lambda r: r.identity):
        out.append(
            f"r {relay.nickname} {b64(relay.identity)} {fmt_time(va - 7200)} "
            f"{relay.address} {relay.or_port} 0"
        )
        out.append(f"a [2001:db8::{relay.or_port:x}]:{relay.or_port}")
        out.append(f"m {b64(md_digest(relay.md_body))}")
        out.append("s " + " ".join(relay.flags))
        out.append("v Tor 0.4.8.12")
        if relay.pr is not None:
            out.append(f"pr {relay.pr}")
        out.append("w Bandwidth=1000")
    out.append("directory-footer")
    out.append(
        "bandwidth-weights Wbd=0 Wbe=0 Wbg=4203 Wbm=10000 Wdb=10000 Web=10000 Wed=10000 "
        "Wee=10000 Weg=10000 Wem=10000 Wgb=10000 Wgd=0 Wgg=5797 Wgm=5797 Wmb=10000 Wmd=0 "
        "Wme=0 Wmg=4203 Wmm=10000"
    )
    for n in range(3):
        fpr = hashlib.sha1(b"auth%d" % n).hexdigest().upper()
        skd = hashlib.sha1(b"sk%d" % n).hexdigest().upper()
        out.append(f"directory-signature sha256 {fpr} {skd}")
        out.append("-----BEGIN SIGNATURE-----")
        sig = base64.b64encode(hashlib.sha512(b"sig%d" % n).digest() * 6).decode()
        out.extend(sig[i : i + 64] for i in range(0, len(sig), 64))
        out.append("-----END SIGNATURE-----")
    return "\n".join(out) + "\n"


def make_md_all(relays: list[RelaySpec]) -> str:
    """``GETINFO md/all`` as tor sends it: the bodies concatenated, final newline kept."""
    return "".join(r.md_body for r in relays)
