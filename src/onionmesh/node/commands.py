"""The operator's sub-commands: init, add-node, join, run, status, config check, keys check,
client add/remove/list.

Each handler returns the process exit code. Errors are one clear line on
stderr (file, key or check named); secrets (join tokens, keys, the cluster
secret) are printed only where the operator asked for them: the token by
``init``/``add-node``, with a warning that it is secret.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path

from onionmesh.config import DEFAULT_CONFIG_PATH, Config, ConfigError, load_config
from onionmesh.errors import OnionmeshError
from onionmesh.mesh.errors import MeshError
from onionmesh.mesh.join_attempts import JoinRetryConfig
from onionmesh.node.errors import EXIT_CONFIG, EXIT_OK, NodeError, SetupError
from onionmesh.status_socket import StatusUnavailable, query_status

EXIT_STATUS_UNAVAILABLE = 1
EXIT_KEYS_CHECK_FAILED = 1  # `keys check` is a yes/no question: 0 or 1


def _config_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", type=Path, default=DEFAULT_CONFIG_PATH,
                        help=f"config file (default {DEFAULT_CONFIG_PATH})")


def _node_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dir", type=Path, required=True,
                        help="directory for the node's config and keys (created 0700)")
    parser.add_argument("--listen", default="127.0.0.1:7443",
                        help="coordination address host:port (UDP; a WireGuard address in "
                             "production)")
    parser.add_argument("--advertise", default=None,
                        help="address peers use to reach this node (default: --listen)")
    parser.add_argument("--priority", type=int, default=100,
                        help="election priority, higher wins (default 100)")
    parser.add_argument("--tor-option", action="append", default=[], metavar="LINE",
                        help="extra torrc line for the managed tor (repeatable)")
    parser.add_argument("--service-port", action="append", default=[], metavar="MAPPING",
                        help="HiddenServicePort mapping, e.g. '80 127.0.0.1:8080' (repeatable)")
    parser.add_argument("--wireguard-address", default=None, metavar="IP/PREFIX",
                        help="coordinate over WireGuard (tor as the fallback) with this tunnel "
                             "address, e.g. 10.77.0.2/24; --listen must then be on it")
    parser.add_argument("--wireguard-endpoint", default=None, metavar="IP:PORT",
                        help="where the other members reach this node's WireGuard (underlay "
                             "address; its port is the listen port); signed into the node's "
                             "roster entry, so no member needs a config line for it")
    parser.add_argument("--no-ntp-check", action="store_true",
                        help="write require_ntp_sync = false (hosts without an NTP daemon, "
                             "such as containers; the consensus clock check still applies)")


def add_node_parsers(subparsers: argparse._SubParsersAction) -> None:
    """Register the operator commands on the main parser's subparsers."""
    init = subparsers.add_parser("init", help="create a new cluster (master key, first node)")
    _node_args(init)
    init.add_argument("--node-id", default="n1", help="this node's id (default n1)")

    add = subparsers.add_parser("add-node", help="print a single-use join token for one more "
                                                 "node (on a node with the authority key)")
    _config_arg(add)
    add.add_argument("--node-id", default=None,
                     help="reserve the token for this node id (default: any new id)")
    add.add_argument("--no-publish", action="store_true",
                     help="the new node's roster entry may not publish (a standby only)")
    add.add_argument("--lifetime", type=float, default=None, metavar="SECONDS",
                     help="token lifetime (default [membership] token_lifetime, 3600)")
    add.add_argument("--bootstrap", action="append", default=[], metavar="ID@ONION",
                     help="another join onion the joiner may try when this node cannot be "
                          "reached (repeatable; a daemon logs its own: 'join onion X.onion up')")

    join = subparsers.add_parser("join", help="set up a node through the join exchange")
    join.add_argument("--token-file", default="-", metavar="PATH",
                      help="file holding the join token (default '-': read it from stdin; "
                           "never pass a token on the command line)")
    _node_args(join)
    join.add_argument("--node-id", required=True, help="the new node's id")
    join.add_argument("--master-key", type=Path, default=None,
                      help="your own copy of the master key file (this node may then publish)")
    join.add_argument("--via", choices=("tor", "direct"), default=None,
                      help="reach the cluster through tor (the token's join onions; the default "
                           "when the token names any) or directly at the inviter's "
                           "coordination address (UDP; the default for older tokens)")
    join.add_argument("--tor-socks", default="127.0.0.1:9050",
                      metavar="HOST:PORT|unix:PATH|PATH",
                      help="the tor SOCKS port the join goes through (default 127.0.0.1:9050, "
                           "the system tor); a unix socket as torrc writes it "
                           "(SocksPort unix:/run/tor/socks) or as an absolute or ./ path")
    join.add_argument("--known-peer", action="append", default=[], metavar="ID@ONION",
                      help="another member's join onion to try after the token's (repeatable)")
    join.add_argument("--attempts", type=int, default=8,
                      help="join attempts through tor before giving up (default 8)")
    join.add_argument("--backoff-cap", type=float, default=60.0, metavar="SECONDS",
                      help="longest wait between rounds of attempts (default 60)")
    join.add_argument("--attempt-timeout", type=float, default=120.0, metavar="SECONDS",
                      help="give one attempt up after this long (default 120)")

    run = subparsers.add_parser("run", help="run the node daemon (logs to stderr)")
    _config_arg(run)

    status = subparsers.add_parser("status", help="cluster view from the running node")
    _config_arg(status)
    status.add_argument("--json", action="store_true", help="print the raw JSON document")

    config = subparsers.add_parser("config", help="configuration tools")
    config_actions = config.add_subparsers(dest="config_command", metavar="ACTION",
                                           required=True)
    _config_arg(config_actions.add_parser("check", help="validate a config without starting"))

    client = subparsers.add_parser(
        "client", help="restricted discovery: clients allowed to read the master descriptor")
    client_actions = client.add_subparsers(dest="client_command", metavar="ACTION",
                                           required=True)
    client_add = client_actions.add_parser(
        "add", help="authorize a client (generates its keypair unless --public-key)")
    _config_arg(client_add)
    client_add.add_argument("name", help="a name for the client (1-64 of A-Z a-z 0-9 . _ -)")
    client_add.add_argument("--public-key", default=None,
                            help="the client's x25519 public key (base32, tor's format)")
    client_add.add_argument("--auth-file", type=Path, default=None,
                            help="write the generated secret as this .auth_private file "
                                 "(for the client's ClientOnionAuthDir) instead of stdout")
    client_remove = client_actions.add_parser("remove", help="revoke a client")
    _config_arg(client_remove)
    client_remove.add_argument("name")
    _config_arg(client_actions.add_parser("list", help="list the authorized clients"))

    remove = subparsers.add_parser(
        "remove-node", help="revoke a node's key (signed; the running daemon gossips it)")
    _config_arg(remove)
    remove.add_argument("node_id", metavar="ID", help="the node to remove")

    rotate = subparsers.add_parser(
        "rotate-secret", help="replace the cluster secret without downtime, in three steps "
                              "(docs/operator.md, 'Rotating the cluster secret')")
    rotate.add_argument("step", choices=["begin", "commit", "finish", "reload"],
                        help="begin: on one node, add a new secret (copy the file to every "
                             "node, then `reload` there); commit: on every node, send with "
                             "the new one; finish: on every node, drop the old one")
    _config_arg(rotate)

    roster = subparsers.add_parser("roster", help="signed roster tools")
    roster_actions = roster.add_subparsers(dest="roster_command", metavar="ACTION",
                                           required=True)
    roster_init = roster_actions.add_parser(
        "init", help="move a cluster made before rosters to one: new authority key and a "
                     "roster of this node and the --member nodes")
    _config_arg(roster_init)
    roster_init.add_argument("--member", action="append", default=[], metavar="ID=HEXKEY",
                             help="another node and its node public key (from `onionmesh "
                                  "keys check` there); append ':standby' if it may not "
                                  "publish (repeatable)")
    roster_init.add_argument("--dir", type=Path, default=None,
                             help="where to write roster and authority_key (default: the "
                                  "config's directory)")

    set_address = roster_actions.add_parser(
        "set-address", help="sign a member's WireGuard endpoint and tunnel mesh address into "
                            "its roster entry (on the node with the authority key; for "
                            "entries made without them)")
    _config_arg(set_address)
    set_address.add_argument("node_id", metavar="ID", help="the member")
    set_address.add_argument("--wireguard-endpoint", required=True, metavar="IP:PORT",
                             help="where the members reach its WireGuard (underlay)")
    set_address.add_argument("--mesh-address", required=True, metavar="IP:PORT",
                             help="its mesh address on its tunnel address ([coordination] "
                                  "listen there)")

    keys = subparsers.add_parser("keys", help="key tools")
    keys_actions = keys.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    _config_arg(keys_actions.add_parser("check", help="run the startup key integrity check"))


