"""``onionmesh testnet up|down|status``: the private Tor network from the command line.

``up`` builds the network in ``--dir`` (default ``$TMPDIR/onionmesh-testnet``), waits until it
is ready (authorities, clients, optional demo services), writes ``<dir>/testnet.json`` and
returns, leaving the tors running in their own sessions. Without a parent process nothing
restarts a tor that dies in this detached mode; ``up --foreground`` instead stays, supervises
(restarts dead tors) and tears everything down on Ctrl-C or SIGTERM. ``down`` stops the PIDs
recorded in the state file (start times verified), ``status`` shows them.
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import threading
from pathlib import Path

from onionmesh.errors import OnionmeshError
from onionmesh.testnet.network import STATE_FILE, TorNetwork
from onionmesh.testnet.state import load_state, status_lines, stop_from_state


def default_dir() -> Path:
    return Path(tempfile.gettempdir()) / "onionmesh-testnet"


def add_testnet_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``testnet`` and its sub-commands on the main parser's subparsers."""
    parser = subparsers.add_parser("testnet", help="private Tor network on 127.0.0.1")
    actions = parser.add_subparsers(dest="testnet_command", metavar="ACTION", required=True)
    up = actions.add_parser("up", help="start a network and wait until it is ready")
    up.add_argument("--dir", type=Path, default=default_dir(), help="network directory")
    up.add_argument("--authorities", type=int, default=5, help="directory authorities (HSDirs)")
    up.add_argument("--clients", type=int, default=1, help="client tors (SOCKS, ExtendedErrors)")
    up.add_argument("--services", type=int, default=0, help="demo onion services with backends")
    up.add_argument("--base-port", type=int, default=None, help="first port (default: free block)")
    up.add_argument(
        "--foreground", action="store_true", help="stay, supervise, stop on Ctrl-C/SIGTERM"
    )
    for name, text in (("down", "stop the network by PID"), ("status", "show the network")):
        sub = actions.add_parser(name, help=text)
        sub.add_argument("--dir", type=Path, default=default_dir(), help="network directory")


def run_testnet(args: argparse.Namespace) -> int:
    """Dispatch a parsed ``testnet`` command; typed errors become exit code 1."""
    try:
        if args.testnet_command == "up":
            return _up(args)
        if args.testnet_command == "down":
            stopped = stop_from_state(args.dir / STATE_FILE)
            print(f"stopped {len(stopped)} process(es)" + "".join(f"\n  {s}" for s in stopped))
            return 0
        if args.testnet_command == "status":
            print("\n".join(status_lines(load_state(args.dir / STATE_FILE))))
            return 0
    except OnionmeshError as exc:
        print(f"onionmesh testnet: {exc}", file=sys.stderr)
        return 1
    print(f"onionmesh testnet: unknown action {args.testnet_command!r}", file=sys.stderr)
    return 2


def _up(args: argparse.Namespace) -> int:
    network = TorNetwork(
        args.dir, args.authorities, args.base_port, supervise=bool(args.foreground)
    )
    network.start()
    try:
        for i in range(args.clients):
            network.add_client(f"client{i}")
        for i in range(args.services):
            network.add_onion_service(f"service{i}")
    except BaseException:
        network.stop()
        raise
    print("\n".join(status_lines(network.state())))
    print(f"state file: {network.write_state()}")
    if not args.foreground:
        return 0
    done = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: done.set())
    print("running; Ctrl-C stops the network", flush=True)
    try:
        done.wait()
    finally:
        network.stop()
    return 0
