"""Packet delay and loss through NFQUEUE (this kernel has no netem): a test helper.

``python -m onionmesh.testnet.nfq_delay --queue N --delay-ms D [--jitter-ms J] [--loss P]``
takes every packet an nft ``queue`` rule hands to queue N, drops P % of them and
accepts the rest D (+- J) ms later, in arrival order per release time. Run it inside
the network namespace whose rule feeds it (``HostLab.delay``); with the rule's
``bypass`` flag packets pass undelayed while it is not running. Stops on SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import heapq
import itertools
import random
import signal
import sys
import threading
import time
from typing import Any

import fnfqueue


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queue", type=int, required=True)
    parser.add_argument("--delay-ms", type=float, required=True)
    parser.add_argument("--jitter-ms", type=float, default=0.0)
    parser.add_argument("--loss", type=float, default=0.0, help="percent dropped")
    args = parser.parse_args(argv)
    rng = random.Random()
    held: list[tuple[float, int, Any]] = []
    lock = threading.Condition()
    order = itertools.count()
    stop = threading.Event()

    def release() -> None:
        while not stop.is_set():
            with lock:
                while not held and not stop.is_set():
                    lock.wait(0.5)
                if stop.is_set():
                    return
                due, _, packet = held[0]
                wait = due - time.monotonic()
                if wait > 0:
                    lock.wait(wait)
                    continue
                heapq.heappop(held)
            # A packet the kernel no longer holds cannot be accepted: nothing to do.
            with contextlib.suppress(Exception):
                packet.accept()

    conn = fnfqueue.Connection()
    queue = conn.bind(args.queue)
    queue.set_mode(fnfqueue.MAX_PAYLOAD, fnfqueue.COPY_META)
    signal.signal(signal.SIGTERM, lambda *_: (stop.set(), conn.close()))
    worker = threading.Thread(target=release, daemon=True)
    worker.start()
    print("ready", flush=True)
    try:
        for packet in conn:
            if rng.uniform(0, 100) < args.loss:
                packet.drop()
                continue
            delay = args.delay_ms + rng.uniform(-args.jitter_ms, args.jitter_ms)
            with lock:
                heapq.heappush(held, (time.monotonic() + max(0.0, delay) / 1000, next(order),
                                      packet))
                lock.notify()
    except Exception:
        if not stop.is_set():
            raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
