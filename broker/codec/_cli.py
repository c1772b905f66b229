"""``tiaki schema``: schema tooling for agency IT teams and the test suite."""

from __future__ import annotations

import typer

app = typer.Typer(help="Avro event schemas: list, check compatibility.", no_args_is_help=True)
