"""``tiaki audit``: the compliance officer's tools.

=================  ==========================================================================
command            what it does
=================  ==========================================================================
index              the audit topic (or an export) into the index (SQLite path, or a URL)
verify             the whole log and its checkpoints; exits 1 naming the first bad position
query              rows by person (keyed hash), agency, event type, basis, outcome, time
subject-report     which agencies received which classes of information about one person
export             the audit and checkpoint topics, byte for byte, to a JSON Lines file
access-log         who read the index, when and with what query (its chain checked)
grounds            whether a justification and an accountable role are what an event's
                   discloser stated (FVA-07), against the keyed hashes its decision keeps
witness            an agency saves the checkpoints it can see, to check the log later
countersign        the broker's operator, right after ``tiaki keys rotate broker``: each
                   chain's newest trusted checkpoint signed again with the broker's new key,
                   so that revoking the old key later leaves every chain signed as it was
=================  ==========================================================================

Every read of the audit data (query, subject-report, export, verify, index) is recorded in
the index's chained access log with the operator's identity (``--operator`` or
``TIAKI_OPERATOR``); verify and export, which read the topic and not the index, record it
when an index exists and never make one (without one they say so on stderr). A person is
given as ``SCHEME:VALUE`` (``NHI:ZZZ0016``); it is hashed with the deployment's subject key
at once, and only the hash is logged, stored or printed.

``countersign`` is not a compliance tool: it runs where the broker's keys are, with the
broker's private signing key and Kafka credential (as ``tiaki review approve`` does), and
writes to Kafka; its act is an audit record (action ``key_operation``) on the log itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import json
import logging
import os
import re
import sys
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import typer

from broker._settings import Settings
from broker._yaml import SourceError, parse_json, read_text
from broker.audit._countersign import CountersignReport, countersign
from broker.audit._errors import AuditError, LogTampered, QueryError
from broker.audit._index import AuditIndex, Query, Row
from broker.audit._kafka import entry_of, index_live, read_log, read_topic, verify_live
from broker.audit._log import (
    AUDIT_TOPIC,
    CHECKPOINT_TOPIC,
    LogEntry,
    dump_lines,
    exported_at,
    load_lines,
)
from broker.audit._report import classifier, subject_report
from broker.audit._verify import (
    CHECKPOINT_CAP,
    OVERDUE_SLACK,
    VerifyReport,
    verify_log,
)
from broker.codec import load_schemas
from broker.envelope import BROKER, KeyStore
from broker.platform import load_profile
from broker.platform._profiles import profile_path
from broker.platform._topics import COMPLIANCE
from broker.policy._reader import suggest
from broker.registry import load_registry
from broker.registry._model import AGENCY_ID_PATTERN
from broker.runtime._audit import audit_base
from broker.runtime._operator import BrokerTools
from broker.runtime._pipeline import audit_output
from broker.transport import NotAuthorized, Outgoing, Record

app = typer.Typer(help="Tamper-evident audit: index, verify, query, report.", no_args_is_help=True)

Db = Annotated[
    str | None,
    typer.Option(
        "--db",
        help="Index: a SQLite path or postgresql:// URL (default .tiaki/audit/index.sqlite).",
    ),
]
Operator = Annotated[
    str,
    typer.Option(
        "--operator", envvar="TIAKI_OPERATOR", help="Who you are, as the access log records it."
    ),
]
FromFile = Annotated[
    Path | None, typer.Option("--file", help="Read an export file instead of Kafka.")
]
ProfileName = Annotated[
    str, typer.Option("--profile", help="Connection profile to read Kafka with.")
]
Format = Annotated[str, typer.Option("--format", help="table, csv or json.")]

FORMATS = ("table", "csv", "json")
#: The most rows ``query`` prints; SQLite takes a 64-bit LIMIT, and no reader wants more.
MAX_LIMIT = 1_000_000
#: The most decoding processes ``index`` starts: each is a whole interpreter with the
#: schemas, and past the machine's cores more only compete for them.
MAX_WORKERS = 64


def _now() -> datetime:
    return datetime.now(UTC)


def _settings() -> Settings:
    return Settings.from_env()


def _index(
    settings: Settings,
    db: str | None,
    *,
    rebuild: bool = False,
    existing: bool = False,
    answering: bool = False,
) -> AuditIndex:
    """The index at ``--db`` (or the default), made if new unless ``existing``: the commands
    that answer from the index (query, subject-report, access-log) ask for one that exists,
    since a mistyped path would otherwise be a new, empty index, and an empty answer to "who
    received what" that is not true. Commands that only record their access may make it.

    ``answering``: the commands that answer from the index's records (query, subject-report,
    grounds) also refuse an index no indexing run has completed (a first ``tiaki audit
    index`` that failed on PostgreSQL, or was killed, or is still running): it holds only
    what that run reached, and would answer "nobody" about everyone else. The access log
    is whole all the same, so ``access-log`` reads it."""
    target = db if db is not None else settings.home / "audit" / "index.sqlite"
    if existing or answering:
        missing = _missing_index(settings, db)
        if missing is not None:
            raise AuditError(f"no audit index at {missing} (build it with 'tiaki audit index')")
    index = AuditIndex.open(target, load_schemas(settings.schemas_dir), rebuild=rebuild)
    if answering:
        try:
            completed = index.completed()
        except BaseException:
            index.close()
            raise
        if completed is None:
            index.close()
            raise AuditError(
                f"the audit index {_shown(target)} has not completed an indexing run since "
                "it was made or rebuilt, so it may lack any record: run 'tiaki audit index'"
            )
    return index


def _shown(target: str | Path) -> str:
    """Where an index is, as a message names it: never a PostgreSQL URL (it may hold a
    password)."""
    text = str(target)
    if text.startswith(("postgresql://", "postgres://")):
        return "in the PostgreSQL database given"
    return f"at {text}"


def _missing_index(settings: Settings, db: str | None) -> Path | None:
    """The SQLite path at ``--db`` (or the default) if no index is there, else None. A
    PostgreSQL URL is taken as existing: opening it finds out. An empty file is no index
    either: SQLite would make one in it, so any empty file named by mistake would become an
    index and answer "nobody"."""
    text = str(db if db is not None else settings.home / "audit" / "index.sqlite")
    if text.startswith(("postgresql://", "postgres://")):
        return None
    path = Path(text.removeprefix("sqlite:///"))
    return None if path.is_file() and path.stat().st_size > 0 else path


def _record_if_indexed(
    settings: Settings,
    db: str | None,
    *,
    operator: str,
    command: str,
    query: dict[str, Any],
    results: int,
    now: datetime,
) -> None:
    """Record a ``verify`` or ``export`` run in the access log of the index that exists.
    Neither needs the index (both read the topic), so neither makes one: a new, empty index
    would make ``query`` answer "nobody" instead of refusing. Without an index, say on
    stderr (one line) that this run is not in any access log."""
    missing = _missing_index(settings, db)
    if missing is not None:
        if query.get("outcome") == "error":  # nothing was read; the error is the one line
            return
        print(
            f"tiaki: note: no audit index at {missing}, so this {command} is not in an access "
            "log (build one with 'tiaki audit index')",
            file=sys.stderr,
        )
        return
    with _index(settings, db, existing=True) as index:
        index.record_access(
            operator=operator, command=command, query=query, results=results, now=now
        )


def _subject_key(settings: Settings) -> bytes:
    """The deployment's subject key; never created here (a new key would match nobody)."""
    path = settings.keys_dir / "broker-secrets" / "audit-subject.key"
    try:
        return path.read_bytes()
    except OSError:
        raise QueryError(f"no audit subject key at {path} (the broker creates it)") from None


