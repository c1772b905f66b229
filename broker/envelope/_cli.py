"""``tiaki keys``: development keys and the key registry."""

from __future__ import annotations

import typer

app = typer.Typer(help="Keys: create development keys, rotate, revoke.", no_args_is_help=True)
