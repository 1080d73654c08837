"""Interface names: valid for Linux and unique machine-wide.

wireguard-go's UAPI socket is ``/var/run/wireguard/<name>.sock``, one path for every
network namespace, so two nodes on one machine (or in two namespaces of a test) must
never share a name even though each namespace could hold its own link of that name.
The default name is derived from the node id and its state directory, which no two
nodes share.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from onionmesh.wireguard.errors import WireGuardError

# Linux IFNAMSIZ is 16 including the NUL; wg-quick accepts the same characters.
_NAME = re.compile(r"^[A-Za-z0-9_=+.-]{1,15}$")
UAPI_DIR = Path("/var/run/wireguard")


def check_interface_name(name: str) -> str:
    if not _NAME.match(name) or name in (".", ".."):
        raise WireGuardError(
            f"WireGuard interface name {name!r} must be 1-15 characters of "
            "A-Z a-z 0-9 _ = + . -"
        )
    return name


def default_interface_name(node_id: str, state_dir: Path) -> str:
    """``om`` + 10 hex digits of a hash of (node id, state dir): 12 characters."""
    digest = hashlib.blake2s(f"{node_id}\0{state_dir}".encode(), digest_size=5).hexdigest()
    return f"om{digest}"


def uapi_socket(name: str, uapi_dir: Path = UAPI_DIR) -> Path:
    return uapi_dir / f"{check_interface_name(name)}.sock"
