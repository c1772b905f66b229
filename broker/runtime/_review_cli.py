"""``tiaki review``: list held decisions, approve or decline them, escalate overdue ones.

Runs with the broker's principal and keys (it opens and re-seals held items). Each decision is
written in one Kafka transaction: the release to the recipient (if approved), the decision
record and the audit record commit together or not at all.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from typing import Annotated

import typer
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from rich.console import Console
from rich.table import Table

from broker._errors import TiakiError
from broker._settings import Settings
from broker.codec import load_schemas
from broker.envelope import KeyRing, KeyStore, Opener, Sealer
from broker.platform._profiles import Profile, load_profile, profile_path
from broker.platform._topics import BROKER, BROKER_GROUP_PREFIX, REVIEW
from broker.registry import load_registry
from broker.runtime._audit import AuditContext
from broker.runtime._chaining import AuditChainer
from broker.runtime._review import HeldItem, ReviewError, decide, read_queue
from broker.runtime._secrets import shared_secret
from broker.runtime._service import secret_paths
from broker.transport import KafkaReader, Outgoing

app = typer.Typer(help="The review queue: decisions held for a person.", no_args_is_help=True)

ReviewId = Annotated[str, typer.Argument(help="The held item, as `tiaki review list` shows it.")]
Reviewer = Annotated[
    str, typer.Option("--reviewer", help="Your name, as the audit log will show it.")
]
Justification = Annotated[
    str, typer.Option("--justification", help="Why (recorded; no personal details).")
]


class _Context:
    def __init__(self) -> None:
        self.settings = Settings.from_env()
        registry = load_registry(self.settings.registry)
        self.schemas = load_schemas(self.settings.schemas_dir)
        principals = {a.id: a.key_ref for a in registry.agencies} | {BROKER: BROKER}
        self.ring = KeyStore(self.settings.keys_dir).load(principals, private_for=[BROKER])
        self.profile = load_profile(profile_path(self.settings.profiles_dir, BROKER))

    def queue(self, now: datetime) -> dict[str, HeldItem]:
        async def read() -> list:  # type: ignore[type-arg]
            async with KafkaReader(self.profile) as reader:
                return await reader.read_all(REVIEW)

        records = asyncio.run(read())
        return read_queue(records, Opener(BROKER, self.ring), self.schemas, now)

    def audit_context(self) -> AuditContext:
        return AuditContext(
            subject_key=shared_secret(secret_paths(self.settings)[0]), policy_hash=None
        )


async def _commit(profile: Profile, outputs: list[Outgoing], ring: KeyRing, now: datetime) -> None:
    transactional_id = f"{BROKER_GROUP_PREFIX}-review-{uuid.uuid4().hex[:8]}"
    # Each run is its own audit chain, named by its (fresh) transactional id: one writer, one
    # transaction, signed at once (every_records=1), so nothing is left unsigned.
    outputs = AuditChainer(transactional_id, ring, every_records=1).seal(outputs, now)
    producer = AIOKafkaProducer(**profile.aiokafka_kwargs(), transactional_id=transactional_id)
    try:
        await producer.start()
        async with producer.transaction():
            for out in outputs:
                await producer.send(out.topic, out.value, key=out.key, headers=list(out.headers))
    except KafkaError as exc:
        raise TiakiError(f"could not write the decision to Kafka: {type(exc).__name__}") from None
    finally:
        await asyncio.shield(producer.stop())


@app.command("list")
def list_items(
    everything: Annotated[bool, typer.Option("--all", help="Include decided items.")] = False,
) -> None:
    """Held items with recipient, event type, source, deadline and state (never their content)."""
    now = datetime.now(UTC)
    items = _Context().queue(now)
    table = Table("review id", "recipient", "event type", "source", "deadline (UTC)", "state")
    for item in items.values():
        if not everything and item.state not in ("held", "escalated"):
            continue
        state = "OVERDUE" if item.overdue(now) else item.state
        shared = item.shared
        table.add_row(
            item.review_id,
            item.recipient,
            shared["event_type"],
            shared["source_agency"],
            item.deadline.strftime("%Y-%m-%d %H:%M"),
            state,
        )
    Console().print(table)


def _decide(review_id: str, verdict: str, reviewer: str, justification: str) -> None:
    context = _Context()
    now = datetime.now(UTC)
    item = context.queue(now).get(review_id)
    if item is None:
        raise ReviewError(f"no held item {review_id!r} (see `tiaki review list`)")
    outputs = decide(
        item,
        verdict,
        reviewer=reviewer,
        justification=justification,
        now=now,
        sealer=Sealer(BROKER, context.ring),
        schemas=context.schemas,
        context=context.audit_context(),
    )
    asyncio.run(_commit(context.profile, outputs, context.ring, now))
    print(f"{review_id}: {verdict}d by {reviewer}")


@app.command("approve")
def approve(review_id: ReviewId, reviewer: Reviewer, justification: Justification) -> None:
    """Release a held item to its recipient, with your name and reasons on the audit record."""
    _decide(review_id, "approve", reviewer, justification)


@app.command("decline")
def decline(review_id: ReviewId, reviewer: Reviewer, justification: Justification) -> None:
    """Refuse a held item: nothing is released; the refusal and its reasons are audited."""
    _decide(review_id, "decline", reviewer, justification)


@app.command("escalate")
def escalate() -> None:
    """Escalate every held item past its deadline (run it from a scheduler, e.g. every 15 minutes)."""
    context = _Context()
    now = datetime.now(UTC)
    overdue = [item for item in context.queue(now).values() if item.overdue(now)]
    outputs: list[Outgoing] = []
    for item in overdue:
        outputs += decide(
            item,
            "escalate",
            reviewer=BROKER,
            justification="",
            now=now,
            sealer=Sealer(BROKER, context.ring),
            schemas=context.schemas,
            context=context.audit_context(),
        )
    if outputs:
        asyncio.run(_commit(context.profile, outputs, context.ring, now))
    print(f"escalated {len(overdue)} overdue item(s)")
