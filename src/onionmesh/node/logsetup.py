"""Logging for ``onionmesh run``: stderr (journald picks it up), level from the config."""

from __future__ import annotations

import logging
import sys

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
          "error": logging.ERROR}
_FORMAT = "%(asctime)s [%(levelname)s] %(name)s: %(message)s"


def setup_logging(level: str = "info") -> None:
    """Root logger to stderr; lines read ``[INFO]``/``[WARN]`` as in docs/scenarios.md."""
    logging.addLevelName(logging.WARNING, "WARN")
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_onionmesh", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(_FORMAT))
    handler._onionmesh = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    set_level(level)


def set_level(level: str) -> None:
    logging.getLogger().setLevel(LEVELS.get(level, logging.INFO))