def person_ref(key: bytes, person: str) -> str:
    """The keyed hash of ``SCHEME:VALUE`` (``agency_local:ISSUER:VALUE`` for an agency's own
    id); the identifier itself goes no further. The scheme is one the schema names, in any
    case (``NHI`` is ``nhi``): a scheme no event can carry would match nobody, and an empty
    answer must mean nobody received anything, not a typo."""
    # The one definition the broker hashes with.
    from broker.runtime._audit import LOCAL, SCHEMES, subject_ref

    scheme, sep, value = person.partition(":")
    scheme = scheme.strip().lower()
    if not sep or not scheme or not value.strip():
        raise QueryError("a person is given as SCHEME:VALUE, e.g. NHI:ZZZ0016")
    if scheme not in SCHEMES:
        raise QueryError(
            f"unknown identifier scheme {scheme!r}: one of {', '.join(SCHEMES)} "
            "(any case), e.g. NHI:ZZZ0016"
        )
    issuer = None
    if scheme == LOCAL:
        issuer, sep, value = value.partition(":")
        if not sep or not issuer.strip() or not value.strip():
            raise QueryError(
                "an agency's own id is given as agency_local:ISSUER:VALUE, "
                "e.g. agency_local:police:12345"
            )
    return subject_ref(key, scheme, value, issuer)


def _time(text: str | None, name: str) -> int | None:
    if text is None:
        return None
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise QueryError(f"{name}: not an ISO 8601 date or time: {text!r}") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1000)


