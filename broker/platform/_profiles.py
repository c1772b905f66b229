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

The CA certificate file is checked when a client's TLS settings are built from the profile
(``aiokafka_kwargs``, ``librdkafka``), not when the profile is read: commands that only read a
profile's names (``tiaki provision`` reading the profiles it wrote) need no certificate. A file
that is missing, unreadable or holds no PEM certificate is a :class:`ConfigError` naming the
profile file and ``ssl_cafile``, like a malformed field, rather than an ``OSError`` from
inside the TLS library when a command first connects.
"""

from __future__ import annotations

import re
import ssl
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, PrivateAttr, ValidationError, field_validator

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


#: One ``bootstrap_servers`` entry as both Kafka clients read it: a host name or IPv4 address,
#: or an IPv6 address in brackets, with an optional port (the clients default to 9092).
_SERVER = re.compile(r"(?:[A-Za-z0-9_.-]+|\[[0-9A-Fa-f:.]+\])(?::([0-9]{1,5}))?")
MAX_PORT = 65535


class Profile(BaseModel):
    """A principal's connection settings; ``aiokafka_kwargs`` and ``librdkafka`` adapt them.

    Each field is checked when a profile is read, so a hand-edited profile fails as one line
    naming the file and the field rather than as a ``ValueError`` from inside aiokafka when a
    command first connects. ``sasl_mechanism`` is one that uses the profile's user name and
    password: aiokafka's others (GSSAPI, OAUTHBEARER) need settings a profile does not carry.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    bootstrap_servers: str
    security_protocol: Literal["SASL_SSL", "SASL_PLAINTEXT", "SSL", "PLAINTEXT"] = "SASL_SSL"
    sasl_mechanism: Literal["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"] = "SCRAM-SHA-512"
    sasl_plain_username: str
    sasl_plain_password: str
    ssl_cafile: str

    #: The file :func:`load_profile` read this profile from (None for one built in code), so
    #: that an error found later, when a client is built from it, can name the file. Not a
    #: field: never written back, though pydantic compares it (profiles from two files differ).
    _source: Path | None = PrivateAttr(default=None)

    @field_validator("bootstrap_servers")
    @classmethod
    def _servers_parse(cls, servers: str) -> str:
        if not servers.strip():
            raise ValueError("names no server (host:port, comma-separated)")
        entries = [entry.strip() for entry in servers.split(",")]
        for entry in entries:
            match = _SERVER.fullmatch(entry)
            if match is None or not 1 <= int(match.group(1) or 9092) <= MAX_PORT:
                raise ValueError(
                    f"{entry!r} is not host:port (comma-separated; a port is 1 to {MAX_PORT}, "
                    "an IPv6 address is in brackets)"
                )
        return servers

    @field_validator("ssl_cafile")
    @classmethod
    def _cafile_is_a_path(cls, cafile: str) -> str:
        if not cafile or "\0" in cafile:
            raise ValueError("must name the CA certificate file (and hold no NUL character)")
        return cafile

    def __repr__(self) -> str:  # never print the password
        return f"Profile({self.sasl_plain_username}@{self.bootstrap_servers})"

    __str__ = __repr__

    @property
    def source(self) -> Path | None:
        """The file this profile was read from, or None if it was built in code."""
        return self._source

    def aiokafka_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for any aiokafka client, with an SSL context built from the CA.

        Raises :class:`ConfigError` naming the profile file and ``ssl_cafile`` if the CA
        certificate file is missing, unreadable or not a PEM certificate.
        """
        kwargs: dict[str, Any] = self.model_dump()
        del kwargs["ssl_cafile"]
        kwargs["ssl_context"] = self.ssl_context()
        return kwargs

    def ssl_context(self) -> ssl.SSLContext:
        """aiokafka's client SSL context, trusting the profile's CA certificate (see
        :meth:`aiokafka_kwargs` for the errors)."""
        from aiokafka.helpers import create_ssl_context

        try:
            context: ssl.SSLContext = create_ssl_context(cafile=self.ssl_cafile)
        except OSError as exc:  # ssl.SSLError included: a file that is not a certificate
            raise ConfigError(self._cafile_problem(exc)) from None
        return context

    def _cafile_problem(self, exc: OSError) -> str:
        """``<profile file>: ssl_cafile: <CA file> <what is wrong>``, in one line."""
        if isinstance(exc, ssl.SSLError):
            what = "holds no PEM certificate"
        elif isinstance(exc, FileNotFoundError):
            what = "does not exist"
        elif isinstance(exc, IsADirectoryError):
            what = "is a folder, not a file"
        else:  # unreadable: permissions, an I/O error
            what = f"cannot be read ({exc.strerror or type(exc).__name__})"
        where = self._source if self._source is not None else "connection profile"
        return (
            f"{where}: ssl_cafile: {self.ssl_cafile} {what} "
            "(it must be the cluster's CA certificate)"
        )

    def librdkafka(self) -> dict[str, str]:
        """The same settings for confluent-kafka (used by provisioning only); the CA
        certificate file is checked as by :meth:`aiokafka_kwargs`."""
        self.ssl_context()
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
        # The field and why; pydantic's messages never quote the value (a password, maybe).
        first = exc.errors()[0]
        reason = first["msg"].removeprefix("Value error, ")  # pydantic's prefix for our checks
        raise ConfigError(f"{path}: {'.'.join(map(str, first['loc']))}: {reason}") from None
    if not Path(profile.ssl_cafile).is_absolute():  # beside the profile (see the module docs)
        profile = profile.model_copy(update={"ssl_cafile": str(path.parent / profile.ssl_cafile)})
    profile._source = path
    return profile


#: The name of the CA certificate ``tiaki provision`` writes beside the profiles it writes.
CA_BESIDE = "ca.pem"


def save_profile(path: Path, profile: Profile) -> None:
    write_secret_json(path, profile.model_dump())