def _fail(message: str, code: int) -> int:
    print(f"onionmesh: error: {message}", file=sys.stderr)
    return code


def _print_token(token: str) -> None:
    from onionmesh.node.cluster_setup import MASTER_KEY_NOTE, TOKEN_WARNING

    print(f"WARNING: {TOKEN_WARNING}", file=sys.stderr)
    print(MASTER_KEY_NOTE, file=sys.stderr)
    print(token)


def run_node_command(args: argparse.Namespace) -> int:
    """Dispatch one of the commands registered by ``add_node_parsers``."""
    try:
        if args.command == "init":
            return _init(args)
        if args.command == "add-node":
            from onionmesh.node.cluster_setup import issue_token, parse_bootstrap

            _print_token(issue_token(load_config(args.config), node_id=args.node_id,
                                     may_publish=not args.no_publish, lifetime=args.lifetime,
                                     bootstrap=parse_bootstrap(args.bootstrap)))
            return EXIT_OK
        if args.command == "remove-node":
            return _remove_node(args)
        if args.command == "roster" and args.roster_command == "set-address":
            return _roster_set_address(args)
        if args.command == "roster":
            return _roster_init(args)
        if args.command == "rotate-secret":
            return _rotate_secret(args)
        if args.command == "join":
            return _join(args)
        if args.command == "run":
            return _run(args)
        if args.command == "status":
            return _status(args)
        if args.command == "config":
            return _config_check(args)
        if args.command == "client":
            return _client(args)
        if args.command == "keys":
            try:
                return _keys_check(args)
            except (ConfigError, NodeError) as exc:
                return _fail(str(exc), EXIT_KEYS_CHECK_FAILED)
    except ConfigError as exc:
        return _fail(str(exc), EXIT_CONFIG)
    except NodeError as exc:
        return _fail(str(exc), exc.exit_code)
    except MeshError as exc:  # a roster or join statement refused
        return _fail(str(exc), 1)
    return _fail(f"unknown command {args.command}", 2)


