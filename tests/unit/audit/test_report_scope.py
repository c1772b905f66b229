"""Whose disclosures a subject report lists, and of which classes (IPP 6).

An event id is unique only within its source, and within it only for a day (the replay cache
forgets it after that): a review record found through the decision that held an item about
a person must come from that decision's source, and must name nobody (one that names people
says whom it is about). The stated grounds of an event are one source's too. A field path
that picks list items (``people[role=child].person.date_of_birth``) has the class of the
field it reaches in every item. Every person and text here is synthetic.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from broker._cli import main
from broker.audit import AuditIndex, LogEntry
from broker.audit._index import Row
from broker.audit._report import classified_path, classifier, subject_report
from broker.codec import SchemaSet, encode
from broker.runtime._audit import grounds_ref, subject_ref

from .conftest import PERSON, SUBJECT_KEY, T0, event_id, person_ref
from .test_cli import export
from .test_cli import home as home
from .test_postgres import pg_url as pg_url
from .test_postgres import url as url

#: The other synthetic person, whose disclosures must never be in :data:`PERSON`'s report.
OTHER = subject_ref(SUBJECT_KEY, "nhi", "ZZZ0024")
#: The one event id two sources used (or one source used twice, a day apart).
SHARED_ID = event_id(77)


def record(n: int, action: str, **fields: Any) -> dict[str, Any]:
    """Synthetic audit record ``n`` (``n`` minutes after T0)."""
    return {
        "audit_id": str(event_id(1000 + n)),
        "recorded_at": T0 + timedelta(minutes=n),
        "action": action,
        "actor": "broker",
        "event_id": SHARED_ID,
        "event_type": "CaseAllocation",
        "source_agency": "police",
    } | fields


def held(n: int, subject: str, **fields: Any) -> dict[str, Any]:
    """A decision that held the event for health-nz, about ``subject``."""
    return record(
        n,
        "decision",
        subject_refs=[subject],
        decisions=[
            {
                "recipient": "health-nz",
                "outcome": "review",
                "rule_ids": ["SYN-HOLD"],
                "field_actions": {"header.case_id": "keep"},
            }
        ],
        **fields,
    )


def approved(n: int, names: list[str], **fields: Any) -> dict[str, Any]:
    """A reviewer's release of the item held for health-nz, naming ``names``."""
    return record(
        n,
        "review",
        recipient="health-nz",
        outcome="approve",
        legal_basis="fva_s20",
        purpose="fv_risk_needs_assessment",
        route="fva_s20",
        rule_ids=["SYN-HOLD"],
        field_actions={"header.case_id": "keep"},
        subject_refs=names,
        **fields,
    )


def entries(schemas: SchemaSet, records: list[dict[str, Any]]) -> list[LogEntry]:
    schema = schemas.latest("AuditRecord")
    header = (("tiaki-schema", schema.fingerprint_hex.encode()),)
    return [
        LogEntry("tiaki.audit", 0, i, None, encode(schema, r), header, 0)
        for i, r in enumerate(records)
    ]


def report_of(
    tmp_path: Path, schemas: SchemaSet, records: list[dict[str, Any]], db: str | None = None
) -> list[Row]:
    with AuditIndex.open(db or tmp_path / "index.sqlite", schemas) as index:
        index.add(entries(schemas, records))
        return index.about(person_ref())


def released(rows: list[Row]) -> list[tuple[str | None, str | None, str | None]]:
    """(source, recipient, outcome) of every review record among ``rows``."""
    return [(r.source_agency, r.recipient, r.outcome) for r in rows if r.action == "review"]


def test_another_sources_release_under_the_same_event_id_is_not_in_the_report(
    tmp_path: Path, schemas: SchemaSet
) -> None:
    """Police held its event about the person, MSD held its own event, with the same id, about
    someone else; both releases are from before held items carried their subjects (they name
    nobody). Only police's release is the person's."""
    rows = report_of(
        tmp_path,
        schemas,
        [
            held(1, person_ref()),
            held(2, OTHER, source_agency="msd"),
            approved(3, [], source_agency="msd"),
            approved(4, []),
        ],
    )
    assert released(rows) == [("police", "health-nz", "approve")]
    (disclosure,) = subject_report(rows, classifier(schemas))
    assert (disclosure.source_agency, disclosure.via) == ("police", "review")


@pytest.mark.xdist_group("postgres")
def test_on_postgres_too_only_the_holding_sources_release_naming_nobody_is_found(
    pg_url: str, tmp_path: Path, schemas: SchemaSet
) -> None:
    rows = report_of(
        tmp_path,
        schemas,
        [
            held(1, person_ref()),
            held(2, OTHER, source_agency="msd"),
            approved(3, [], source_agency="msd"),
            approved(4, [OTHER]),
            approved(5, []),
        ],
        db=pg_url,
    )
    assert [(r.source_agency, r.recorded_at) for r in rows if r.action == "review"] == [
        ("police", T0 + timedelta(minutes=5))
    ]


def test_a_release_that_names_someone_else_is_not_in_the_report(
    tmp_path: Path, schemas: SchemaSet
) -> None:
    """Police used the id again a day later, for an event about someone else, held for the
    same recipient and released by a broker that names the subjects: that release says whom
    it is about, and it is not the person."""
    day = 24 * 60
    rows = report_of(
        tmp_path,
        schemas,
        [held(1, person_ref()), held(day, OTHER), approved(day + 1, [OTHER])],
    )
    assert released(rows) == []
    assert subject_report(rows, classifier(schemas)) == []


