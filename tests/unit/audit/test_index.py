"""The audit index: rows per (record, decision), queries, idempotent resumption, the subject
report and the chained access log."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from broker.audit import (
    AuditIndex,
    IndexFailure,
    LogEntry,
    LogTampered,
    Query,
    QueryError,
    index_rows,
)
from broker.audit._index import LAYOUT
from broker.audit._report import classifier, subject_report
from broker.codec import SchemaSet
from broker.envelope import KeyRing

from .conftest import T0, build_log, event_id, person_ref


def entry(partition: int = 0, offset: int = 0) -> LogEntry:
    return LogEntry("tiaki.audit", partition, offset, None, b"", (), 0)


def test_a_decision_record_becomes_one_row_per_candidate_recipient() -> None:
    record = {
        "audit_id": "a",
        "recorded_at": T0,
        "action": "decision",
        "event_type": "FamilyHarmEpisodeReport",
        "source_agency": "police",
        "recipient": None,
        "outcome": None,
        "subject_refs": ["s1", "s2"],
        "decisions": [
            {
                "recipient": "corrections",
                "outcome": "share",
                "legal_basis": "fva_s20",
                "rule_ids": ["R1"],
                "reason_codes": [],
                "obligations": [],
                "field_actions": {"a": "keep"},
            },
            {
                "recipient": "msd",
                "outcome": "deny",
                "rule_ids": [],
                "reason_codes": ["no_basis"],
                "obligations": [],
                "field_actions": {},
            },
        ],
    }
    row, decisions, subjects = index_rows(entry(1, 7), record, "ab")
    assert row[1:3] == (1, 7)
    assert [(d[1], d[6], d[7]) for d in decisions] == [
        (0, "corrections", "share"),
        (1, "msd", "deny"),
    ]
    assert subjects == [("s1", row[0]), ("s2", row[0])]


def test_a_single_recipient_record_becomes_one_row() -> None:
    record = {
        "audit_id": "b",
        "recorded_at": T0,
        "action": "review",
        "recipient": "health-nz",
        "outcome": "approve",
        "decisions": [],
        "subject_refs": [],
    }
    _, decisions, _ = index_rows(entry(), record, "ab")
    assert [(d[1], d[6], d[7]) for d in decisions] == [(-1, "health-nz", "approve")]


@pytest.fixture
def index(tmp_path: Path, ring: KeyRing, schemas: SchemaSet) -> Iterator[AuditIndex]:
    with AuditIndex.open(tmp_path / "index.sqlite", schemas) as idx:
        idx.add(build_log(ring, schemas, records=60).audit)
        yield idx


def test_indexing_is_idempotent_and_resumes(
    index: AuditIndex, ring: KeyRing, schemas: SchemaSet
) -> None:
    assert index.count()[0] == 60
    log = build_log(ring, schemas, records=60)
    assert index.add(log.audit) == 0
    assert index.count()[0] == 60


def test_queries_by_person_recipient_type_basis_outcome_and_time(index: AuditIndex) -> None:
    mine = index.query(Query(subject_ref=person_ref()))
    assert len(mine) == 12  # every fifth of 60
    assert {r.event_id for r in mine} == {event_id(n) for n in range(0, 60, 5)}
    shares = index.query(Query(recipient="corrections", outcome="share"))
    assert len(shares) == 20
    assert len(index.query(Query(legal_basis="fva_s20", event_type="CaseAllocation"))) == 20
    assert len(index.query(Query(subject_ref=person_ref(), outcome="share"))) == 4
    # the synthetic log records one second per batch of 7, starting at T0 + 1 s
    early = index.query(Query(until_ms=int((T0 + timedelta(seconds=2)).timestamp() * 1000)))
    assert len(early) == 7
    assert index.query(Query(subject_ref="0" * 64)) == []
    with pytest.raises(QueryError):
        index.query(Query(limit=0))


def test_a_person_query_agrees_with_the_decision_rows_it_reads_from_the_records(
    index: AuditIndex,
) -> None:
    """Person queries read decisions from the records' bytes, the others from the decision
    table: for every filter both must give the same rows in the same order."""
    everything = index.query(Query(limit=10_000))
    mine_ids = {(r.partition, r.offset) for r in index.query(Query(subject_ref=person_ref()))}
    assert mine_ids
    since = int((T0 + timedelta(seconds=3)).timestamp() * 1000)
    for q in (
        Query(),
        Query(recipient="corrections"),
        Query(outcome="deny"),
        Query(legal_basis="fva_s20", event_type="CaseAllocation"),
        Query(source="police", action="decision", since_ms=since),
        Query(until_ms=since),
    ):
        by_table = [r for r in index.query(q) if (r.partition, r.offset) in mine_ids]
        by_person = index.query(Query(**{**vars(q), "subject_ref": person_ref()}))
        assert by_person == by_table, q
    assert len(everything) > len(index.query(Query(recipient="corrections")))
    assert (
        index.query(Query(subject_ref=person_ref(), limit=3))
        == index.query(Query(subject_ref=person_ref()))[:3]
    )


def _old_layout(path: Path, index: AuditIndex) -> None:
    index._db.execute("DROP TABLE layout")  # as an index from before layouts were kept


def _short_value_log(path: Path, index: AuditIndex) -> None:
    index.close()
    values = Path(f"{path}.values")
    values.write_bytes(values.read_bytes()[:-10])  # a lost tail


@pytest.mark.parametrize(
    ("damage", "refusal"),
    [
        (_old_layout, r"layout 0 .* run `tiaki audit index` to rebuild"),
        (_short_value_log, r"value log is shorter .* run `tiaki audit index` to rebuild"),
    ],
)
def test_an_index_of_an_earlier_layout_or_short_values_is_refused_then_rebuilt(
    tmp_path: Path,
    ring: KeyRing,
    schemas: SchemaSet,
    damage: Callable[[Path, AuditIndex], None],
    refusal: str,
) -> None:
    """Queries refuse such an index with the fix; ``tiaki audit index`` (``rebuild``) fills
    it again from the topic, keeping its access log."""
    path = tmp_path / "index.sqlite"
    log = build_log(ring, schemas, records=30)
    with AuditIndex.open(path, schemas) as index:
        index.add(log.audit)
        index.record_access(operator="officer-1", command="query", query={}, results=0, now=T0)
        expected = index.query(Query(limit=1000))
        damage(path, index)
    with pytest.raises(IndexFailure, match=refusal):
        AuditIndex.open(path, schemas)
    with AuditIndex.open(path, schemas, rebuild=True) as index:
        assert index.count() == (0, 0, 0)
        assert index.positions() == {}
        assert [a.operator for a in index.access_log()] == ["officer-1"]
        assert index.add(log.audit) == 30
        assert index.query(Query(limit=1000)) == expected
    with AuditIndex.open(path, schemas) as index:  # sound again
        assert index.count()[0] == 30


def test_a_rebuild_waits_for_no_one_and_changes_nothing_while_a_query_has_the_index_open(
    tmp_path: Path, ring: KeyRing, schemas: SchemaSet
) -> None:
    """A query that opened the index before a rebuild holds its rows' offsets into the value
    log; emptying the log under it would let it read the rebuilt log's bytes as its records.
    So a rebuild while the index is open elsewhere is refused, and changes nothing."""
    path = tmp_path / "index.sqlite"
    log = build_log(ring, schemas, records=20)
    with AuditIndex.open(path, schemas) as index:
        index.add(log.audit)
        expected = index.query(Query(limit=1000))
        _old_layout(path, index)
    with AuditIndex.open(path, schemas, rebuild=True) as reading:  # rebuilt, then filled
        reading.add(log.audit)
        _old_layout(path, reading)  # the next upgrade
        with pytest.raises(IndexFailure, match="open in another process"):
            AuditIndex.open(path, schemas, rebuild=True)
        reading._db.execute("CREATE TABLE IF NOT EXISTS layout (version INTEGER NOT NULL)")
        reading._db.execute("INSERT INTO layout VALUES (?)", (LAYOUT,))
        assert reading.query(Query(limit=1000)) == expected  # its bytes are where they were
    with AuditIndex.open(path, schemas) as index:
        assert index.query(Query(limit=1000)) == expected


def test_records_bytes_live_in_a_value_log_a_crash_can_only_leave_unreferenced_bytes_after(
    tmp_path: Path, ring: KeyRing, schemas: SchemaSet
) -> None:
    path = tmp_path / "index.sqlite"
    log = build_log(ring, schemas, records=40)
    with AuditIndex.open(path, schemas) as index:
        index.add(log.audit[:20])
        expected_first = index.query(Query(limit=1000))
        assert index._db.values is not None
        # A crash after the bytes were appended but before the transaction committed.
        index._db.values.append([b"bytes of a batch that never committed"])
        index.add(log.audit[20:])
        rows = index.query(Query(limit=1000))
    assert all(row in rows for row in expected_first)  # each read from where its row says
    assert {(r.partition, r.offset) for r in rows} == {(e.partition, e.offset) for e in log.audit}
    sizes = sum(len(e.value) for e in log.audit)
    assert Path(f"{path}.values").stat().st_size == sizes + len(
        b"bytes of a batch that never committed"
    )


def test_the_subject_report_lists_disclosures_with_their_classes(
    index: AuditIndex, schemas: SchemaSet
) -> None:
    report = subject_report(index.query(Query(subject_ref=person_ref())), classifier(schemas))
    assert [d.event_id for d in report] == [event_id(n) for n in (0, 15, 30, 45)]
    first = report[0]
    assert (first.recipient, first.legal_basis, first.purpose, first.rule_ids) == (
        "corrections",
        "fva_s20",
        "fv_risk_needs_assessment",
        ("SYN-1",),
    )
    assert first.classes == ("operational", "risk")  # 'reason' (narrative) was dropped


def test_the_access_log_is_chained_and_checked(index: AuditIndex, tmp_path: Path) -> None:
    for n in range(3):
        index.record_access(
            operator="officer-1",
            command="query",
            query={"subject_ref": person_ref()},
            results=n,
            now=T0,
        )
    assert [a.seq for a in index.access_log()] == [0, 1, 2]
    with pytest.raises(QueryError):
        index.record_access(operator=" ", command="query", query={}, results=0, now=T0)
    index._db.execute("UPDATE access_log SET operator = 'someone-else' WHERE seq = 1")
    with pytest.raises(LogTampered) as caught:
        index.access_log()
    assert caught.value.position == "access log seq 1"
    index._db.execute("DELETE FROM access_log WHERE seq = 1")
    with pytest.raises(LogTampered, match="seq 1"):
        index.access_log()


def test_decoding_in_worker_processes_gives_the_same_index(
    tmp_path: Path, ring: KeyRing, schemas: SchemaSet
) -> None:
    log = build_log(ring, schemas, records=2500)
    with AuditIndex.open(tmp_path / "one.sqlite", schemas) as one:
        one.add(log.audit)
        expected = one.query(Query(limit=10_000))
    with AuditIndex.open(tmp_path / "two.sqlite", schemas) as two:
        assert two.add(log.audit, workers=2) == 2500
        assert two.query(Query(limit=10_000)) == expected


@pytest.mark.parametrize("names_them", [False, True])
def test_an_approval_of_an_item_held_about_a_person_is_in_their_report(
    tmp_path: Path, schemas: SchemaSet, names_them: bool
) -> None:
    """An approve record written before held items carried their subjects has no subject
    references of its own; it is found through the decision record that held it. One that
    names the person (as brokers write them now) is listed once, not twice."""
    from broker.codec import encode

    schema = schemas.latest("AuditRecord")
    header = (("tiaki-schema", schema.fingerprint_hex.encode()),)
    episode = schemas.latest("CaseAllocation").fingerprint_hex

    def base(n: int, action: str, **fields: object) -> dict[str, object]:
        return {
            "audit_id": f"00000000-0000-0000-0000-{n:012d}",
            "recorded_at": T0 + timedelta(minutes=n),
            "action": action,
            "actor": "broker",
            "event_id": "evt-held",
            "event_type": "CaseAllocation",
            "source_agency": "police",
        } | fields

    held = base(
        1,
        "decision",
        schema_fingerprint=episode,
        subject_refs=[person_ref()],
        decisions=[
            {
                "recipient": "health-nz",
                "outcome": "review",
                "rule_ids": ["R-HOLD"],
                "field_actions": {"header.case_id": "keep"},
            },
            {"recipient": "msd", "outcome": "deny", "rule_ids": ["R-DENY"]},
        ],
    )
    approved = base(
        2,
        "review",
        recipient="health-nz",
        outcome="approve",
        legal_basis="fva_s20",
        purpose="fv_risk_needs_assessment",
        route="fva_s20",
        rule_ids=["R-HOLD"],
        field_actions={"header.case_id": "keep"},
        subject_refs=[person_ref()] if names_them else [],
    )
    other = base(3, "review", event_id="evt-other", recipient="health-nz", outcome="approve")
    entries = [
        LogEntry("tiaki.audit", 0, i, None, encode(schema, r), header, 0)
        for i, r in enumerate((held, approved, other))
    ]
    with AuditIndex.open(tmp_path / "i.sqlite", schemas) as index:
        index.add(entries)
        rows = index.about(person_ref())
        by_query = index.query(Query(subject_ref=person_ref()))
    assert len(by_query) == (3 if names_them else 2)
    assert [(r.action, r.recipient, r.outcome) for r in rows] == [
        ("decision", "health-nz", "review"),
        ("decision", "msd", "deny"),
        ("review", "health-nz", "approve"),
    ]
    (disclosure,) = subject_report(rows, classifier(schemas))
    assert (disclosure.recipient, disclosure.via, disclosure.legal_basis) == (
        "health-nz",
        "review",
        "fva_s20",
    )


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_the_index_is_owner_only_folder_database_value_log_and_side_files(
    tmp_path: Path, ring: KeyRing, schemas: SchemaSet
) -> None:
    """Subject references and the access log are in there: 0700 folder, 0600 files, whatever
    the umask, and files left 0644 from before this rule are narrowed when the index opens."""
    previous = os.umask(0o022)
    try:
        path = tmp_path / "audit" / "index.sqlite"
        with AuditIndex.open(path, schemas) as idx:
            idx.add(build_log(ring, schemas, records=5).audit)
            files = sorted(p.name for p in path.parent.iterdir())
            assert files == [
                "index.sqlite",
                "index.sqlite-shm",
                "index.sqlite-wal",
                "index.sqlite.values",
            ]
            assert {name: _mode(path.parent / name) for name in files} == dict.fromkeys(
                files, 0o600
            )
            assert _mode(path.parent) == 0o700
            for name in files:  # as an index made before this rule was
                (path.parent / name).chmod(0o644)
            with AuditIndex.open(path, schemas) as again:
                assert again.count()[0] == 5
                assert {name: _mode(path.parent / name) for name in files} == dict.fromkeys(
                    files, 0o600
                )
    finally:
        os.umask(previous)


@pytest.mark.parametrize(
    ("chain", "seq", "stored"),
    [
        (b"tiaki-broker-a", b"41", ("tiaki-broker-a", 41)),
        (b"tiaki-broker-a", b"-1", ("tiaki-broker-a", None)),
        (b"tiaki-broker-a", b"4x", ("tiaki-broker-a", None)),
        (b"tiaki-broker-a", b"9" * 40, ("tiaki-broker-a", None)),
        (b"tiaki-broker-a", b"\xd9\xa3", ("tiaki-broker-a", None)),  # an Arabic-Indic 3
        # A second spelling of seq 41, which the verifier refuses: no place in the index either.
        (b"tiaki-broker-a", b"041", ("tiaki-broker-a", None)),
        (b"tiaki-broker-a", b"0", ("tiaki-broker-a", 0)),
        (b"\xff\xfe", b"1", (None, 1)),
        (b"tiaki-broker-\x00", b"1", (None, 1)),  # PostgreSQL's text takes no NUL
    ],
)
def test_hostile_chain_headers_on_the_topic_are_indexed_without_their_place(
    chain: bytes, seq: bytes, stored: tuple[str | None, int | None]
) -> None:
    """Whoever can write tiaki.audit can put anything in a record's chain headers: the index
    keeps the record (the verifier reports the headers) and never fails on them."""
    record = {"audit_id": "c", "recorded_at": T0, "action": "review", "decisions": []}
    headers = (("tiaki-chain", chain), ("tiaki-seq", seq))
    hostile = LogEntry("tiaki.audit", 0, 3, None, b"", headers, 0)
    row, _, _ = index_rows(hostile, record, "ab")
    assert row[3:5] == stored


@pytest.mark.parametrize(
    "recorded_at",
    [253402300800000, 2**62, -62135596800001],  # year 10000, far beyond, before year 1
)
def test_a_record_dated_outside_what_a_date_holds_is_refused_when_indexed(
    recorded_at: int,
) -> None:
    """Indexed, it would make every query that met it fail and mark the index damaged, and a
    rebuild would index it again; refused at indexing instead, as an undecodable record is."""
    record = {"audit_id": "c", "recorded_at": recorded_at, "action": "review", "decisions": []}
    entry = LogEntry("tiaki.audit", 0, 3, None, b"", (), 0)
    with pytest.raises(IndexFailure, match="recorded_at is outside the years 1 to 9999"):
        index_rows(entry, record, "ab")


@pytest.mark.parametrize("recorded_at", [-62135596800000, 0, 253402300799999])
def test_the_first_and_last_dates_are_indexed(recorded_at: int) -> None:
    record = {"audit_id": "c", "recorded_at": recorded_at, "action": "review", "decisions": []}
    row, _, _ = index_rows(LogEntry("tiaki.audit", 0, 3, None, b"", (), 0), record, "ab")
    assert row[5] == recorded_at
