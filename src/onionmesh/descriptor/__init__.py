"""The v3 onion-service descriptor: building, encrypting, parsing and verifying (pure code).

Public API:

* ``build_descriptor`` (build.py): sign and encrypt a (master) descriptor, C-tor sized.
* ``parse_descriptor`` (parse.py): decrypt and fully verify one, returning ``Descriptor``.
* ``IntroPoint`` / ``LinkSpecifier`` / ``parse_intro_point`` / ``recertify`` (intro.py).
* ``FreshSigningKey`` (signer.py): a throw-away descriptor-signing key (libsodium).
* errors (errors.py): ``DescriptorError`` and its subclasses.
"""

from onionmesh.descriptor.build import MAX_DESCRIPTOR_SIZE, build_descriptor
from onionmesh.descriptor.errors import (
    BadCertificate,
    BadIntroPoint,
    BadSignature,
    ClientAuthRequired,
    DescriptorError,
    DescriptorTooLarge,
    ExpiredCertificate,
    MacMismatch,
    MalformedDescriptor,
    WrongBlindedKey,
)
from onionmesh.descriptor.intro import (
    IntroPoint,
    LinkSpecifier,
    parse_intro_point,
    recertify,
    verify_intro_point,
    x25519_to_ed25519,
)
from onionmesh.descriptor.parse import Descriptor, parse_descriptor
from onionmesh.descriptor.signer import FreshSigningKey
from onionmesh.tor_limits import MAX_INTRO_POINTS

__all__ = [
    "MAX_DESCRIPTOR_SIZE",
    "MAX_INTRO_POINTS",
    "BadCertificate",
    "BadIntroPoint",
    "BadSignature",
    "ClientAuthRequired",
    "Descriptor",
    "DescriptorError",
    "DescriptorTooLarge",
    "ExpiredCertificate",
    "FreshSigningKey",
    "IntroPoint",
    "LinkSpecifier",
    "MacMismatch",
    "MalformedDescriptor",
    "WrongBlindedKey",
    "build_descriptor",
    "parse_descriptor",
    "parse_intro_point",
    "recertify",
    "verify_intro_point",
    "x25519_to_ed25519",
]