def _read(
    settings: Settings, source: Path | None, profile: str
) -> tuple[list[LogEntry], list[LogEntry], datetime | None]:
    """(audit records, checkpoints, when they were read): for an export, when it was made
    (None if it does not say)."""
    if source is not None:
        try:
            lines = read_text(source).splitlines()
        except SourceError as exc:  # unreadable, or not UTF-8
            raise AuditError(str(exc)) from None
        entries = load_lines(lines, source)
        return (
            [e for e in entries if e.topic == AUDIT_TOPIC],
            [e for e in entries if e.topic == CHECKPOINT_TOPIC],
            exported_at(lines),
        )
    connection = load_profile(profile_path(settings.profiles_dir, profile))
    # Taken before reading: a record whose checkpoint came while the log was read must not
    # look overdue against the end of a long read (the checkpoints are read first).
    read_at = _now()
    return (*asyncio.run(read_log(connection)), read_at)


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise QueryError(f"--format must be one of {', '.join(FORMATS)}")


def _emit(fmt: str, columns: Sequence[str], rows: Sequence[dict[str, Any]]) -> None:
    if fmt == "json":
        print(json.dumps(list(rows), indent=1, sort_keys=False))
        return

    def cell(value: Any) -> str:
        if isinstance(value, list | tuple):
            return " ".join(str(v) for v in value)
        if isinstance(value, dict):
            return " ".join(f"{k}={v}" for k, v in sorted(value.items()))
        return "" if value is None else str(value)

    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(columns)
        for row in rows:
            writer.writerow([cell(row[c]) for c in columns])
        sys.stdout.write(out.getvalue())
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(*columns)
    for row in rows:
        table.add_row(*(cell(row[c]) for c in columns))
    Console(width=200).print(table)


@app.command("index")
def index_command(
    operator: Operator,
    db: Db = None,
    source: FromFile = None,
    profile: ProfileName = COMPLIANCE,
    workers: Annotated[
        int,
        typer.Option(
            "--workers",
            help="Processes decoding records (1: in this one).",
            min=1,
            max=MAX_WORKERS,
        ),
    ] = 1,
) -> None:
    """Index the audit topic (or an export) into the audit index; resumes where it stopped."""
    settings = _settings()
    # An export is read (and every line of it checked) before the index is opened, so a file
    # that does not read makes no index.
    audit = _read(settings, source, profile)[0] if source is not None else None
    first = _missing_index(settings, db)  # the SQLite index this run makes, if it makes one
    was_file = first is not None and first.exists()  # an empty file, which is no index
    try:
        with _index(settings, db, rebuild=True) as index:
            added = 0
            if audit is None:  # from Kafka: only what is new since the last run
                live = load_profile(profile_path(settings.profiles_dir, profile))
                added = asyncio.run(index_live(live, index, workers=workers))
            else:
                for start in range(0, len(audit), 20_000):
                    added += index.add(audit[start : start + 20_000], workers=workers)
            now = _now()
            index.complete(now)
            index.record_access(
                operator=operator,
                command="index",
                query={"source": "file" if source else "kafka"},
                results=added,
                now=now,
            )
            records, decisions, _subjects = index.count()
    except BaseException:
        # A first run that failed leaves no index: what it had indexed would answer "nobody"
        # about everyone it had not reached (queries also refuse an index no run completed,
        # for what this cannot remove: a PostgreSQL index, a killed run's).
        if first is not None:
            _unmake(first, was_file)
        raise
    read = str(source) if source is not None else "the audit topic"
    print(
        f"indexed {added} new audit records ({records} records, {decisions} decision rows in "
        f"the index; it holds {read} as read at {now:%Y-%m-%d %H:%M:%S} UTC)"
    )


def _unmake(path: Path, was_file: bool) -> None:
    """Remove the SQLite index a failed first run made at ``path``, with its value log and
    side files; an empty file that was there before is left there, empty. Best effort: the
    run's own error is the one reported."""
    with contextlib.suppress(OSError):
        if was_file:
            os.truncate(path, 0)
        else:
            path.unlink(missing_ok=True)
    for suffix in (".values", "-wal", "-shm", "-journal"):
        with contextlib.suppress(OSError):
            path.with_name(path.name + suffix).unlink(missing_ok=True)


