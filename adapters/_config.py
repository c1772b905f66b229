"""An adapter's configuration: one small YAML file per agency, read once at the edge.

::

    agency: police                      # must be in the registry and match --agency
    profile: "{home}/profiles/police.json"   # default; {home} is TIAKI_HOME (default .tiaki)
    keys: "{home}/keys"                 # default
    state: "{home}/adapters/police"     # outbox database and dead-letter folder (default)
    metrics_port: 0                     # Prometheus on 127.0.0.1; 0 for none
    retry: {max_attempts: 5, first_delay_s: 1, max_delay_s: 300}
    sources:                            # what the agency's case system exports
      - kind: folder                    # a watched folder of JSON or CSV exports
        path: "{home}/adapters/police/outbox-exports"
        format: json                    # json | csv
        # csv only: the event type, an optional JSON template, and column -> field path
        event_type: FamilyHarmEpisodeReport
        template: "{config_dir}/templates/episode.json"
        columns: {case: header.case_id, when: header.occurred_at}
      - kind: webhook                   # HTTP POST of one event as JSON
        listen: 127.0.0.1:8701
        path: /events
    sinks:                              # where received events go
      - kind: folder
        path: "{home}/adapters/police/received"
      - kind: webhook
        url: http://127.0.0.1:9000/tiaki
      - kind: stdout

Every fault is reported as ``file:line:column: reason``, ranges included, so what ``tiaki
adapter check`` accepts ``run`` can use: retry delays at most a day (``86400``), ports ``0`` to
``65535`` (``listen``, ``metrics_port``, a webhook sink's URL), a CSV source's
``event_type`` (required, and an event schema), and its template (readable, a JSON object); no
NUL in a path, and no control character in a webhook source's ``path`` or a sink's ``url``.
"""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from adapters._errors import AdapterConfigError
from broker._yaml import SourceError, load_yaml, locate
from broker.codec import SchemaSet

MAX_PORT = 65535
MAX_DELAY_S = 86400.0


def _no_nul(value: str) -> str:
    # No file system takes a NUL in a path, and Python refuses one with a bare ValueError when
    # ``run`` opens it: refuse it here, so what ``check`` accepts ``run`` can open.
    if "\0" in value:
        raise ValueError("a path cannot hold a NUL character")
    return value


#: A file or folder path from the configuration (``{home}`` and the like still unfilled).
PathText = Annotated[str, AfterValidator(_no_nul)]


def _no_control(value: str) -> str:
    # An HTTP request line ends at a line break, and urllib drops tabs and line breaks from a
    # URL without a word and refuses other control characters only when it sends: a webhook
    # path or URL holding one would never match, or would be sent as something else, or fail
    # at the first event. Refuse it here, so what ``check`` accepts ``run`` can use.
    bad = next((c for c in value if unicodedata.category(c) == "Cc"), None)
    if bad is not None:
        raise ValueError(
            "a webhook path or URL cannot hold a NUL or other control character "
            f"(here U+{ord(bad):04X})"
        )
    return value


