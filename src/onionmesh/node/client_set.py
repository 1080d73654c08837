"""What a config reload does to the authorized clients of the master address (pure).

``onionmesh client add/remove`` rewrites ``[master] authorized_clients`` and sends the
running daemon a SIGHUP; the daemon compares the running set with the reloaded one
here and, when they differ, hands the new keys to the publisher, which rebuilds and
republishes the master descriptor at once. Log lines name clients and at most the
first characters of their *public* keys (the config never holds a secret key).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

from onionmesh.config import client_public_key

_SHOWN = 8  # characters of a public key shown in log lines


def _bare(key: str) -> str:
    return key.removeprefix("descriptor:x25519:").upper()


def abbreviate(key: str) -> str:
    """A public key as log lines show it: its first characters."""
    return _bare(key)[:_SHOWN] + "..."


@dataclass(frozen=True)
class ClientSetChange:
    """The difference between the running and the reloaded authorized clients."""

    added: tuple[tuple[str, str], ...]  # (name, public key), name order
    removed: tuple[str, ...]
    rekeyed: tuple[tuple[str, str], ...]  # same name, a new public key
    keys: tuple[bytes, ...]  # the new set's x25519 public keys, in name order

    @property
    def count(self) -> int:
        return len(self.keys)

    def describe(self) -> str:
        """One log line: who changed and who can read the master descriptor now."""
        parts = [f"+{name} ({abbreviate(key)})" for name, key in self.added]
        parts += [f"-{name}" for name in self.removed]
        parts += [f"~{name} ({abbreviate(key)})" for name, key in self.rekeyed]
        readers = (f"readable only by {self.count} authorized client(s)" if self.count
                   else "readable by anyone who knows the address (no authorized clients)")
        return f"authorized clients changed ({', '.join(parts)}): the master descriptor is " \
               f"now {readers}"


def client_set_fingerprint(clients: Mapping[str, str]) -> str:
    """A short digest of the authorized public keys (names left out: nodes may name a
    client differently), for ``onionmesh status``: equal on every node that publishes the
    same set. Public keys only, so it reveals nothing a config reader could not see."""
    keys = sorted({_bare(key) for key in clients.values()})
    return hashlib.sha256("\n".join(keys).encode("ascii")).hexdigest()[:16]


def client_set_change(running: Mapping[str, str],
                      reloaded: Mapping[str, str]) -> ClientSetChange | None:
    """None when the reloaded clients authorize exactly the running keys.

    Both mappings come from validated configs (``MasterSection`` checks every key), so
    decoding cannot fail here.
    """
    old = {name: _bare(key) for name, key in running.items()}
    new = {name: _bare(key) for name, key in reloaded.items()}
    if old == new:
        return None
    return ClientSetChange(
        added=tuple((n, new[n]) for n in sorted(new.keys() - old.keys())),
        removed=tuple(sorted(old.keys() - new.keys())),
        rekeyed=tuple((n, new[n]) for n in sorted(old.keys() & new.keys()) if old[n] != new[n]),
        keys=tuple(client_public_key(new[n]) for n in sorted(new)),
    )


__all__ = ["ClientSetChange", "abbreviate", "client_set_change", "client_set_fingerprint"]
