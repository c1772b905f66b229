"""``tiaki hub``: publish a regional hub's monthly aggregate (LAW.md scenario 9).

Runs with the broker's principal and keys, as the other operator commands do: it reads the
broker's tallies and seals the table to the region's hubs. One publication is one Kafka
transaction (the sealed tables and their audit records), an act on the ``hub`` queue
(:mod:`broker.runtime._operator`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table as RichTable

from broker.aggregate._publish import (
    COLUMNS,
    Approval,
    HubError,
    check_request,
    count,
    previous_month,
    publish,
    rounding_key,
    shown,
)
from broker.codec import enum_symbols
from broker.platform._topics import STATE_TALLIES
from broker.registry import load_registry
from broker.runtime._operator import BrokerTools
from broker.runtime._service import secret_paths
from broker.runtime._tallies import EPISODES
from broker.transport import Outgoing, Record

app = typer.Typer(help="Regional hubs' aggregates.", no_args_is_help=True)


def _indicators(tools: BrokerTools) -> list[str]:
    """The OutcomeIndicator indicators, each a measure (``indicator:<name>``)."""
    schema = tools.schemas.latest("OutcomeIndicator")
    return sorted(enum_symbols([schema], "nz.tiaki.Indicator") - {"unknown"})


@app.command("publish")
def publish_command(
    region: Annotated[str, typer.Option("--region", help="The hub's region (registry id).")],
    month: Annotated[
        str,
        typer.Option(
            "--month", help="The month counted, YYYY-MM, or `last` (the month before this one)."
        ),
    ],
    operator: Annotated[
        str, typer.Option("--operator", help="Your name, as the audit log will show it.")
    ],
    justification: Annotated[
        str, typer.Option("--justification", help="Why (recorded; no personal details).")
    ],
    measure: Annotated[
        str,
        typer.Option(
            "--measure", help="family_harm_episodes, or indicator:<OutcomeIndicator indicator>."
        ),
    ] = EPISODES,
    approver: Annotated[
        str | None,
        typer.Option(
            "--governance-approved-by",
            help="Who approved the Māori breakdown for Māori data governance (MDS-04); "
            "without it the Māori column is withheld.",
        ),
    ] = None,
    reference: Annotated[
        str | None,
        typer.Option(
            "--governance-reference",
            help="The governance approval's reference (recorded; no personal details).",
        ),
    ] = None,
) -> None:
    """Count one region's month, apply the Stats NZ output rules (rr3, suppression of counts
    under 6, secondary suppression) and publish the table to the region's hubs, with its audit
    records. The Māori column is withheld (shown G, with what would let it be derived) unless a
    governance approval is given."""
    if (approver is None) != (reference is None):
        raise HubError(
            "--governance-approved-by and --governance-reference go together: the approval "
            "is recorded with who gave it and its reference"
        )
    if month == "last":
        month = previous_month(datetime.now(UTC))
    tools = BrokerTools()
    registry = load_registry(tools.settings.registry)
    hubs = check_request(registry, _indicators(tools), region, month, measure)
    approval = None if approver is None else Approval(approver, reference or "")
    subject_key = secret_paths(tools.settings)[0]
    if not subject_key.exists():
        # Never made here: the rounding key comes from it, and a new one would round the
        # same counts otherwise than every table published before (which narrows them).
        raise HubError(
            f"no audit subject key at {subject_key} (the broker creates it): run this where "
            "the broker runs"
        )
    context = tools.audit_context()
    now = datetime.now(UTC)
    found: dict[str, Any] = {}

    def act(records: list[Record]) -> tuple[list[Outgoing], None]:
        counts, unreadable = count(
            records, tools.schemas, region=region, month=month, measure=measure
        )
        publication = publish(
            counts,
            region=region,
            month=month,
            measure=measure,
            hubs=hubs,
            operator=operator,
            justification=justification,
            approval=approval,
            key=rounding_key(context.subject_key),
            schemas=tools.schemas,
            sealer=tools.sealer(),
            context=context,
            now=now,
        )
        found.update(publication=publication, unreadable=unreadable)
        return publication.outputs, None

    tools.act("hub", STATE_TALLIES, act, now)
    publication = found["publication"]
    table = publication.table
    shown_table = RichTable("territorial authority", *COLUMNS, "total")
    for row in table.rows:
        cells = [table.cells[row, column] for column in table.columns]
        shown_table.add_row(row, *map(shown, cells), shown(table.row_totals[row]))
    totals = [table.column_totals[column] for column in table.columns]
    shown_table.add_row("total", *map(shown, totals), shown(table.total))
    Console(width=200).print(shown_table)
    print(
        f"published {publication.table_id} to {', '.join(publication.hubs)} "
        f"(Māori breakdown {publication.governance}); S: not published under the output "
        "rules, G: withheld for Māori data governance"
    )
    if found["unreadable"]:
        print(
            f"warning: {found['unreadable']} tally record(s) could not be read and were not counted"
        )
