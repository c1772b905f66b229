"""``tiaki hub publish``'s parts: counting the tallies as the compacted topic holds them,
sealing the table to each hub, its audit records, and refusing what it must not publish."""

from __future__ import annotations

import datetime as dt
import os
from typing import Any

import pytest

from broker.aggregate._publish import (
    Approval,
    HubError,
    check_person,
    check_request,
    count,
    counts_digest,
    previous_month,
    publish,
    rounding_key,
)
from broker.codec import decode, encode
from broker.envelope import Algorithm, Kind, Opener, Sealer
from broker.platform import STATE_TALLIES
from broker.runtime._audit import AuditContext
from broker.transport import Record
from tests.unit.runtime.test_intake import REGISTRY, SCHEMAS, make_ring

NOW = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
TALLY = SCHEMAS.latest("Tally")
KEY = rounding_key(b"synthetic-subject-key-not-for-production-0000")


def tally(key: bytes, authority: str, group: str, month: str = "2026-11", **more: Any) -> Record:
    value = {
        "measure": "family_harm_episodes",
        "month": month,
        "region": "canterbury",
        "territorial_authority": authority,
        "ethnicity_group": group,
        "recorded_at": NOW,
    } | more
    return Record(STATE_TALLIES, 0, 0, key, encode(TALLY, value), (), 0)


def test_counting_takes_each_units_last_record_and_drops_tombstones() -> None:
    records = [
        tally(b"a", "Christchurch City", "1"),
        tally(b"a", "Christchurch City", "2"),  # the same unit, re-reported: counted once
        tally(b"b", "Christchurch City", "2"),
        tally(b"c", "Hurunui District", "3"),
        Record(STATE_TALLIES, 0, 0, b"c", b"", (), 0),  # its count ended
        tally(b"d", "Christchurch City", "2", month="2026-10"),  # another month
        tally(b"e", "Christchurch City", "2", region="waikato"),  # another region
        Record(STATE_TALLIES, 0, 0, b"f", b"\x00garbage", (), 0),
    ]
    counts, unreadable = count(
        records, SCHEMAS, region="canterbury", month="2026-11", measure="family_harm_episodes"
    )
    assert counts == {("Christchurch City", "Māori"): 2}
    assert unreadable == 1


def test_the_table_is_sealed_to_each_hub_and_audited_under_the_people_who_acted() -> None:
    ring = make_ring()
    for algorithm in Algorithm:
        ring.generate("canterbury-hub", algorithm, NOW - dt.timedelta(days=1), os.urandom)
    counts = {("Christchurch City", "European"): 8, ("Christchurch City", "Māori"): 15}
    kwargs: dict[str, Any] = {
        "region": "canterbury",
        "month": "2026-11",
        "measure": "family_harm_episodes",
        "hubs": ["canterbury-hub"],
        "operator": "Operator (synthetic)",
        "justification": "monthly hub report",
        "key": KEY,
        "schemas": SCHEMAS,
        "sealer": Sealer("broker", ring),
        "context": AuditContext(b"synthetic-subject-key-not-for-production-0000", None),
        "now": NOW,
    }
    withheld = publish(counts, approval=None, **kwargs)
    assert withheld.governance == "withheld"
    hub_records = [o for o in withheld.outputs if o.topic == "tiaki.hub.canterbury"]
    audits = [
        decode(o.value or b"", SCHEMAS.latest("AuditRecord"))
        for o in withheld.outputs
        if o.topic == "tiaki.audit"
    ]
    (sealed,) = hub_records
    opened = Opener("canterbury-hub", ring).open(
        sealed.value or b"", topic="tiaki.hub.canterbury", now=NOW, kind=Kind.EGRESS
    )
    table = decode(opened.payload, SCHEMAS.latest("AggregateTable"))
    cells = {(c["row"], c["column"]): (c["value"], c["suppressed"]) for c in table["cells"]}
    assert cells["Christchurch City", "Māori"] == (None, "G")
    assert cells["total", "Māori"] == (None, "G")
    ((audit),) = audits
    assert (audit["action"], audit["actor"], audit["recipient"]) == (
        "decision",
        "Operator (synthetic)",
        "canterbury-hub",
    )
    assert "maori_breakdown_withheld" in audit["reason_codes"]
    approved = publish(counts, approval=Approval("Kaitiaki (synthetic)", "minute 12"), **kwargs)
    actors = [
        decode(o.value or b"", SCHEMAS.latest("AuditRecord"))["actor"]
        for o in approved.outputs
        if o.topic == "tiaki.audit"
    ]
    assert actors == ["Operator (synthetic)", "Kaitiaki (synthetic)"]
    assert approved.table.cells["Christchurch City", "Māori"].suppressed is None
    # Publishing again gives the same figures: the rounding is fixed, not drawn afresh.
    again = publish(counts, approval=Approval("Kaitiaki (synthetic)", "minute 12"), **kwargs)
    assert again.table == approved.table


