"""Audit index benchmark: ``python -m bench.audit_bench [--records N]``.

Prints:

* index throughput (target at least 20,000 records/s): chained AuditRecord v2 records, as the
  broker writes them (decision records with three candidate recipients and two subjects,
  plus single-recipient escalations), decoded from Avro and written to SQLite by
  :meth:`AuditIndex.add` in batches of 20,000 -- the path ``tiaki audit index`` takes. Encoding
  and chaining them happen before the clock starts;
* the index is then filled to ``--records`` (default 1,000,000) through the bulk path, to keep
  the run short: each further record reuses the encoded body of one of the first records
  (queries decode it exactly as a real one) with its own position, time and two fresh
  random subjects; then person-query latency is measured over 1,000 random people among
  100,000 (target p99 at most 50 ms on SQLite): the full
  :meth:`AuditIndex.query` by subject reference, rows built, as ``tiaki audit query --person``
  runs it. For the layout's trade-off, the times of queries by recipient from a time (the
  decision table's own order) and by outcome and legal basis (a scan of the decision rows)
  follow.

Each throughput setting runs ``--repeats`` times (default 3), each into a fresh database; the
best run is reported as the code's rate with the median beside it: on a shared machine other
load only ever slows a run, and here it slows CPU time as much as the wall clock.

Everything is synthetic; the database lives in a temporary folder. Measure ratios within one
run: absolute times vary between machines and with load.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from broker.audit import AuditIndex, ChainHead, ChainWriter, LogEntry, Query, index_rows
from broker.codec import encode, load_schemas
from broker.envelope._replay import to_ms
from broker.runtime._audit import subject_ref

ROOT = Path(__file__).resolve().parents[1]
KEY = b"bench-subject-key-0123456789abcdef"
PEOPLE = 100_000
RECIPIENTS = ("corrections", "health-nz", "msd", "oranga-tamariki", "police")
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def person(n: int) -> str:
    return subject_ref(KEY, "NHI", f"ZZZ{n:07d}")


def record(n: int, refs: list[str], rng: random.Random) -> dict[str, Any]:
    decision = n % 4 != 3
    picked = rng.sample(RECIPIENTS, 3)
    return {
        "audit_id": uuid.UUID(int=n),
        "recorded_at": T0 + timedelta(milliseconds=n * 50),
        "action": "decision" if decision else "escalation",
        "event_id": f"evt-{n}",
        "event_type": "FamilyHarmEpisodeReport" if decision else "InformationRequest",
        "schema_fingerprint": "ab" * 32,
        "case_ref": f"{n // 7:064x}",
        "actor": "broker",
        "source_agency": "police",
        "recipient": None if decision else "msd",
        "outcome": None if decision else "escalated",
        "route": None,
        "legal_basis": None,
        "purpose": None,
        "consent": "given",
        "person_told": None,
        "rule_ids": [],
        "reason_codes": [] if decision else ["request_unanswered"],
        "obligations": [],
        "field_actions": {},
        "subject_refs": [refs[rng.randrange(PEOPLE)], refs[rng.randrange(PEOPLE)]],
        "policy_hash": "cd" * 32,
        "detail": None,
        "decisions": [
            {
                "recipient": r,
                "outcome": "share" if i == 0 else "deny",
                "route": "fva_s20" if i == 0 else None,
                "legal_basis": "fva_s20" if i == 0 else None,
                "purpose": "fv_risk_needs_assessment" if i == 0 else None,
                "person_told": None,
                "rule_ids": ["FVA-SHARE-1"] if i == 0 else ["DEFAULT-DENY"],
                "reason_codes": [] if i == 0 else ["no_permit"],
                "obligations": [],
                "field_actions": {"header.case_id": "keep", "narrative": "drop"} if i == 0 else {},
            }
            for i, r in enumerate(picked)
        ]
        if decision
        else [],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bench.audit_bench")
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--throughput-records", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3, help="throughput runs per setting")
    parser.add_argument(
        "--workers", type=int, default=2, help="decoding processes (tiaki audit index --workers)"
    )
    args = parser.parse_args([] if argv is None else argv)

    schemas = load_schemas(ROOT / "schemas")
    schema = schemas.latest("AuditRecord")
    header = schema.fingerprint_hex.encode()
    writer_hex = schema.fingerprint_hex
    rng = random.Random(7)
    refs = [person(n) for n in range(PEOPLE)]
    writer = ChainWriter(ChainHead("tiaki-broker-bench"))

    n_full = min(args.throughput_records, args.records)
    entries: list[LogEntry] = []
    templates: list[tuple[dict[str, Any], bytes]] = []
    for n in range(n_full):
        rec = record(n, refs, rng)
        value = encode(schema, rec)
        if len(templates) < 10_000:
            templates.append((rec, value))
        headers = (("tiaki-schema", header), *writer.link(value, header))
        entries.append(LogEntry("tiaki.audit", n % 3, n // 3, None, value, headers, 0))

    with tempfile.TemporaryDirectory() as folder:
        kept = max(1, args.workers)
        for workers in sorted({1, kept}):
            rates: list[float] = []
            for run in range(args.repeats):
                index = AuditIndex.open(Path(folder) / f"bench-{workers}-{run}.sqlite", schemas)
                if workers > 1:
                    index.add(entries[:1], workers=workers)  # start the processes untimed
                started, cpu = time.perf_counter(), time.process_time()
                for start in range(0, len(entries), 20_000):
                    index.add(entries[start : start + 20_000], workers=workers)
                elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
                rates.append(n_full / elapsed)
                _, decisions, subjects = index.count()
                # On a shared machine the wall clock includes waiting for a core; the CPU
                # time of this process (all of the work when it decodes itself) shows the
                # rate one unshared core gives.
                per_cpu = f", {n_full / cpu:,.0f} per CPU-second" if workers == 1 else ""
                print(
                    f"  run {run + 1}, {workers} decoding process(es): {rates[-1]:,.0f} "
                    f"records/s{per_cpu} ({n_full:,} records, {decisions:,} decision rows, "
                    f"{subjects:,} subject rows in {elapsed:.1f} s)"
                )
                if workers != kept or run < args.repeats - 1:
                    index.close()
            # The best run is what the code costs; slower runs measure the machine's other
            # load (CPU time tracks wall time here: the same work costs more cycles then).
            print(
                f"index throughput, {workers} decoding process(es): best {max(rates):,.0f} "
                f"records/s, median {statistics.median(rates):,.0f} of {len(rates)} runs "
                f"(target >= 20,000: {'MET' if max(rates) >= 20_000 else 'MISSED'})"
            )

        started = time.perf_counter()
        n = n_full
        while n < args.records:
            batch_r: list[tuple[Any, ...]] = []
            batch_d: list[tuple[Any, ...]] = []
            batch_s: list[tuple[str, int]] = []
            for m in range(n, min(n + 50_000, args.records)):
                template, value = templates[m % len(templates)]
                rec = template | {
                    "recorded_at": T0 + timedelta(milliseconds=m * 50),
                    "subject_refs": [refs[rng.randrange(PEOPLE)], refs[rng.randrange(PEOPLE)]],
                }
                row, rows, subs = index_rows(
                    LogEntry("tiaki.audit", m % 3, m // 3, None, value, (), 0), rec, writer_hex
                )
                batch_r.append(row)
                batch_d.extend(rows)
                batch_s.extend(subs)
            index.add_rows(batch_r, batch_d, batch_s)
            n = min(n + 50_000, args.records)
        records, decisions, subjects = index.count()
        print(
            f"filled to {records:,} records ({decisions:,} decision rows, {subjects:,} subject "
            f"rows) in {time.perf_counter() - started:.1f} s (bulk path)"
        )

        latencies: list[float] = []
        found = 0
        for _ in range(args.queries):
            ref = refs[rng.randrange(PEOPLE)]
            t = time.perf_counter()
            rows_found = index.query(Query(subject_ref=ref))
            latencies.append((time.perf_counter() - t) * 1000)
            found += len(rows_found)
        latencies.sort()
        p50 = statistics.median(latencies)
        p99 = latencies[int(len(latencies) * 0.99) - 1]
        print(f"load average during the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
        print(
            f"person query over {records:,} records: p50 {p50:.2f} ms, p99 {p99:.2f} ms, max "
            f"{latencies[-1]:.2f} ms ({args.queries} people, {found / args.queries:.0f} rows "
            f"each on average; target p99 <= 50 ms)"
        )
        span_ms = records * 50  # the records are 50 ms apart
        for label, queries in (
            (
                "a recipient from a time (first 1,000 rows)",
                [
                    Query(recipient=RECIPIENTS[i % len(RECIPIENTS)], since_ms=to_ms(T0) + at)
                    for i, at in enumerate(range(0, span_ms, span_ms // 10))
                ],
            ),
            ("outcome and legal basis (a scan)", [Query(outcome="share", legal_basis="fva_s20")]),
        ):
            times, rows = [], 0
            for q in queries:
                t = time.perf_counter()
                rows += len(index.query(q))
                times.append((time.perf_counter() - t) * 1000)
            print(
                f"{label} over {records:,} records: median {statistics.median(times):.0f} ms, "
                f"max {max(times):.0f} ms ({len(queries)} queries, {rows / len(queries):,.0f} "
                "rows each)"
            )
        index.close()


if __name__ == "__main__":
    main(sys.argv[1:])
