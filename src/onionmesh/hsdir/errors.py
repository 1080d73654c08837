"""Typed errors of the hsdir package.

Every message names what is wrong (the line, the field, the value's shape)
and never carries secret material: blinded secret keys and OPE keys only
ever appear as "the key" in messages.
"""

from onionmesh.errors import OnionmeshError


class HsdirError(OnionmeshError):
    """Base class of errors raised by onionmesh.hsdir."""


class ConsensusError(HsdirError):
    """A consensus or microdescriptor text could not be parsed or used."""


class StaleConsensusError(ConsensusError):
    """The consensus is not reasonably live at the given time (tor's 24 h window)."""


class TimePeriodError(HsdirError):
    """A time, period number or period length is outside what tor can compute."""


class RevisionCounterError(HsdirError):
    """A revision counter cannot be computed (bad key length, clock before the SRV run)."""
