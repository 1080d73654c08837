"""Local attacks by another user of the same machine, tried through the real CLI.

A planted socket directory in /tmp, key files (or the directories above them)
that another user could replace: every case is refused with one error line
naming the path, before the daemon serves or reads anything.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from onionmesh.config import load_config
from onionmesh.node.errors import EXIT_CONFIG, EXIT_KEY
from onionmesh.node.keyfiles import status_socket_path
from onionmesh.node.path_safety import UnsafePath, check_secret_path, private_dir

from .helpers import make_cluster, onionmesh

NOBODY = 65534


def _deep_cluster(tmp_path: Path) -> tuple[Path, Path]:
    """A node whose state dir is too deep for a unix socket: sockets go to /tmp."""
    root = tmp_path / ("d" * 60) / ("e" * 60)
    result = make_cluster(root)
    socket_dir = status_socket_path(load_config(result.files.config)).parent
    assert str(socket_dir).startswith("/tmp/onionmesh-")
    return result.files.config, socket_dir


@pytest.fixture
def planted(tmp_path: Path):
    """The fallback directory's path, removed again after the test whatever it became."""
    config, socket_dir = _deep_cluster(tmp_path)
    yield config, socket_dir
    if socket_dir.is_symlink() or socket_dir.is_file():
        socket_dir.unlink()
    elif socket_dir.is_dir():
        for child in socket_dir.iterdir():
            child.unlink()
        socket_dir.rmdir()


def test_a_symlink_planted_at_the_socket_dir_is_refused(planted, tmp_path: Path):
    config, socket_dir = planted
    attacker = tmp_path / "attacker"
    attacker.mkdir(mode=0o777)
    socket_dir.symlink_to(attacker)
    done = onionmesh("run", "-c", str(config))
    assert done.returncode == EXIT_CONFIG, done.stderr
    assert str(socket_dir) in done.stderr and "not a plain directory" in done.stderr
    assert list(attacker.iterdir()) == []  # nothing was created in the attacker's directory


def test_a_directory_of_another_user_at_the_socket_dir_is_refused(planted):
    config, socket_dir = planted
    socket_dir.mkdir(mode=0o777)
    os.chown(socket_dir, NOBODY, NOBODY)
    done = onionmesh("run", "-c", str(config))
    assert done.returncode == EXIT_CONFIG, done.stderr
    assert f"belongs to uid {NOBODY}" in done.stderr
    assert list(socket_dir.iterdir()) == []


def test_a_file_planted_at_the_socket_dir_is_refused(planted):
    config, socket_dir = planted
    socket_dir.write_text("not a directory")
    done = onionmesh("run", "-c", str(config))
    assert done.returncode == EXIT_CONFIG, done.stderr
    assert "not a plain directory" in done.stderr


def test_private_dir_creates_0700_and_tightens_our_own(tmp_path: Path):
    fresh = tmp_path / "fresh"
    private_dir(fresh)
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o700
    loose = tmp_path / "loose"
    loose.mkdir(mode=0o755)
    os.chmod(loose, 0o755)
    private_dir(loose)
    assert stat.S_IMODE(loose.stat().st_mode) == 0o700


@pytest.mark.parametrize(
    ("label", "damage", "words"),
    [
        ("key owned by another user",
         lambda key: os.chown(key, NOBODY, NOBODY), f"owned by uid {NOBODY}"),
        ("group-writable key directory",
         lambda key: os.chmod(key.parent, 0o770), "other users could replace the key"),
        ("key directory owned by another user",
         lambda key: os.chown(key.parent, NOBODY, NOBODY), f"owned by uid {NOBODY}"),
    ],
)
@pytest.mark.parametrize("relpath", ["node_key.pem", "master/hs_ed25519_secret_key",
                                     "cluster_secret"])
def test_keys_another_user_could_replace_are_refused(tmp_path: Path, label, damage, words,
                                                      relpath):
    root = tmp_path / "n1"
    config = make_cluster(root).files.config
    key = root / relpath
    damage(key)
    checked = onionmesh("keys", "check", "-c", str(config))
    assert checked.returncode == 1, checked.stderr
    assert words in checked.stderr and str(key.parent) in checked.stderr
    ran = onionmesh("run", "-c", str(config))
    assert ran.returncode == EXIT_KEY, ran.stderr
    assert words in ran.stderr


def test_sticky_world_writable_directories_are_accepted_like_tmp(tmp_path: Path):
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)
    key = shared / "key"
    key.write_bytes(b"x")
    os.chmod(key, 0o600)
    check_secret_path(key)  # no error: only the owner may rename it in a sticky dir
    os.chmod(shared, 0o777)
    with pytest.raises(UnsafePath, match="chmod go-w"):
        check_secret_path(key)
