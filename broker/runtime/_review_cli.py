"""``tiaki review``: list held decisions, approve or decline them, escalate overdue ones.

Runs with the broker's principal and keys (it opens and re-seals held items). Each decision is
written in one Kafka transaction: the release to the recipient (if approved), the decision
record and the audit record commit together or not at all. Each is decided on the queue as it
stands once this command holds it, so two reviewers approving one item at once release it once
(broker.runtime._operator, "One writer per queue").
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Column, Table

from broker.platform._topics import BROKER, REVIEW
from broker.runtime._operator import BrokerTools
from broker.runtime._review import ReviewQueue, decide, read_queue
from broker.transport import Outgoing, Record

app = typer.Typer(help="The review queue: decisions held for a person.", no_args_is_help=True)

ReviewId = Annotated[str, typer.Argument(help="The held item, as `tiaki review list` shows it.")]
Reviewer = Annotated[
    str, typer.Option("--reviewer", help="Your name, as the audit log will show it.")
]
Justification = Annotated[
    str, typer.Option("--justification", help="Why (recorded; no personal details).")
]


def _queue(tools: BrokerTools, now: datetime) -> ReviewQueue:
    return read_queue(tools.read(REVIEW), tools.opener(), tools.schemas, now)


@app.command("list")
def list_items(
    everything: Annotated[bool, typer.Option("--all", help="Include decided items.")] = False,
) -> None:
    """Held items with recipient, event type, source, deadline, kind and state (never their
    content). Kind ``after disclosure``: a share already delivered (imminent danger), reviewed
    afterwards; ``held``: nothing delivered until a person approves. A record that does not
    open is listed as ``unreadable`` by its position (``partition:offset``), always."""
    now = datetime.now(UTC)
    queue = _queue(BrokerTools(), now)
    shown = [i for i in queue.items.values() if everything or i.state in ("held", "escalated")]
    ids = [i.review_id for i in shown] + [r.position for r in queue.unreadable]
    # The id is what a reviewer types to decide an item, so it is never cut short.
    review_id = Column("review id", no_wrap=True, min_width=max(map(len, ids), default=0))
    table = Table(review_id, "recipient", "event type", "source", "deadline (UTC)", "kind", "state")
    for item in shown:
        state = "OVERDUE" if item.overdue(now) else item.state
        shared = item.shared
        table.add_row(
            item.review_id,
            item.recipient,
            shared["event_type"],
            shared["source_agency"],
            item.deadline.strftime("%Y-%m-%d %H:%M"),
            "after disclosure" if item.disclosed else "held",
            state,
        )
    for record in queue.unreadable:
        table.add_row(record.position, "", "", "", "", "", f"unreadable ({record.reason})")
    Console(width=200).print(table)


def _decide(review_id: str, verdict: str, reviewer: str, justification: str) -> None:
    tools = BrokerTools()
    now = datetime.now(UTC)

    def act(records: list[Record]) -> tuple[list[Outgoing], None]:
        item = read_queue(records, tools.opener(), tools.schemas, now).held(review_id)
        outputs = decide(
            item,
            verdict,
            reviewer=reviewer,
            justification=justification,
            now=now,
            sealer=tools.sealer(),
            schemas=tools.schemas,
            context=tools.audit_context(),
        )
        return outputs, None

    tools.act("review", REVIEW, act, now)
    print(f"{review_id}: {verdict}d by {reviewer}")


@app.command("approve")
def approve(review_id: ReviewId, reviewer: Reviewer, justification: Justification) -> None:
    """Release a held item to its recipient, with your name and reasons on the audit record;
    for an after-disclosure item, record that the disclosure was right (nothing is sent again)."""
    _decide(review_id, "approve", reviewer, justification)


@app.command("decline")
def decline(review_id: ReviewId, reviewer: Reviewer, justification: Justification) -> None:
    """Refuse a held item: nothing is released; the refusal and its reasons are audited. For an
    after-disclosure item, record the finding that the disclosure should not have happened
    (audited for compliance; what was delivered cannot be unsent)."""
    _decide(review_id, "decline", reviewer, justification)


@app.command("escalate")
def escalate() -> None:
    """Escalate every held item past its deadline (run it from a scheduler: the shipped
    deploy/systemd/tiaki-review-escalate.timer runs it every 5 minutes)."""
    tools = BrokerTools()
    now = datetime.now(UTC)

    def act(records: list[Record]) -> tuple[list[Outgoing], int]:
        queue = read_queue(records, tools.opener(), tools.schemas, now)
        overdue = [item for item in queue.items.values() if item.overdue(now)]
        outputs: list[Outgoing] = []
        for item in overdue:
            outputs += decide(
                item,
                "escalate",
                reviewer=BROKER,
                justification="",
                now=now,
                sealer=tools.sealer(),
                schemas=tools.schemas,
                context=tools.audit_context(),
            )
        return outputs, len(overdue)

    count = tools.act("review", REVIEW, act, now)
    print(f"escalated {count} overdue item(s)")
