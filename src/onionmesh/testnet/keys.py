"""Key material for the test network's relays: authority certificates and relay fingerprints.

Authority v3 keys come from ``tor-gencert`` (RSA-3072, about a second of CPU each) and relay
identities from ``tor --list-fingerprint``; both are run for all nodes in parallel. Existing
keys in a data directory are reused, which keeps fingerprints (and onion addresses) stable
when a network directory is brought up again.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from onionmesh.testnet.errors import KeyGenerationError

KEYGEN_TIMEOUT = 120.0

_FPR_LINE_RE = re.compile(r"^(\S+) ((?:[0-9A-F]{4} ){9}[0-9A-F]{4})$")
_CERT_FPR_RE = re.compile(r"^fingerprint ([0-9A-F]{40})$", re.MULTILINE)


@dataclass(frozen=True)
class KeyJob:
    """What to generate for one relay."""

    nickname: str
    data_dir: Path
    or_port: int
    dir_port: int | None = None  # set for authorities: tor-gencert needs the dir address


def require_binary(name: str) -> str:
    """Absolute path of ``name`` on PATH or a :class:`KeyGenerationError` naming the package."""
    path = shutil.which(name)
    if path is None:
        raise KeyGenerationError(f"{name!r} not found on PATH (Debian: apt-get install -y tor)")
    return path


def parse_certificate_fingerprint(certificate: str) -> str:
    """The ``fingerprint`` (v3ident) line of an ``authority_certificate``."""
    match = _CERT_FPR_RE.search(certificate)
    if match is None:
        raise KeyGenerationError("authority_certificate has no 'fingerprint' line")
    return match.group(1)


def parse_list_fingerprint(output: str, nickname: str) -> str:
    """The 40-hex fingerprint from ``tor --list-fingerprint`` output (last matching line)."""
    for line in reversed(output.strip().splitlines()):
        match = _FPR_LINE_RE.match(line.strip())
        if match and match.group(1) == nickname:
            return match.group(2).replace(" ", "")
    raise KeyGenerationError(
        f"no fingerprint line for {nickname!r} in tor --list-fingerprint output"
    )


def _gencert_cmd(gencert: str, job: KeyJob) -> list[str]:
    keys = job.data_dir / "keys"
    return [
        gencert,
        "--create-identity-key",
        "-m", "12",
        "-a", f"127.0.0.1:{job.dir_port}",
        "-i", str(keys / "authority_identity_key"),
        "-s", str(keys / "authority_signing_key"),
        "-c", str(keys / "authority_certificate"),
        "--passphrase-fd", "0",
    ]  # fmt: skip


def _fingerprint_cmd(tor: str, job: KeyJob, empty: Path) -> list[str]:
    return [
        tor,
        "--list-fingerprint",
        "--DataDirectory", str(job.data_dir),
        "--ORPort", str(job.or_port),
        "--Nickname", job.nickname,
        "-f", str(empty),
        "--defaults-torrc", str(empty),
    ]  # fmt: skip


def _run_all(commands: Sequence[tuple[str, list[str], bytes]]) -> list[str]:
    """Run commands in parallel; return their stdout or raise naming the first failure."""
    procs = []
    try:
        for label, argv, stdin in commands:
            proc = subprocess.Popen(
                argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
            )
            procs.append((label, proc, stdin))
        outputs = []
        for label, proc, stdin in procs:
            try:
                out, err = proc.communicate(stdin, timeout=KEYGEN_TIMEOUT)
            except subprocess.TimeoutExpired as exc:
                raise KeyGenerationError(
                    f"{label} did not finish within {KEYGEN_TIMEOUT:.0f} s"
                ) from exc
            if proc.returncode != 0:
                tail = err.decode("utf-8", "replace").strip()[-400:]
                raise KeyGenerationError(f"{label} failed with exit {proc.returncode}: {tail}")
            outputs.append(out.decode("utf-8", "replace"))
        return outputs
    finally:
        for _, proc, _ in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def generate_keys(
    jobs: Sequence[KeyJob], *, empty_torrc: Path, tor: str = "tor", gencert: str = "tor-gencert"
) -> dict[str, tuple[str | None, str]]:
    """Create missing keys; return ``{nickname: (v3ident or None, relay fingerprint)}``."""
    tor_path = require_binary(tor)
    gencert_path = require_binary(gencert) if any(j.dir_port for j in jobs) else gencert
    for job in jobs:
        (job.data_dir / "keys").mkdir(parents=True, exist_ok=True)
        job.data_dir.chmod(0o700)
    gencert_jobs = [
        j
        for j in jobs
        if j.dir_port and not (j.data_dir / "keys" / "authority_certificate").exists()
    ]
    # Empty passphrase on stdin: tor-gencert asks for one to encrypt the identity key.
    _run_all(
        [
            (f"tor-gencert for {j.nickname}", _gencert_cmd(gencert_path, j), b"\n")
            for j in gencert_jobs
        ]
    )
    outputs = _run_all(
        [
            (
                f"tor --list-fingerprint for {j.nickname}",
                _fingerprint_cmd(tor_path, j, empty_torrc),
                b"",
            )
            for j in jobs
        ]
    )
    result: dict[str, tuple[str | None, str]] = {}
    for job, output in zip(jobs, outputs, strict=True):
        v3ident = None
        if job.dir_port:
            cert = (job.data_dir / "keys" / "authority_certificate").read_text()
            v3ident = parse_certificate_fingerprint(cert)
        result[job.nickname] = (v3ident, parse_list_fingerprint(output, job.nickname))
    return result
