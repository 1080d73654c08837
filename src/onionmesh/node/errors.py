"""Typed errors of the node daemon and the operator commands.

Each fatal startup problem has its own class and exit code so systemd (and
tests) can tell them apart; every message names the file or check that failed
and never carries key bytes or the cluster secret.
"""

from __future__ import annotations

from onionmesh.errors import OnionmeshError

EXIT_OK = 0
EXIT_FAILURE = 1  # unexpected failure at runtime (a loop died)
EXIT_USAGE = 2  # argparse's code for bad command lines
EXIT_CONFIG = 3
EXIT_KEY = 4
EXIT_CLOCK = 5
EXIT_TOR = 6
EXIT_TRANSPORT = 7


class NodeError(OnionmeshError):
    """Base class of the node package's errors; ``exit_code`` is what ``run`` returns."""

    exit_code = EXIT_FAILURE


class NodeConfigError(NodeError):
    """The config parses but cannot run a node (missing secret path, unroutable advertise...)."""

    exit_code = EXIT_CONFIG


class KeyCheckError(NodeError):
    """A key file is missing, corrupt or does not match the configuration."""

    exit_code = EXIT_KEY

    def __init__(self, check: str, message: str) -> None:
        super().__init__(f"key check '{check}' failed: {message}")
        self.check = check


class ClockRefused(NodeError):
    """The clock is not good enough to sign descriptors (and the config says refuse)."""

    exit_code = EXIT_CLOCK


class TorUnusable(NodeError):
    """tor could not be started, reached or bootstrapped within its bound."""

    exit_code = EXIT_TOR


class TransportFailed(NodeError):
    """The coordination socket could not be opened."""

    exit_code = EXIT_TRANSPORT


class AlreadyRunning(NodeError):
    """Another ``onionmesh run`` of this node answers on its status socket."""


class TokenError(NodeError):
    """A join token is malformed (the message never repeats the token)."""

    exit_code = EXIT_USAGE


class SetupError(NodeError):
    """``init``/``join`` cannot write the cluster material (existing files are never replaced)."""

    exit_code = EXIT_FAILURE
