"""The run trace: every input given to a core and every event it emitted.

The trace keeps a rolling SHA-256 over its records so two runs of the same
seed can be compared cheaply (``digest``); full records are only kept when
asked for (``keep=True``), e.g. to write a JSON-lines file for a failing seed.
Payload bytes are recorded as their SHA-256 prefix, never in full.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any


class Trace:
    """Append-only record of a run."""

    def __init__(self, keep: bool = False) -> None:
        self._keep = keep
        self._hash = hashlib.sha256()
        self.records: list[tuple[float, str, str, str]] = []
        self.count = 0

    def add(self, at: float, kind: str, node: str, detail: str) -> None:
        """Record one step: simulated time, what happened, at which node, details."""
        line = f"{at:.6f}|{kind}|{node}|{detail}\n"
        self._hash.update(line.encode())
        self.count += 1
        if self._keep:
            self.records.append((at, kind, node, detail))

    @property
    def digest(self) -> str:
        """Hex digest of every record so far (identical runs give identical digests)."""
        return self._hash.hexdigest()

    def tail(self, n: int = 20) -> list[str]:
        """The last ``n`` kept records, formatted for a failure report."""
        return [f"t={a:10.3f} {k:<10} {n_:<8} {d}" for a, k, n_, d in self.records[-n:]]

    def write_jsonl(self, path: str | Path) -> None:
        """Write the kept records as JSON lines."""
        with Path(path).open("w", encoding="utf-8") as out:
            for at, kind, node, detail in self.records:
                out.write(json.dumps({"t": at, "kind": kind, "node": node, "detail": detail}))
                out.write("\n")


def payload_tag(data: bytes) -> str:
    """A short, stable name for a datagram in the trace."""
    return hashlib.sha256(data).hexdigest()[:12]


def describe(event: Any) -> str:
    """One-line description of a core event for the trace."""
    message = getattr(event, "message", None)
    if isinstance(message, str):
        return f"{type(event).__name__}: {message}"
    text = repr(event)
    return text if len(text) <= 160 else text[:157] + "..."  # plans carry kilobytes of bytes
