"""``tiaki kafka`` and ``tiaki provision``."""

from __future__ import annotations

import typer

kafka_app = typer.Typer(help="The local Apache Kafka: up, down, status.", no_args_is_help=True)


def provision_command() -> None:
    """Create or reconcile topics, principals and ACLs from the agency registry."""
