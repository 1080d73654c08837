"""Cross-check against a real tor on the private test network.

A client tor of the session network hosts an ephemeral onion service
(ADD_ONION with a key we generated). We record tor's own ``HS_DESC UPLOAD``
events and then check, with only the consensus text and ``md/all`` of an
authority:

* each descriptor went to exactly the HSDirs our hash ring computes for its
  blinded key, period and SRV, and tor's HSDIR_INDEX equals our hsdir_index;
* the descriptor's revision counter is our OPE of some second during the
  upload, keyed tor's way (NUL-terminated prefix, 64-byte blinded secret),
  and not Onionbalance's way.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
import time
from dataclasses import dataclass

import pytest

from onionmesh.crypto.blinding import blind_identity
from onionmesh.crypto.certs import parse_certificate_pem
from onionmesh.crypto.keys import Ed25519Identity
from onionmesh.hsdir.consensus import (
    Consensus,
    attach_ed25519_ids,
    parse_consensus,
    parse_microdescriptors,
)
from onionmesh.hsdir.hashring import eligible_hsdirs, hsdir_index, responsible_hsdirs
from onionmesh.hsdir.revision import ope_encrypt, revision_counter_from_secret, revision_plaintext
from onionmesh.hsdir.timeperiod import DescriptorPeriod, descriptor_periods
from onionmesh.publish.publisher import fetch_consensus
from onionmesh.tor.control import TorController
from onionmesh.tor.control_protocol import parse_hs_desc_event

pytestmark = [pytest.mark.tor, pytest.mark.tornet]

UPLOAD_WAIT = 120.0  # seconds; tor uploads ~5 s after its intro circuits are up


@dataclass
class Upload:
    hsdir: str
    blinded_key: bytes
    hsdir_index: str | None


def _snapshot(tornet) -> Consensus:
    text = tornet.consensus_text()
    mds = parse_microdescriptors(tornet.microdescriptors_text())
    return attach_ed25519_ids(parse_consensus(text), mds)


def _b64decode_loose(value: str) -> bytes:
    return base64.b64decode(value + "=" * (-len(value) % 4))


async def _publish_and_record(client, identity: Ed25519Identity, per_descriptor: int):
    controller = await TorController.connect(port=client.control_port)
    try:
        events = controller.subscribe("HS_DESC")
        await controller.set_events("HS_DESC")
        # the consensus the publishing tor itself holds (it may lag the authorities')
        snapshots = [await fetch_consensus(controller)]
        started = time.time()
        key = "ED25519-V3:" + base64.b64encode(identity.expanded).decode()
        result = await controller.add_onion(key, ["80,127.0.0.1:9"])
        address = result.service_id
        uploads: list[Upload] = []
        confirmed = 0  # UPLOADED events carry no descriptor id: count them
        deadline = time.monotonic() + UPLOAD_WAIT
        iterator = events.__aiter__()
        while True:
            keys: dict[bytes, set[str]] = {}
            for upload in uploads:
                keys.setdefault(upload.blinded_key, set()).add(upload.hsdir)
            full = sum(1 for hsdirs in keys.values() if len(hsdirs) >= per_descriptor)
            if full >= 2 and confirmed >= 2 * per_descriptor:
                break
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"tor uploaded {len(uploads)}, confirmed {confirmed} in time"
            event = parse_hs_desc_event(await asyncio.wait_for(iterator.__anext__(), remaining))
            if event.address != address or event.hsdir is None:
                continue
            if event.action == "UPLOAD" and event.descriptor_id:
                uploads.append(
                    Upload(event.hsdir, _b64decode_loose(event.descriptor_id), event.hsdir_index)
                )
            elif event.action == "UPLOADED":
                confirmed += 1
        finished = time.time()
        snapshots.append(await fetch_consensus(controller))
        reply = await controller.get_info(f"hs/service/desc/id/{address}")
        descriptor = reply[f"hs/service/desc/id/{address}"]
        await controller.del_onion(address)
        return uploads, descriptor, started, finished, snapshots
    finally:
        await controller.close()


def _periods_for(identity: Ed25519Identity, snapshots: list[Consensus], now: float):
    """(blinded public key) -> [(DescriptorPeriod, consensus)] over the candidate snapshots."""
    found: dict[bytes, list[tuple[DescriptorPeriod, Consensus]]] = {}
    for snap in snapshots:
        for period in descriptor_periods(snap, now):
            blinded = blind_identity(identity, period.period_number, period.period_length)
            found.setdefault(blinded.public_key, []).append((period, snap))
    return found


def test_real_consensus_and_md_all(tornet):
    consensus = parse_consensus(tornet.consensus_text())
    md_all = tornet.microdescriptors_text()
    assert md_all.endswith("\n")
    mds = parse_microdescriptors(md_all)
    # The control port loses md/all's final newline; parsing must not lose a relay.
    assert parse_microdescriptors(md_all.rstrip("\n")) == mds
    attached = attach_ed25519_ids(consensus, mds)
    assert len(attached.relays) == tornet.n_authorities
    assert all(r.ed25519_id is not None for r in attached.relays)
    assert {r.fingerprint for r in eligible_hsdirs(attached.relays)} == set(
        tornet.hsdir_fingerprints()
    )
    assert attached.voting_interval == tornet.voting_interval
    assert consensus.valid_after <= time.time() <= consensus.valid_until


def test_real_tor_uploads_where_we_compute_with_our_revision_counter(tornet):
    client = tornet.add_client("hsdirprobe")
    identity = Ed25519Identity.generate()
    before = _snapshot(tornet)
    n_hsdirs = len(eligible_hsdirs(before.relays))
    assert n_hsdirs == tornet.n_authorities  # every authority is an HSDir with an ed25519 id
    per_descriptor = min(8, n_hsdirs)
    uploads, descriptor, started, finished, client_snapshots = asyncio.run(
        _publish_and_record(client, identity, per_descriptor)
    )
    after = _snapshot(tornet)
    # tor publishes with its own consensus, which may be a voting interval
    # older than the authorities' (the test may start on an SRV boundary)
    candidates = _periods_for(identity, [before, after, *client_snapshots], finished)

    # --- 1. the ring: tor's first burst of uploads per blinded key
    by_key: dict[bytes, list[Upload]] = {}
    for upload in uploads:
        burst = by_key.setdefault(upload.blinded_key, [])
        if len(burst) < per_descriptor and upload.hsdir not in {u.hsdir for u in burst}:
            burst.append(upload)
    # two descriptors (a third if a time period rotated meanwhile)
    assert len(by_key) >= 2, "tor published a first and a second descriptor"
    for blinded_key, burst in by_key.items():
        assert blinded_key in candidates, "tor's blinded key matches one of our periods"
        matched = False
        for period, snap in candidates[blinded_key]:
            ours = responsible_hsdirs(
                blinded_key, period.period_number, period.period_length, period.srv, snap
            )
            if {r.fingerprint for r in ours} != {u.hsdir for u in burst}:
                continue
            by_fpr = {r.fingerprint: r for r in snap.relays}
            for upload in burst:
                relay = by_fpr[upload.hsdir]
                assert relay.ed25519_id is not None
                expected = hsdir_index(
                    relay.ed25519_id, period.srv, period.period_number, period.period_length
                )
                # tor prints the leading bytes of the index in the event
                assert upload.hsdir_index is not None and len(upload.hsdir_index) >= 16
                assert expected.hex().startswith(upload.hsdir_index.lower())
            matched = True
        assert matched, "tor uploaded to exactly the HSDirs our ring computes"

    # --- 2. the revision counter of the descriptor tor reports as current
    counter = int(re.search(r"^revision-counter (\d+)$", descriptor, re.M).group(1))
    pem = re.search(
        r"-----BEGIN ED25519 CERT-----.*?-----END ED25519 CERT-----", descriptor, re.S
    ).group(0)
    blinded_key = parse_certificate_pem(pem).signing_key
    assert blinded_key in candidates
    matches = 0
    wrong_keying = 0
    for period, _snap in candidates[blinded_key]:
        blinded = blind_identity(identity, period.period_number, period.period_length)
        ob_key = hashlib.sha3_256(b"rev-counter-generation" + blinded.expanded_secret).digest()
        for now in range(int(started) - 2, int(finished) + 2):
            if now < period.srv_start:
                continue
            if revision_counter_from_secret(blinded.expanded_secret, period.srv_start, now) == (
                counter
            ):
                matches += 1
            if ope_encrypt(ob_key, revision_plaintext(period.srv_start, now)) == counter:
                wrong_keying += 1
    assert matches >= 1, "tor's revision counter is our OPE of a second during the upload"
    assert wrong_keying == 0
