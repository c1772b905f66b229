"""Connection profiles: one JSON file per principal with aiokafka's own keyword arguments.

A profile has exactly the keys ``bootstrap_servers``, ``security_protocol``,
``sasl_mechanism``, ``sasl_plain_username``, ``sasl_plain_password`` and ``ssl_cafile``, so
any aiokafka client connects with::

    profile = json.loads(path.read_text())
    cafile = path.parent / profile.pop("ssl_cafile")  # relative: beside the profile
    ssl_context = aiokafka.helpers.create_ssl_context(cafile=cafile)
    AIOKafkaConsumer(..., ssl_context=ssl_context, **profile)

Profiles hold secrets: their folder is ``0700`` and each file ``0600``. A relative
``ssl_cafile`` names a file beside the profile: ``tiaki provision`` writes the cluster's CA
certificate as ``ca.pem`` in the profiles folder and the profiles it writes name it so, which
lets an agency's profile and ``ca.pem`` be copied into the adapter's own directory as they are.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from broker._errors import ConfigError
from broker.platform._secrets import read_json, write_secret_json

PROFILE_KEYS = (
    "bootstrap_servers",
    "security_protocol",
    "sasl_mechanism",
    "sasl_plain_username",
    "sasl_plain_password",
    "ssl_cafile",
)


class Profile(BaseModel):
    """A principal's connection settings; ``aiokafka_kwargs`` and ``librdkafka`` adapt them."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    bootstrap_servers: str
    security_protocol: str = "SASL_SSL"
    sasl_mechanism: str = "SCRAM-SHA-512"
    sasl_plain_username: str
    sasl_plain_password: str
    ssl_cafile: str

    def __repr__(self) -> str:  # never print the password
        return f"Profile({self.sasl_plain_username}@{self.bootstrap_servers})"

    __str__ = __repr__

    def aiokafka_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for any aiokafka client, with an SSL context built from the CA."""
        from aiokafka.helpers import create_ssl_context

        kwargs: dict[str, Any] = self.model_dump()
        kwargs["ssl_context"] = create_ssl_context(cafile=kwargs.pop("ssl_cafile"))
        return kwargs

    def librdkafka(self) -> dict[str, str]:
        """The same settings for confluent-kafka (used by provisioning only)."""
        return {
            "bootstrap.servers": self.bootstrap_servers,
            "security.protocol": self.security_protocol,
            "sasl.mechanisms": self.sasl_mechanism,
            "sasl.username": self.sasl_plain_username,
            "sasl.password": self.sasl_plain_password,
            "ssl.ca.location": self.ssl_cafile,
        }


def profile_path(folder: Path, name: str) -> Path:
    return folder / f"{name}.json"


def load_profile(path: Path) -> Profile:
    """Read a profile; raise :class:`ConfigError` with the file name if missing or malformed."""
    try:
        data = read_json(path)
    except ValueError:
        raise ConfigError(f"{path}: not valid JSON") from None
    if data is None:
        raise ConfigError(f"{path}: no such profile (run `tiaki kafka up` and `tiaki provision`)")
    try:
        profile = Profile.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ConfigError(f"{path}: {'.'.join(map(str, first['loc']))}: {first['msg']}") from None
    if not Path(profile.ssl_cafile).is_absolute():  # beside the profile (see the module docs)
        profile = profile.model_copy(update={"ssl_cafile": str(path.parent / profile.ssl_cafile)})
    return profile


#: The name of the CA certificate ``tiaki provision`` writes beside the profiles it writes.
CA_BESIDE = "ca.pem"


def save_profile(path: Path, profile: Profile) -> None:
    write_secret_json(path, profile.model_dump())
