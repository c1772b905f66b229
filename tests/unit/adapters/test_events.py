"""The SDK's helpers build events that validate against their schemas and carry what follows
from the event they answer."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from adapters import (
    InMemoryConnection,
    Received,
    accept_task,
    complete_task,
    decline_task,
    information_request,
    information_response,
)
from tests.unit.adapters.conftest import T0, FakeClock, example, make_client


def received(event_type: str, source: str = "police") -> Received:
    return Received(
        event_id="00000000-0000-4000-8000-0000000000e1",
        event_type=event_type,
        source_agency=source,
        route="fva_s20",
        legal_basis="fva_s20_disclosure",
        purpose="fv_plan_or_response",
        obligations=(),
        rule_ids=(),
        field_actions={},
        policy_hash="",
        shared_at=T0,
        body=example(event_type, case_id="SYN-CASE-H1", source_agency=source),
    )


async def test_task_answers_and_information_exchange_validate_and_publish(
    connection: InMemoryConnection, clock: FakeClock, tmp_path: Path
) -> None:
    task = received("TaskEvent")
    request = received("InformationRequest", source="msd")
    async with make_client("oranga-tamariki", connection, clock, tmp_path / "ot") as ot:
        for doc in (accept_task(task), decline_task(task, note="no capacity"), complete_task(task)):
            await ot.publish("TaskEvent", doc)
        await ot.publish(
            "InformationRequest",
            information_request(
                case_id="SYN-CASE-H1",
                request_id="SYN-REQ-H1",
                holders=["police"],
                purpose="victim_protection",
                legal_route="fva_s20",
                justification="Synthetic: safety plan.",
                accountable_role="practice lead",
                respond_by=T0 + dt.timedelta(days=1),
                information_sought=["episode_history"],
            ),
        )
        assert ot.statistics().pending == 4
    answer = information_response(
        request,
        decision="partial",
        decided_by_role="family harm sergeant",
        decline_reasons=["not_relevant_or_necessary"],
        items=[
            {"category": "episode_history", "occurred_on": "2025-06-01", "summary": "Synthetic."}
        ],
    )
    assert answer["header"]["correlation_id"] == answer["request_id"] == request.body["request_id"]
    assert answer["related_event_ids"] == [request.event_id]
    async with make_client("police", connection, clock, tmp_path / "police") as police:
        await police.publish("InformationResponse", answer)
    accepted = accept_task(task)
    assert accepted["transition"] == "accepted"
    assert accepted["task_id"] == task.body["task_id"]
    assert accepted["header"]["case_id"] == "SYN-CASE-H1"


def test_helpers_refuse_what_the_law_does_not_allow() -> None:
    request = received("InformationRequest", source="msd")
    with pytest.raises(ValueError, match="decline reasons"):
        information_response(request, decision="decline", decided_by_role="sergeant")
    with pytest.raises(ValueError, match="not an information request"):
        information_response(received("TaskEvent"), decision="disclose", decided_by_role="x")
    with pytest.raises(ValueError, match="not a task"):
        accept_task(request)