@app.command("verify")
def verify_command(
    operator: Operator,
    db: Db = None,
    source: FromFile = None,
    profile: ProfileName = COMPLIANCE,
    witness: Annotated[
        list[Path] | None,
        typer.Option("--witness", help="Checkpoints an agency saved (tiaki audit witness)."),
    ] = None,
    strict: Annotated[
        bool,
        typer.Option(
            "--strict",
            help="Also exit 1 if a chain has no checkpoint at all (nothing vouches for it), or "
            "records a checkpoint should have covered by the time the log was read.",
        ),
    ] = False,
) -> None:
    """Verify every chain and checkpoint; exit 1 naming the first bad position."""
    settings = _settings()
    ring = KeyStore(settings.keys_dir).load({BROKER: BROKER}, private_for=[])
    saved: list[bytes] = []
    for path in witness or []:
        saved.extend(_load_witness(path))
    outcome, records = "error", 0  # until it has verified or failed verification
    try:
        if source is not None:
            audit, checkpoints, read_at = _read(settings, source, profile)
            records = len(audit)
            report = verify_log(audit, checkpoints, ring, witnesses=saved)
        else:  # a live log: a commit in flight is re-read, not reported (see verify_live)
            connection = load_profile(profile_path(settings.profiles_dir, profile))
            read_at = _now()  # before reading, as in _read
            audit, _, report = asyncio.run(verify_live(connection, ring, witnesses=saved))
            records = len(audit)
        outcome = "ok" if report.records else "nothing verified: no audit records"
        unvouched = [c.chain for c in report.chains if c.signed == 0]
        overdue = report.overdue(read_at) if read_at is not None else {}
        lacking = _lacking(report, unvouched, overdue)
        if strict and lacking is not None:
            outcome = f"failed (--strict): {lacking}"
    except LogTampered as exc:
        outcome = "failed"
        print(f"tiaki: audit log does NOT verify: {exc}", file=sys.stderr)
        raise typer.Exit(1) from None
    finally:
        _record_if_indexed(
            settings,
            db,
            operator=operator,
            command="verify",
            query={
                "source": "file" if source else "kafka",
                "witnesses": len(saved),
                "outcome": outcome,
            },
            results=records,
            now=_now(),
        )
    if not report.records:
        # "verifies" would read as a clean bill of health for a log that was not there (an
        # empty file, the wrong cluster, everything past retention).
        print(
            f"audit log: nothing was verified: it holds no audit records "
            f"({report.checkpoints} signed checkpoints, {report.witnesses} witness checkpoints)"
        )
    else:
        print(
            f"audit log verifies: {report.records} records in {len(report.chains)} chains, "
            f"{report.checkpoints} signed checkpoints, {report.witnesses} witness checkpoints"
        )
    for chain in report.chains:
        print(
            f"  {chain.chain}: {chain.size} records, {chain.signed} signed, head {chain.head.hex()[:16]}"
        )
    if report.unsigned:
        print(
            f"  {report.unsigned} records are after their chain's last checkpoint (chained, not yet signed)"
        )
    if unvouched:
        # The log cannot tell a chain the broker never signed (a worker stopped for good
        # within its first checkpoint interval) from one written by someone who can write
        # tiaki.audit, or one whose checkpoints were all deleted: say so, and let --strict
        # (run when the broker has been up for more than a checkpoint interval) fail on it.
        print(
            f"  {len(unvouched)} chains have no checkpoint at all, so nothing vouches for "
            f"their records: {', '.join(unvouched)}",
            file=sys.stderr if strict else sys.stdout,
        )
    # A running writer signs within a minute: unsigned records older than that are a stopped
    # worker's or someone else's, who can write tiaki.audit (see VerifyReport.overdue).
    when = "the log was read" if source is None else "the export was made"
    for name, count in overdue.items():
        print(
            f"  warning: chain {name}: {count} records after its last checkpoint were not "
            f"appended in the {_minutes(OVERDUE_AFTER)} before {when}, and a running writer "
            f"signs within {_minutes(CHECKPOINT_CAP)} (its worker stopped, or someone else "
            "appended them)",
            file=sys.stderr if strict else sys.stdout,
        )
    if read_at is None and any(c.signed < c.size for c in report.chains if c.signed):
        print(
            "  warning: the export does not say when it was made, so whether records after "
            "their chain's last checkpoint are overdue for one could not be checked"
        )
    if report.distrusted:
        print(
            f"  {len(report.distrusted)} checkpoints are signed by a revoked key and vouch for "
            f"nothing: {', '.join(report.distrusted)}"
        )
    if strict and lacking is not None:
        print(f"tiaki: audit log does NOT verify (--strict): {lacking}", file=sys.stderr)
        raise typer.Exit(1)


#: How long a record may wait for its checkpoint before ``verify`` calls it overdue.
OVERDUE_AFTER = CHECKPOINT_CAP + OVERDUE_SLACK


def _minutes(span: timedelta) -> str:
    minutes = span.total_seconds() / 60
    return "a minute" if minutes == 1 else f"{minutes:g} minutes"


def _lacking(
    report: VerifyReport, unvouched: Sequence[str], overdue: Mapping[str, int]
) -> str | None:
    """What ``verify --strict`` fails on in a log that verifies: nothing to verify, nothing
    signed, a chain nothing signed, or records overdue for a checkpoint (see the notes where
    ``verify`` names them)."""
    if not report.records:
        return "the log holds no audit records, so nothing was verified"
    if not report.checkpoints:
        return "the log holds no trusted checkpoint, so nothing vouches for any record"
    reasons = ["a chain has no checkpoint"] if unvouched else []
    if overdue:
        counts = ", ".join(f"{n} records of chain {chain}" for chain, n in overdue.items())
        reasons.append(f"no checkpoint within {_minutes(OVERDUE_AFTER)} for {counts}")
    return "; ".join(reasons) or None


