"""Typed errors of the publisher."""

from __future__ import annotations

from onionmesh.errors import OnionmeshError


class PublishError(OnionmeshError):
    """Base class of the publisher's errors."""


class UploadPlanError(PublishError):
    """The upload tracker was given an inconsistent plan (bad period, HSDir or retry settings)."""


class PublishTimeout(PublishError):
    """Descriptors were not accepted by every responsible HSDir in time."""
