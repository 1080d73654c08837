"""Descriptors published by tor's own node instances, read back and fully verified by us."""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest

from onionmesh.crypto.address import decode_onion_address
from onionmesh.crypto.blinding import blind_public_key
from onionmesh.crypto.keys import Ed25519Identity
from onionmesh.hsdir.hashring import hsdir_index, responsible_hsdirs
from onionmesh.hsdir.timeperiod import descriptor_periods, fetch_period
from onionmesh.publish.publisher import fetch_consensus
from onionmesh.tor.control import TorController
from onionmesh.tor.control_protocol import parse_hs_desc_event
from onionmesh.tor.intro_points import (
    IntroPointsError,
    NodeIntroWatcher,
    decode_intro_set,
    fetch_descriptor,
    read_own_descriptor,
)
from tests.eventually import aeventually

pytestmark = [pytest.mark.tor, pytest.mark.tornet]


async def test_hsfetched_node_descriptor_decodes_with_full_verification(tornet, tornet_client):
    node = await tornet.aadd_onion_service("h8fetchnode")
    ctl = await TorController.connect(port=tornet_client.control_port)
    try:
        await ctl.set_events("HS_DESC", "HS_DESC_CONTENT")
        sub = ctl.subscribe("HS_DESC")
        consensus = await fetch_consensus(ctl)
        async def fetched() -> str | None:
            # tor asks one HSDir per fetch; one that has not stored the new service's
            # descriptor yet answers NOT_FOUND: ask again, as tor itself would.
            with contextlib.suppress(IntroPointsError):
                return await fetch_descriptor(ctl, node.onion_address, timeout=30)
            return None

        text = await aeventually(fetched, timeout=120, interval=6.0,
                                 what="the new service's descriptor from an HSDir")
        tp, fetch_srv = fetch_period(consensus, time.time())
        length = descriptor_periods(consensus, time.time())[0].period_length
        intro_set = decode_intro_set(text, node.onion_address, period_length=length,
                                     now=time.time(), source="hsfetch")
        assert intro_set.period_number == tp
        assert intro_set.blinded_key == blind_public_key(
            decode_onion_address(node.onion_address), tp, length)
        assert 1 <= len(intro_set.intro_points) <= 20
        for ip in intro_set.intro_points:  # certificates were verified by the parser
            assert ip.auth_key_cert is not None and ip.auth_key_cert.certified_key == ip.auth_key

        # The HSDir tor asked is on our fetch ring and its HSDIR_INDEX is our fetch index.
        async with asyncio.timeout(10):
            async for event in sub:
                parsed = parse_hs_desc_event(event)
                if parsed.address == node.onion_address and parsed.action == "REQUESTED":
                    break
        sub.close()
        relays = {r.fingerprint: r for r in responsible_hsdirs(
            intro_set.blinded_key, tp, length, fetch_srv, consensus, for_fetch=True)}
        assert parsed.hsdir in relays
        ours = hsdir_index(relays[parsed.hsdir].ed25519_id, fetch_srv, tp, length)
        assert parsed.hsdir_index is not None and parsed.hsdir_index.lower() == ours.hex()

        # Tampering with what tor served is a typed error, never a crash.
        flipped = text.replace("revision-counter ", "revision-counter 1", 1)
        with pytest.raises(IntroPointsError):
            decode_intro_set(flipped, node.onion_address, period_length=length,
                             now=time.time(), source="hsfetch")
        other = Ed25519Identity.generate().onion_address  # a valid but different address
        with pytest.raises(IntroPointsError, match="WrongBlindedKey"):
            decode_intro_set(text, other, period_length=length, now=time.time(),
                             source="hsfetch")
    finally:
        await ctl.close()


async def test_own_descriptor_and_watcher_see_both_sources(tornet, tornet_client):
    node = await tornet.aadd_onion_service("h8ownnode")
    own = await TorController.connect(port=node.control_port)
    fetcher = await TorController.connect(port=tornet_client.control_port)
    try:
        consensus = await fetch_consensus(fetcher)
        periods = {p.period_number for p in descriptor_periods(consensus, time.time())}
        length = descriptor_periods(consensus, time.time())[0].period_length

        async def own_set_with_intro_points():
            text = await read_own_descriptor(own, node.onion_address)
            if not text:
                return None
            mine = decode_intro_set(text, node.onion_address, period_length=length,
                                    now=time.time(), source="own")
            return mine if mine.intro_points else None

        # tor first exposes a 0-intro-point descriptor (docs/testnet.md §5)
        mine = await aeventually(own_set_with_intro_points, timeout=10, interval=0.5,
                                 what="own descriptor with intro points")
        assert mine.period_number in periods and mine.intro_points

        changes = []
        watcher = NodeIntroWatcher(node.onion_address, period_length=lambda: length, own=own,
                                   fetcher=fetcher, on_change=lambda: changes.append(1))
        assert await watcher.poll_once() is True
        assert changes == [1]
        assert set(watcher.sets.periods()) <= periods
        assert watcher.sets.for_period(mine.period_number).key == mine.key
        # Reading the same descriptors again is not a rotation. HSFETCH may bring the
        # node's other descriptor (the other time period) on a later poll, which is news
        # once; an idle service's sets must then stop changing.
        for _ in range(10):
            if await watcher.poll_once() is False:
                break
        else:
            pytest.fail("every one of 10 polls of an idle node reported a rotation")
    finally:
        await own.close()
        await fetcher.close()
