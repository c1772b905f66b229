"""Tiaki's broker package: the policy enforcement point and the platform it runs on.

Sub-packages:

- :mod:`broker.registry` — the agency registry (who takes part, statutory status, evidence)
- :mod:`broker.platform` — the local Apache Kafka, TLS material and provisioning
- :mod:`broker.codec` — Avro schemas, fingerprints, resolution
- :mod:`broker.envelope` — the sealed, signed record envelope and key registry
"""

from broker._errors import (
    ConfigError,
    MissingToolError,
    PlatformError,
    ProvisionError,
    TiakiError,
)

__all__ = ["ConfigError", "MissingToolError", "PlatformError", "ProvisionError", "TiakiError"]
__version__ = "0.1.0"
