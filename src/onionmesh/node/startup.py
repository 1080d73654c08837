"""Startup checks (docs/scenarios.md §4 and §8): keys first, then the clock.

``check_keys`` runs before anything else touches the disk or the network. It
loads the master key (falling back to ``[master] backup_key_path`` when the
primary is missing, corrupt or mismatched, and the backup passes every
check), the node key, the cluster secret and, where it already exists, the
node's HiddenServiceDir. It only reads: nothing is created or overwritten.

``ClockGuard`` judges this node's clock against the kernel's NTP status and
tor's consensus (``onionmesh.clock.assess_clock``). At startup a bad verdict
refuses or warns as ``[resilience] clock_check`` says; before every signing
pass the publisher asks the guard again and never signs while the clock is BAD.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from onionmesh.clock import (
    Clock,
    ClockAssessment,
    ClockVerdict,
    assess_clock,
    kernel_ntp_synchronized,
)
from onionmesh.config import Config
from onionmesh.crypto.keys import (
    HOSTNAME_FILE,
    PUBLIC_KEY_FILE,
    SECRET_KEY_FILE,
    Ed25519Identity,
    KeyFileError,
    KeyIntegrityError,
    check_hidden_service_dir,
    check_key_integrity,
    load_hostname,
    load_public_key,
    load_secret_key,
)
from onionmesh.hsdir.consensus import Consensus
from onionmesh.mesh.roster import Roster
from onionmesh.node.errors import ClockRefused, KeyCheckError
from onionmesh.node.keyfiles import (
    check_private_mode,
    load_cluster_secrets,
    load_node_key,
    service_dir,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class KeyMaterial:
    """Everything secret a node runs with (reprs never show key bytes)."""

    master: Ed25519Identity | None  # None: this node never publishes
    master_path: Path | None
    node: Ed25519Identity
    cluster_secret: bytes = field(repr=False)
    warnings: tuple[str, ...] = ()  # e.g. "using the backup master key because ..."
    roster: Roster | None = field(default=None, repr=False)  # None: no roster configured
    # The other secret of a cluster-secret rotation in progress (accepted, never sent).
    accepted_secrets: tuple[bytes, ...] = field(default=(), repr=False)

    @property
    def used_backup(self) -> bool:
        return bool(self.warnings)


def load_master_key_file(path: Path, address: str) -> Ed25519Identity:
    """Load one master key file and run every integrity check on it.

    Checks, in order, each named in the error: ``master-key-file`` (exists,
    private mode, tor's format, a valid key), ``onion-address`` (the key is the
    configured master address) and, for files next to it in a HiddenServiceDir,
    ``public-key-file`` and ``hostname-file``.
    """
    check_private_mode(path, "master-key-file")
    try:
        identity = load_secret_key(path)
    except KeyFileError as exc:
        raise KeyCheckError("master-key-file", f"{path}: {exc}") from None
    try:
        check_key_integrity(identity, onion_address=address)
        if path.name == SECRET_KEY_FILE:
            public = path.parent / PUBLIC_KEY_FILE
            if public.exists():
                try:
                    stored = load_public_key(public)
                except KeyFileError as exc:
                    raise KeyIntegrityError("public-key-file", str(exc)) from None
                check_key_integrity(identity, public_key=stored)
            hostname = path.parent / HOSTNAME_FILE
            if hostname.exists():
                try:
                    name = load_hostname(hostname)
                except KeyFileError as exc:
                    raise KeyIntegrityError("hostname-file", str(exc)) from None
                if name != identity.onion_address:
                    raise KeyIntegrityError(
                        "hostname-file", f"{hostname} names {name}, not the key's address"
                    )
    except KeyIntegrityError as exc:
        raise KeyCheckError(exc.check, f"{path}: {exc}") from None
    return identity


def load_master_key(config: Config) -> tuple[Ed25519Identity | None, Path | None, tuple[str, ...]]:
    """The master key, or the backup with a warning, or KeyCheckError for the primary."""
    master = config.master
    path, backup = master.key_path, master.backup_key_path
    if path is None:
        return None, None, ()
    try:
        return load_master_key_file(Path(path), master.address), Path(path), ()
    except KeyCheckError as primary:
        if backup is None:
            raise
        try:
            identity = load_master_key_file(Path(backup), master.address)
        except KeyCheckError as second:
            raise KeyCheckError(
                primary.check, f"{primary}; the backup key failed too: {second}"
            ) from None
        warning = f"master key unusable ({primary}); using the backup key {backup}"
        return identity, Path(backup), (warning,)


def check_keys(config: Config, *, managed_tor: bool | None = None) -> KeyMaterial:
    """Every key check the daemon needs, reading only; KeyCheckError names the failed one."""
    master, master_path, warnings = load_master_key(config)
    node = load_node_key(config)
    secret, accepted = load_cluster_secrets(config)
    if managed_tor is None:
        managed_tor = bool(config.tor.managed)
    hs_dir = service_dir(config)
    if managed_tor and (hs_dir / SECRET_KEY_FILE).exists():
        try:
            check_hidden_service_dir(hs_dir, node.onion_address)
        except KeyIntegrityError as exc:
            raise KeyCheckError(
                "service-dir", f"{hs_dir} holds another key than the node key: {exc}"
            ) from None
        except KeyFileError as exc:
            raise KeyCheckError("service-dir", f"{hs_dir}: {exc}") from None
    if master is not None and master.public_key == node.public_key:
        raise KeyCheckError("node-key-file", "the node key must not be the master key")
    from onionmesh.node.membership import load_node_roster

    roster = load_node_roster(config, node.public_key)
    return KeyMaterial(master, master_path, node, secret, warnings, roster, accepted)


class ClockGuard:
    """Judges the clock; ``check_for_signing`` raises ClockRefused while it is a problem.

    ``require_ntp_sync``: an unsynchronised (or unknown) kernel NTP status is a
    problem, handled like a BAD verdict per ``mode`` at start and never signed
    with; without it the kernel status is only reported. The consensus window
    check always applies. ``peer_offsets`` (set once the mesh runs) gives how far
    this clock is ahead of each live peer's: their median (ours included) must be
    within ``skew_tolerance`` (``[resilience] clock_skew_tolerance``).
    """

    def __init__(
        self,
        clock: Clock,
        *,
        mode: str = "refuse",
        require_ntp_sync: bool = True,
        tolerance: float = 30.0,
        skew_tolerance: float = 10.0,
        kernel_status: Callable[[], bool | None] = kernel_ntp_synchronized,
    ) -> None:
        self.clock = clock
        self.mode = mode
        self.require_ntp_sync = require_ntp_sync
        self.tolerance = tolerance
        self.kernel_status = kernel_status
        self.skew_tolerance = skew_tolerance
        self.peer_offsets: Callable[[], Sequence[float]] = tuple
        self.consensus_window: tuple[float, float] | None = None
        self.last: ClockAssessment | None = None

    def note_consensus(self, consensus: Consensus) -> None:
        self.consensus_window = (float(consensus.valid_after), float(consensus.valid_until))

    def assess(self) -> ClockAssessment:
        after, until = self.consensus_window or (None, None)
        result = assess_clock(
            self.clock.now(), kernel_synced=self.kernel_status(),
            consensus_valid_after=after, consensus_valid_until=until, tolerance=self.tolerance,
            peer_offsets=tuple(self.peer_offsets()), skew_tolerance=self.skew_tolerance,
        )
        self.last = result
        return result

    def is_problem(self, result: ClockAssessment) -> bool:
        """BAD always; WARN (the kernel is not NTP-synchronised) only with require_ntp_sync."""
        if result.verdict is ClockVerdict.BAD:
            return True
        return result.verdict is ClockVerdict.WARN and self.require_ntp_sync

    def startup_check(self) -> ClockAssessment:
        """Refuse (ClockRefused) or return the assessment for the caller to warn about."""
        result = self.assess()
        if self.is_problem(result) and self.mode == "refuse":
            raise ClockRefused(
                f"clock check refused to start: {result.message} "
                "([resilience] clock_check = \"refuse\"; fix the clock or set \"warn\")"
            )
        return result

    def check_for_signing(self) -> None:
        """Called before every signing pass: never sign with a clock off the peers'
        median or outside the consensus, nor (``require_ntp_sync``) an unsynchronised one."""
        result = self.assess()
        if self.is_problem(result):
            raise ClockRefused(f"not signing descriptors: {result.message}")
