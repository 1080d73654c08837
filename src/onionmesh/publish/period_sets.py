"""Which nodes' intro points the master descriptor of time period P may carry.

tor gives each of a service's two descriptors its own intro points and, at
the SRV rotation (the middle of a time period), drops the older descriptor
and closes its intro circuits. A tor client caches the master descriptor it
fetched until the next time period starts. So the master descriptor for P
carries, from each node, only the intro points of that node's descriptor
for exactly P: those live until the middle of P+1, longer than any client
keeps the master descriptor for P. A node whose set for P is not known yet
is left out of P's descriptor.

One exception, the *bridge*: when no node's set for P is known at all, P's
descriptor carries the nodes' sets for P-1. That happens for the second
descriptor in the second half of P-1 (tor uploads the nodes' P descriptors
then, but nothing can read them before P starts: HSFETCH asks for the
fetching tor's current period) and briefly at start-up. Clients fetch the
descriptor for P only once their consensus is in P; the P-1 sets live until
the middle of P, and the publisher replaces them within seconds of the
period start, when the nodes fetch their P descriptors. Without the bridge
the first clients of P would get NOT_FOUND from every HSDir, and tor then
does not ask those HSDirs again for 15 minutes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

T = TypeVar("T")


def sets_for_master_period(period: int, sets: Mapping[int, T]) -> tuple[int, T] | None:
    """(source period, entries) for the master descriptor of ``period``, or None.

    ``sets`` maps a node period to its (non-empty when present) entries: one
    node's sets, or a publish plan's per-period intro points.
    """
    exact = sets.get(period)
    if exact:
        return period, exact
    bridge = sets.get(period - 1)
    if bridge:
        return period - 1, bridge
    return None
