"""Typed errors for the v3 onion-service descriptor code.

Each class names one reason a descriptor is refused, so callers (the mesh,
the publisher, tests) can react to the reason rather than parse messages.
Messages describe what is wrong and never include key material or cookies.
"""

from onionmesh.errors import OnionmeshError


class DescriptorError(OnionmeshError):
    """Base class of every descriptor build/parse/verify failure."""


class MalformedDescriptor(DescriptorError):
    """The text (or a decrypted layer) does not follow the descriptor grammar."""


class BadSignature(DescriptorError):
    """A signature (descriptor, or a certificate's) does not verify."""


class BadCertificate(DescriptorError):
    """A certificate is unparseable, of the wrong type or certifies the wrong key."""


class ExpiredCertificate(BadCertificate):
    """A certificate in the descriptor has expired at the verification time."""


class WrongBlindedKey(DescriptorError):
    """The blinded key does not belong to the onion address for the time period."""


class MacMismatch(DescriptorError):
    """An encrypted layer's MAC does not match (tampered, or wrong keys)."""


class ClientAuthRequired(DescriptorError):
    """The inner layer needs a client-auth key we do not have (or ours is not listed)."""


class DescriptorTooLarge(DescriptorError):
    """Building would exceed tor's 50,000-byte descriptor or 20-intro-point limit."""


class BadIntroPoint(MalformedDescriptor):
    """An introduction point block is malformed."""