def test_the_persons_own_release_naming_nobody_is_still_found(
    tmp_path: Path, schemas: SchemaSet
) -> None:
    rows = report_of(tmp_path, schemas, [held(1, person_ref()), approved(2, [])])
    assert released(rows) == [("police", "health-nz", "approve")]


def test_grounds_are_read_for_one_source_of_an_event_id(tmp_path: Path, schemas: SchemaSet) -> None:
    stated = {
        "police": grounds_ref(SUBJECT_KEY, "justification", "SYN police grounds"),
        "msd": grounds_ref(SUBJECT_KEY, "justification", "SYN msd grounds"),
    }
    records = [
        held(1, person_ref(), justification_ref=stated["police"]),
        held(2, OTHER, source_agency="msd", justification_ref=stated["msd"]),
    ]
    with AuditIndex.open(tmp_path / "index.sqlite", schemas) as index:
        index.add(entries(schemas, records))
        assert [g.source_agency for g in index.grounds(SHARED_ID)] == ["police", "msd"]
        for source, ref in stated.items():
            assert [g.justification_ref for g in index.grounds(SHARED_ID, source)] == [ref]
        assert index.grounds(SHARED_ID, "corrections") == []


GROUNDS = ["--justification", "SYN police grounds", "--accountable", "SYN coordinator"]


def test_tiaki_audit_grounds_asks_which_source_when_two_used_the_event_id(
    home: Path, schemas: SchemaSet, capsys: pytest.CaptureFixture[str]
) -> None:
    """Police's grounds match what police stated; MSD's event with the same id has other
    grounds, which once made the answer "DOES NOT match" (exit 1) about police's disclosure."""
    accountable = grounds_ref(SUBJECT_KEY, "accountable", "SYN coordinator")
    records = [
        held(
            1,
            person_ref(),
            justification_ref=grounds_ref(SUBJECT_KEY, "justification", "SYN police grounds"),
            accountable_ref=accountable,
        ),
        held(
            2,
            OTHER,
            source_agency="msd",
            justification_ref=grounds_ref(SUBJECT_KEY, "justification", "SYN msd grounds"),
            accountable_ref=accountable,
        ),
    ]
    path = export(home / "log.jsonl", entries(schemas, records))
    assert main(["audit", "index", "--file", str(path)]) == 0
    capsys.readouterr()

    assert main(["audit", "grounds", SHARED_ID, *GROUNDS]) == 1
    err = capsys.readouterr().err
    assert err == (
        f"tiaki: error: event {SHARED_ID} was published by more than one source (msd, police): "
        "give the one in question with --source\n"
    )

    assert main(["audit", "grounds", SHARED_ID, "--source", "police", *GROUNDS]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    assert "from police): justification matches, accountable matches" in out

    assert main(["audit", "grounds", SHARED_ID, "--source", "corrections", *GROUNDS]) == 1
    assert f"no decision about event '{SHARED_ID}' from corrections" in capsys.readouterr().err

    assert main(["audit", "access-log", "--format", "json"]) == 0
    asked = [a["query"] for a in json.loads(capsys.readouterr().out)[1:]]
    assert [json.loads(q) for q in asked] == [
        {"event_id": SHARED_ID},
        {"event_id": SHARED_ID, "source": "police"},
        {"event_id": SHARED_ID, "source": "corrections"},
    ]


def test_a_subject_report_from_the_command_line_lists_one_sources_release(
    home: Path, schemas: SchemaSet, capsys: pytest.CaptureFixture[str]
) -> None:
    records = [
        held(1, person_ref()),
        held(2, OTHER, source_agency="msd"),
        approved(3, [], source_agency="msd"),
    ]
    path = export(home / "log.jsonl", entries(schemas, records))
    assert main(["audit", "index", "--file", str(path)]) == 0
    capsys.readouterr()
    assert main(["audit", "subject-report", PERSON, "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == []  # police's item was never released


# -- the classes of a path that picks list items -----------------------------------------------


@pytest.mark.parametrize(
    ("path", "plain"),
    [
        ("people[role=child].person.date_of_birth", "people[].person.date_of_birth"),
        ("people[role=child|other_whanau].person.given_names", "people[].person.given_names"),
        ("people[role= child | victim ].role", "people[].role"),
        ("people[].person.date_of_birth", "people[].person.date_of_birth"),
        ("header.case_id", "header.case_id"),
    ],
)
def test_an_item_selector_is_read_as_the_list_it_picks_from(path: str, plain: str) -> None:
    assert classified_path(path) == plain


def test_a_field_released_for_some_list_items_has_its_schema_class(schemas: SchemaSet) -> None:
    """A policy's item selector (``people[role=child].person: drop``) gives the decision's
    field actions paths with the selector in them: the report once called them
    "unclassified", and a child's date of birth was not reported as identifying."""
    episode = schemas.latest("FamilyHarmEpisodeReport")
    row = Row(
        recorded_at=T0,
        action="decision",
        event_type="FamilyHarmEpisodeReport",
        event_id=event_id(5),
        source_agency="police",
        recipient="corrections",
        outcome="share",
        route="fva_s20",
        legal_basis="fva_s20",
        purpose="fv_risk_needs_assessment",
        person_told=None,
        rule_ids=("SYN-1",),
        reason_codes=(),
        field_actions={
            "header.case_id": "keep",
            "people[role=child].person.date_of_birth": "generalise",
            "people[role=child].role": "keep",
            "people[role=victim|other_whanau].person.date_of_birth": "drop",
        },
        schema_fingerprint=episode.fingerprint_hex,
        partition=0,
        offset=0,
    )
    (disclosure,) = subject_report([row], classifier(schemas))
    assert disclosure.classes == ("identifier", "operational", "risk")