def _client(args: argparse.Namespace) -> int:
    from onionmesh.node.client_auth import (
        ClientAuthError,
        add_client,
        client_auth_file_line,
        remove_client,
        write_client_file,
    )

    def applied() -> str:
        pid = _reload_daemon(load_config(args.config))
        here = (f"the running daemon (pid {pid}) republishes the master descriptor with it "
                "now" if pid is not None else "no daemon runs here: it applies when the node "
                "starts")
        return (f"{here}; make the same change on every node that may publish (they need the "
                "same [master] authorized_clients)")

    try:
        if args.client_command == "list":
            clients = load_config(args.config).master.authorized_clients
            if not clients:
                print("no authorized clients: the master descriptor is readable by anyone "
                      "who knows the address")
            for name, key in sorted(clients.items()):
                print(f"{name} descriptor:x25519:{key.removeprefix('descriptor:x25519:')}")
            return EXIT_OK
        if args.client_command == "remove":
            remove_client(args.config, args.name)
            print(f"removed client {args.name}; {applied()}", file=sys.stderr)
            return EXIT_OK
        public, secret = add_client(args.config, args.name, args.public_key)
        print(f"authorized client {args.name} (descriptor:x25519:{public}); {applied()}",
              file=sys.stderr)
        if secret is not None:
            address = load_config(args.config).master.address
            if args.auth_file is not None:
                write_client_file(args.auth_file, address, secret)
                print(f"wrote the client's key to {args.auth_file} (secret: give it only to "
                      "that client, for its ClientOnionAuthDir)", file=sys.stderr)
            else:
                print("WARNING: the line below is the client's SECRET key; put it in a "
                      f"file {args.name}.auth_private in the client's ClientOnionAuthDir",
                      file=sys.stderr)
                print(client_auth_file_line(address, secret), end="")
        return EXIT_OK
    except ClientAuthError as exc:
        return _fail(str(exc), EXIT_CONFIG)
    except OnionmeshError as exc:  # e.g. the .auth_private file exists already
        return _fail(str(exc), EXIT_CONFIG)


