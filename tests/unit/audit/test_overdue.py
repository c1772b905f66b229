"""Records appended after a chain's last checkpoint by someone who can write ``tiaki.audit``.

Anyone who can write the topic (a Kafka admin can grant itself WRITE) can read a chain's last
link from its headers and append records that chain correctly; on a retired worker's chain
nothing ever conflicts with them. They verify, as "chained, not yet signed". A running
writer signs within a minute, and Kafka stamps each audit record with the time it appended
it, so records left unsigned for longer are named, and ``verify --strict`` fails on them.
"""

from __future__ import annotations

import dataclasses
import json
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from broker._cli import main
from broker.audit import (
    AUDIT_TOPIC,
    CHAIN_HEADER,
    LINK_HEADER,
    PREV_HEADER,
    SEQ_HEADER,
    LogEntry,
    dump_lines,
    link_hash,
    read_link,
    verify_log,
)
from broker.audit._chain import SCHEMA_HEADER
from broker.audit._log import EXPORT_FORMAT, exported_at
from broker.audit._verify import CHECKPOINT_CAP, OVERDUE_SLACK
from broker.codec import SchemaSet
from broker.envelope import KeyRing, KeyStore

from .conftest import SUBJECT_KEY, T0, SyntheticLog, build_log

RETIRED = "tiaki-broker-1"
#: When the attacker appends, well after the log was written and signed.
ATTACK = T0 + timedelta(days=30)
LIMIT = CHECKPOINT_CAP + OVERDUE_SLACK


def ms(when: datetime) -> int:
    return int(when.timestamp() * 1000)


def stamped(entries: list[LogEntry], when: datetime) -> list[LogEntry]:
    """``entries`` as Kafka appended them at ``when`` (LogAppendTime)."""
    return [dataclasses.replace(e, timestamp_ms=ms(when)) for e in entries]


def appended(audit: list[LogEntry], chain: str, count: int, when: datetime) -> list[LogEntry]:
    """``count`` records appended to ``chain`` at ``when`` by someone who can write the topic:
    linked from the chain's last record's headers, exactly as the broker links them."""
    last = max(
        (read_link(e) for e in audit if e.header(CHAIN_HEADER) == chain.encode()),
        key=lambda link: link.seq,
    )
    template = last.entry
    schema = template.header(SCHEMA_HEADER) or b""
    prev, seq = last.link, last.seq + 1
    forged: list[LogEntry] = []
    for n in range(count):
        link = link_hash(chain, seq, prev, schema, template.value)
        headers = (
            (SCHEMA_HEADER, schema),
            (CHAIN_HEADER, chain.encode()),
            (SEQ_HEADER, str(seq).encode()),
            (PREV_HEADER, prev.hex().encode()),
            (LINK_HEADER, link.hex().encode()),
        )
        offset = 100_000 + n  # after everything on the partition
        forged.append(
            LogEntry(
                AUDIT_TOPIC,
                template.partition,
                offset,
                template.key,
                template.value,
                headers,
                ms(when),
            )
        )
        prev, seq = link, seq + 1
    return forged


@pytest.fixture
def home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, ring: KeyRing) -> Path:
    """A Tiaki home with the broker's public keys, as compliance has it (as in test_cli)."""
    monkeypatch.setenv("TIAKI_HOME", str(tmp_path))
    monkeypatch.setenv("TIAKI_OPERATOR", "officer-1")
    KeyStore(tmp_path / "keys").save(ring, owners=["broker"])
    secrets = tmp_path / "keys" / "broker-secrets"
    secrets.mkdir(mode=0o700)
    (secrets / "audit-subject.key").write_bytes(SUBJECT_KEY)
    return tmp_path


@pytest.fixture
def log(ring: KeyRing, schemas: SchemaSet) -> SyntheticLog:
    """A log written and fully signed at T0, then three records appended to a retired chain."""
    clean = build_log(ring, schemas, records=60)
    audit = stamped(clean.audit, T0)
    return SyntheticLog(audit + appended(audit, RETIRED, 3, ATTACK), stamped(clean.checkpoints, T0))


def test_appended_records_verify_but_are_overdue_once_a_writer_would_have_signed_them(
    log: SyntheticLog, ring: KeyRing
) -> None:
    report = verify_log(log.audit, log.checkpoints, ring)  # correctly chained: no tampering
    assert report.unsigned == 3
    # Within a checkpoint interval (and the slack) they could be a worker's, not yet signed.
    assert report.overdue(ATTACK + timedelta(seconds=30)) == {}
    assert report.overdue(ATTACK + LIMIT) == {}
    assert report.overdue(ATTACK + LIMIT + timedelta(milliseconds=1)) == {RETIRED: 3}
    assert report.overdue(ATTACK + timedelta(days=365)) == {RETIRED: 3}


def test_a_running_workers_unsigned_tail_is_not_overdue(ring: KeyRing, schemas: SchemaSet) -> None:
    raw = build_log(ring, schemas, records=61, every_records=20, final_checkpoint=False)
    report = verify_log(stamped(raw.audit, T0), raw.checkpoints, ring)
    assert report.unsigned  # the last batch waits for the next checkpoint...
    assert report.overdue(T0 + CHECKPOINT_CAP) == {}  # ...which is due within the cap
    late = report.overdue(T0 + LIMIT + timedelta(seconds=1))  # its worker stopped for good
    assert sum(late.values()) == report.unsigned


