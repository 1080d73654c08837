"""Limits tor puts on a v3 onion-service descriptor that several layers must respect.

A leaf module (no imports) so the pure mesh core, the descriptor builder, the publisher and
the intro feed share one number instead of each writing its own.
"""

# tor's HS_CONFIG_V3_MAX_INTRO_POINTS: a service never lists more, and clients reject a
# descriptor that does. It caps the master descriptor and every node set on the wire.
MAX_INTRO_POINTS = 20

# The most different descriptors the publisher splits a period's intro points into: one per
# HSDir a client may fetch from (tor's defaults: hsdir_n_replicas 2 x hsdir_spread_fetch 3).
# More would sit on HSDirs no client asks.
MAX_SPLIT = 6