def _settings(args: argparse.Namespace) -> dict[str, dict[str, object]] | None:
    settings: dict[str, dict[str, object]] = {}
    if args.no_ntp_check:
        settings["resilience"] = {"require_ntp_sync": False}
    if (args.wireguard_address is None) != (args.wireguard_endpoint is None):
        raise SetupError("--wireguard-address and --wireguard-endpoint go together")
    if args.wireguard_address is not None:
        port = str(args.wireguard_endpoint).rpartition(":")[2]
        settings["wireguard"] = {
            "enabled": True, "address": args.wireguard_address,
            "endpoint": args.wireguard_endpoint,
            "listen_port": int(port) if port.isdigit() else 0,  # the config check names it
        }
    return settings or None


def _init(args: argparse.Namespace) -> int:
    from onionmesh.node.cluster_setup import init_cluster

    result = init_cluster(
        args.dir, node_id=args.node_id, listen=args.listen, advertise=args.advertise,
        priority=args.priority, tor_options=args.tor_option, service_ports=args.service_port,
        settings=_settings(args),
    )
    print(f"new cluster: master address {result.master_address}", file=sys.stderr)
    print(f"config: {result.files.config}", file=sys.stderr)
    print(f"master key: {result.files.master_key} (back it up)", file=sys.stderr)
    print(f"start the node with: onionmesh run -c {result.files.config}", file=sys.stderr)
    _print_token(result.token)
    return EXIT_OK


def _join(args: argparse.Namespace) -> int:
    from onionmesh.node.cluster_setup import (
        join_cluster,
        parse_bootstrap,
        tor_exchange,
        udp_exchange,
    )
    from onionmesh.node.join_tokens import decode_token, read_token_text

    token = read_token_text(args.token_file)
    via = args.via or ("tor" if decode_token(token).bootstrap or args.known_peer else "direct")
    exchange = udp_exchange
    if via == "tor":
        # Each attempt and its outcome on stderr: the operator sees what is slow or failing.
        import logging

        progress = logging.getLogger("onionmesh.join")
        progress.setLevel(logging.INFO)
        progress.addHandler(logging.StreamHandler(sys.stderr))
        exchange = tor_exchange(
            socks_target(args.tor_socks), known_peers=parse_bootstrap(args.known_peer),
            retry=_retry_config(args))
    result = join_cluster(
        token, args.dir, node_id=args.node_id, listen=args.listen, advertise=args.advertise,
        priority=args.priority, master_key=args.master_key, tor_options=args.tor_option,
        service_ports=args.service_port, settings=_settings(args), exchange=exchange,
    )
    print(f"joined cluster of {result.master_address}", file=sys.stderr)
    print(f"config: {result.files.config}", file=sys.stderr)
    if args.master_key is None:
        print("no master key given: this node will not publish (see the config comment)",
              file=sys.stderr)
    print(f"start the node with: onionmesh run -c {result.files.config}", file=sys.stderr)
    return EXIT_OK


