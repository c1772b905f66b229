"""``tiaki policy``: the privacy officer's tools."""

from __future__ import annotations

import typer

app = typer.Typer(
    help="Sharing policies: validate, test, explain, simulate, diff, sign, verify.",
    no_args_is_help=True,
)