def _load_witness(path: Path) -> list[bytes]:
    import base64

    try:
        lines = read_text(path).splitlines()
        docs = [parse_json(path, line, n) for n, line in enumerate(lines, 1) if line.strip()]
        return [base64.b64decode(d["checkpoint"]) for d in docs]
    except SourceError as exc:  # unreadable, not UTF-8, bad JSON, nested too deeply
        raise AuditError(f"{exc} (not a witness file)") from None
    except (ValueError, KeyError, TypeError):
        raise AuditError(f"{path}: not a witness file") from None


@app.command("witness")
def witness_command(
    profile: Annotated[str, typer.Option("--profile", help="Your agency's connection profile.")],
    out: Annotated[Path, typer.Option("--out", help="Append the checkpoints to this file.")],
) -> None:
    """Save the checkpoints on tiaki.checkpoints (any agency may read them) as a witness."""
    import base64

    settings = _settings()
    entries = asyncio.run(
        read_topic(load_profile(profile_path(settings.profiles_dir, profile)), CHECKPOINT_TOPIC)
    )
    known = set(_load_witness(out)) if out.exists() else set()
    fresh = [e.value for e in entries if e.value not in known]
    try:
        with out.open("a") as handle:
            for value in fresh:
                handle.write(json.dumps({"checkpoint": base64.b64encode(value).decode()}) + "\n")
    except OSError as exc:
        raise AuditError(f"cannot write the witness file {out}: {exc.strerror or exc}") from None
    print(f"saved {len(fresh)} new checkpoints ({len(known) + len(fresh)} in {out})")


QUERY_COLUMNS = (
    "recorded_at",
    "action",
    "actor",
    "event_type",
    "source_agency",
    "recipient",
    "outcome",
    "route",
    "legal_basis",
    "purpose",
    "rule_ids",
    "partition",
    "offset",
)


@app.command("query")
def query_command(
    operator: Operator,
    person: Annotated[
        str | None,
        typer.Option(
            "--person", help="SCHEME:VALUE; hashed, never stored; '-' reads it from standard input."
        ),
    ] = None,
    recipient: Annotated[str | None, typer.Option("--recipient")] = None,
    source_agency: Annotated[str | None, typer.Option("--source")] = None,
    event_type: Annotated[str | None, typer.Option("--event-type")] = None,
    legal_basis: Annotated[str | None, typer.Option("--legal-basis")] = None,
    outcome: Annotated[str | None, typer.Option("--outcome")] = None,
    action: Annotated[str | None, typer.Option("--action")] = None,
    since: Annotated[str | None, typer.Option("--since", help="ISO 8601, inclusive.")] = None,
    until: Annotated[str | None, typer.Option("--until", help="ISO 8601, exclusive.")] = None,
    limit: Annotated[
        int,
        typer.Option(
            "--limit",
            help="Most rows to print (a note on stderr says when reached).",
            min=1,
            max=MAX_LIMIT,
        ),
    ] = 1000,
    fmt: Format = "table",
    db: Db = None,
) -> None:
    """Audit rows (one per record and recipient) matching every filter given."""
    _check_format(fmt)
    settings = _settings()
    _check_filters(
        settings,
        agencies=(recipient, source_agency),
        event_type=event_type,
        action=action,
        codes={"--legal-basis": legal_basis, "--outcome": outcome},
    )
    if person is not None:
        (person,) = _typed(person)
    q = Query(
        subject_ref=person_ref(_subject_key(settings), person) if person else None,
        recipient=recipient,
        source=source_agency,
        event_type=event_type,
        legal_basis=legal_basis,
        outcome=outcome,
        action=action,
        since_ms=_time(since, "--since"),
        until_ms=_time(until, "--until"),
        limit=limit,
    )
    with _index(settings, db, answering=True) as index:
        rows = index.query(q)
        index.record_access(
            operator=operator, command="query", query=q.described(), results=len(rows), now=_now()
        )
    _emit(fmt, QUERY_COLUMNS, [_row_doc(r) for r in rows])
    if len(rows) >= limit:  # a silent cut would read as "that is everyone"
        print(
            f"tiaki: note: stopped at --limit {limit} rows; there may be more "
            f"(raise --limit, up to {MAX_LIMIT:,}, or narrow the filters)",
            file=sys.stderr,
        )


_AGENCY_ID = re.compile(AGENCY_ID_PATTERN)
#: The form of a code Tiaki writes in an audit record (a legal basis, an outcome).
_CODE = re.compile(r"[a-z][a-z0-9_]{0,63}")


