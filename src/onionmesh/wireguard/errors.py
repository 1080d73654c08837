"""Errors of the WireGuard layer; messages name the command and never carry a key."""

from __future__ import annotations

from collections.abc import Sequence

from onionmesh.errors import OnionmeshError


class WireGuardError(OnionmeshError):
    """The WireGuard interface cannot be set up or read; the message says why."""


class CommandError(WireGuardError):
    """An `ip`/`wg`/wireguard-go command failed."""

    def __init__(self, argv: Sequence[str], returncode: int | None, stderr: str) -> None:
        self.argv = tuple(argv)
        self.returncode = returncode
        self.stderr = stderr.strip()
        shown = " ".join(self.argv)
        if returncode is None:
            problem = self.stderr or "could not be run"
        else:
            problem = f"exit {returncode}" + (f": {self.stderr}" if self.stderr else "")
        super().__init__(f"`{shown}` failed: {problem}")


class DumpParseError(WireGuardError):
    """`wg show dump` or `ip -j` output is not what the tools print."""
