"""Ownership and permission checks for the node's secret files and private directories.

Two attacks by another local user, both found by trying them:

* **A planted directory.** When the state directory is too deep for a unix socket
  path, the sockets move to ``/tmp/onionmesh-<hash of the state dir>``: a name
  anyone can compute and create first, as a directory of their own or a symlink
  to one, and then read or replace our sockets. ``private_dir`` creates it with
  mode 0700 and refuses one that is a symlink, not a directory, or not ours.
* **A key file others can replace.** A key is only as private as the directories
  above it: if any of them is writable by another user, that user can rename the
  key away and put their own in its place. ``check_secret_path`` checks like ssh
  does (``secure_filename``): the file and every directory up to ``/`` must be
  owned by us or root and not group- or world-writable; a directory with the
  sticky bit (``/tmp``) is accepted, since there only an entry's owner may rename
  or delete it.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from onionmesh.errors import OnionmeshError


class UnsafePath(OnionmeshError):
    """A secret file or private directory can be read or replaced by another user."""


def _trusted_owner(uid: int) -> bool:
    return uid in (0, os.geteuid())


def private_dir(directory: Path) -> None:
    """Create ``directory`` (mode 0700) or accept it only if it is ours and private.

    Parents are created as needed; the directory itself must not be a symlink,
    must be owned by this user, and is set to 0700 (ours, so changing it is safe).
    """
    directory.parent.mkdir(parents=True, exist_ok=True)
    try:
        directory.mkdir(mode=0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        raise UnsafePath(f"cannot create {directory}: {exc.strerror}") from None
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as exc:  # ELOOP for a symlink, ENOTDIR for a file
        raise UnsafePath(
            f"{directory} is not a plain directory ({exc.strerror}): refusing to use it; "
            "remove it if it is not yours"
        ) from None
    try:
        info = os.fstat(fd)
        if info.st_uid != os.geteuid():
            raise UnsafePath(
                f"{directory} belongs to uid {info.st_uid}, not to this user "
                f"(uid {os.geteuid()}): refusing to put private sockets there"
            )
        if stat.S_IMODE(info.st_mode) != 0o700:
            os.fchmod(fd, 0o700)
    finally:
        os.close(fd)


def check_secret_path(path: Path) -> None:
    """Refuse ``path`` if it, or a directory above it, can be replaced by another user."""
    try:
        real = Path(os.path.realpath(path))
        info = real.stat()
    except OSError as exc:
        raise UnsafePath(f"{path} cannot be checked: {exc.strerror}") from None
    if not _trusted_owner(info.st_uid):
        raise UnsafePath(f"{path} is owned by uid {info.st_uid}, not by this user or root")
    if info.st_mode & 0o022:
        raise UnsafePath(
            f"{path} has mode {stat.S_IMODE(info.st_mode):04o}; other users may change it "
            f"(run: chmod 600 {path})"
        )
    for directory in real.parents:
        try:
            dinfo = directory.stat()
        except OSError as exc:
            raise UnsafePath(f"{directory} cannot be checked: {exc.strerror}") from None
        if not _trusted_owner(dinfo.st_uid):
            raise UnsafePath(
                f"directory {directory} above {path} is owned by uid {dinfo.st_uid}, not by "
                "this user or root: its owner could replace the key"
            )
        if dinfo.st_mode & 0o022 and not dinfo.st_mode & stat.S_ISVTX:
            raise UnsafePath(
                f"directory {directory} above {path} has mode {stat.S_IMODE(dinfo.st_mode):04o}:"
                f" other users could replace the key (run: chmod go-w {directory})"
            )
