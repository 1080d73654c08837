"""The root of onionmesh's typed errors.

Every error raised for bad input (keys, addresses, descriptors, peer
messages, control-port replies, configuration) derives from
``OnionmeshError`` so a shell can catch one type, log the reason and carry
on without crashing the daemon. Messages name what is wrong and never carry
secret material.
"""


class OnionmeshError(Exception):
    """Base class of every error onionmesh raises about its input."""