def _check_filters(
    settings: Settings,
    *,
    agencies: Sequence[str | None],
    event_type: str | None,
    action: str | None,
    codes: dict[str, str | None],
) -> None:
    """Refuse a filter that names nothing the log could hold, before the query is run or
    recorded: a person's name typed in the wrong option would be kept in the access log.

    * An agency must be an agency id. One the registry no longer has (an agency that has
      left: the log outlives its registration) is queried, with a note that an empty answer
      may be a misspelling rather than "nobody".
    * An event type must be an event schema's name, an action one of the audit record's.
    * A legal basis or an outcome must be a code. Codes are not checked against today's
      vocabulary: the log keeps those of earlier policy versions.
    """
    given = [a for a in agencies if a is not None]
    if given:
        ids = load_registry(settings.registry).ids
        for agency in given:
            if agency in ids:
                continue
            if _AGENCY_ID.fullmatch(agency) is None:
                raise QueryError(
                    f"unknown agency {agency!r}: not in the registry {settings.registry}, "
                    f"nor an agency id{suggest(agency, ids)}"
                )
            print(
                f"tiaki: note: agency {agency!r} is not in the registry {settings.registry} "
                f"(one that has left?); an empty answer may mean a misspelling"
                f"{suggest(agency, ids)}",
                file=sys.stderr,
            )
    wanted = event_type is not None or action is not None
    schemas = load_schemas(settings.schemas_dir) if wanted else None
    if schemas is not None and event_type is not None:
        names = [s.short_name for s in schemas.events()]
        if event_type not in names:
            raise QueryError(
                f"unknown event type {event_type!r}: no event schema in "
                f"{settings.schemas_dir} has that name{suggest(event_type, names)}"
            )
    if schemas is not None and action is not None:
        field = next(
            f for f in schemas.latest("AuditRecord").definition["fields"] if f["name"] == "action"
        )
        actions = [str(s) for s in field["type"]["symbols"] if s != "unknown"]
        if action not in actions:
            raise QueryError(f"unknown action {action!r}: one of {', '.join(actions)}")
    for option, value in codes.items():
        if value is not None and _CODE.fullmatch(value) is None:
            raise QueryError(f"{option} {value!r}: a code such as fva_s20_disclosure or share")


def _typed(*values: str) -> list[str]:
    """``values`` with each ``-`` replaced by the next line of standard input: a person's
    identifier or a discloser's words typed as an argument stay in the shell's history and
    show in ``ps``, which ``echo NHI:… | tiaki audit subject-report -`` (or a prompt read
    with ``read -s``) avoids."""
    out = []
    for value in values:
        if value != "-":
            out.append(value)
            continue
        line = sys.stdin.readline()
        if not line.strip():
            raise QueryError("'-' reads a line from standard input, and there was none")
        out.append(line.rstrip("\r\n"))
    return out


def _event_id(text: str) -> str:
    """An event id as the audit records keep it (a header's ``event_id``, a UUID, written in
    its canonical form), or a one-line error that repeats nothing of ``text``."""
    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise QueryError(
            "EVENT_ID must be an event's id, a UUID such as 2f1c0a4e-8b7d-4c1e-9a53-0c6d2b7e4f19"
        ) from None


def _row_doc(row: Row) -> dict[str, Any]:
    return row.to_json()


REPORT_COLUMNS = (
    "recipient",
    "at",
    "event_type",
    "source_agency",
    "classes",
    "legal_basis",
    "purpose",
    "route",
    "rule_ids",
    "via",
)


@app.command("subject-report")
def subject_report_command(
    identifier: Annotated[
        str,
        typer.Argument(help="The person, as SCHEME:VALUE; '-' reads it from standard input."),
    ],
    operator: Operator,
    fmt: Format = "table",
    db: Db = None,
) -> None:
    """Which agencies received which classes of information about one person, when and why."""
    _check_format(fmt)
    settings = _settings()
    (identifier,) = _typed(identifier)
    ref = person_ref(_subject_key(settings), identifier)
    schemas = load_schemas(settings.schemas_dir)
    with _index(settings, db, answering=True) as index:
        report = subject_report(index.about(ref), classifier(schemas))
        index.record_access(
            operator=operator,
            command="subject-report",
            query={"subject_ref": ref},
            results=len(report),
            now=_now(),
        )
    _emit(fmt, REPORT_COLUMNS, [d.to_json() for d in report])


