"""Settings, read once at the edge.

Nothing else in Tiaki reads the environment: the command line builds one :class:`Settings`
and passes it (or the parts of it a component needs) down.

Environment variables:

``TIAKI_HOME``
    Folder for local state (Kafka data and logs, certificates, profiles, development keys).
    Default: ``.tiaki`` under the current directory. Git ignores it.
``TIAKI_REGISTRY``
    The agency registry. Default: ``policies/agencies.yaml``.
``TIAKI_SCHEMAS`` / ``TIAKI_POLICIES``
    The Avro schema folder (default ``schemas``) and the policy folder (default ``policies``).
    ``tiaki schema`` and ``tiaki policy`` default to them too (:func:`default_folder`), so
    what a person checks, tests and signs is what ``tiaki broker run`` loads.
``TIAKI_KAFKA_PORT`` / ``TIAKI_CONTROLLER_PORT``
    Ports of the local Kafka's client (SASL_SSL) and controller (mutual TLS) listeners.
``TIAKI_OPERATOR``
    Not a setting: the default of the audit commands' ``--operator``, which Typer reads.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from broker._errors import ConfigError

#: Each setting and the environment variable that sets it.
_VARIABLES = {
    "home": "TIAKI_HOME",
    "registry": "TIAKI_REGISTRY",
    "kafka_port": "TIAKI_KAFKA_PORT",
    "controller_port": "TIAKI_CONTROLLER_PORT",
    "schemas_dir": "TIAKI_SCHEMAS",
    "policies_dir": "TIAKI_POLICIES",
}
#: Every variable a command reads, the settings' and ``--operator``'s.
_READ = (*_VARIABLES.values(), "TIAKI_OPERATOR")


def not_utf8(environ: Mapping[str, str] | None = None) -> str | None:
    """The first variable a command reads whose value is not UTF-8, or None.

    Python keeps such bytes as lone surrogates, which pass every check and fail at the first
    write (the operator's name into the audit index) with a traceback, as an argument's would.
    """
    env = os.environ if environ is None else environ
    for var in _READ:
        if not_utf8_text(env.get(var, "")):
            return var
    return None


def not_utf8_text(text: str) -> bool:
    """Whether ``text`` came from bytes that are not UTF-8: Python keeps those as lone
    surrogates (an argument's, an environment variable's)."""
    return not text.isascii() and any("\ud800" <= c <= "\udfff" for c in text)


class Settings(BaseModel):
    """Frozen settings for one invocation."""

    model_config = ConfigDict(frozen=True)

    home: Path = Path(".tiaki")
    registry: Path = Path("policies/agencies.yaml")
    deploy_dir: Path = Path("deploy")
    schemas_dir: Path = Path("schemas")
    policies_dir: Path = Path("policies")
    kafka_port: int = Field(default=19093, ge=1024, le=65535)
    controller_port: int = Field(default=19094, ge=1024, le=65535)

    @property
    def profiles_dir(self) -> Path:
        return self.home / "profiles"

    @property
    def kafka_dir(self) -> Path:
        return self.home / "kafka"

    @property
    def keys_dir(self) -> Path:
        return self.home / "keys"

    @property
    def trusted_roster(self) -> Path:
        """The privacy officers ``tiaki broker run`` trusts unless told otherwise."""
        return self.home / "officers" / "roster.yaml"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build settings from ``TIAKI_*`` variables; raise :class:`ConfigError` on bad values."""
        env = os.environ if environ is None else environ
        raw: dict[str, str] = {}
        for key, var in _VARIABLES.items():
            if var in env:
                raw[key] = env[var]
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            name = str(first["loc"][0]) if first["loc"] else "settings"
            # Name what the user set: the variable, and the value it holds.
            if name in _VARIABLES:
                given = raw.get(name)
                where = _VARIABLES[name] + (f"={given!r}" if given is not None else "")
            else:
                where = name
            raise ConfigError(f"invalid setting {where}: {first['msg']}") from None


def default_folder(setting: Literal["schemas_dir", "policies_dir"]) -> Path:
    """The folder ``setting`` names, for a command given none: the one ``tiaki broker run``
    loads.

    A folder that is not there is refused in one line naming the variable: the loader would
    name a file inside it (``policy.yaml``, ``vocabulary.json``), under a path the person
    never typed and may not know their environment sets.
    """
    folder: Path = getattr(Settings.from_env(), setting)
    if folder.is_dir():
        return folder
    var = _VARIABLES[setting]
    if var in os.environ:
        raise ConfigError(f"invalid setting {var}={os.environ[var]!r}: no such folder")
    raise ConfigError(
        f"no {folder} folder here ({var} is not set): pass the folder, or set {var} to the "
        "one 'tiaki broker run' loads"
    )
