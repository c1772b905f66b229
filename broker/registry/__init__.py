"""The agency registry: participants, their statutory status with evidence, region and kind."""

from broker.registry._load import RegistryError, load_registry
from broker.registry._model import (
    NATIONAL,
    RESERVED_PRINCIPALS,
    Agency,
    AgencyKind,
    Registry,
    StatusKind,
    StatusLevel,
    StatutoryStatus,
)

__all__ = [
    "NATIONAL",
    "RESERVED_PRINCIPALS",
    "Agency",
    "AgencyKind",
    "Registry",
    "RegistryError",
    "StatusKind",
    "StatusLevel",
    "StatutoryStatus",
    "load_registry",
]
