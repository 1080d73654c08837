"""Which descriptor an ``HS_DESC UPLOADED`` event is about (pure bookkeeping).

tor names the blinded key (the v3 descriptor id) only in ``HS_DESC UPLOAD``
(``650 HS_DESC UPLOAD <addr> UNKNOWN <hsdir> <blinded key> ...``); the
``UPLOADED`` that follows carries the address and the HSDir alone. An upload
to one HSDir is therefore matched to the last ``UPLOAD`` of that address to
that HSDir. tor uploads a service's two descriptors to largely different
HSDirs; where one HSDir gets both, the later ``UPLOAD`` wins, which at worst
costs one needless fetch.
"""

from __future__ import annotations

from dataclasses import dataclass

from onionmesh.tor.control_protocol import HsDescEvent

MAX_PENDING = 256  # HSDirs remembered per address (a network has far fewer responsible)


@dataclass(frozen=True)
class Uploaded:
    """One descriptor of ``address`` that an HSDir accepted."""

    address: str
    hsdir: str
    blinded_key: str  # base64 without padding, as tor writes it


class UploadMatcher:
    """Pairs ``UPLOADED`` with the ``UPLOAD`` that named the blinded key."""

    def __init__(self, address: str) -> None:
        self.address = address.removesuffix(".onion")
        self._pending: dict[str, str] = {}  # hsdir -> blinded key of the last UPLOAD

    def observe(self, event: HsDescEvent) -> Uploaded | None:
        """Feed one parsed HS_DESC event; returns the upload it completes, if any."""
        if event.address != self.address or event.hsdir is None:
            return None
        if event.action == "UPLOAD" and event.descriptor_id:
            self._pending.pop(event.hsdir, None)
            self._pending[event.hsdir] = event.descriptor_id
            while len(self._pending) > MAX_PENDING:
                del self._pending[next(iter(self._pending))]
            return None
        if event.action == "UPLOADED":
            key = self._pending.pop(event.hsdir, None)
            if key is not None:
                return Uploaded(self.address, event.hsdir, key)
        elif event.action == "FAILED":
            self._pending.pop(event.hsdir, None)
        return None
