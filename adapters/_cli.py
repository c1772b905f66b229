"""``tiaki adapter``: run, check and inspect an agency's reference adapter, and re-apply its
dead letters."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from pathlib import Path
from typing import Annotated, Any

import typer

from adapters._config import AdapterConfig, load_config
from adapters._deadletter import DeadLetters
from adapters._errors import AdapterConfigError
from adapters._runner import Adapter, serve_metrics
from broker._logging import configure_logging
from broker._settings import Settings
from broker.codec import load_schemas
from broker.registry import Agency, AgencyKind, load_registry

app = typer.Typer(
    help="Agency adapters: connect a case system to Tiaki (see docs/adapters.md).",
    no_args_is_help=True,
)

ConfigFile = Annotated[
    Path, typer.Option("--config", help="The adapter's YAML configuration.", show_default=False)
]


def _load(config: Path, agency: str | None, settings: Settings) -> tuple[AdapterConfig, Agency]:
    """The configuration, and its agency as the registry has it."""
    loaded = load_config(config, home=settings.home, schemas=load_schemas(settings.schemas_dir))
    if agency is not None and agency != loaded.agency:
        raise AdapterConfigError(
            f"{config}:1:1: the configuration is for {loaded.agency!r}, not {agency!r}"
        )
    registry = load_registry(settings.registry)
    registered = registry.get(loaded.agency)
    if registered is None:
        raise AdapterConfigError(
            f"{config}:1:1: agency {loaded.agency!r} is not in the registry {settings.registry}"
        )
    return loaded, registered


def _adapter(loaded: AdapterConfig, agency: Agency, settings: Settings, **options: Any) -> Adapter:
    """The adapter ``loaded`` describes (it reads its key folder again every few seconds:
    rotations and revocations taken in without a restart). A regional hub also reads its
    region's aggregates topic, ``tiaki.hub.<region>``, the region as the registry has it."""
    if agency.kind is AgencyKind.REGIONAL_HUB:
        options.setdefault("hub_region", agency.region)
    return Adapter.from_config(
        loaded, home=settings.home, schemas=load_schemas(settings.schemas_dir), **options
    )


@app.command("run")
def run(
    agency: Annotated[str, typer.Option("--agency", help="The agency id (as in the registry).")],
    config: ConfigFile,
) -> None:
    """Run the adapter until SIGTERM: publish what the sources produce, deliver what arrives."""
    settings = Settings.from_env()
    loaded, registered = _load(config, agency, settings)
    configure_logging()
    metrics = serve_metrics(loaded.metrics_port) if loaded.metrics_port else None
    adapter = _adapter(loaded, registered, settings, metrics=metrics)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        with contextlib.suppress(asyncio.CancelledError):
            await adapter.run(stop)

    asyncio.run(main())


@app.command("check")
def check(
    config: ConfigFile,
    agency: Annotated[str | None, typer.Option("--agency", help="Expected agency id.")] = None,
) -> None:
    """Validate a configuration (errors as file:line:column) without connecting."""
    settings = Settings.from_env()
    loaded, _ = _load(config, agency, settings)
    print(
        f"{config}: ok ({loaded.agency}: {len(loaded.sources)} source(s), {len(loaded.sinks)} sink(s))"
    )


@app.command("dead-letters")
def dead_letters(config: ConfigFile) -> None:
    """List the events the handler gave up on, with their reasons (never their content)."""
    settings = Settings.from_env()
    loaded = load_config(config)
    folder = loaded.path(loaded.state, settings.home) / "dead-letters"
    letters, unreadable = DeadLetters(folder).read()
    for letter in letters:
        print(
            f"{letter.event_id}  {letter.event_type}  from {letter.source_agency}  "
            f"attempts {letter.attempts}  {letter.dead_lettered_at}  {letter.reason}"
        )
    for path, why in unreadable:
        print(f"{path.name}  unreadable: {why} (left in place)")
    print(
        f"{len(letters)} dead letter(s) in {folder}"
        + (f"; {len(unreadable)} unreadable file(s)" if unreadable else "")
    )


@app.command("replay-dead-letters")
def replay_dead_letters(config: ConfigFile) -> None:
    """Hand every dead letter to the configured sinks again, once the cause is fixed: one line
    per event (applied, or still failing with the reason); exit 1 if any still fails."""
    settings = Settings.from_env()
    loaded, registered = _load(config, None, settings)
    configure_logging()
    adapter = _adapter(loaded, registered, settings, send_in_background=False)

    async def main() -> list[tuple[str, str | None]]:
        async with adapter.client as client:
            return await client.replay_dead_letters(adapter.handle)

    results = asyncio.run(main())
    failing = 0
    for key, reason in results:
        print(f"{key}  applied" if reason is None else f"{key}  still failing: {reason}")
        failing += reason is not None
    print(
        f"{len(results) - failing} applied, {failing} still failing, of {len(results)} dead"
        f" letter(s) in {adapter.client.dead_letters.path}"
    )
    if failing:
        raise typer.Exit(1)
