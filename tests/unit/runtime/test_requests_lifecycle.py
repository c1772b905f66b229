"""The request book's deadlines: escalation costs what is due, settled requests are retired
after their retention (and an abort brings them back), a re-sent request keeps what its
holders did, and an escalation's audit record names the request's case."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from broker.codec import decode, encode
from broker.platform import ingress
from broker.runtime import Outcome
from broker.runtime._audit import case_ref
from broker.runtime._cases import CaseMembership
from broker.runtime._pipeline import SCHEMA_HEADER
from broker.runtime._requests import (
    REQUEST_RETENTION,
    RETIRED,
    RequestBook,
    RequestIdInUse,
    request_key,
    state_key,
)
from broker.runtime._service import rebuild_state, request_states
from broker.transport import InMemoryCluster, Record
from tests.unit.runtime.test_intake import NOW, REGISTRY, SCHEMAS
from tests.unit.runtime.test_pipeline import AUDIT, Harness, ScriptedDecider, verdict
from tests.unit.runtime.test_pipeline import sealed_example as _sealed
from tests.unit.runtime.test_policy_decider import _decide, _example, join
from tests.unit.runtime.test_requests import DUE, REQUEST, RESPONSE
from tests.unit.runtime.test_state_refresh import (
    Clock,
    node,
    publish,
    read,
    request,
    response,
    same_as_topics,
    steps,
)

RETIRE = DUE + REQUEST_RETENTION
#: The example request's key: its id and its case.
KEY = request_key("SYN-REQ-0001", "SYN-CASE-0001")
STATE = SCHEMAS.latest("RequestState")
MSD = ingress("msd")


def _request(holders: list[str], event_id: str | None = None) -> dict[str, Any]:
    """The example request (MSD's SYN-REQ-0001) naming ``holders``, under ``event_id``."""
    header = REQUEST["header"] | ({"event_id": event_id} if event_id else {})
    named = [{"agency_id": h, "team": None, "contact_role": None} for h in holders]
    return REQUEST | {"header": header, "holders": named}


def _answer(holder: str) -> dict[str, Any]:
    return RESPONSE | {"header": RESPONSE["header"] | {"source_agency": holder}}


# -- 1. a pass costs what is due ---------------------------------------------------------------


class _Guarded(dict[str, Any]):
    """The book's requests, counting lookups and refusing a walk over all of them."""

    gets = 0

    def get(self, key: str, default: Any = None) -> Any:
        self.gets += 1
        return super().get(key, default)

    def values(self) -> Any:
        raise AssertionError("the pass walked the whole book")

    items = values

    def __iter__(self) -> Iterator[str]:
        raise AssertionError("the pass walked the whole book")


def test_a_pass_looks_only_at_the_requests_that_are_due() -> None:
    """Measured before: every pass walked every request ever made (109 ms at 200,000)."""
    book = RequestBook()
    for i in range(1000):
        later = REQUEST | {
            "request_id": f"SYN-REQ-L{i:04d}",
            "header": REQUEST["header"] | {"event_id": f"later-{i}"},
            "respond_by": DUE + timedelta(days=1),
        }
        book.apply("InformationRequest", later, 0)
    book.apply("InformationRequest", REQUEST, 0)
    guarded = book._requests = _Guarded(book._requests)
    assert [(s["request_id"], h) for s, h in book.lapse(DUE, {(MSD, 0)}).escalated] == [
        ("SYN-REQ-0001", "police")
    ]
    assert guarded.gets == 1
    assert book.lapse(DUE + timedelta(hours=1)).escalated == []
    assert guarded.gets == 1  # nothing is due: nothing is looked at


_IDS = st.sampled_from(["R1", "R2", "R3"])
_AGENCIES = ["police", "health-nz", "corrections"]
_OPS = st.one_of(
    st.tuples(
        st.just("request"),
        _IDS,
        st.sampled_from(["msd", "oranga-tamariki"]),
        st.sets(st.sampled_from(_AGENCIES), min_size=1),
        st.integers(0, 4),  # respond_by, hours after DUE
        st.sampled_from([None, 0, 1]),  # partition (None: a v1 record, loaded)
    ),
    st.tuples(st.just("answer"), _IDS, st.sampled_from(_AGENCIES), st.sampled_from([0, 1])),
    st.tuples(
        st.just("pass"),
        st.sampled_from([0, 2, 5, 24 * 90 + 1, 24 * 90 + 5]),  # hours after DUE
        st.sampled_from(["all", "msd-0", "msd-1", "ot-0"]),
    ),
    st.tuples(st.just("abort")),
    st.tuples(st.just("commit")),
    st.tuples(st.just("reload")),
)
_ASSIGNMENTS: dict[str, frozenset[tuple[str, int]] | None] = {
    "all": None,
    "msd-0": frozenset({(MSD, 0), (ingress("police"), 1)}),
    "msd-1": frozenset({(MSD, 1)}),
    "ot-0": frozenset({(ingress("oranga-tamariki"), 0)}),
}


@settings(max_examples=500, deadline=None)
@given(ops=st.lists(_OPS, min_size=4, max_size=40))
# A v1 record learning its partition from a response; an escalation undone; a retirement and
# its escalation undone; a request re-sent with an earlier deadline.
@example(
    [
        ("request", "R1", "msd", {"police", "health-nz"}, 0, None),
        ("answer", "R1", "police", 1),
        ("pass", 2, "msd-0"),
        ("pass", 2, "msd-1"),
    ]
)
@example(
    [("request", "R1", "msd", {"police"}, 0, 0), ("pass", 2, "all"), ("abort",), ("pass", 5, "all")]
)
@example(
    [
        ("request", "R1", "msd", {"police", "health-nz"}, 0, 0),
        ("answer", "R1", "police", 0),
        ("pass", 2, "all"),
        ("commit",),
        ("pass", 24 * 90 + 1, "all"),
        ("abort",),
        ("pass", 24 * 90 + 5, "all"),
    ]
)
@example(
    [
        ("request", "R1", "msd", {"police"}, 4, 0),
        ("request", "R1", "msd", {"police"}, 0, 0),
        ("pass", 2, "all"),
    ]
)
def test_a_pass_does_what_a_walk_over_the_whole_book_would(ops: list[tuple[Any, ...]]) -> None:
    """Requests made, re-sent, answered (a v1 record learning its partition), escalations
    and retirements undone by aborts, the book rebuilt from its records: each pass escalates
    and retires exactly what looking at every request would."""
    book = RequestBook()
    records: list[dict[str, Any] | str] = []  # the state topic, oldest first
    pending: list[tuple[str, str]] = []  # escalations and retirements not yet committed
    undone = False  # an abort undid some of ``records`` in memory (the worker would re-read)
    sent = 0
    for op in ops:
        if op[0] == "request":
            _, rid, requester, holders, hours, partition = op
            sent += 1
            event = _request(sorted(holders), f"event-{sent}")
            event |= {"request_id": rid, "respond_by": DUE + timedelta(hours=hours)}
            event["header"] = event["header"] | {"source_agency": requester}
            try:
                state = book.apply("InformationRequest", event, partition)
            except RequestIdInUse:
                continue
            if state is not None and partition is None:  # as if read from a v1 record
                state = {k: v for k, v in state.items() if k != "partition"}
                book.load([state])
            records += [state] if state is not None else []
        elif op[0] == "answer":
            _, rid, holder, partition = op
            state = book.apply(
                "InformationResponse", _answer(holder) | {"request_id": rid}, partition
            )
            records += [state] if state is not None else []
        elif op[0] == "pass":
            now, assignment = DUE + timedelta(hours=op[1]), _ASSIGNMENTS[op[2]]
            expected_escalations, expected_retired = set(), set()
            for rid, r in book._requests.items():
                owner = (ingress(r.requester), 0 if r.partition is None else r.partition)
                if assignment is not None and owner not in assignment:
                    continue
                waiting = r.holders - r.answered - r.escalated
                if now >= r.respond_by:
                    expected_escalations |= {(rid, h) for h in waiting}
                # Retired the retention after the later of its deadline and its settling (a
                # holder escalated in this pass settles it now: not retired in this pass).
                settled = r.respond_by if r.settled_at is None else r.settled_at
                if not waiting and now >= max(r.respond_by, settled) + REQUEST_RETENTION:
                    expected_retired.add(rid)
            lapsed = book.lapse(now, assignment)
            assert {(state_key(s), h) for s, h in lapsed.escalated} == expected_escalations
            assert set(lapsed.retired) == expected_retired
            records += [s for s, _ in lapsed.escalated]
            records += lapsed.retired
            pending += [(state_key(s), h) for s, h in lapsed.escalated]
            pending += [(key, RETIRED) for key in lapsed.retired]
        elif op[0] == "abort":
            book.unescalate(pending)
            pending, undone = [], undone or bool(pending)
        elif op[0] == "commit":
            pending = []
            book.forget_retired(())
        else:
            rebuilt = RequestBook()
            rebuilt.load(records)
            if not undone:
                assert {k: r.state() for k, r in rebuilt._requests.items()} == {
                    k: r.state() for k, r in book._requests.items()
                }
            book.replace(rebuilt)
            pending, undone = [], False
    book.lapse(DUE + timedelta(days=1000))  # escalates whoever still waits: settled now
    book.lapse(DUE + timedelta(days=1000) + REQUEST_RETENTION)
    assert book._requests == {}  # every request ends, escalated or answered, then retired


# -- 2. retirement -----------------------------------------------------------------------------


def test_a_settled_request_is_retired_a_retention_period_after_its_deadline() -> None:
    book = RequestBook()
    book.apply("InformationRequest", REQUEST, 0)
    book.apply("InformationResponse", RESPONSE, 0)
    assert book.lapse(RETIRE - timedelta(seconds=1)).retired == []
    assert book.requester("SYN-REQ-0001") == "msd"
    lapsed = book.lapse(RETIRE)
    assert (lapsed.escalated, lapsed.retired) == ([], [KEY])
    assert book.requester("SYN-REQ-0001") is None
    # A late answer now finds no request: it carries no request facts, so the policy denies it.
    assert book.facts("SYN-REQ-0001", case_id="SYN-CASE-0001", sender="police") is None
    assert book.apply("InformationResponse", RESPONSE, 0) is None
    assert book.lapse(RETIRE + timedelta(days=1)).retired == []  # once


def test_a_late_answer_is_routed_to_the_requester_until_the_request_retires() -> None:
    """Police answers MSD's request (LAW 5) after being escalated: the shipped policy sends
    it to MSD; after the request's retention it has no request facts, and is denied."""
    book = RequestBook()
    book.apply("InformationRequest", _example("InformationRequest"), 0)
    book.lapse(DUE)
    answer = _example("InformationResponse")
    answer["header"]["sharing"] = {
        "purpose": "victim_protection",
        "legal_route": "unknown",
        "justification": "Synthetic: sharing will help keep the victim safe.",
        "accountable_role": "Synthetic team leader",
        "consent": "unknown",
        "child_consulted": "unknown",
        "child_not_consulted_reason": None,
        "provenance": "unknown",
    }
    cases = join(CaseMembership(), ["msd", "police"])
    assert _decide("InformationResponse", answer, cases, book)["msd"].outcome is Outcome.SHARE
    assert book.lapse(RETIRE).retired == [KEY]
    assert _decide("InformationResponse", answer, cases, book)["msd"].outcome is Outcome.DENY


def test_an_escalated_holder_may_answer_late_until_the_request_retires() -> None:
    book = RequestBook()
    book.apply("InformationRequest", REQUEST, 0)
    assert [h for _, h in book.lapse(DUE).escalated] == ["police"]
    facts = book.facts("SYN-REQ-0001", case_id="SYN-CASE-0001", sender="police")
    assert facts is not None
    assert facts.requester == "msd"
    late = book.apply("InformationResponse", RESPONSE, 0)
    assert late is not None
    assert (late["answered"], late["escalated"]) == (["police"], ["police"])
    assert book.lapse(RETIRE).retired == [KEY]


def test_a_request_escalated_late_is_kept_a_whole_retention_after_its_escalation() -> None:
    """A first pass long after the deadline (a request made late, a broker down for weeks)
    escalates and settles the request then: it is not retired in the same pass, so a holder
    still has the whole retention to answer late."""
    book = RequestBook()
    book.apply("InformationRequest", REQUEST, 0)
    assert book.lapse(RETIRE).escalated != []  # escalated now: not retired in this pass
    book.unescalate([(KEY, "police")])
    lapsed = book.lapse(RETIRE)
    assert [(s["escalated"], h) for s, h in lapsed.escalated] == [(["police"], "police")]
    assert [s["settled_at"] for s, _ in lapsed.escalated] == [RETIRE]
    assert lapsed.retired == []
    assert book.lapse(RETIRE + REQUEST_RETENTION - timedelta(seconds=1)).retired == []
    assert book.lapse(RETIRE + REQUEST_RETENTION).retired == [KEY]


def test_a_request_answered_after_its_deadline_is_kept_a_retention_after_the_answer() -> None:
    book = RequestBook()
    book.apply("InformationRequest", REQUEST, 0)
    answered_at = RETIRE  # long after respond_by
    state = book.apply("InformationResponse", RESPONSE, 0, answered_at)
    assert state is not None
    assert state["settled_at"] == answered_at
    rebuilt = RequestBook()
    rebuilt.load([state])  # the settling time survives a restart
    for b in (book, rebuilt):
        assert b.lapse(answered_at + REQUEST_RETENTION - timedelta(seconds=1)).retired == []
        assert b.lapse(answered_at + REQUEST_RETENTION).retired == [KEY]


def test_only_the_owner_retires_a_request() -> None:
    book = RequestBook()
    book.apply("InformationRequest", REQUEST, 2)
    book.apply("InformationResponse", RESPONSE, 2)
    assert book.lapse(RETIRE, {(MSD, 1), (ingress("police"), 2)}).retired == []
    assert book.requester("SYN-REQ-0001") == "msd"
    assert book.lapse(RETIRE, {(MSD, 2)}).retired == [KEY]


def test_an_aborted_retirement_and_an_aborted_escalation_are_undone() -> None:
    book = RequestBook()
    book.apply("InformationRequest", REQUEST, 0)
    lapsed = book.lapse(DUE)
    assert (len(lapsed.escalated), lapsed.retired) == (1, [])
    book.unescalate([(KEY, "police")])  # the escalation's transaction aborted
    assert [(r["escalated"], r["settled_at"]) for r in book.open_requests()] == [([], None)]
    assert len(book.lapse(DUE).escalated) == 1  # made again, and this time committed
    book.forget_retired(())
    retired = book.lapse(RETIRE)
    assert retired.retired == [KEY]
    book.unescalate([(KEY, RETIRED)])  # the retirement's transaction aborted
    assert book.requester("SYN-REQ-0001") == "msd"
    assert book.lapse(RETIRE).retired == [KEY]
    book.forget_retired(())  # its transaction committed
    book.unescalate([(KEY, RETIRED)])
    assert book.requester("SYN-REQ-0001") is None


def test_a_retirement_read_back_forgets_the_request_until_it_is_made_again() -> None:
    book = RequestBook()
    first = book.apply("InformationRequest", REQUEST, 0)
    assert first is not None
    gone = RequestBook()
    gone.load([first, "SYN-REQ-0001"])
    assert gone.requester("SYN-REQ-0001") is None
    lapsed = gone.lapse(RETIRE)
    assert (lapsed.escalated, lapsed.retired) == ([], [])
    back = RequestBook()
    back.load([first, "SYN-REQ-0001", first])
    assert back.requester("SYN-REQ-0001") == "msd"


def test_the_state_topic_s_empty_value_forgets_the_id_altogether() -> None:
    """A tombstone (nothing writes one; an operator could, to end a retired id's
    reservation) is read as the id's end."""
    book = RequestBook()
    state = book.apply("InformationRequest", REQUEST, 0)
    assert state is not None
    topic = "tiaki.state.requests"
    header = ((SCHEMA_HEADER, STATE.fingerprint_hex.encode()),)
    records = [
        Record(topic, 0, 0, b"SYN-REQ-0001", encode(STATE, state), header, 0),
        Record(topic, 0, 1, b"SYN-REQ-0001", b"", (), 0),  # as the reader gives a null value
        Record(topic, 0, 2, None, b"", (), 0),  # no key: retires nothing
    ]
    read_back = list(request_states(records, SCHEMAS))
    assert [r if isinstance(r, str) else r["request_id"] for r in read_back] == [
        "SYN-REQ-0001",
        "SYN-REQ-0001",
    ]
    assert isinstance(read_back[1], str)
    rebuilt = RequestBook()
    rebuilt.load(read_back)
    assert rebuilt.requester("SYN-REQ-0001") is None


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _pipeline_with_request(respond_by: str) -> Harness:
    harness = Harness(ScriptedDecider([verdict("police", Outcome.DENY)]))
    record = _sealed(harness, "InformationRequest", "msd", respond_by=respond_by)
    assert harness.pipeline.process(record, NOW).quarantine_reason is None
    return harness


def test_the_pipeline_writes_a_retirement_and_undoes_it_on_abort() -> None:
    harness = _pipeline_with_request(_iso(NOW + timedelta(days=1)))
    pipeline = harness.pipeline
    due = NOW + timedelta(days=1)
    escalated = pipeline.escalations(due)
    assert [o.topic for o in escalated] == ["tiaki.state.requests", "tiaki.audit"]
    pipeline.committed()
    retire = due + REQUEST_RETENTION
    assert pipeline.escalations(retire - timedelta(seconds=1)) == []
    outputs = pipeline.escalations(retire)
    assert [(o.topic, o.key) for o in outputs] == [("tiaki.state.requests", KEY.encode())]
    assert outputs[0].value is not None
    record = decode(outputs[0].value, STATE)
    assert (record["retired"], record["requester"], record["holders"]) == (True, "msd", [])
    # Nothing kept but what keys it: its id and its case.
    assert (record["case_id"], record["requester_role"]) == ("SYN-CASE-0001", "unknown")
    assert pipeline.requests.requester("SYN-REQ-0001") is None
    settled = pipeline.mark()[1]
    pipeline.aborted()
    assert pipeline.requests.requester("SYN-REQ-0001") == "msd"
    assert [r["escalated"] for r in pipeline.requests.open_requests()] == [["police"]]
    again = pipeline.escalations(retire)
    assert again == outputs
    assert pipeline.mark()[1] == settled + 1  # the retirement
    pipeline.committed()
    assert pipeline.escalations(retire) == []
    assert pipeline.requests._retiring == {}  # its transaction settled: nothing kept aside
    pipeline.aborted()  # nothing uncommitted: the retirement stands
    assert pipeline.requests.requester("SYN-REQ-0001") is None


async def test_a_worker_retires_a_request_on_the_state_topic_after_a_failed_commit_too() -> None:
    cluster = InMemoryCluster.provisioned(REGISTRY.ids)
    clock = Clock()
    n = node(cluster, clock=clock)
    await publish(cluster, request(due=timedelta(minutes=30)), response())
    async with n.worker:
        await steps(n.worker, 2)
        clock.now = NOW + timedelta(minutes=30) + REQUEST_RETENTION
        cluster.fail_next_commit()
        assert await steps(n.worker, 1) == 0
        assert n.worker.statistics().aborted == 1
        assert n.requests.requester("SYN-REQ-0001") == "msd"  # the retirement was undone
        await steps(n.worker, 1)  # the re-read, and the retirement again
    records = await read(cluster, "tiaki.state.requests")
    assert [r.key for r in records[-1:]] == [KEY.encode()]
    assert decode(records[-1].value, STATE)["retired"] is True
    assert n.requests.requester("SYN-REQ-0001") is None
    fresh = await rebuild_state(cluster.reader(), SCHEMAS)
    assert fresh.requests.requester("SYN-REQ-0001") is None
    await same_as_topics(cluster, n)


# -- 3. a re-sent request --------------------------------------------------------------------


def test_a_request_sent_again_keeps_what_the_holders_it_still_names_did() -> None:
    book = RequestBook()
    book.apply("InformationRequest", _request(["police", "health-nz"]), 0)
    book.apply("InformationResponse", _answer("police"), 0)
    assert [h for _, h in book.lapse(DUE).escalated] == ["health-nz"]
    again = book.apply(
        "InformationRequest", _request(["police", "health-nz", "corrections"], "again-1"), 0
    )
    assert again is not None
    assert (again["answered"], again["escalated"]) == (["police"], ["health-nz"])
    assert [h for _, h in book.lapse(DUE).escalated] == ["corrections"]
    narrowed = book.apply("InformationRequest", _request(["corrections"], "again-2"), 0)
    assert narrowed is not None
    assert (narrowed["holders"], narrowed["answered"], narrowed["escalated"]) == (
        ["corrections"],
        [],
        ["corrections"],
    )


def test_a_request_sent_again_with_a_later_deadline_escalates_at_that_one() -> None:
    book = RequestBook()
    book.apply("InformationRequest", REQUEST, 0)
    later = _request(["police"], "again-1") | {"respond_by": DUE + timedelta(days=2)}
    book.apply("InformationRequest", later, 0)
    assert book.lapse(DUE + timedelta(days=1)).escalated == []
    assert len(book.lapse(DUE + timedelta(days=2)).escalated) == 1
    sooner = _request(["corrections"], "again-2") | {"respond_by": DUE - timedelta(days=1)}
    book.apply("InformationRequest", sooner, 0)
    assert [h for _, h in book.lapse(DUE - timedelta(days=1)).escalated] == ["corrections"]


def test_a_v1_record_escalates_on_the_partition_a_response_teaches_it() -> None:
    book = RequestBook()
    state = book.apply("InformationRequest", _request(["police", "health-nz"]), 0)
    assert state is not None
    old = RequestBook()
    old.load([{k: v for k, v in state.items() if k != "partition"}])
    old.apply("InformationResponse", _answer("police"), 2)
    assert old.lapse(DUE, {(MSD, 0)}).escalated == []  # no longer partition 0's
    assert [h for _, h in old.lapse(DUE, {(MSD, 2)}).escalated] == ["health-nz"]


# -- the escalation's audit record -------------------------------------------------------------


def test_an_escalation_is_audited_under_the_case_its_decisions_are() -> None:
    harness = _pipeline_with_request(_iso(NOW + timedelta(days=1)))
    audits = [
        o
        for o in harness.pipeline.process(
            _sealed(harness, "FamilyHarmEpisodeReport", "police"), NOW
        ).outputs
        if o.topic == "tiaki.audit"
    ]
    decision = decode(audits[0].value, AUDIT)
    expected = case_ref(b"synthetic-test-audit-key-000000", "SYN-CASE-0001")
    assert decision["case_ref"] == expected
    outputs = harness.pipeline.escalations(NOW + timedelta(days=1))
    audit = next(o for o in outputs if o.topic == "tiaki.audit")
    escalation = decode(audit.value, AUDIT)
    assert (escalation["action"], escalation["case_ref"]) == ("escalation", expected)
    assert audit.key == audits[0].key == expected.encode()  # one partition, in order


def test_an_escalation_of_a_request_whose_case_is_unknown_names_none() -> None:
    harness = Harness(ScriptedDecider())
    state = RequestBook().apply("InformationRequest", REQUEST, 0)
    assert state is not None
    harness.pipeline.requests.load([{k: v for k, v in state.items() if k != "case_id"}])
    audit = next(o for o in harness.pipeline.escalations(DUE) if o.topic == "tiaki.audit")
    assert decode(audit.value, AUDIT)["case_ref"] is None
    assert audit.key == b"SYN-REQ-0001"


# -- 4. a retired id stays its requester's (review of 7 December) -----------------------------


def test_a_retired_id_is_refused_to_another_agency_so_late_answers_cannot_reach_it() -> None:
    """Were the id free after retirement, another agency's request under it, on the same case
    and naming the same holder, would collect that holder's late answer to the first one."""
    book = RequestBook()
    book.apply("InformationRequest", REQUEST, 0)
    lapsed = book.lapse(DUE)  # police escalated, the request settled
    assert len(lapsed.escalated) == 1
    retired = book.lapse(RETIRE)
    assert retired.retired == [KEY]
    squat = REQUEST | {"header": REQUEST["header"] | {"source_agency": "oranga-tamariki"}}
    squat["header"] = squat["header"] | {"event_id": "00000000-0000-4000-8000-0000000000ff"}
    with pytest.raises(RequestIdInUse):
        book.apply("InformationRequest", squat, 0)
    case = str(REQUEST["header"]["case_id"])
    assert book.facts("SYN-REQ-0001", case_id=case, sender="police") is None
    rebuilt = RequestBook()  # the reservation survives a restart, from the retirement record
    rebuilt.load([retired.retirements[0]])
    with pytest.raises(RequestIdInUse):
        rebuilt.apply("InformationRequest", squat, 0)
    again = REQUEST | {
        "header": REQUEST["header"] | {"event_id": "00000000-0000-4000-8000-0000000000fe"}
    }
    state = rebuilt.apply("InformationRequest", again, 0)  # its requester may use it again
    assert state is not None
    assert (state["answered"], state["escalated"], state["retired"]) == ([], [], False)


def test_a_request_sent_again_about_another_case_starts_afresh() -> None:
    book = RequestBook()
    book.apply("InformationRequest", REQUEST, 0)
    book.apply("InformationResponse", RESPONSE, 0, NOW)
    other = REQUEST | {
        "header": REQUEST["header"]
        | {"case_id": "SYN-CASE-0999", "event_id": "00000000-0000-4000-8000-0000000000fd"}
    }
    state = book.apply("InformationRequest", other, 1)
    assert state is not None
    assert (state["answered"], state["settled_at"]) == ([], None)  # nobody answered this one
    assert len(book.lapse(DUE).escalated) == 1


def test_the_book_keeps_the_route_a_request_was_made_under_and_its_answers_carry_it() -> None:
    """OT-05: an answer is decided under its request's route (RequestState v5), read back
    from the state topic too; a record written before v5 gives ``unknown``, so the answer's
    own header route stands."""
    s66 = REQUEST | {"legal_route": "ota_s66"}
    book = RequestBook()
    state = book.apply("InformationRequest", s66, 0)
    assert state is not None
    assert state["legal_route"] == "ota_s66"
    holder = REQUEST["holders"][0]["agency_id"]
    case = REQUEST["header"]["case_id"]
    facts = book.facts("SYN-REQ-0001", case_id=case, sender=holder)
    assert facts is not None
    assert facts.legal_route == "ota_s66"
    written = encode(STATE, state)
    again = RequestBook()
    again.load([decode(written, STATE)])
    assert again.facts("SYN-REQ-0001", case_id=case, sender=holder) == facts
    v4 = SCHEMAS.versions("RequestState")[3]
    old = {k: v for k, v in state.items() if k != "legal_route"}
    before = RequestBook()
    before.load([decode(encode(v4, old), v4, STATE)])
    found = before.facts("SYN-REQ-0001", case_id=case, sender=holder)
    assert found is not None
    assert found.legal_route == "unknown"


def test_an_answer_quarantined_for_a_policy_fault_leaves_its_holder_waiting() -> None:
    """The requester never got the answer: the holder is not counted as having answered, so
    the request is escalated at its deadline unless the holder answers again (FVA s24)."""
    decider = ScriptedDecider()
    harness = Harness(decider)
    pipeline = harness.pipeline
    asked = pipeline.process(_sealed(harness, "InformationRequest", "msd"), NOW)
    assert asked.quarantine_reason is None
    decider.error = RuntimeError("synthetic policy fault")
    answer = pipeline.process(_sealed(harness, "InformationResponse", "police"), NOW)
    assert answer.quarantine_reason == "policy_error"
    states = [
        decode(o.value or b"", STATE) for o in answer.outputs if o.topic == "tiaki.state.requests"
    ]
    assert [s["answered"] for s in states] == [[]]  # what the state topic says, as memory
    escalated = pipeline.requests.lapse(DUE).escalated
    assert [holder for _, holder in escalated] == ["police"]
    # Answered again, and delivered this time: answered, and never escalated after.
    decider.error = None
    book = RequestBook()
    book.apply("InformationRequest", REQUEST)
    book.apply("InformationResponse", RESPONSE)
    assert book.unanswer(RESPONSE) is not None
    assert book.unanswer(RESPONSE) is None  # nothing left to undo
    assert book.apply("InformationResponse", RESPONSE) is not None
    assert book.lapse(DUE + timedelta(days=3)).escalated == []
