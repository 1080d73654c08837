"""The ``onionmesh`` command line."""

from __future__ import annotations

import argparse
import sys

from onionmesh.node.commands import add_node_parsers, run_node_command
from onionmesh.testnet.command import add_testnet_parser, run_testnet


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="onionmesh", description="Self-healing load balancer for Tor v3 onion services"
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    add_node_parsers(subparsers)
    add_testnet_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if args.command == "testnet":
        return run_testnet(args)
    return run_node_command(args)


if __name__ == "__main__":
    sys.exit(main())
