"""Information requests are tracked until each holder answers, and escalate once when late."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from broker.codec import from_json, load_schemas
from broker.runtime._requests import RequestBook, RequestIdInUse, request_key

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
    assert book.lapse(DUE + timedelta(days=3)).escalated == []
    assert book.open_requests() == []


def test_unanswered_request_escalates_once_and_an_abort_undoes_it() -> None:
    book = RequestBook()
    book.apply("InformationRequest", REQUEST)
    assert book.lapse(DUE - timedelta(minutes=1)).escalated == []
    first = book.lapse(DUE).escalated
    assert [(s["escalated"], holder) for s, holder in first] == [(["police"], "police")]
    assert book.lapse(DUE + timedelta(hours=1)).escalated == []  # once
    book.unescalate(
        [(request_key("SYN-REQ-0001", "SYN-CASE-0001"), "police")]
    )  # its transaction aborted
    assert len(book.lapse(DUE + timedelta(hours=1)).escalated) == 1  # so it is made again


def test_book_rebuilds_from_its_state_records() -> None:
    book = RequestBook()
    states = [book.apply("InformationRequest", REQUEST)]
    states += [s for s, _ in book.lapse(DUE).escalated]
    rebuilt = RequestBook()
    rebuilt.load([s for s in states if s is not None])
    assert rebuilt.open_requests() == book.open_requests()
    assert rebuilt.lapse(DUE + timedelta(days=1)).escalated == []  # already escalated


def _another_agency(request: dict[str, Any], agency: str, event_id: str) -> dict[str, Any]:
    header = request["header"] | {"source_agency": agency, "event_id": event_id}
    return request | {"header": header}


def test_a_request_id_reused_by_another_agency_is_refused() -> None:
    """Request ids are the requester's own; Health sending one MSD already uses is refused
    (quarantined as ``request_id_in_use``) and must not redirect the answer."""
    book = RequestBook()
    book.apply("InformationRequest", REQUEST, 1)
    other = _another_agency(REQUEST, "health-nz", "00000000-0000-4000-8000-0000000000ff")
    with pytest.raises(RequestIdInUse) as refused:
        book.apply("InformationRequest", other, 2)
    assert refused.value.quarantine_reason == "request_id_in_use"
    assert book.requester("SYN-REQ-0001") == "msd"
    assert [r["partition"] for r in book.open_requests()] == [1]
    # The requester itself may make the request again (a new event: the book takes it).
    again = _another_agency(REQUEST, "msd", "00000000-0000-4000-8000-0000000000fe")
    state = book.apply("InformationRequest", again, 1)
    assert state is not None
    assert state["event_id"] == "00000000-0000-4000-8000-0000000000fe"


def test_only_the_owner_of_the_requests_partition_escalates_it() -> None:
    book = RequestBook()
    book.apply("InformationRequest", REQUEST, 2)
    assert (
        book.lapse(
            DUE, frozenset({("tiaki.ingress.msd", 0), ("tiaki.ingress.police", 2)})
        ).escalated
        == []
    )
    assert (
        book.lapse(DUE, frozenset({("tiaki.ingress.police", 2)})).escalated == []
    )  # not msd's topic
    owned = book.lapse(DUE, frozenset({("tiaki.ingress.msd", 2)})).escalated
    assert [(s["partition"], holder) for s, holder in owned] == [(2, "police")]


def test_a_record_older_than_v2_is_escalated_by_the_owner_of_partition_0_until_answered() -> None:
    """v1 records name no partition: one worker (partition 0's owner) escalates them, and
    the first response records the partition it came in on."""
    book = RequestBook()
    state = book.apply("InformationRequest", REQUEST)
    assert state is not None
    legacy = {k: v for k, v in state.items() if k != "partition"}
    old = RequestBook()
    old.load([legacy])
    assert old.lapse(DUE, frozenset({("tiaki.ingress.msd", 1)})).escalated == []
    assert len(old.lapse(DUE, frozenset({("tiaki.ingress.msd", 0)})).escalated) == 1
    answered = RequestBook()
    answered.load([legacy])
    learned = answered.apply("InformationResponse", RESPONSE, 2)
    assert learned is not None
    assert learned["partition"] == 2


def test_a_v1_state_record_is_read_by_its_writer_schema() -> None:
    """Records written before RequestState v2 carry no schema header and are read as v1;
    records since name their writer in ``tiaki-schema``."""
    from broker.codec import encode
    from broker.runtime._pipeline import SCHEMA_HEADER
    from broker.runtime._service import request_states
    from broker.transport import Record

    v1, v2 = SCHEMAS.versions("RequestState")[:2]
    book = RequestBook()
    state = book.apply("InformationRequest", REQUEST, 2)
    assert state is not None
    v2_only = {"partition", "requester_role", "on_behalf_of"}
    later = {"case_id", "settled_at", "retired", "legal_route"}  # v3's, v4's and v5's
    old = encode(v1, {k: v for k, v in state.items() if k not in v2_only | later})
    new = encode(v2, {k: v for k, v in state.items() if k not in later})
    records = [
        Record("tiaki.state.requests", 0, 0, b"r", old, (), 0),
        Record(
            "tiaki.state.requests",
            0,
            1,
            b"r",
            new,
            ((SCHEMA_HEADER, v2.fingerprint_hex.encode()),),
            0,
        ),
    ]
    read = [r for r in request_states(records, SCHEMAS) if not isinstance(r, str)]
    assert [r["partition"] for r in read] == [None, 2]