@app.command("grounds")
def grounds_command(
    event_id: Annotated[
        str, typer.Argument(help="The event whose disclosure is in question (its UUID).")
    ],
    operator: Operator,
    justification: Annotated[
        str,
        typer.Option(
            "--justification",
            help="The justification, as the discloser recorded it; '-' reads it from standard input.",
        ),
    ],
    accountable: Annotated[
        str,
        typer.Option(
            "--accountable",
            help="The accountable person or role, as recorded; '-' reads it from standard input "
            "(after the justification, if both are '-').",
        ),
    ],
    source_agency: Annotated[
        str | None,
        typer.Option(
            "--source",
            help="The agency that published the event; needed when more than one used its id.",
        ),
    ] = None,
    db: Db = None,
) -> None:
    """Whether a justification and an accountable person or role are exactly what an event's
    discloser stated when it was shared (FVA s25 protects good-faith disclosures; FVA-07 asks
    for a tamper-evident record of them). The audit log keeps only keyed hashes of them; both
    texts are hashed here and never logged. Exits 1 if either does not match. An event id is
    unique only within its source (and only for a day), so the decisions compared are one
    source's: give it with --source when more than one source used the id."""
    settings = _settings()
    # Checked before anything is read or recorded: the access log keeps the event id and the
    # source, and words typed in their place by mistake (a name) must not be kept.
    event_id = _event_id(event_id)
    _check_filters(settings, agencies=(source_agency,), event_type=None, action=None, codes={})
    justification, accountable = _typed(justification, accountable)
    key = _subject_key(settings)
    from broker.runtime._audit import grounds_ref  # the one definition the broker hashes with

    wanted = (
        grounds_ref(key, "justification", justification),
        grounds_ref(key, "accountable", accountable),
    )
    with _index(settings, db, answering=True) as index:
        found = index.grounds(event_id, source_agency)
        sources = sorted({str(g.source_agency) for g in found})
        asked: dict[str, Any] = {"event_id": event_id}
        if source_agency is not None:
            asked["source"] = source_agency
        index.record_access(
            operator=operator,
            command="grounds",
            query=asked,
            results=len(found),
            now=_now(),
        )
    if not found:
        source = f" from {source_agency}" if source_agency is not None else ""
        raise QueryError(f"no decision about event {event_id!r}{source} in the index")
    if len(sources) > 1:  # two events: one agency's grounds say nothing of the other's
        raise QueryError(
            f"event {event_id} was published by more than one source ({', '.join(sources)}): "
            "give the one in question with --source"
        )
    matched = True
    for grounds in found:
        kept = (grounds.justification_ref, grounds.accountable_ref)
        if kept == (None, None):
            verdict = "no grounds recorded (a record from before AuditRecord v3, or none stated)"
            matched = False
        else:
            same = [w is not None and w == k for w, k in zip(wanted, kept, strict=True)]
            matched = matched and all(same)
            verdict = ", ".join(
                f"{name} {'matches' if ok else 'DOES NOT match'}"
                for name, ok in zip(("justification", "accountable"), same, strict=True)
            )
        print(
            f"decision at {grounds.partition}:{grounds.offset} "
            f"({grounds.recorded_at:%Y-%m-%d %H:%M:%S} UTC, from {grounds.source_agency}): "
            f"{verdict}"
        )
    if not matched:
        raise typer.Exit(1)


@app.command("export")
def export_command(
    operator: Operator,
    out: Annotated[Path, typer.Option("--out", help="The export file (JSON Lines).")],
    db: Db = None,
    profile: ProfileName = COMPLIANCE,
) -> None:
    """Copy the audit and checkpoint topics, byte for byte, to a file ``verify --file`` checks."""
    settings = _settings()
    connection = load_profile(profile_path(settings.profiles_dir, profile))
    ring = KeyStore(settings.keys_dir).load({BROKER: BROKER}, private_for=[])
    # Taken before reading (it is the export's exported_at, which verify --file measures how
    # long records waited for a checkpoint against): the checkpoints are read first.
    now = _now()
    try:  # a settled read (no commit in flight), so that `verify --file` sees what Kafka holds
        audit, checkpoints, _ = asyncio.run(verify_live(connection, ring))
    except LogTampered as exc:  # still export: a log that does not verify is evidence too
        print(f"tiaki: warning: the audit log does NOT verify: {exc}", file=sys.stderr)
        audit, checkpoints = asyncio.run(read_log(connection))
    # Written aside and put in place only once the access is recorded: an export whose
    # recording failed is not left behind, unrecorded.
    partial = out.with_name(out.name + ".partial")
    try:
        with _owner_only(partial) as handle:
            for line in dump_lines(audit + checkpoints, exported_at=now.isoformat()):
                handle.write(line + "\n")
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise AuditError(f"cannot write {out}: {exc.strerror}") from None
    try:
        _record_if_indexed(
            settings,
            db,
            operator=operator,
            command="export",
            query={"out": out.name},
            results=len(audit) + len(checkpoints),
            now=now,
        )
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    try:
        partial.replace(out)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise AuditError(f"cannot write {out}: {exc.strerror}") from None
    print(f"exported {len(audit)} audit records and {len(checkpoints)} checkpoints to {out}")


