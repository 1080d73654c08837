"""Our hash ring against tor's own choices: the HSDirs an ADD_ONION service uploads to
(both descriptors) and the HSDIR_INDEX tor reports, on the 10-HSDir session network."""

from __future__ import annotations

import asyncio
import time

import pytest

from onionmesh.crypto.address import decode_onion_address
from onionmesh.crypto.blinding import blind_public_key
from onionmesh.descriptor.layers import b64_nopad
from onionmesh.hsdir.hashring import hsdir_index, responsible_hsdirs
from onionmesh.hsdir.timeperiod import descriptor_periods
from onionmesh.publish.publisher import fetch_consensus
from onionmesh.tor.control import TorController
from onionmesh.tor.control_protocol import parse_hs_desc_event

pytestmark = [pytest.mark.tor, pytest.mark.tornet]


async def expected_uploads(ctl: TorController, address: str) -> dict[str, tuple]:
    """blinded id -> (DescriptorPeriod, {fingerprint: Relay}) from tor's own consensus."""
    consensus = await fetch_consensus(ctl)
    public_key = decode_onion_address(address)
    out = {}
    for period in descriptor_periods(consensus, time.time()):
        blinded = blind_public_key(public_key, period.period_number, period.period_length)
        relays = responsible_hsdirs(blinded, period.period_number, period.period_length,
                                    period.srv, consensus)
        out[b64_nopad(blinded)] = (period, {r.fingerprint: r for r in relays})
    return out


async def test_ring_and_hsdir_index_equal_tors_for_both_descriptors(tornet, tornet_client):
    assert len(tornet.hsdir_fingerprints()) == 10  # 8 of 10 chosen: a real ring check
    ctl = await TorController.connect(port=tornet_client.control_port)
    try:
        await ctl.set_events("HS_DESC")
        sub = ctl.subscribe("HS_DESC")
        # The target port is never connected to: only the descriptor uploads matter.
        added = await ctl.add_onion("NEW:ED25519-V3", ["80,127.0.0.1:9"], ["DiscardPK"])
        address = added.service_id
        expected = await expected_uploads(ctl, address)
        seen: dict[str, dict[str, str | None]] = {}
        async with asyncio.timeout(90):
            async for event in sub:
                parsed = parse_hs_desc_event(event)
                if parsed.address != address or parsed.action != "UPLOAD":
                    continue
                if parsed.descriptor_id not in expected:
                    # A consensus/period boundary passed since we computed: recompute once more.
                    expected = await expected_uploads(ctl, address)
                assert parsed.descriptor_id in expected, "tor uploaded a blinded key we lack"
                seen.setdefault(parsed.descriptor_id, {})[parsed.hsdir] = parsed.hsdir_index
                if len(seen) == 2 and all(
                    len(seen[k]) >= len(expected[k][1]) for k in seen
                ):
                    break
        sub.close()
        await ctl.del_onion(address)
        assert set(seen) == set(expected)  # both descriptors
        for blinded_id, (period, relays) in expected.items():
            assert len(relays) == 8
            assert set(seen[blinded_id]) == set(relays)
            for fpr, reported in seen[blinded_id].items():
                ours = hsdir_index(relays[fpr].ed25519_id, period.srv, period.period_number,
                                   period.period_length)
                assert reported is not None and reported.lower() == ours.hex()
    finally:
        await ctl.close()
