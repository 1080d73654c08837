"""A mesh node for namespace tests and benchmarks: ``python -m onionmesh.testnet.meshnode CFG``.

Runs the production pieces of one node's coordination layer, in whatever network
namespace it is started in: its WireGuard interface (``WireGuardManager``), its
coordination onion and per-peer tor streams (``TorChannel``, to a tor reached over unix
sockets, which work across namespaces), the path selection (``MultipathTransport``) and
a real ``MeshCore`` driven by the daemon's ``MeshDriver``. It does not publish
descriptors (the daemon does). Every 0.2 s it writes its
view to ``status_path`` (JSON, atomically): each peer's mesh state, path, and the
events it logged, which is what the tests and ``bench/mesh_net.py`` read.

The config (JSON, 0600, written by the harness) holds keys: test use only.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from onionmesh.clock import Clock
from onionmesh.mesh.config import MeshConfig
from onionmesh.mesh.core import MeshCore
from onionmesh.mesh.events import Event
from onionmesh.mesh.identity import NodeIdentity, PeerSeed
from onionmesh.node.mesh_driver import MeshDriver
from onionmesh.tor.control import TorController
from onionmesh.transport.multipath import LinkPeer, MultipathTransport
from onionmesh.transport.paths import PathConfig, PathEvent, PathSelector
from onionmesh.transport.tor_channel import TorChannel, TorPeer
from onionmesh.wireguard.manager import WireGuardManager
from onionmesh.wireguard.spec import InterfaceSpec, PeerSpec

log = logging.getLogger("meshnode")


async def run(cfg: dict[str, Any]) -> int:
    clock = Clock(offset=float(cfg.get("clock_offset", 0.0)))
    mesh_cfg = MeshConfig(**cfg["mesh"])
    dead_after = (mesh_cfg.dead_threshold + mesh_cfg.heartbeat_slack) * mesh_cfg.heartbeat_interval
    path_cfg = PathConfig.for_heartbeat(mesh_cfg.heartbeat_interval, dead_after,
                                        fallback_enabled=cfg["fallback_enabled"])
    path_cfg.check_timing(dead_after)
    wg = cfg["wireguard"]
    peers = cfg["peers"]
    spec = InterfaceSpec(
        wg["interface"], wg["listen_port"], ipaddress.ip_interface(wg["address"]),
        wg["public_key"], wg["keepalive"],
        tuple(PeerSpec(p["node_id"], p["wg_public_key"], p["endpoint"],
                       ipaddress.ip_address(p["tunnel_ip"])) for p in peers))
    manager = WireGuardManager(spec, wg["private_key"])
    report = await manager.repair(clock.now())
    if report.problems:
        log.error("WireGuard: %s", "; ".join(report.problems))
    events: list[dict[str, Any]] = []

    def note(kind: str, message: str, **extra: Any) -> None:
        log.info("%s", message)
        events.append({"t": time.time(), "kind": kind, "message": message, **extra})
        del events[:-500]

    controller = await TorController.connect(socket_path=cfg["tor"]["control_socket"],
                                             timeout=30.0, reconnect=True)
    selector = PathSelector(path_cfg, clock.now())
    holder: list[MultipathTransport] = []
    channel = TorChannel(
        controller, cfg["tor"]["socks_socket"], cfg["node_id"],
        socket_dir=Path(cfg["tor"]["socket_dir"]), onion_key=cfg["tor"]["onion_key"],
        client_private_b64=wg["private_key"],
        on_frame=lambda peer, frame: holder[0].on_tor_frame(peer, frame))

    def on_path_event(event: PathEvent) -> None:
        note(type(event).__name__, event.message, peer=event.node_id)

    async def open_transport(listen: str, on_datagram: Any) -> MultipathTransport:
        transport = await MultipathTransport.open(
            listen, on_datagram, selector, channel=channel, wireguard=manager,
            clock=clock.now, on_path_event=on_path_event, repair_interval=2.0)
        holder.append(transport)
        return transport

    identity = NodeIdentity(cfg["node_id"], bytes.fromhex(cfg["seed_hex"]), cfg["priority"],
                            eligible=True, address=cfg["listen"])
    seeds = [PeerSeed(p["node_id"], p["address"], bytes.fromhex(p["public_key_hex"]))
             for p in peers]
    core = MeshCore(mesh_cfg, identity, bytes.fromhex(cfg["cluster_secret_hex"]), seeds,
                    clock.now())

    def on_event(event: Event) -> None:
        message = getattr(event, "message", None)
        if message is not None:
            note(type(event).__name__, message, peer=getattr(event, "node_id", None))

    driver = MeshDriver(core, clock, on_event)
    await channel.start({})
    await driver.start(cfg["listen"], open_transport)
    transport = holder[0]
    await transport.set_peers([LinkPeer(p["node_id"], p["address"],
                                         TorPeer(p["node_id"], p["onion"], p["client_key"]))
                               for p in peers])
    transport.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    status_path = Path(cfg["status_path"])
    log.info("meshnode %s up: coordination onion %s", cfg["node_id"], channel.service_id)
    try:
        while not stop.is_set():
            doc = {
                "node_id": cfg["node_id"], "pid": os.getpid(), "time": time.time(),
                "publisher": core.publisher_id, "is_publisher": core.is_publisher,
                "peers": {n: v.state for n, v in core.peers().items()},
                "paths": transport.status(), "onion": channel.service_id,
                "events": events,
            }
            tmp = status_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(doc, default=str))
            os.replace(tmp, status_path)
            try:
                async with asyncio.timeout(0.2):
                    await stop.wait()
            except TimeoutError:
                pass
    finally:
        await driver.shutdown()
        await channel.close()
        await manager.close()
        await controller.close()
    return 0


def main() -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    cfg = json.loads(Path(sys.argv[1]).read_text())
    return asyncio.run(run(cfg))


if __name__ == "__main__":
    sys.exit(main())