def _owner_only(path: Path) -> io.TextIOWrapper:
    """``path`` opened for writing afresh, ``0600`` whatever the umask (an export holds every
    audit record: subject references, case references, reviewers' names). A file left there
    by an earlier run keeps its inode, so it is narrowed too; a symbolic link is refused."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)
        return open(fd, "w", encoding="utf-8")
    except BaseException:
        os.close(fd)
        raise


@app.command("access-log")
def access_log_command(operator: Operator, fmt: Format = "table", db: Db = None) -> None:
    """Every recorded read of the audit data; fails if the access log's chain is broken."""
    _check_format(fmt)
    settings = _settings()
    with _index(settings, db, existing=True) as index:
        entries = index.access_log()
        index.record_access(
            operator=operator, command="access-log", query={}, results=len(entries), now=_now()
        )
    _emit(
        fmt,
        ("seq", "at", "operator", "command", "query", "results"),
        [
            {
                "seq": a.seq,
                "at": a.at.isoformat(),
                "operator": a.operator,
                "command": a.command,
                "query": json.dumps(a.query, sort_keys=True),
                "results": a.results,
            }
            for a in entries
        ],
    )


#: The queue of ``tiaki audit countersign``: its runs fence one another (transactional id
#: ``tiaki-broker-act-checkpoints``, see :mod:`broker.runtime._operator`) and continue one
#: audit chain of that name.
COUNTERSIGN_QUEUE = "checkpoints"


@app.command("countersign")
def countersign_command(
    operator: Annotated[
        str,
        typer.Option(
            "--operator",
            envvar="TIAKI_OPERATOR",
            help="Who you are, as the audit record of this key operation names you.",
        ),
    ],
) -> None:
    """Sign each chain's newest trusted checkpoint again with the broker's current key.

    Run it where the broker's keys are, right after `tiaki keys rotate broker` and before the
    old signing key is ever revoked: a revoked key's checkpoints vouch for nothing, and a
    chain that gets no new records (a retired worker's) would stay unsigned. Only checkpoints
    that verify under a key not revoked are signed again, as they are (same chain, size, root
    and head); running it again writes nothing."""
    if not operator.strip():
        raise AuditError("--operator: give your name (the audit record names who acted)")
    tools = BrokerTools()  # the broker's keys (its private signing key) and Kafka credential
    now = _now()

    def act(records: Sequence[Record]) -> tuple[list[Outgoing], CountersignReport]:
        outputs, report = countersign([entry_of(r) for r in records], tools.ring, BROKER, now)
        if outputs:  # nothing signed, nothing to audit: a second run writes nothing
            outputs.append(_key_operation(tools, operator, report, now))
        return outputs, report

    try:
        with _client_log_held_back():
            report = tools.act(COUNTERSIGN_QUEUE, CHECKPOINT_TOPIC, act, now)
    except NotAuthorized as exc:
        raise AuditError(
            f"the broker's Kafka principal may not read {CHECKPOINT_TOPIC} ({exc}); nothing "
            f"was written. Countersigning reads it with the broker's credential, which needs "
            f"READ on {CHECKPOINT_TOPIC} (docs/compliance.md)"
        ) from None
    print(report.summary())
    if report.refused:
        # Skipped, never signed: the verifier names them as tampering.
        print(
            f"tiaki: warning: {len(report.refused)} checkpoint records do not verify and were "
            f"not countersigned ({', '.join(report.refused[:5])}"
            f"{', ...' if len(report.refused) > 5 else ''}): run `tiaki audit verify`",
            file=sys.stderr,
        )
    for label, chains in (
        ("have no trusted checkpoint (every one is under a revoked key)", report.untrusted),
        ("have trusted checkpoints of one size that disagree", report.conflicting),
    ):
        if chains:
            # A revoked key's checkpoint names its chain: whoever held the key chose the
            # name, so it is shown quoted if it holds anything a terminal would act on.
            names = ", ".join(c if c.isprintable() else repr(c) for c in chains)
            print(
                f"tiaki: warning: {len(chains)} chains {label}, not countersigned: {names}",
                file=sys.stderr,
            )


@contextlib.contextmanager
def _client_log_held_back() -> Iterator[None]:
    """Hold back aiokafka's own log records while the act runs: it logs every connection it
    could not make as an error line of its own, and the command's one-line error (``could
    not reach Kafka ...``) already says so; two lines for one failure read as two."""
    client = logging.getLogger("aiokafka")
    level = client.level
    client.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        client.setLevel(level)


def _key_operation(
    tools: BrokerTools, operator: str, report: CountersignReport, now: datetime
) -> Outgoing:
    """The audit record of a countersigning (DESIGN.md: every key operation is audited)."""
    context = replace(tools.audit_context(), actor=operator)
    detail = f"{report.summary()}; the checkpoints endorsed were signed by "
    record = audit_base(context, "key_operation", now)
    record |= {
        "source_agency": BROKER,  # whose keys: the broker's
        "outcome": "countersigned",
        "reason_codes": ["checkpoints_countersigned"],
        "detail": (detail + ", ".join(report.endorsed))[:500],
    }
    return audit_output(tools.schemas.latest("AuditRecord"), record)
