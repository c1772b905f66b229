"""The root of Tiaki's exception tree.

Every error Tiaki raises on purpose derives from :class:`TiakiError`, so the command line can
turn it into a one-line message and tests can match on a class rather than a string::

    TiakiError
    ├── ConfigError            bad settings or environment
    ├── RegistryError          a malformed agency registry (carries file:line:column)
    ├── PlatformError          the local Kafka could not be assembled, started or reached
    │   └── MissingToolError   Java or Maven is not installed
    └── ProvisionError         topics, principals or ACLs could not be reconciled

Packages add their own subtrees (the envelope's, the policy engine's) under the same root.
"""

from __future__ import annotations


class TiakiError(Exception):
    """Base class for every error Tiaki raises deliberately."""


class ConfigError(TiakiError):
    """Settings or environment are invalid."""


class PlatformError(TiakiError):
    """The local Apache Kafka could not be assembled, started, stopped or reached."""


class MissingToolError(PlatformError):
    """A program Tiaki needs (Java 17+, Maven) is not installed."""


class ProvisionError(TiakiError):
    """Topics, principals or ACLs could not be reconciled with the registry."""
