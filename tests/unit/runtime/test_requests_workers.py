"""Requests under one id about two cases, on two workers' partitions: each is a request of its
own (keyed by id and case, broker.runtime._requests.request_key), so neither worker's record
replaces the other's on ``tiaki.state.requests``, whatever either worker's copy of the book
knows (review of 7 December: another agency's request, or the requester's own sent again
about another case, handled by a worker that had not read the first, wrote over it)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import pytest

from broker.codec import decode, encode
from broker.platform import ingress
from broker.runtime._pipeline import SCHEMA_HEADER
from broker.runtime._requests import RequestBook, RequestIdInUse, RequestIdMalformed, request_key
from broker.runtime._service import request_states
from broker.transport import InMemoryCluster, Record
from broker.transport._memory import partition_for
from tests.unit.runtime.test_intake import NOW, REGISTRY, SCHEMAS
from tests.unit.runtime.test_requests import REQUEST, RESPONSE
from tests.unit.runtime.test_state_refresh import (
    Clock,
    Node,
    example,
    node,
    publish,
    read,
    rebuild_state,
    sealed,
    steps,
)

REQUEST_ID = "SYN-REQ-0001"
STATE = SCHEMAS.latest("RequestState")


def case_on(partition: int) -> str:
    """A synthetic case id whose events go to ``partition`` of a three-partition topic."""
    return next(
        c
        for c in (f"SYN-CASE-{i:04d}" for i in range(300))
        if partition_for(c.encode(), 3) == partition
    )


def request(source: str, case: str, due: timedelta) -> tuple[str, bytes, bytes]:
    doc, event_id = example("InformationRequest", case_id=case, source_agency=source)
    doc["request_id"] = REQUEST_ID
    doc["respond_by"] = (NOW + due).isoformat().replace("+00:00", "Z")
    return ingress(source), case.encode(), sealed("InformationRequest", doc, event_id)


@asynccontextmanager
async def two_requests(second: str) -> AsyncIterator[tuple[InMemoryCluster, Clock, Node, Node]]:
    """Two workers that have both read the (empty) book; msd's request under REQUEST_ID
    about a case on worker 1's partition, then ``second``'s under the same id about a case on
    worker 2's, each processed by its own worker. Yields the cluster, the clock and the two
    workers, still running."""
    cluster = InMemoryCluster.provisioned(REGISTRY.ids)
    clock = Clock()
    w1 = node(cluster, worker_id="1", clock=clock)
    w2 = node(cluster, worker_id="2", clock=clock)
    async with w1.worker:
        await steps(w1.worker, 1)
        async with w2.worker:
            await steps(w1.worker, 1)
            await steps(w2.worker, 1)
            await publish(cluster, request("msd", case_on(0), timedelta(minutes=30)))
            await steps(w1.worker, 2)
            await publish(cluster, request(second, case_on(1), timedelta(days=5)))
            await steps(w2.worker, 2)
            yield cluster, clock, w1, w2


async def test_another_agencys_request_under_the_id_on_another_workers_case_replaces_nothing() -> (
    None
):
    mine, theirs = case_on(0), case_on(1)
    async with two_requests("oranga-tamariki") as (cluster, _, _, _):
        # About another case: no conflict, so not refused, and not written over msd's.
        assert await read(cluster, "tiaki.dlq") == []
    fresh = await rebuild_state(cluster.reader(), SCHEMAS)
    assert fresh.requests.requester(REQUEST_ID, mine) == "msd"
    assert fresh.requests.requester(REQUEST_ID, theirs) == "oranga-tamariki"
    facts = fresh.requests.facts(REQUEST_ID, case_id=mine, sender="police")
    assert facts is not None
    assert facts.requester == "msd"
    # msd's unanswered holder is escalated at msd's deadline, by its owner.
    lapsed = fresh.requests.lapse(NOW + timedelta(hours=1))
    assert [(s["requester"], holder) for s, holder in lapsed.escalated] == [("msd", "police")]


async def test_a_request_sent_again_about_another_case_leaves_the_first_to_its_owner() -> None:
    old, new = case_on(0), case_on(1)
    async with two_requests("msd") as (cluster, clock, w1, w2):
        clock.now = NOW + timedelta(hours=1)  # the first request's respond_by passes
        await steps(w1.worker, 2)
        await steps(w2.worker, 1)
    states = [
        decode(r.value, SCHEMAS.latest("RequestState"))
        for r in await read(cluster, "tiaki.state.requests")
    ]
    # The first request's owner escalated it, under its own key; the second is untouched.
    assert [(s["case_id"], s["escalated"]) for s in states] == [
        (old, []),
        (new, []),
        (old, ["police"]),
    ]
    fresh = await rebuild_state(cluster.reader(), SCHEMAS)
    facts = fresh.requests.facts(REQUEST_ID, case_id=new, sender="police")
    assert facts is not None
    assert facts.requester == "msd"
    assert {s["case_id"] for s in fresh.requests.open_requests()} == {old, new}


# -- the state topic across the change of key --------------------------------------------------


def _record(partition: int, offset: int, key: str, state: dict[str, Any] | None) -> Record:
    value = b"" if state is None else encode(STATE, state)
    header = () if state is None else ((SCHEMA_HEADER, STATE.fingerprint_hex.encode()),)
    return Record("tiaki.state.requests", partition, offset, key.encode(), value, header, 0)


def test_a_request_written_under_its_new_key_passes_its_records_under_the_bare_id_over() -> None:
    """Its records under the bare id (an earlier broker's) and under its request key sit in
    two partitions, read in no order between them: the bare id's, older, must not win."""
    book = RequestBook()
    asked = book.apply("InformationRequest", REQUEST, 0)
    answered = book.apply("InformationResponse", RESPONSE, 0)
    assert asked is not None
    assert answered is not None
    records = [
        _record(0, 0, request_key(REQUEST_ID, "SYN-CASE-0001"), answered),
        _record(1, 0, REQUEST_ID, asked),  # read last, written first
    ]
    rebuilt = RequestBook()
    rebuilt.load(request_states(records, SCHEMAS))
    assert [r["answered"] for r in rebuilt.open_requests()] == []  # police answered: settled
    facts = rebuilt.facts(REQUEST_ID, case_id="SYN-CASE-0001", sender="police")
    assert facts is not None
    assert rebuilt.apply("InformationResponse", RESPONSE, 0) is None  # answered already


def test_a_tombstone_on_a_request_key_ends_that_request_only() -> None:
    book = RequestBook()
    first = book.apply("InformationRequest", REQUEST, 0)
    other = REQUEST | {"header": REQUEST["header"] | {"case_id": "SYN-CASE-0002"}}
    second = book.apply("InformationRequest", other, 1)
    assert first is not None
    assert second is not None
    rebuilt = RequestBook()
    rebuilt.load([first, second, request_key(REQUEST_ID, "SYN-CASE-0001")])
    assert rebuilt.requester(REQUEST_ID, "SYN-CASE-0001") is None
    assert rebuilt.requester(REQUEST_ID, "SYN-CASE-0002") == "msd"
    rebuilt.load([REQUEST_ID])  # a bare id: every request under it
    assert rebuilt.requester(REQUEST_ID) is None


def test_a_retirement_written_before_v5_keeps_the_id_on_every_case() -> None:
    """It named no case, so the reservation it made cannot be narrowed to one."""
    book = RequestBook()
    state = book.apply("InformationRequest", REQUEST, 0)
    assert state is not None
    old = state | {"case_id": None, "retired": True, "holders": [], "answered": []}
    rebuilt = RequestBook()
    rebuilt.load([state, old])
    assert rebuilt.requester(REQUEST_ID) is None
    squat = REQUEST | {
        "header": REQUEST["header"]
        | {"source_agency": "oranga-tamariki", "case_id": "SYN-CASE-0002"}
    }
    with pytest.raises(RequestIdInUse):
        rebuilt.apply("InformationRequest", squat, 1)
    mine = REQUEST | {"header": REQUEST["header"] | {"case_id": "SYN-CASE-0002"}}
    assert rebuilt.apply("InformationRequest", mine, 1) is not None  # its own id, anywhere


def test_a_request_whose_case_was_never_learned_is_read_before_the_keyed_ones() -> None:
    """Records under an id alone come first, as the book that wrote them had them: read
    after a keyed request under the same id, a retirement written before v5 (it named no
    case) would end that request too; a record learning its case would load twice."""
    book = RequestBook()
    live = book.apply("InformationRequest", REQUEST, 0)
    assert live is not None
    retired_before = live | {"case_id": None, "retired": True, "holders": [], "answered": []}
    records = [
        _record(0, 0, request_key(REQUEST_ID, "SYN-CASE-0001"), live),  # its own id, again
        _record(1, 0, REQUEST_ID, retired_before),
    ]
    rebuilt = RequestBook()
    rebuilt.load(request_states(records, SCHEMAS))
    assert rebuilt.requester(REQUEST_ID, "SYN-CASE-0001") == "msd"
    assert [(s["requester"], h) for s, h in rebuilt.lapse(NOW + timedelta(days=2)).escalated] == [
        ("msd", "police")
    ]


def test_an_id_holding_the_key_separator_reaches_no_other_request() -> None:
    book = RequestBook()
    assert book.apply("InformationRequest", REQUEST, 0) is not None
    crafted = RESPONSE | {
        "request_id": request_key(REQUEST_ID, "SYN-CASE-0001"),
        "header": RESPONSE["header"] | {"case_id": "SYN-CASE-0009"},
    }
    assert book.apply("InformationResponse", crafted, 0) is None
    assert book.facts(crafted["request_id"], case_id="SYN-CASE-0009", sender="police") is None
    facts = book.facts(REQUEST_ID, case_id="SYN-CASE-0001", sender="police")
    assert facts is not None  # the request stays on its case
    request = REQUEST | {"request_id": f"{REQUEST_ID}\x1fSYN-CASE-0002"}
    with pytest.raises(RequestIdMalformed):
        book.apply("InformationRequest", request, 0)


def test_a_request_is_kept_under_the_route_its_delivery_was_decided_under() -> None:
    """The header's route decides the request's delivery; its answers are decided under the
    same one, not under the request's own field if the two differ."""
    sharing = (REQUEST["header"]["sharing"] or {}) | {"legal_route": "fva_s20"}
    mixed = REQUEST | {"legal_route": "ota_s66", "header": REQUEST["header"] | {"sharing": sharing}}
    book = RequestBook()
    state = book.apply("InformationRequest", mixed, 0)
    assert state is not None
    assert state["legal_route"] == "fva_s20"