#: A webhook source's path or a webhook sink's URL.
WebText = Annotated[str, AfterValidator(_no_control)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FolderSourceConfig(_Strict):
    kind: Literal["folder"]
    path: PathText
    format: Literal["json", "csv"] = "json"
    event_type: str | None = None
    template: PathText | None = None
    columns: dict[str, str] = Field(default_factory=dict)
    interval_s: float = Field(default=1.0, gt=0, le=3600)

    @model_validator(mode="after")
    def _csv_names_its_event_type(self) -> FolderSourceConfig:
        if self.format == "csv" and not self.event_type:
            raise ValueError("a CSV folder source needs an event_type (a row does not say)")
        return self


class WebhookSourceConfig(_Strict):
    kind: Literal["webhook"]
    listen: str = Field(pattern=r"^[\w.:-]+:\d{1,5}$")
    path: WebText = "/events"

    @field_validator("path")
    @classmethod
    def _a_request_can_reach_it(cls, path: str) -> str:
        # The source compares a request's target (up to any '?') with this: a path that
        # does not start with '/', or holds a space, '?' or '#', matches no request.
        if not path.startswith("/") or any(c in path for c in " ?#"):
            raise ValueError(
                "a webhook path starts with '/' and holds no space, '?' or '#' (no request "
                "could reach it otherwise)"
            )
        return path

    @field_validator("listen")
    @classmethod
    def _port_in_range(cls, listen: str) -> str:
        if not 0 <= int(listen.rpartition(":")[2]) <= MAX_PORT:
            raise ValueError(f"the port must be 0 to {MAX_PORT} (0: any free port)")
        return listen


class FolderSinkConfig(_Strict):
    kind: Literal["folder"]
    path: PathText


class WebhookSinkConfig(_Strict):
    kind: Literal["webhook"]
    url: WebText = Field(pattern=r"^https?://")
    timeout_s: float = Field(default=10.0, gt=0, le=300)

    @field_validator("url")
    @classmethod
    def _url_parses(cls, url: str) -> str:
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 - raises ValueError for a port out of range
        except ValueError:
            raise ValueError(f"not a usable URL (a port must be 1 to {MAX_PORT})") from None
        if not parts.hostname:
            raise ValueError("the URL needs a host")
        return url


class StdoutSinkConfig(_Strict):
    kind: Literal["stdout"]


class RetryConfig(_Strict):
    max_attempts: int = Field(default=5, ge=1, le=100)
    #: A day at most: an event that can wait longer between attempts is one for a person, in
    #: the dead-letter folder (and far larger values do not fit a timedelta).
    first_delay_s: float = Field(default=1.0, gt=0, le=MAX_DELAY_S)
    max_delay_s: float = Field(default=300.0, gt=0, le=MAX_DELAY_S)


SourceConfig = Annotated[FolderSourceConfig | WebhookSourceConfig, Field(discriminator="kind")]
SinkConfig = Annotated[
    FolderSinkConfig | WebhookSinkConfig | StdoutSinkConfig, Field(discriminator="kind")
]


class AdapterConfig(_Strict):
    """A validated configuration; paths still hold ``{home}`` until :meth:`path`."""

    agency: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")
    profile: PathText = "{home}/profiles/{agency}.json"
    keys: PathText = "{home}/keys"
    #: Names the key set's files in ``keys``, so it is a name like ``agency``, not a path.
    key_ref: str | None = Field(default=None, pattern=r"^[a-z0-9][a-z0-9-]*$")
    state: PathText = "{home}/adapters/{agency}"
    metrics_port: int = Field(default=0, ge=0, le=65535)
    retry: RetryConfig = Field(default_factory=RetryConfig)
    sources: list[SourceConfig] = Field(default_factory=list)
    sinks: list[SinkConfig] = Field(default_factory=list)

    #: The folder of the file this was read from, for ``{config_dir}`` (set by the loader).
    config_dir: Path = Path()

    def path(self, template: str, home: Path) -> Path:
        """``template`` with ``{home}``, ``{agency}`` and ``{config_dir}`` filled in."""
        return Path(
            template.replace("{home}", str(home))
            .replace("{agency}", self.agency)
            .replace("{config_dir}", str(self.config_dir))
        )


def read_template(path: Path) -> dict[str, Any]:
    """A CSV source's template: a JSON object; :class:`AdapterConfigError` naming ``path``."""
    try:
        template = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise AdapterConfigError(
            f"{path}: cannot read the CSV template: {exc.strerror or exc}"
        ) from None
    except (ValueError, RecursionError) as exc:  # not UTF-8, not JSON, nested too deeply
        reason = str(exc) if not isinstance(exc, RecursionError) else "nested too deeply"
        raise AdapterConfigError(f"{path}: the CSV template is not JSON: {reason}") from None
    if not isinstance(template, dict):
        raise AdapterConfigError(f"{path}: the CSV template must be a JSON object")
    return template


def load_config(
    path: Path, *, home: Path | None = None, schemas: SchemaSet | None = None
) -> AdapterConfig:
    """Read and validate ``path``; :class:`AdapterConfigError` as ``file:line:column: reason``.

    Given ``home`` and ``schemas``, also what ``run`` needs beyond the file's shape: each
    folder source's ``event_type`` names an event schema (by its short or full name; the
    configuration returned holds the short one, ``TaskEvent`` for ``nz.tiaki.TaskEvent``), and
    its CSV template (``{home}`` filled in) is readable JSON. ``tiaki adapter check`` and
    ``run`` both pass them, so a configuration ``check`` accepts is one ``run`` can start with.
    """
    try:
        data = load_yaml(path)
    except SourceError as exc:
        raise AdapterConfigError(str(exc)) from None
    if not isinstance(data, dict):
        raise AdapterConfigError(f"{path}:1:1: an adapter configuration is a mapping")
    try:
        config = AdapterConfig.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = [step for step in first["loc"] if not (isinstance(step, str) and step in _KINDS)]
        line, column = locate(data, loc)
        where = ".".join(str(step) for step in loc) or "configuration"
        reason = first["msg"].removeprefix("Value error, ")  # pydantic's prefix for our checks
        raise AdapterConfigError(f"{path}:{line}:{column}: {where}: {reason}") from None
    if "config_dir" in data:
        line, column = locate(data, ["config_dir"])
        raise AdapterConfigError(
            f"{path}:{line}:{column}: config_dir: set by the loader, not the file"
        )
    config = config.model_copy(update={"config_dir": path.parent.absolute()})
    if schemas is not None:
        short = {name: e.short_name for e in schemas.events() for name in (e.name, e.short_name)}
        sources: list[SourceConfig] = []
        for index, source in enumerate(config.sources):
            if isinstance(source, FolderSourceConfig) and source.event_type is not None:
                if source.event_type not in short:
                    line, column = locate(data, ["sources", index, "event_type"])
                    raise AdapterConfigError(
                        f"{path}:{line}:{column}: sources.{index}.event_type: "
                        f"no event schema named {source.event_type!r}"
                    )
                # The short name, as publish takes it: nz.tiaki.TaskEvent is TaskEvent.
                source = source.model_copy(update={"event_type": short[source.event_type]})
            sources.append(source)
        config = config.model_copy(update={"sources": sources})
    if home is not None:
        for index, source in enumerate(config.sources):
            if isinstance(source, FolderSourceConfig) and source.template:
                try:
                    read_template(config.path(source.template, home))
                except AdapterConfigError as exc:
                    line, column = locate(data, ["sources", index, "template"])
                    raise AdapterConfigError(
                        f"{path}:{line}:{column}: sources.{index}.template: {exc}"
                    ) from None
    return config


#: pydantic puts the discriminator's chosen class name in error locations; drop it.
_KINDS = {"folder", "webhook", "stdout"}
