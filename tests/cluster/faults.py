"""Real fault injection for the cluster tests: drop a node's coordination datagrams in the kernel.

The nodes coordinate over UDP on 127.0.0.1, each on its own ephemeral port. Blocking a node
installs an nftables table of our own (a unique name, only rules for that one port: every UDP
datagram to or from it is dropped at the input hook, i.e. silently lost on the way like on a
cut link; senders see no error), so the daemon's socket stays open and nothing in the daemon
knows about the fault. Unblocking deletes the table; a ``finally`` always
does. No other traffic and no other table is touched.
"""

from __future__ import annotations

import os
import shutil
import subprocess

from onionmesh.errors import OnionmeshError


class FaultError(OnionmeshError):
    """nft refused a rule or is missing."""


class UdpPortBlock:
    """Context manager: drop all UDP to/from ``port`` on this host while active."""

    def __init__(self, port: int) -> None:
        if shutil.which("nft") is None:
            raise FaultError("nft not found: install nftables (apt-get install -y nftables)")
        self.port = int(port)
        self.table = f"onionmesh_test_{os.getpid()}_{self.port}"
        self.active = False

    def _nft(self, script: str) -> None:
        result = subprocess.run(["nft", "-f", "-"], input=script, text=True,
                                capture_output=True, timeout=10, check=False)
        if result.returncode != 0:
            raise FaultError(f"nft failed ({result.returncode}): {result.stderr.strip()}")

    def block(self) -> None:
        p = self.port
        rules = f"udp dport {p} drop; udp sport {p} drop;"
        self._nft(
            f"table inet {self.table} {{\n"
            f"  chain in {{ type filter hook input priority 0; policy accept; {rules} }}\n"
            "}\n"
        )
        self.active = True

    def unblock(self) -> None:
        if self.active:
            self._nft(f"delete table inet {self.table}\n")
            self.active = False

    def __enter__(self) -> UdpPortBlock:
        self.block()
        return self

    def __exit__(self, *exc: object) -> None:
        self.unblock()
