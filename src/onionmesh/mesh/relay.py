"""The relay an encoded intro point lives on, derived from its own link specifiers.

A tor client maps an intro circuit back to an intro point of the descriptor by
the relay's identity (the first intro point with that legacy RSA id wins), so
two intro points on one relay in a descriptor make the second unreachable.
The identity is read from the intro point itself (the ``introduction-point``
line's link specifiers: legacy RSA id, type 2, and ed25519 id, type 3), never
from a separate claim a peer could get wrong.

Bytes that are not an encoded intro point (tests, the simulator's opaque
points) have no relay identity: ``relay_keys`` returns ``None`` and the plan
treats each such point as a relay of its own.
"""

from __future__ import annotations

import functools

from onionmesh.descriptor.intro import LS_ED25519_ID, LS_LEGACY_ID, decode_link_specifiers
from onionmesh.descriptor.layers import b64_decode
from onionmesh.errors import OnionmeshError

_PREFIX = b"introduction-point "
_MAX_LINE = 1024  # 255 link specifiers of <= 257 bytes never come close in practice

RelayKey = tuple[int, bytes]  # (link specifier type, identity bytes)


@functools.lru_cache(maxsize=4096)
def relay_keys(intro_point: bytes) -> frozenset[RelayKey] | None:
    """The relay identities (legacy RSA and/or ed25519) of an encoded intro point.

    ``None`` when ``intro_point`` is not an intro-point block or names no identity.
    Two intro points are on the same relay when their key sets intersect.
    """
    if not intro_point.startswith(_PREFIX):
        return None
    end = intro_point.find(b"\n", 0, _MAX_LINE)
    line = intro_point[len(_PREFIX) : end if end >= 0 else _MAX_LINE]
    try:
        specs = decode_link_specifiers(b64_decode(line.decode("ascii").strip(), "link specifiers"))
    except (OnionmeshError, UnicodeDecodeError):
        return None
    keys = frozenset(
        (spec.type, spec.data) for spec in specs if spec.type in (LS_LEGACY_ID, LS_ED25519_ID)
    )
    return keys or None


def relay_label(intro_point: bytes) -> str:
    """A short printable name of the intro point's relay, for logs (legacy id hex prefix)."""
    keys = relay_keys(intro_point)
    if not keys:
        return "?"
    kind, ident = min(keys)
    return ("$" if kind == LS_LEGACY_ID else "ed:") + ident.hex()[:12].upper()