@pytest.mark.parametrize(
    ("region", "month", "measure", "message"),
    [
        (
            "otago",
            "2026-11",
            "family_harm_episodes",
            "no regional hub is registered for region 'otago'",
        ),
        ("canterbury", "2026-13", "family_harm_episodes", "--month must be YYYY-MM"),
        ("canterbury", "Nov 2026", "family_harm_episodes", "--month must be YYYY-MM"),
        ("canterbury", "2026-11", "episodes", "unknown measure 'episodes'"),
    ],
)
def test_a_request_it_cannot_publish_is_refused(
    region: str, month: str, measure: str, message: str
) -> None:
    with pytest.raises(HubError, match=message):
        check_request(REGISTRY, ["repeat_episode_12_months"], region, month, measure)


def test_indicator_measures_are_taken() -> None:
    hubs = check_request(
        REGISTRY,
        ["repeat_episode_12_months"],
        "canterbury",
        "2026-11",
        "indicator:repeat_episode_12_months",
    )
    assert hubs == ("canterbury-hub",)


@pytest.mark.parametrize(
    ("name", "reasons", "message"),
    [
        ("", "monthly report", "name is needed"),
        ("Operator", " ", "reasons are needed"),
        ("Operator", "for the victim NHI ZZZ0016", "personal identifier"),
        ("Operator", "born 12/03/2001", "personal identifier"),
    ],
)
def test_a_person_and_their_reasons_are_checked(name: str, reasons: str, message: str) -> None:
    with pytest.raises(HubError, match=message):
        check_person("operator", name, reasons)


@pytest.mark.parametrize(
    ("now", "month"),
    [
        (dt.datetime(2026, 12, 2, 3, tzinfo=dt.UTC), "2026-11"),
        (dt.datetime(2027, 1, 2, 3, tzinfo=dt.UTC), "2026-12"),  # across the year
        # 14:00 UTC on 31 January is already 1 February in New Zealand (NZDT, UTC+13).
        (dt.datetime(2027, 1, 31, 14, tzinfo=dt.UTC), "2027-01"),
        (dt.datetime(2027, 1, 31, 10, tzinfo=dt.UTC), "2026-12"),
    ],
)
def test_last_month_is_the_month_before_in_new_zealand(now: dt.datetime, month: str) -> None:
    assert previous_month(now) == month


def test_a_publications_audit_record_names_its_counts_by_a_keyed_digest() -> None:
    """Two releases of one table (withheld, then approved) protect each other only if made
    from the same counts: compliance can tell from the audit records, seeing no count."""
    a = {("Christchurch City", "European"): 8, ("Christchurch City", "Māori"): 15}
    b = a | {("Christchurch City", "Māori"): 16}
    assert counts_digest(a, KEY) == counts_digest(dict(reversed(list(a.items()))), KEY)
    assert counts_digest(a, KEY) == counts_digest(a | {("Hurunui District", "Asian"): 0}, KEY)
    assert counts_digest(a, KEY) != counts_digest(b, KEY)
    assert counts_digest(a, KEY) != counts_digest(a, rounding_key(b"another-synthetic-key-0000"))
