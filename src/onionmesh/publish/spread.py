"""More intro points than one descriptor may carry: different descriptors for different HSDirs.

A descriptor carries at most 20 intro points (tor clients reject more). When the
cluster's plan holds more, the publisher builds ``G = ceil(total / 20)`` descriptors
(at most one per HSDir a client may fetch from) and uploads a different one to
different responsible HSDirs (pure functions here; the shell does the uploads).

How clients choose (tor's ``hs_get_responsible_hsdirs`` with ``is_client``): for
each of ``hsdir_n_replicas`` replicas, the first ``hsdir_spread_fetch`` relays of
the ring after the replica's index, skipping relays an earlier replica chose;
the client fetches from one of those at random. Services upload to
``hsdir_spread_store`` per replica (tor's defaults: 2 replicas, fetch 3, store 4).
So only the fetch set decides what clients see:

* ``descriptor_count``: ``ceil(total / 20)`` rounded up to a divisor of the
  fetch set's size (6 by default: 1, 2, 3 or 6 descriptors), so each descriptor
  is found by as many clients;
* ``split_descriptors``: descriptor ``d`` is a max-min fair, one-per-relay choice
  over all nodes (``onionmesh.mesh.plan.select_fair``) that prefers intro points
  the earlier descriptors did not use. With at most 20 nodes every node is in
  every descriptor with the same number of slots, so whichever HSDir a client
  asks it finds every node with an equal share; with more nodes, nodes missing
  from earlier descriptors come first, so every node is in some descriptor.
* ``assign_hsdirs``: the fetch set, in tor's order, takes descriptors round
  robin (so each descriptor is on ``F / G`` of the ``F`` fetchable HSDirs, +-1),
  then the store-only HSDirs the same way. Uploads go to both sets.
* ``client_distribution``: the share of fresh clients each node gets, assuming a
  client picks an HSDir of the fetch set and then an intro point uniformly.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence

from onionmesh.mesh.plan import select_fair
from onionmesh.mesh.relay import RelayKey, relay_keys

MAX_PER_DESCRIPTOR = 20
Entry = tuple[str, bytes]  # (node id, encoded intro point)


def descriptor_count(total: int, fetchable: int, cap: int = MAX_PER_DESCRIPTOR) -> int:
    """How many different descriptors ``total`` intro points need: at least 1, at most one
    per fetchable HSDir (a descriptor no client can fetch helps nobody), rounded up to a
    divisor of ``fetchable`` so every descriptor sits on as many fetchable HSDirs and is
    found by as many clients."""
    fetchable = max(1, fetchable)
    need = max(1, min(math.ceil(total / cap), fetchable))
    return next(g for g in range(need, fetchable + 1) if fetchable % g == 0)


def split_descriptors(
    per_node: Mapping[str, Sequence[bytes]],
    count: int,
    cap: int = MAX_PER_DESCRIPTOR,
    relay_of: Callable[[bytes], frozenset[RelayKey] | None] = relay_keys,
) -> list[tuple[Entry, ...]]:
    """``count`` descriptors' contents from each node's intro points (freshest first)."""
    if count < 1 or cap < 1:
        raise ValueError("count and cap must be >= 1")
    nodes = sorted(n for n, points in per_node.items() if points)
    if count > 1 and 0 < len(nodes) <= cap:
        # Every node gets the same number of slots in every descriptor (20 slots for
        # 7 nodes would give six of them 3 and one 2): clients spread evenly.
        cap = len(nodes) * (cap // len(nodes))
    uses: Counter[bytes] = Counter()
    served: Counter[str] = Counter()  # descriptors each node is in so far
    out: list[tuple[Entry, ...]] = []
    for d in range(count):
        # Rotate the node order per descriptor so ties (the cap cutting a round short)
        # favour different nodes in different descriptors.
        order = nodes[d % len(nodes):] + nodes[: d % len(nodes)] if nodes else []
        queues = []
        for node in order:
            points = list(dict.fromkeys(per_node[node]))
            # Least used first; among equals keep the freshest-first order (stable sort).
            points.sort(key=lambda ip: uses[ip])
            queues.append((node, points))
        chosen = select_fair(queues, cap, relay_of, served)
        uses.update(ip for _, ip in chosen)
        served.update({n for n, _ in chosen})
        out.append(chosen)
    return out


def assign_hsdirs(fetch: Sequence[str], store: Sequence[str], count: int) -> dict[str, int]:
    """HSDir fingerprint -> descriptor index, for every HSDir of the fetch and store sets."""
    if count < 1:
        raise ValueError("count must be >= 1")
    assignment: dict[str, int] = {}
    for hsdir in list(fetch) + [h for h in store if h not in set(fetch)]:
        if hsdir not in assignment:
            assignment[hsdir] = len(assignment) % count
    return assignment


def client_distribution(
    descriptors: Sequence[Sequence[Entry]], assignment: Mapping[str, int], fetch: Sequence[str]
) -> dict[str, float]:
    """node id -> share of fresh clients that land on it (sums to 1 over the nodes)."""
    share: dict[str, float] = {}
    hsdirs = [h for h in dict.fromkeys(fetch) if h in assignment]
    for hsdir in hsdirs:
        entries = descriptors[assignment[hsdir]]
        for node, _ in entries:
            share[node] = share.get(node, 0.0) + 1.0 / (len(hsdirs) * len(entries))
    return share
