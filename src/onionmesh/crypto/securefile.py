"""Atomic, private file writes for key material.

A key file must never be seen half-written (a crash mid-write would otherwise
leave a truncated key that tor and we both reject) and never be readable by
other users, even briefly. So the data goes to a temporary file created with
mode 0600 in the *same* directory (rename is only atomic within a filesystem),
is fsynced, then renamed over the target, and the directory is fsynced so the
rename itself survives a power loss. When overwriting is not allowed the temp file
is hard-linked to the target instead of renamed: link() is just as atomic and fails
if the target exists, so a key that appears concurrently is never clobbered.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from onionmesh.errors import OnionmeshError


class SecureFileError(OnionmeshError):
    """A key file could not be written (exists already, or an OS error)."""


def atomic_write(path: str | os.PathLike[str], data: bytes, *, mode: int = 0o600,
                 overwrite: bool = False) -> None:
    """Write ``data`` to ``path`` atomically with permissions ``mode``.

    Without ``overwrite`` an existing file is left untouched and ``SecureFileError``
    is raised: losing an onion service's secret key loses its address for good.
    """
    target = Path(path)
    directory = target.parent
    if not overwrite and target.exists():
        raise SecureFileError(f"refusing to overwrite existing file {target}")
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp",
                                        dir=directory)
    except OSError as exc:
        raise SecureFileError(f"cannot create a temporary file in {directory}: "
                              f"{exc.strerror}") from exc
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), mode)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if overwrite:
            os.replace(tmp_name, target)
        else:
            # link() fails if the target appeared meanwhile, closing the race that an
            # exists() check followed by rename() would leave open.
            try:
                os.link(tmp_name, target)
            except FileExistsError as exc:
                raise SecureFileError(f"refusing to overwrite existing file {target}") from exc
            except PermissionError:
                # Some filesystems forbid hard links: fall back to a checked rename.
                if target.exists():
                    raise SecureFileError(
                        f"refusing to overwrite existing file {target}") from None
                os.rename(tmp_name, target)
            else:
                os.unlink(tmp_name)
        _fsync_directory(directory)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise SecureFileError(f"cannot write {target}: {exc.strerror}") from exc
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise


def _fsync_directory(directory: Path) -> None:
    try:
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return  # some filesystems cannot open directories; the rename still happened
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)
