"""``tiaki registry``: check and show the agency registry."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from broker._settings import Settings
from broker.registry._load import load_registry
from broker.registry._model import StatusKind

app = typer.Typer(help="The agency registry: check it, show it.", no_args_is_help=True)

_PATH = typer.Argument(
    help="Registry file (default: $TIAKI_REGISTRY, else policies/agencies.yaml)."
)

_SHORT = {
    StatusKind.FAMILY_VIOLENCE_AGENCY: "FVA",
    StatusKind.CHILD_WELFARE_PROTECTION_AGENCY: "CWPA",
    StatusKind.SOCIAL_SERVICES_PRACTITIONER_EMPLOYER: "SSP",
}


@app.command("check")
def check(
    path: Annotated[Path | None, _PATH] = None,
) -> None:
    """Validate the registry; print file:line:column and the reason for the first fault."""
    registry = load_registry(path or Settings.from_env().registry)
    print(f"ok: {len(registry.agencies)} agencies in {len(registry.regions)} regions")


@app.command("show")
def show(
    path: Annotated[Path | None, _PATH] = None,
) -> None:
    """Print a table of agencies with their kind, region, confirmed statuses and whether they
    coordinate cases."""
    registry = load_registry(path or Settings.from_env().registry)
    table = Table(
        "id", "name", "kind", "region", "statutory status (confirmed)", "coordinates cases"
    )
    for agency in registry.agencies:
        confirmed = ", ".join(short for kind, short in _SHORT.items() if agency.has_status(kind))
        table.add_row(
            agency.id,
            agency.name,
            agency.kind.value,
            agency.region,
            confirmed or "-",
            "yes" if agency.coordinates_cases else "-",
        )
    Console().print(table)
