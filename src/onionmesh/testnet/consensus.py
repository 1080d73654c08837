"""Just enough consensus/microdescriptor parsing to decide when the test network is ready.

This is deliberately not a general directory parser (the hsdir package owns that): it reads
the ``r``/``s``/``m`` lines of a microdesc consensus and splits ``md/all`` into
microdescriptors to compare digests. Phase-1 readiness (docs/testnet.md §2) is: every authority's
consensus lists all relays with ``Running Valid HSDir Guard V2Dir`` and the authority holds every
microdescriptor that consensus names.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass

from onionmesh.testnet.errors import TestnetError

REQUIRED_FLAGS = frozenset({"Running", "Valid", "HSDir", "Guard", "V2Dir"})


class ConsensusParseError(TestnetError):
    """A consensus or microdescriptor text could not be read."""


@dataclass(frozen=True)
class RouterEntry:
    """One relay of a microdesc consensus."""

    nickname: str
    fingerprint: str  # 40 uppercase hex
    flags: frozenset[str]
    md_digest: str | None  # base64 SHA-256 of the microdescriptor, without padding


def parse_router_entries(consensus: str) -> list[RouterEntry]:
    """The relays of a microdesc consensus (``r``, ``s`` and ``m`` lines)."""
    if not isinstance(consensus, str):
        raise ConsensusParseError("consensus must be text")
    entries: list[RouterEntry] = []
    current: dict[str, object] | None = None

    def flush() -> None:
        if current is not None:
            entries.append(
                RouterEntry(
                    nickname=str(current["nickname"]),
                    fingerprint=str(current["fingerprint"]),
                    flags=frozenset(current.get("flags", ())),  # type: ignore[arg-type]
                    md_digest=current.get("m"),  # type: ignore[arg-type]
                )
            )

    for line in consensus.splitlines():
        if line.startswith("r "):
            flush()
            parts = line.split()
            if len(parts) < 3:
                raise ConsensusParseError(f"short 'r' line in consensus: {line[:80]!r}")
            current = {"nickname": parts[1], "fingerprint": _b64_identity_to_hex(parts[2])}
        elif current is not None and line.startswith("s "):
            current["flags"] = line.split()[1:]
        elif current is not None and line.startswith("m "):
            parts = line.split()
            if len(parts) < 2:
                raise ConsensusParseError("empty 'm' line in consensus")
            current["m"] = parts[1]
        elif line.startswith("directory-footer"):
            break
    flush()
    return entries


def _b64_identity_to_hex(text: str) -> str:
    try:
        raw = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ConsensusParseError(f"bad base64 identity {text[:40]!r} in 'r' line") from exc
    if len(raw) != 20:
        raise ConsensusParseError(f"identity {text[:40]!r} in 'r' line is not 20 bytes")
    return raw.hex().upper()


def split_microdescriptors(md_all: str) -> list[str]:
    """Split ``GETINFO md/all`` into microdescriptors, each ending in a newline.

    The control protocol strips the final newline of the data block, so it is put back
    before splitting (docs/testnet.md §5: otherwise the last microdescriptor hashes wrong).
    Every microdescriptor starts with an ``onion-key`` line (dir-spec §3.3).
    """
    if not isinstance(md_all, str):
        raise ConsensusParseError("md/all must be text")
    if not md_all.strip():
        return []
    text = md_all if md_all.endswith("\n") else md_all + "\n"
    parts: list[list[str]] = []
    for line in text.splitlines(keepends=True):
        if line.startswith("@"):
            continue  # annotations (e.g. @last-listed) are not part of the hashed text
        if line.startswith("onion-key"):
            parts.append([])
        if not parts:
            raise ConsensusParseError("md/all does not start with an 'onion-key' line")
        parts[-1].append(line)
    return ["".join(p) for p in parts]


def microdescriptor_digest(md: str) -> str:
    """base64 SHA-256 of a microdescriptor without padding, as in consensus ``m`` lines."""
    digest = hashlib.sha256(md.encode("utf-8")).digest()
    return base64.b64encode(digest).decode("ascii").rstrip("=")


@dataclass(frozen=True)
class Completeness:
    """How far one authority's view is from phase-1 readiness."""

    relays_listed: int
    relays_flagged: int
    missing_flags: dict[str, frozenset[str]]  # nickname -> flags it lacks
    missing_microdescs: tuple[str, ...]  # nicknames whose microdescriptor is absent
    unknown_relays: tuple[str, ...]  # expected fingerprints not in the consensus

    @property
    def ready(self) -> bool:
        return not (self.missing_flags or self.missing_microdescs or self.unknown_relays)

    def describe(self) -> str:
        parts = [f"{self.relays_flagged}/{self.relays_listed} relays fully flagged"]
        if self.unknown_relays:
            parts.append(f"not listed: {', '.join(self.unknown_relays)}")
        if self.missing_flags:
            lacking = "; ".join(
                f"{n} lacks {' '.join(sorted(f))}" for n, f in sorted(self.missing_flags.items())
            )
            parts.append(lacking)
        if self.missing_microdescs:
            parts.append(f"microdescriptors missing for {', '.join(self.missing_microdescs)}")
        return ", ".join(parts)


def check_completeness(
    consensus: str, md_all: str, expected_fingerprints: dict[str, str]
) -> Completeness:
    """Compare one authority's consensus + ``md/all`` with the relays it should list.

    ``expected_fingerprints`` maps 40-hex fingerprint to nickname.
    """
    entries = parse_router_entries(consensus)
    have_mds = {microdescriptor_digest(md) for md in split_microdescriptors(md_all)}
    listed = {e.fingerprint: e for e in entries}
    unknown = tuple(
        sorted(name for fpr, name in expected_fingerprints.items() if fpr not in listed)
    )
    missing_flags: dict[str, frozenset[str]] = {}
    missing_mds: list[str] = []
    flagged = 0
    for entry in entries:
        lacking = REQUIRED_FLAGS - entry.flags
        if lacking:
            missing_flags[entry.nickname] = frozenset(lacking)
        else:
            flagged += 1
        if entry.md_digest is None or entry.md_digest not in have_mds:
            missing_mds.append(entry.nickname)
    return Completeness(
        relays_listed=len(entries),
        relays_flagged=flagged,
        missing_flags=missing_flags,
        missing_microdescs=tuple(sorted(missing_mds)),
        unknown_relays=unknown,
    )
