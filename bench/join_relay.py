"""Benchmark: what a join relayed by a member costs the relay and the authority node.

The pure cores only (``mesh.join_relay``, ``mesh.join.JoinSponsor``), so the figures are
CPU per message, without tor or the mesh transport:

=========================  ===========================================================
relay_forward              a member's relay takes one join request from its join onion
                           (decode, bounds, signed envelope)
intake_verify              the authority node checks one relayed envelope (a member's
                           signature, age, per-relay budget) and reads the joiner's id
intake_forged              an envelope under a member's id with a wrong signature:
                           refused after one signature check
sponsor_unknown_token      the sponsor refuses a request naming a token it never issued
sponsor_used_token         a request for a used token (both proofs checked, refused)
admission_end_to_end       a whole relayed admission: forward, intake, accept (signed,
                           roster chunks), sealed replies, the relay verifying the accept
=========================  ===========================================================

With the bounds the code sets (``RelayLimits``: a relay forwards at most 1 a second with a
burst of 5; the authority takes at most 5 a second from each member; ``JoinService``
answers at most 20 join requests a second in all), the last lines say how much of one
core a flood through relays can take on the authority node. Run:
``PYTHONPATH=src .venv/bin/python bench/join_relay.py`` (``--members`` for a larger
cluster, ``--samples`` for more runs).
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import replace

from nacl.signing import SigningKey

from onionmesh.mesh.join import Joiner, JoinSponsor, TokenGrant
from onionmesh.mesh.join_relay import (
    Forward,
    JoinRelay,
    RelayDone,
    RelayedJoin,
    RelayIntake,
    RelayLimits,
)
from onionmesh.mesh.roster import AuthorityKey, MemberEntry, Roster
from onionmesh.node.join_service import MAX_REQUESTS_PER_SECOND

NOW = 1_800_000_000.0


def seed(name: str) -> bytes:
    return hashlib.sha256(name.encode()).digest()


def pub(name: str) -> bytes:
    return bytes(SigningKey(seed(name)).verify_key)


def timed(fn: Callable[[int], object], samples: int) -> float:
    """Median CPU seconds of one call (the garbage collector paused, as timeit does)."""
    times = []
    gc.disable()
    try:
        for i in range(samples):
            start = time.process_time_ns()
            fn(i)
            times.append((time.process_time_ns() - start) / 1e9)
    finally:
        gc.enable()
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=5)
    parser.add_argument("--samples", type=int, default=300)
    args = parser.parse_args()
    authority = AuthorityKey(seed("authority"))
    roster = Roster(authority.public_key)
    names = [f"m{i}" for i in range(args.members)]
    for name in names:
        roster.merge_entry(authority.sign_entry(MemberEntry(name, pub(name), True, 1)))
    peers = {name: f"10.0.0.{i + 1}:7443" for i, name in enumerate(names)}
    limits = RelayLimits(rate=100.0, burst=1000, max_pending=256, per_relay_per_second=1000)
    grants: dict[bytes, TokenGrant] = {}
    joiners = []
    for i in range(args.samples):
        join_seed = seed(f"token{i}")
        grants[bytes(SigningKey(join_seed).verify_key)] = TokenGrant(
            bytes(SigningKey(join_seed).verify_key), NOW + 3600, False)
        joiners.append(Joiner(join_seed, authority.public_key, f"j{i}", seed(f"j{i}"), NOW,
                              entropy=os.urandom(64)))
    unknown = [Joiner(seed(f"nope{i}"), authority.public_key, f"u{i}", seed(f"u{i}"), NOW,
                      entropy=os.urandom(64)) for i in range(args.samples)]

    relay = JoinRelay("m1", seed("m1"), first_id=1, limits=limits)
    steps: list[Forward] = []

    def forward(i: int) -> None:
        step = relay.forward(joiners[i].request(), peers, NOW)
        assert isinstance(step, Forward)
        steps.append(step)
        relay.cancel(step.relay_id)  # as if answered: the pending bound is not measured

    results = {"relay_forward": timed(forward, args.samples)}
    intake = RelayIntake("m0", seed("m0"), limits=limits)
    got: list[RelayedJoin] = []

    def verify(i: int) -> None:
        result = intake.receive(steps[i].datagram, NOW, roster)
        assert isinstance(result, RelayedJoin)
        got.append(result)

    results["intake_verify"] = timed(verify, args.samples)
    forged = [bytearray(s.datagram) for s in steps]
    for f in forged:
        f[-1] ^= 1
    results["intake_forged"] = timed(lambda i: intake.receive(bytes(forged[i]), NOW, roster),
                                     args.samples)
    sponsor = JoinSponsor(authority, roster.copy(), b"s" * 32)
    results["sponsor_unknown_token"] = timed(
        lambda i: sponsor.handle(unknown[i].request(), NOW, grants.get, os.urandom(32)),
        args.samples)
    used = {k: replace(g, used_by=b"\x00" * 32) for k, g in grants.items()}
    results["sponsor_used_token"] = timed(
        lambda i: sponsor.handle(joiners[i].request(), NOW, used.get, os.urandom(32)),
        args.samples)

    def admission(i: int) -> None:
        fresh_roster = roster.copy()
        fresh_sponsor = JoinSponsor(authority, fresh_roster, b"s" * 32)
        rel = JoinRelay("m1", seed("m1"), first_id=1, limits=limits)
        step = rel.forward(joiners[i].request(), peers, NOW)
        assert isinstance(step, Forward)
        came = intake.receive(step.datagram, NOW, fresh_roster)
        assert isinstance(came, RelayedJoin)
        decision = fresh_sponsor.handle(came.request, NOW, grants.get, os.urandom(32))
        done = None
        for reply in decision.replies:
            done = rel.receive(intake.seal_reply(came, reply, NOW), NOW, fresh_roster)
        assert isinstance(done, RelayDone) and done.accepted

    results["admission_end_to_end"] = timed(admission, min(args.samples, 100))

    print(f"{args.members} members, {args.samples} samples; median CPU per message:")
    for name, seconds in results.items():
        print(f"  {name:<24} {seconds * 1e6:9.1f} us")
    defaults = RelayLimits()
    intake_rate = (args.members - 1) * defaults.per_relay_per_second
    sponsor_rate = min(intake_rate, MAX_REQUESTS_PER_SECOND)
    worst = (intake_rate * results["intake_verify"]
             + sponsor_rate * results["sponsor_used_token"])
    print(f"flood through all {args.members - 1} other members at the authority's per-relay "
          f"budget ({defaults.per_relay_per_second}/s each = {intake_rate}/s envelopes, "
          f"{sponsor_rate}/s reaching the sponsor): {worst * 100:.2f} % of one core")
    print(f"beyond that budget each envelope costs one signature check "
          f"({results['intake_verify'] * 1e6:.0f} us: {1 / results['intake_verify']:,.0f}/s "
          "per core), then is dropped")
    honest = (args.members - 1) * defaults.rate
    print(f"honest relays at their own bound ({defaults.rate:g}/s each, {honest:g}/s): "
          f"{honest * (results['intake_verify'] + results['sponsor_used_token']) * 100:.2f} "
          "% of one core")


if __name__ == "__main__":
    main()