def socks_target(text: str) -> tuple[str, int] | str:
    """``--tor-socks``: HOST:PORT, or a unix socket: ``unix:PATH`` (torrc's own spelling)
    or a path starting with / or ."""
    expected = "expected HOST:PORT, unix:/path/to/socket or a socket path"
    path = text.removeprefix("unix:")
    if path != text or text.startswith(("/", ".")):
        if not path:
            raise SetupError(f"--tor-socks {text[:80]!r}: no socket path ({expected})")
        # sun_path holds 107 bytes and a terminating NUL.
        if len(os.fsencode(path)) > 107:
            raise SetupError(f"--tor-socks {text[:80]!r}: a unix socket path is at most "
                             "107 bytes")
        return path
    host, sep, port = text.rpartition(":")
    if not sep or not host.strip("[]") or not port.isdigit() or not 0 < int(port) < 65536:
        raise SetupError(f"--tor-socks {text[:80]!r}: {expected}")
    return host.strip("[]"), int(port)


def _retry_config(args: argparse.Namespace) -> JoinRetryConfig:
    from onionmesh.mesh.errors import MeshConfigError
    from onionmesh.node.errors import SetupError

    try:
        return JoinRetryConfig(attempts=args.attempts, backoff_cap=args.backoff_cap,
                               backoff_base=min(5.0, args.backoff_cap),
                               attempt_timeout=args.attempt_timeout)
    except MeshConfigError as exc:
        raise SetupError(str(exc)) from None


def _remove_node(args: argparse.Namespace) -> int:
    from onionmesh.node.keyfiles import status_socket_path
    from onionmesh.node.membership import (
        merge_into_roster_file,
        sign_revocation,
        statements_request,
    )
    from onionmesh.status_socket import send_request

    config = load_config(args.config)
    revocation = sign_revocation(config, args.node_id)
    try:
        answer = send_request(status_socket_path(config), statements_request(
            revocations=[revocation]))
    except StatusUnavailable:
        merge_into_roster_file(config, revocations=[revocation])
        print(f"removed {args.node_id}: revocation written to "
              f"{config.membership.roster_path} (no daemon runs here; it applies and "
              "gossips it when started)", file=sys.stderr)
        return EXIT_OK
    if answer.get("error") or answer.get("refused"):
        return _fail(f"the daemon did not apply the revocation: "
                     f"{answer.get('error') or answer.get('refused')}", 1)
    print(f"removed {args.node_id}: the running daemon applied the revocation, saved the "
          "roster and gossips it to every node", file=sys.stderr)
    return EXIT_OK


def _roster_set_address(args: argparse.Namespace) -> int:
    from onionmesh.node.keyfiles import status_socket_path
    from onionmesh.node.membership import (
        merge_into_roster_file,
        sign_addresses,
        statements_request,
    )
    from onionmesh.status_socket import send_request

    config = load_config(args.config)
    entry = sign_addresses(config, args.node_id, args.wireguard_endpoint, args.mesh_address)
    try:
        answer = send_request(status_socket_path(config), statements_request(entries=[entry]))
    except StatusUnavailable:
        merge_into_roster_file(config, entries=[entry])
        print(f"{args.node_id}: addresses signed into {config.membership.roster_path} (no "
              "daemon runs here; it gossips the entry when started)", file=sys.stderr)
        return EXIT_OK
    if answer.get("error") or answer.get("refused"):
        return _fail(f"the daemon did not apply the entry: "
                     f"{answer.get('error') or answer.get('refused')}", 1)
    print(f"{args.node_id}: addresses signed; the running daemon applied the entry, saved "
          "the roster and gossips it to every node", file=sys.stderr)
    return EXIT_OK


def _reload_daemon(config: Config) -> int | None:
    """SIGHUP the daemon running this config (found through its status socket); its pid,
    or None when no daemon answers there."""
    import os
    import signal

    from onionmesh.node.keyfiles import status_socket_path

    try:
        doc = query_status(status_socket_path(config))
        pid = doc.get("node", {}).get("pid") if isinstance(doc.get("node"), dict) else None
    except StatusUnavailable:
        return None
    if not isinstance(pid, int) or pid <= 0:
        return None
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:  # it exited after answering
        return None
    return pid


