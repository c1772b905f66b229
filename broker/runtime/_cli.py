"""``tiaki broker``: run the policy enforcement point."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from broker._errors import ConfigError, TiakiError
from broker._logging import configure_logging
from broker._settings import Settings
from broker.platform._profiles import load_profile, profile_path
from broker.platform._topics import ADMIN, POLICY
from broker.policy import PolicyStore, load_roster
from broker.runtime._demo import run_demo
from broker.runtime._release import bundle
from broker.runtime._service import (
    COMMIT_INTERVAL_MS,
    MAX_BATCH,
    MAX_CHECKPOINT_SECONDS,
    MAX_COMMIT_INTERVAL_MS,
    MIN_CHECKPOINT_SECONDS,
    ServiceOptions,
    install_stop_signals,
    serve,
)
from broker.transport import KafkaPublisher

app = typer.Typer(
    help="The broker: the policy enforcement point between agencies.", no_args_is_help=True
)


@app.command("run")
def run(
    worker_id: Annotated[
        str, typer.Option(help="This worker's id (its transactional id suffix).")
    ] = "0",
    metrics_port: Annotated[
        int,
        typer.Option(
            help="Port for Prometheus metrics on 127.0.0.1; 0 for none.", min=0, max=65535
        ),
    ] = 9464,
    roster: Annotated[
        Path | None,
        typer.Option(
            help="The privacy officers this broker trusts (default: TIAKI_HOME/officers/roster.yaml)."
        ),
    ] = None,
    max_batch: Annotated[
        int, typer.Option(help="Most ingress records per transaction.", min=1, max=MAX_BATCH)
    ] = 500,
    commit_interval_ms: Annotated[
        int,
        typer.Option(
            help="Shortest time between the starts of two transactions (ms); a record waits "
            "for at most this, or the transaction ahead, before its own.",
            min=0,
            max=MAX_COMMIT_INTERVAL_MS,
        ),
    ] = COMMIT_INTERVAL_MS,
    checkpoint_seconds: Annotated[
        int,
        typer.Option(
            help="Longest time a chained audit record waits for the signed checkpoint that "
            "covers it (s); a checkpoint also follows every 1,000 records.",
            min=MIN_CHECKPOINT_SECONDS,
            max=MAX_CHECKPOINT_SECONDS,
        ),
    ] = ServiceOptions.checkpoint_seconds,
) -> None:
    """Consume every ingress topic and deliver what policy permits, exactly once, until SIGTERM."""
    options = ServiceOptions(
        worker_id=worker_id,
        metrics_port=metrics_port or None,
        max_batch=max_batch,
        commit_interval_ms=commit_interval_ms,
        checkpoint_seconds=checkpoint_seconds,
    )
    settings = Settings.from_env()
    configure_logging()
    store = PolicyStore(load_roster(roster or settings.trusted_roster))
    store.load(settings.policies_dir)

    async def main() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(serve(settings, store, options, stop))
        install_stop_signals(stop, task)
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(main())


def check_release(release: Path, roster: Path) -> str:
    """Load ``release`` as a broker would (valid, and approved by enough officers on
    ``roster``); return its policy hash, or raise a one-line :class:`ConfigError`.

    ``tiaki.policy`` is compacted under one key, so whatever is published replaces the last
    approved release there for good; a worker would refuse a bad one, but the good one is
    gone. So nothing the broker would refuse is published.
    """
    policies = release / "policies"
    if not policies.is_dir():
        raise ConfigError(f"{release}: not a policy release (no policies/ folder in it)")
    store = PolicyStore(load_roster(roster))
    try:
        engine = store.load(policies)
    except TiakiError as exc:
        raise ConfigError(f"{release}: not published, the broker would refuse it: {exc}") from None
    except Exception as exc:  # whatever a candidate raises, the broker refuses (PolicyStore)
        raise ConfigError(
            f"{release}: not published, the broker would refuse it: {type(exc).__name__}: {exc}"
        ) from None
    return engine.policy_hash


@app.command("publish-policy")
def publish_policy(
    release: Annotated[
        Path, typer.Argument(help="An approved release folder (policies/ and schemas/).")
    ],
    roster: Annotated[
        Path | None,
        typer.Option(
            help="The privacy officers the brokers trust (default: TIAKI_HOME/officers/roster.yaml)."
        ),
    ] = None,
) -> None:
    """Publish a policy release to tiaki.policy (as admin), only if it is valid and approved
    by officers on the trusted roster; every broker worker verifies it again."""
    settings = Settings.from_env()
    digest = check_release(release, roster or settings.trusted_roster)
    data = bundle(release)
    profile = load_profile(profile_path(settings.profiles_dir, ADMIN))

    async def main() -> None:
        async with KafkaPublisher(profile) as publisher:
            await publisher.publish(POLICY, b"policy", data)

    asyncio.run(main())
    print(f"published policy {digest[:16]} ({len(data)} bytes) to {POLICY}")


def demo_command(
    stay: Annotated[
        bool, typer.Option("--stay", help="Keep the broker and adapters running afterwards.")
    ] = False,
) -> None:
    """Play an ISR day through the reference adapters and the broker; show who saw what."""
    configure_logging(level=logging.WARNING)
    # aiokafka logs its own retries (coordinator not ready yet on a fresh node) through the
    # standard library; the demo's story is the tables, so keep those quiet.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    console = Console() if sys.stdout.isatty() else Console(width=120)
    asyncio.run(run_demo(Settings.from_env(), console, stay=stay))
