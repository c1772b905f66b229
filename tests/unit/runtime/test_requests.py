"""Information requests are tracked until each holder answers, and escalate once when late."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from broker.codec import from_json, load_schemas
from broker.runtime._requests import RequestBook

ROOT = Path(__file__).resolve().parents[3]
SCHEMAS = load_schemas(ROOT / "schemas")


def example(name: str) -> dict[str, Any]:
    schema = SCHEMAS.latest(name)
    return from_json(
        schema, json.loads((ROOT / "schemas" / "examples" / f"{name}.json").read_text())
    )


REQUEST = example("InformationRequest")  # MSD asks Police, respond by 2025-03-06 17:00 UTC
RESPONSE = example("InformationResponse")  # Police answers
DUE = datetime(2025, 3, 6, 17, 0, tzinfo=UTC)


def test_answered_request_never_escalates() -> None:
    book = RequestBook()
    state = book.apply("InformationRequest", REQUEST)
    assert state is not None
    assert (state["requester"], state["holders"]) == ("msd", ["police"])
    assert book.apply("InformationRequest", REQUEST) is None  # a retried batch
    answered = book.apply("InformationResponse", RESPONSE)
    assert answered is not None
    assert answered["answered"] == ["police"]
    assert book.overdue(DUE + timedelta(days=3)) == []
    assert book.open_requests() == []


def test_unanswered_request_escalates_once_and_an_abort_undoes_it() -> None:
    book = RequestBook()
    book.apply("InformationRequest", REQUEST)
    assert book.overdue(DUE - timedelta(minutes=1)) == []
    first = book.overdue(DUE)
    assert [(s["escalated"], holder) for s, holder in first] == [(["police"], "police")]
    assert book.overdue(DUE + timedelta(hours=1)) == []  # once
    book.unescalate([("SYN-REQ-0001", "police")])  # its transaction aborted
    assert len(book.overdue(DUE + timedelta(hours=1))) == 1  # so it is made again


def test_book_rebuilds_from_its_state_records() -> None:
    book = RequestBook()
    states = [book.apply("InformationRequest", REQUEST)]
    states += [s for s, _ in book.overdue(DUE)]
    rebuilt = RequestBook()
    rebuilt.load([s for s in states if s is not None])
    assert rebuilt.open_requests() == book.open_requests()
    assert rebuilt.overdue(DUE + timedelta(days=1)) == []  # already escalated