def test_a_timestamp_set_in_the_future_does_not_keep_records_fresh(
    log: SyntheticLog, ring: KeyRing
) -> None:
    """On a topic still stamped by the writer (CreateTime: made before LogAppendTime, or set
    back by an admin), a writer could date its records ahead to keep them from ageing."""
    report = verify_log(log.audit, log.checkpoints, ring)
    assert report.overdue(ATTACK - OVERDUE_SLACK) == {}
    assert report.overdue(ATTACK - OVERDUE_SLACK - timedelta(milliseconds=1)) == {RETIRED: 3}


def test_a_chain_no_checkpoint_covers_is_left_to_its_own_warning(
    log: SyntheticLog, ring: KeyRing
) -> None:
    stripped = [c for c in log.checkpoints if c.key != RETIRED.encode()]
    report = verify_log(log.audit, stripped, ring)
    assert {c.chain: c.signed for c in report.chains}[RETIRED] == 0
    assert report.overdue(ATTACK + timedelta(days=1)) == {}


def test_the_cap_is_the_longest_checkpoint_interval_a_worker_may_run_with() -> None:
    from broker.runtime._service import MAX_CHECKPOINT_SECONDS

    assert timedelta(seconds=MAX_CHECKPOINT_SECONDS) == CHECKPOINT_CAP


def export_made(path: Path, log: SyntheticLog, when: str | None) -> Path:
    lines = list(dump_lines(log.audit + log.checkpoints, exported_at=when or ""))
    if when is None:  # by hand: a first line that does not say when
        lines[0] = json.dumps({"format": EXPORT_FORMAT})
    path.write_text("\n".join(lines) + "\n")
    return path


def test_verify_strict_fails_on_them_naming_the_chain_and_the_count(
    home: Path, log: SyntheticLog, capsys: pytest.CaptureFixture[str]
) -> None:
    later = export_made(home / "later.jsonl", log, (ATTACK + timedelta(hours=1)).isoformat())
    assert main(["audit", "verify", "--file", str(later)]) == 0
    out = capsys.readouterr().out
    assert (
        f"  warning: chain {RETIRED}: 3 records after its last checkpoint were not appended "
        "in the 6 minutes before the export was made, and a running writer signs within a "
        "minute (its worker stopped, or someone else appended them)\n"
    ) in out
    assert main(["audit", "verify", "--file", str(later), "--strict"]) == 1
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == (
        "tiaki: audit log does NOT verify (--strict): no checkpoint within 6 minutes for "
        f"3 records of chain {RETIRED}"
    )
    # Exported at once, the records could still be a worker's: the export says so later.
    soon = export_made(home / "soon.jsonl", log, (ATTACK + timedelta(seconds=20)).isoformat())
    assert main(["audit", "verify", "--file", str(soon), "--strict"]) == 0
    assert "warning" not in capsys.readouterr().out


def test_verify_strict_of_the_live_log_judges_by_the_time_it_read_it(
    home: Path,
    log: SyntheticLog,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    ring: KeyRing,
) -> None:
    import broker.audit._cli as audit_cli

    async def read(*_args: object, **_kwargs: object) -> tuple[object, ...]:
        return log.audit, log.checkpoints, verify_log(log.audit, log.checkpoints, ring)

    monkeypatch.setattr(audit_cli, "load_profile", lambda _path: None)
    monkeypatch.setattr(audit_cli, "verify_live", read)
    monkeypatch.setattr(audit_cli, "_now", lambda: ATTACK + timedelta(minutes=1))
    assert main(["audit", "verify", "--strict"]) == 0
    monkeypatch.setattr(audit_cli, "_now", lambda: ATTACK + timedelta(minutes=7))
    assert main(["audit", "verify", "--strict"]) == 1
    err = capsys.readouterr().err
    assert f"chain {RETIRED}: 3 records after its last checkpoint" in err
    assert "before the log was read" in err


def test_an_export_that_does_not_say_when_it_was_made_says_the_check_was_not_made(
    home: Path, log: SyntheticLog, capsys: pytest.CaptureFixture[str]
) -> None:
    undated = export_made(home / "undated.jsonl", log, None)
    assert main(["audit", "verify", "--file", str(undated), "--strict"]) == 0
    assert (
        "  warning: the export does not say when it was made, so whether records after their "
        "chain's last checkpoint are overdue for one could not be checked\n"
    ) in capsys.readouterr().out


@pytest.mark.parametrize(
    ("first", "when"),
    [
        (
            {"format": EXPORT_FORMAT, "exported_at": "2026-03-02T10:00:00+00:00"},
            T0 + timedelta(hours=1),
        ),
        (
            {"format": EXPORT_FORMAT, "exported_at": "2026-03-02T23:00:00+13:00"},
            T0 + timedelta(hours=1),
        ),
        ({"format": EXPORT_FORMAT, "exported_at": "2026-03-02T10:00:00"}, None),  # no offset
        ({"format": EXPORT_FORMAT, "exported_at": "SYN"}, None),
        ({"format": EXPORT_FORMAT, "exported_at": 1}, None),
        ({"format": EXPORT_FORMAT}, None),
        ([], None),
    ],
)
def test_when_an_export_was_made(first: object, when: datetime | None) -> None:
    assert exported_at([json.dumps(first)]) == when
    assert exported_at([]) is None
