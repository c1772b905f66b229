"""``tiaki schema``: schema tooling for agency IT teams and the test suite."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from broker._settings import default_folder
from broker.codec._compat import check_evolution
from broker.codec._errors import IncompatibleSchema
from broker.codec._load import load_schemas

app = typer.Typer(help="Avro event schemas: list, check compatibility.", no_args_is_help=True)

#: Without one, the folder ``tiaki broker run`` loads, so a check passes or fails on the
#: schemas the broker will decode with.
_FOLDER = typer.Option("--schemas", help="Schema folder (default: $TIAKI_SCHEMAS, else schemas).")


@app.command("list")
def list_schemas(
    folder: Annotated[Path | None, _FOLDER] = None,
    full: Annotated[bool, typer.Option("--full", help="Print whole fingerprints.")] = False,
) -> None:
    """List every schema version with its kind, practice step and SHA-256 fingerprint."""
    schemas = load_schemas(folder or default_folder("schemas_dir"))
    table = Table("name", "version", "kind", "practice step", "fingerprint (SHA-256)")
    for schema in schemas:
        fingerprint = schema.fingerprint_hex if full else schema.fingerprint_hex[:16] + "…"
        table.add_row(
            schema.name,
            str(schema.version),
            schema.kind,
            schema.practice_step or "-",
            fingerprint,
        )
    Console(width=200).print(table)


@app.command("check")
def check(folder: Annotated[Path | None, _FOLDER] = None) -> None:
    """Lint every schema, and check every version against all earlier ones, both ways."""
    schemas = load_schemas(folder or default_folder("schemas_dir"))
    problems = [p for name in schemas.names() for p in check_evolution(schemas.versions(name))]
    for problem in problems:
        print(f"tiaki: incompatible: {problem}", file=sys.stderr)
    if problems:
        # An error rather than typer.Exit: the root CLI turns TiakiError into exit status 1.
        raise IncompatibleSchema(f"{len(problems)} incompatible schema change(s), listed above")
    print(
        f"ok: {len(schemas)} schema versions ({len(schemas.names())} names), "
        "every version compatible with all earlier ones, both ways"
    )


@app.command("fields")
def fields(
    name: Annotated[str, typer.Argument(help="Schema name, e.g. TaskEvent.")],
    folder: Annotated[Path | None, _FOLDER] = None,
    version: Annotated[int | None, typer.Option(help="Version (default: the newest).")] = None,
) -> None:
    """Show a schema's fields, flattened, with their classifications."""
    schemas = load_schemas(folder or default_folder("schemas_dir"))
    schema = schemas.latest(name) if version is None else schemas.get(name, version)
    table = Table("field", "classification", "inherited", "type", title=schema.label)
    for info in schema.fields:
        table.add_row(info.path, info.classification, ",".join(info.inherited), info.avro_type)
    Console(width=200).print(table)