def _rotate_secret(args: argparse.Namespace) -> int:
    from onionmesh.node.keyfiles import (
        cluster_secret_path,
        load_cluster_secrets,
        new_cluster_secret,
        replace_cluster_secrets,
    )

    config = load_config(args.config)
    path = cluster_secret_path(config)
    current, accepted = load_cluster_secrets(config)
    if args.step == "begin":
        if accepted:
            return _fail(f"{path} already holds two secrets: a rotation is in progress "
                         "(commit, then finish it)", 1)
        replace_cluster_secrets(path, current, new_cluster_secret())
        note = (f"copy {path} (mode 0600) to every other node, run `onionmesh rotate-secret "
                "reload` there; then `commit` on every node")
    elif args.step == "commit":
        if not accepted:
            return _fail(f"{path} holds one secret: run `begin` first (or copy its file)", 1)
        replace_cluster_secrets(path, accepted[0], current)
        note = "when every node has committed, run `finish` on every node"
    elif args.step == "finish":
        replace_cluster_secrets(path, current)
        note = "this node now knows only the secret it sends with"
    else:
        note = "the daemon re-read the secret file"
    pid = _reload_daemon(config)  # the daemon re-reads the secret file on SIGHUP
    if pid is not None:
        print(f"rotate-secret {args.step}: done; daemon (pid {pid}) reloads it; {note}",
              file=sys.stderr)
    else:
        print(f"rotate-secret {args.step}: done (no daemon runs here; it applies at start); "
              f"{note}", file=sys.stderr)
    return EXIT_OK


def _roster_init(args: argparse.Namespace) -> int:
    from onionmesh.node.membership import create_roster, parse_member

    config = load_config(args.config)
    if config.membership.roster_path is not None:
        return _fail(f"{config.path}: [membership] roster_path is already set", EXIT_CONFIG)
    members = [parse_member(text) for text in args.member]
    directory = args.dir or config.path.parent
    roster = create_roster(config, members, directory / "roster", directory / "authority_key",
                           may_publish_self=config.master.key_path is not None)
    print(f"roster with {len(roster)} nodes: {directory / 'roster'}; authority key: "
          f"{directory / 'authority_key'} (keep it on this node only; back it up)",
          file=sys.stderr)
    print("next, per node, one at a time (docs/operator.md, 'Moving to the signed roster'): "
          "copy the roster file, add [membership] roster_path, restart", file=sys.stderr)
    return EXIT_OK


def _run(args: argparse.Namespace) -> int:
    from onionmesh.node.daemon import run_node
    from onionmesh.node.logsetup import setup_logging

    setup_logging("info")
    return asyncio.run(run_node(args.config))


def _status(args: argparse.Namespace) -> int:
    from onionmesh.node.keyfiles import status_socket_path
    from onionmesh.node.snapshot import format_status
    from onionmesh.status_document import StatusDocumentError, decode_status

    config = load_config(args.config)
    try:
        doc = query_status(status_socket_path(config))
        # --json prints what the daemon sent, sections this CLI does not know included.
        text = json.dumps(doc, indent=2, sort_keys=True) if args.json else \
            format_status(decode_status(doc))
    except (StatusUnavailable, StatusDocumentError) as exc:
        return _fail(str(exc), EXIT_STATUS_UNAVAILABLE)
    print(text)
    return EXIT_OK


def _config_check(args: argparse.Namespace) -> int:
    from onionmesh.node.settings import check_runnable

    config = load_config(args.config)
    check_runnable(config)
    print(f"{config.path}: OK (node {config.node_id}, master {config.master.address})")
    return EXIT_OK


def _keys_check(args: argparse.Namespace) -> int:
    from onionmesh.node.startup import check_keys

    config = load_config(args.config)
    keys = check_keys(config)
    for warning in keys.warnings:
        print(f"WARNING: {warning}", file=sys.stderr)
    master = "no master key (never publishes)" if keys.master is None else (
        f"master key {keys.master_path} is {keys.master.onion_address}"
    )
    print(f"keys OK: {master}; node key {keys.node.onion_address} "
          f"(public key {keys.node.public_key.hex()}); cluster secret present")
    return EXIT_OK
