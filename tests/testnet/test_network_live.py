"""The shared private Tor network: bring-up, onion services, Onionbalance instances, teardown."""

from __future__ import annotations

import asyncio
import base64
import hashlib

import pytest
from nacl.signing import SigningKey

from onionmesh.testnet import ServiceInstance, TorClient, TorNetwork
from onionmesh.tor.control import TorController, parse_hs_desc_event
from onionmesh.tor.process import pid_alive

pytestmark = [pytest.mark.tor, pytest.mark.tornet]

REQUIRED = {"Running", "Valid", "HSDir", "Guard", "V2Dir"}


def onion_address(public: bytes) -> str:
    checksum = hashlib.sha3_256(b".onion checksum" + public + b"\x03").digest()[:2]
    return base64.b32encode(public + checksum + b"\x03").decode().lower()


def consensus_relays(text: str) -> dict[str, set[str]]:
    """fingerprint -> flags, read straight from the r/s lines."""
    relays: dict[str, set[str]] = {}
    current = None
    for line in text.splitlines():
        if line.startswith("r "):
            ident = line.split()[2]
            current = base64.b64decode(ident + "=" * (-len(ident) % 4)).hex().upper()
            relays[current] = set()
        elif line.startswith("s ") and current is not None:
            relays[current] = set(line.split()[1:])
    return relays


def test_every_authority_lists_every_relay_with_hsdir_flags(tornet: TorNetwork):
    fingerprints = {node.fingerprint for node in tornet.authorities}
    assert len(fingerprints) == tornet.n_authorities
    for index in range(tornet.n_authorities):
        relays = consensus_relays(tornet.consensus_text(index))
        assert set(relays) == fingerprints
        for flags in relays.values():
            assert flags >= REQUIRED
    md_all = tornet.microdescriptors_text()
    assert md_all.endswith("\n")
    assert md_all.count("\nid ed25519 ") + md_all.startswith("id ed25519 ") >= tornet.n_authorities


def test_client_fetches_a_plain_onion_service_with_a_given_key(
    tornet: TorNetwork, tornet_client: TorClient
):
    seed = hashlib.sha256(b"onionmesh testnet plain service").digest()
    expected = onion_address(bytes(SigningKey(seed).verify_key))
    service = tornet.add_onion_service("plainsvc", key=seed)
    assert service.onion_address == expected
    assert (service.hs_dir / "hostname").read_text().strip() == f"{expected}.onion"
    assert service.uploads >= 2
    response = tornet_client.http_get(service.hostname, "/", timeout=30, retry_for=120)
    assert response.status == 200
    assert response.text == "plainsvc\n"
    assert response.headers["x-onionmesh-node"] == "plainsvc"


async def test_onionbalance_instance_starts_with_ob_config_and_uploads(
    tornet: TorNetwork, tornet_client: TorClient
):
    master = onion_address(bytes(SigningKey(b"\x42" * 32).verify_key))
    instance: ServiceInstance = await tornet.aadd_onion_service("obinst", ob_master=master)
    assert (instance.hs_dir / "ob_config").read_text() == f"MasterOnionAddress {master}.onion\n"
    assert "HiddenServiceOnionbalanceInstance 1\n" in (instance.data_dir / "torrc").read_text()
    assert instance.is_running() and instance.uploads >= 2
    # Independent check that the descriptor is on the HSDirs: the client fetches it (an
    # HSDir that does not hold it yet answers FAILED; fetch again until one has it).
    controller = await TorController.connect(port=tornet_client.control_port)
    try:
        events = controller.subscribe("HS_DESC")
        await controller.set_events("HS_DESC")
        await controller.hs_fetch(instance.onion_address)
        received = None
        failures = 0
        async with asyncio.timeout(90):
            async for event in events:
                parsed = parse_hs_desc_event(event)
                if parsed.address != instance.onion_address:
                    continue
                if parsed.action == "RECEIVED":
                    received = parsed
                    break
                if parsed.action == "FAILED":
                    failures += 1
                    await controller.hs_fetch(instance.onion_address)
        assert received is not None
        assert received.hsdir in set(tornet.hsdir_fingerprints())
    finally:
        await controller.close()


def test_stopping_a_service_leaves_no_process(tornet: TorNetwork):
    service = tornet.add_onion_service("stopsvc")
    tor_pid, tor_start = service.pid, service.process.start_time
    assert service.backend is not None
    backend_pid = service.backend.pid
    assert pid_alive(tor_pid, tor_start) and pid_alive(backend_pid)
    service.stop()
    assert not pid_alive(tor_pid, tor_start)
    assert not pid_alive(backend_pid, service.backend_start_time)
    assert service.process.restarts == 0  # the supervisor did not bring it back
    assert not service.is_running()
