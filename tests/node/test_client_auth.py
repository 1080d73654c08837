"""Restricted discovery of the master address: config, CLI, and descriptors only clients read."""

from __future__ import annotations

import base64
import stat
import time
from pathlib import Path

import pytest

from onionmesh.config import ConfigError, load_config, parse_config
from onionmesh.crypto.keys import Ed25519Identity
from onionmesh.descriptor.errors import ClientAuthRequired, DescriptorError
from onionmesh.descriptor.parse import parse_descriptor
from onionmesh.hsdir.timeperiod import time_period_number
from onionmesh.node.client_auth import (
    ClientAuthError,
    add_client,
    client_auth_file_line,
    generate_client_keypair,
    remove_client,
)
from onionmesh.publish.master import MasterDescriptorBuilder
from tests.publish.test_master_descriptor import _intro_points

from .helpers import make_cluster, onionmesh


def _secret(b32: str) -> bytes:
    return base64.b32decode(b32 + "====")


def test_config_names_a_bad_client_key():
    base = '[node]\nid = "n1"\n[master]\naddress = "' + "a" * 56 + '.onion"\n'
    with pytest.raises(ConfigError, match=r"\[master\] authorized_clients"):
        parse_config(base + 'authorized_clients = { bob = "tooshort" }\n')
    public, _ = generate_client_keypair()
    config = parse_config(base + f'authorized_clients = {{ bob = "descriptor:x25519:{public}" }}\n')
    assert config.master.client_auth_keys() == [_secret(public)]


def test_add_list_remove_edit_only_that_line_and_keep_the_mode(tmp_path: Path):
    setup = make_cluster(tmp_path / "n1")
    path = setup.files.config
    path.write_text(path.read_text().replace("[master]", "# keep me\n[master]"))
    mode = stat.S_IMODE(path.stat().st_mode)
    public, secret = add_client(path, "alice", None)
    assert secret is not None
    other_public, _ = generate_client_keypair()
    add_client(path, "bob", f"descriptor:x25519:{other_public}")
    config = load_config(path)
    assert config.master.authorized_clients == {"alice": public, "bob": other_public}
    assert "# keep me" in path.read_text() and stat.S_IMODE(path.stat().st_mode) == mode
    with pytest.raises(ClientAuthError, match="already authorized"):
        add_client(path, "alice", None)
    with pytest.raises(ClientAuthError, match=r"not base32|32 bytes"):
        add_client(path, "carol", "0" * 52)
    remove_client(path, "alice")
    assert load_config(path).master.authorized_clients == {"bob": other_public}
    with pytest.raises(ClientAuthError, match="no authorized client"):
        remove_client(path, "alice")
    assert client_auth_file_line("x" * 56 + ".onion", secret) == \
        f"{'x' * 56}:descriptor:x25519:{secret}\n"


def test_cli_client_commands(tmp_path: Path):
    setup = make_cluster(tmp_path / "n1")
    cfg = str(setup.files.config)
    assert "no authorized clients" in onionmesh("client", "list", "-c", cfg).stdout
    auth = tmp_path / "alice.auth_private"
    added = onionmesh("client", "add", "alice", "--auth-file", str(auth), "-c", cfg)
    assert added.returncode == 0, added.stderr
    assert "no daemon runs here" in added.stderr and not added.stdout  # secret in the file
    line = auth.read_text()
    assert line.startswith(setup.master_address.removesuffix(".onion") + ":descriptor:x25519:")
    assert stat.S_IMODE(auth.stat().st_mode) == 0o600
    shown = onionmesh("client", "list", "-c", cfg)
    assert shown.stdout.startswith("alice descriptor:x25519:")
    printed = onionmesh("client", "add", "bob", "-c", cfg)
    assert printed.returncode == 0 and "SECRET" in printed.stderr
    assert ":descriptor:x25519:" in printed.stdout
    bad = onionmesh("client", "add", "alice", "-c", cfg)
    assert bad.returncode == 3 and "already authorized" in bad.stderr
    gone = onionmesh("client", "remove", "bob", "-c", cfg)
    assert gone.returncode == 0
    assert "bob" not in onionmesh("client", "list", "-c", cfg).stdout


def test_master_descriptor_is_readable_only_with_an_authorized_key():
    master = Ed25519Identity.generate()
    now = time.time()
    period = time_period_number(now, 8)
    public, secret = generate_client_keypair()
    _, stranger = generate_client_keypair()
    builder = MasterDescriptorBuilder(master, lifetime_minutes=180,
                                      client_auth_keys=[_secret(public)])
    text = builder.build(period, 8, 1, _intro_points(3, now), now=now)

    def parse(key: bytes | None):
        return parse_descriptor(text, master.onion_address, period_number=period,
                                period_length=8, now=now, client_secret_key=key)

    assert len(parse(_secret(secret)).intro_points) == 3
    assert len(parse(builder.observer_secret_key).intro_points) == 3  # the publisher's own
    with pytest.raises(ClientAuthRequired):
        parse(None)
    with pytest.raises(DescriptorError):
        parse(_secret(stranger))
    # Without clients the descriptor is public again.
    builder.set_client_auth_keys([])
    assert builder.observer_secret_key is None
    open_text = builder.build(period, 8, 2, _intro_points(1, now), now=now)
    assert parse_descriptor(open_text, master.onion_address, period_number=period,
                            period_length=8, now=now).intro_points


def test_every_node_with_the_master_key_reads_the_clusters_restricted_descriptors():
    """The builder's own client key comes from the master key: a standby (no clients
    configured) or a later publisher reads what another node built; another key cannot."""
    master = Ed25519Identity.generate()
    now = time.time()
    period = time_period_number(now, 8)
    public, _ = generate_client_keypair()
    publisher = MasterDescriptorBuilder(master, lifetime_minutes=180,
                                        client_auth_keys=[_secret(public)])
    text = publisher.build(period, 8, 1, _intro_points(2, now), now=now)
    standby = MasterDescriptorBuilder(master, lifetime_minutes=180)
    assert standby.observer_secret_key is None  # it authorizes nobody itself
    assert standby.reader_secret_key == publisher.observer_secret_key
    desc = parse_descriptor(text, master.onion_address, period_number=period, period_length=8,
                            now=now, client_secret_key=standby.reader_secret_key)
    assert len(desc.intro_points) == 2
    other = MasterDescriptorBuilder(Ed25519Identity.generate(), lifetime_minutes=180)
    with pytest.raises(ClientAuthRequired):
        parse_descriptor(text, master.onion_address, period_number=period, period_length=8,
                         now=now, client_secret_key=other.reader_secret_key)
    # An unrestricted descriptor reads the same with the key.
    open_text = standby.build(period, 8, 2, _intro_points(1, now), now=now)
    assert parse_descriptor(open_text, master.onion_address, period_number=period,
                            period_length=8, now=now,
                            client_secret_key=standby.reader_secret_key).intro_points
