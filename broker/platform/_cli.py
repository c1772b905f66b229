"""``tiaki kafka`` and ``tiaki provision``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from broker._settings import Settings
from broker.platform._local import ADMIN_USER, LocalKafka
from broker.platform._profiles import load_profile, profile_path
from broker.platform._provision import bootstrap_admin, provision
from broker.registry import load_registry

kafka_app = typer.Typer(help="The local Apache Kafka: up, down, status.", no_args_is_help=True)


def local_kafka(settings: Settings) -> LocalKafka:
    return LocalKafka(
        settings.kafka_dir,
        settings.deploy_dir / "kafka" / "pom.xml",
        settings.kafka_port,
        settings.controller_port,
    )


@kafka_app.command("up")
def kafka_up(
    timeout: Annotated[
        float, typer.Option(help="Seconds to wait for Kafka to accept clients.", min=1)
    ] = 120.0,
) -> None:
    """Assemble (first time), configure and start the local Kafka; wait until it is ready."""
    settings = Settings.from_env()
    kafka = local_kafka(settings)
    for step in kafka.up(timeout=timeout):
        print(step)
    path = bootstrap_admin(
        kafka.bootstrap, kafka.tls.ca_cert, kafka.credentials(), settings.profiles_dir
    )
    print(f"ready: {kafka.bootstrap} (SASL_SSL, SCRAM-SHA-512); admin profile {path}")


@kafka_app.command("down")
def kafka_down(
    purge: Annotated[
        bool, typer.Option("--purge", help="Also delete data, logs and credentials.")
    ] = False,
) -> None:
    """Stop the local Kafka (SIGTERM, then SIGKILL after 30 s)."""
    kafka = local_kafka(Settings.from_env())
    print(kafka.down())
    if purge:
        kafka.purge()
        print(f"purged {kafka.data} and {kafka.logs}")


@kafka_app.command("status")
def kafka_status() -> None:
    """Say whether the local Kafka is running and accepting clients; exit 1 if not."""
    status = local_kafka(Settings.from_env()).status()
    if not status.running:
        print("stopped")
        raise typer.Exit(1)
    state = "ready" if status.ready else "starting"
    print(f"running (pid {status.pid}), {state} on {status.bootstrap}")
    if not status.ready:
        raise typer.Exit(1)


def provision_command(
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the changes without making them.")
    ] = False,
    registry: Annotated[
        Path | None, typer.Option(help="Agency registry (default: policies/agencies.yaml).")
    ] = None,
    admin_profile: Annotated[
        Path | None,
        typer.Option(help="Admin connection profile (default: .tiaki/profiles/admin.json)."),
    ] = None,
    partitions: Annotated[
        int, typer.Option(help="Partitions per agency and platform topic.", min=1, max=64)
    ] = 3,
) -> None:
    """Create or reconcile topics, principals and ACLs from the agency registry; write profiles."""
    settings = Settings.from_env()
    reg = load_registry(registry or settings.registry)
    admin = load_profile(admin_profile or profile_path(settings.profiles_dir, ADMIN_USER))
    report = provision(reg, admin, settings.profiles_dir, dry_run=dry_run, partitions=partitions)
    for change in report.changes:
        print(change)
    if not report.changed:
        print("no changes")
    elif dry_run:
        print(f"dry run: {sum(c.action != 'warn' for c in report.changes)} changes not applied")
    for path in report.profiles:
        print(f"wrote profile {path}")
