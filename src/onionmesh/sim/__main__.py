"""Command line: ``python -m onionmesh.sim run|soak``.

``run`` replays one seed (optionally writing its trace); ``soak`` runs many
seeds and prints every failure with its one-line replay command. The exit
status is 1 when any seed failed.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter

from onionmesh.sim.errors import SimulationError
from onionmesh.sim.runner import PROFILES, parse_range, run_seed, soak, soak_jobs


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m onionmesh.sim", description=__doc__)
    sub = ap.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run (replay) one seed")
    run.add_argument("--seed", type=int, required=True)
    run.add_argument("--nodes", type=int, required=True)
    run.add_argument("--profile", choices=sorted(PROFILES), default="fast")
    run.add_argument("--cycles", type=int, default=1, help="chaos/stable cycles")
    run.add_argument("--quick", action="store_true", help="CI shape: no warm-up window")
    run.add_argument("--trace", help="write the run's trace as JSON lines to this file")
    so = sub.add_parser("soak", help="run many seeds")
    so.add_argument("--seeds", type=int, default=1000, help="how many seeds")
    so.add_argument("--start", type=int, default=0, help="first seed")
    so.add_argument("--nodes", default="3-15", help="node-count range, e.g. 3-50")
    so.add_argument("--profile", choices=sorted(PROFILES), default="fast")
    so.add_argument("--cycles", type=int, default=2)
    so.add_argument("--workers", type=int, default=2)
    so.add_argument("--quick", action="store_true", help="CI shape: no warm-up window")
    return ap


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit status."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            result = run_seed(args.seed, args.nodes, args.profile, args.cycles, args.quick,
                              trace_path=args.trace)
            print(result.summary())
            s = result.stats
            print(f"  simulated {result.simulated_seconds:.1f}s, {s.datagrams_sent} datagrams, "
                  f"{s.faults} faults, {s.publishes} publishes, injected {sum(s.injected.values())}"
                  f", checks {result.checks}")
            return 0 if result.ok else 1
        lo, hi = parse_range(args.nodes)
        jobs = soak_jobs(range(args.start, args.start + args.seeds), lo, hi, args.profile,
                         args.cycles, args.quick)
        failures = Counter()
        done = 0
        for result in soak(jobs, args.workers):
            done += 1
            if not result.ok:
                failures[result.invariant] += 1
                print(result.summary(), flush=True)
            if done % 1000 == 0:
                print(f"... {done}/{len(jobs)} seeds, {sum(failures.values())} failed", flush=True)
        print(f"{done} seeds, {sum(failures.values())} failed {dict(failures)}")
        return 1 if failures else 0
    except SimulationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
