"""Benchmark: the client distribution over nodes when the cluster has more than 20 intro points.

``onionmesh.publish.spread`` splits the plan into ``G = ceil(total / 20)`` descriptors and
gives each responsible HSDir one of them, the HSDirs a client may fetch from (tor's
``hsdir_n_replicas`` x ``hsdir_spread_fetch``) first. This computes, for clusters of N nodes
with K intro points each (intro points on random relays of a ``--relays`` relay network,
one intro point per relay per descriptor), the share of fresh clients each node gets:
a client picks one HSDir of the fetch set at random, then one intro point of that HSDir's
descriptor at random. The fetch and store sets come from tor's defaults (2 replicas,
fetch 3, store 4: 6 fetchable HSDirs, 8 storing ones).

Printed per configuration: descriptors, intro points used of those offered, the node
share min / max (ideal: 1/N), their ratio, and nodes left out. Pure computation (no tor):
``.venv/bin/python bench/spread.py``.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import random
import sys

from onionmesh.descriptor.intro import (
    LS_ED25519_ID,
    LS_LEGACY_ID,
    LinkSpecifier,
    encode_link_specifiers,
)
from onionmesh.publish.spread import (
    assign_hsdirs,
    client_distribution,
    descriptor_count,
    split_descriptors,
)

FETCH = [f"F{i}" for i in range(6)]
STORE = [*FETCH[:3], "S1", *FETCH[3:], "S2"]


def intro_point(relay: int, tag: str) -> bytes:
    specs = encode_link_specifiers((
        LinkSpecifier(LS_LEGACY_ID, hashlib.sha1(b"r%d" % relay).digest()),
        LinkSpecifier(LS_ED25519_ID, hashlib.sha256(b"r%d" % relay).digest()),
    ))
    return b"introduction-point " + base64.b64encode(specs) + b"\n" + tag.encode()


def run(nodes: int, per_node: int, relays: int, rng: random.Random) -> dict[str, float]:
    per = {f"n{k:03d}": [intro_point(r, f"{k}-{r}") for r in rng.sample(range(relays), per_node)]
           for k in range(nodes)}
    total = nodes * per_node
    count = descriptor_count(total, len(FETCH))
    descriptors = split_descriptors(per, count)
    shares = client_distribution(descriptors, assign_hsdirs(FETCH, STORE, count), FETCH)
    used = len({ip for d in descriptors for _, ip in d})
    values = [shares.get(n, 0.0) for n in per]
    return {"descriptors": count, "used": used, "offered": total,
            "min": min(values) * nodes, "max": max(values) * nodes,
            "left_out": sum(1 for v in values if v == 0.0)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--relays", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    print(f"relays {args.relays}; share relative to 1/N (1.00 = perfectly even)")
    print("nodes x ips  descriptors  used/offered  min share  max share  max/min  left out")
    for nodes, per_node in ((6, 3), (7, 3), (10, 3), (10, 6), (20, 3), (25, 3), (40, 3),
                            (60, 3), (100, 3)):
        r = run(nodes, per_node, args.relays, rng)
        ratio = r["max"] / r["min"] if r["min"] else float("inf")
        print(f"{nodes:>5} x {per_node:<3} {r['descriptors']:>11}  {r['used']:>5}/{r['offered']:<6}"
              f"  {r['min']:>9.2f}  {r['max']:>9.2f}  {ratio:>7.2f}  {r['left_out']:>8}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
