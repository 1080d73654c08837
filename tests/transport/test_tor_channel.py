"""The coordination onion over a real private Tor network: client-authorized, framed
streams per peer, and an outsider cannot even get its descriptor."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from onionmesh.testnet import TorClient, TorNetwork
from onionmesh.tor.control import TorController
from onionmesh.transport.frames import Frame, FrameKind
from onionmesh.transport.socks import SocksFailure, socks_open
from onionmesh.transport.tor_channel import COORD_PORT, TorChannel, TorPeer
from onionmesh.wireguard.keys import WireGuardKeyPair
from tests.eventually import aeventually

pytestmark = [pytest.mark.tor, pytest.mark.tornet]


async def test_frames_flow_both_ways_and_outsiders_are_kept_out(
        tornet: TorNetwork, tornet_client: TorClient, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    tor_a, tor_b = await asyncio.gather(tornet.aadd_client("coorda"),
                                        tornet.aadd_client("coordb"))
    keys = {"a": WireGuardKeyPair.generate(), "b": WireGuardKeyPair.generate()}
    got: dict[str, list[tuple[str, Frame]]] = {"a": [], "b": []}
    channels: dict[str, TorChannel] = {}
    controllers = []
    try:
        for name, tor in (("a", tor_a), ("b", tor_b)):
            controller = await TorController.connect(port=tor.control_port, timeout=30.0)
            controllers.append(controller)
            assert tor.socks_port is not None
            channels[name] = TorChannel(
                controller, ("127.0.0.1", tor.socks_port), name, socket_dir=tmp_path / name,
                onion_key=None, client_private_b64=keys[name].private_key,
                on_frame=lambda peer, frame, me=name: got[me].append((peer, frame)))
            await channels[name].start({})
        onion = {name: channel.service_id for name, channel in channels.items()}
        assert all(onion.values()) and onion["a"] != onion["b"]
        first_key = channels["a"].onion_key
        assert first_key is not None and first_key.startswith("ED25519-V3:")
        # Each learns the other (as from the roster): the onion is re-published with the
        # peer's client key, under the same address.
        await channels["a"].set_peers({"b": TorPeer("b", onion["b"], keys["b"].public_key)})
        await channels["b"].set_peers({"a": TorPeer("a", onion["a"], keys["a"].public_key)})
        assert channels["a"].service_id == onion["a"] and channels["a"].onion_key == first_key

        mesh = Frame(FrameKind.MESH, b"\x94 an authenticated mesh datagram")
        assert channels["b"].send("a", mesh)
        assert channels["a"].send("b", Frame(FrameKind.PROBE, b"12345678"))
        assert not channels["a"].send("nobody", mesh)
        await aeventually(lambda: got["a"] and got["b"], timeout=180,
                         what="frames over tor both ways")
        assert got["a"] == [("b", mesh)]
        assert got["b"] == [("a", Frame(FrameKind.PROBE, b"12345678"))]
        status = channels["a"].stream_status()["b"]
        assert status["connected"] is True and status["connects"] == 1

        # An outsider (a tor without a roster member's key) cannot fetch the descriptor.
        assert tornet_client.socks_port is not None
        with pytest.raises(SocksFailure) as info:
            await socks_open(("127.0.0.1", tornet_client.socks_port), f"{onion['a']}.onion",
                             COORD_PORT, username="outsider-1", timeout=120)
        assert info.value.code == 0xF4, str(info.value)  # missing client authorization

        # Closing a channel while a peer's stream into it is open ends that stream's
        # handler quietly (asyncio logged a cancelled handler as an ERROR on 3.11).
        assert channels["a"].stream_status()["b"]["connected"]
        await channels["a"].close()
        for _ in range(5):  # let the finished handlers' done-callbacks run
            await asyncio.sleep(0)
        noise = [r.getMessage() for r in caplog.records if r.name == "asyncio"]
        assert noise == [], noise
    finally:
        for channel in channels.values():
            await channel.close()
        for controller in controllers:
            await controller.close()
        for tor in (tor_a, tor_b):
            tor.stop()
