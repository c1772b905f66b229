"""Envelope benchmark: ``python -m bench.envelope_bench``.

Prints, for the X25519 and the ML-KEM-768+X25519 suites:

* seal plus open per record per recipient (µs), 1 KiB payloads, the broker sealing egress to
  three recipients, each recipient opening its own records (data-key set-up included);
* the same split into warm seal and warm open, and the one-off cost of a data key;
* public-key operations (wrap, unwrap, sign, verify together) per 10,000 records per recipient
  under the default rotation, which must be at most 10;
* with a batch signer (one Ed25519 signature per 10,000 records, one verification by an auditor).

If ``bench/codec_bench.py`` exists and offers ``run() -> dict[str, float]``, its Avro figures
are printed too. Measure ratios within one run; absolute times vary between machines and runs.
"""

from __future__ import annotations

import importlib
import os
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime

from broker.envelope import (
    Algorithm,
    BatchSigner,
    EnvelopeConfig,
    KeyRing,
    Kind,
    Opener,
    PublicKeyOps,
    RotationPolicy,
    Sealer,
    Suite,
    verify_batch,
)

RECIPIENTS = ("police", "corrections", "health-nz")
PAYLOAD = os.urandom(1024)
FINGERPRINT = bytes.fromhex("0123456789abcdef")
NOW = datetime(2025, 6, 1, tzinfo=UTC)
PER_RECIPIENT = 10_000
BUDGET = 10


def _ring() -> KeyRing:
    ring = KeyRing()
    for principal in ("broker", *RECIPIENTS):
        for algorithm in Algorithm:
            ring.generate(principal, algorithm, NOW, os.urandom)
    return ring


def _run(suite: Suite, records: int) -> dict[str, float]:
    ring = _ring()
    ops = PublicKeyOps()
    sealer = Sealer("broker", ring, config=EnvelopeConfig(suite=suite), ops=ops)
    openers = {r: Opener(r, ring, ops=ops) for r in RECIPIENTS}
    topics = {r: f"tiaki.egress.{r}" for r in RECIPIENTS}
    seal_ns = open_ns = 0
    for i in range(records):
        event_id = f"event-{i:08d}"
        for r in RECIPIENTS:
            t0 = time.perf_counter_ns()
            record = sealer.seal(
                PAYLOAD,
                kind=Kind.EGRESS,
                topic=topics[r],
                recipient=r,
                event_id=event_id,
                schema_fingerprint=FINGERPRINT,
                now=NOW,
            )
            t1 = time.perf_counter_ns()
            openers[r].open(record, topic=topics[r], now=NOW, kind=Kind.EGRESS, source="broker")
            t2 = time.perf_counter_ns()
            seal_ns += t1 - t0
            open_ns += t2 - t1
    pairs = records * len(RECIPIENTS)
    return {
        "seal_open_us": (seal_ns + open_ns) / pairs / 1000,
        "seal_us": seal_ns / pairs / 1000,
        "open_us": open_ns / pairs / 1000,
        "pk_ops_per_10k_per_recipient": ops.total / len(RECIPIENTS) * 10_000 / records,
        "record_bytes": float(len(record)),
    }


def _data_key_cost(suite: Suite, rounds: int = 50) -> float:
    """µs for one data key end to end: wrap + sign at the sender, verify + unwrap at the receiver."""
    ring = _ring()
    sealer = Sealer(
        "broker",
        ring,
        config=EnvelopeConfig(suite=suite, rotation=RotationPolicy(max_records=1)),
    )
    opener = Opener("police", ring)
    t0 = time.perf_counter_ns()
    for i in range(rounds):
        record = sealer.seal(
            b"x",
            kind=Kind.EGRESS,
            topic="tiaki.egress.police",
            recipient="police",
            event_id=f"e{i}",
            schema_fingerprint=FINGERPRINT,
            now=NOW,
        )
        opener.open(record, topic="tiaki.egress.police", now=NOW)
    return (time.perf_counter_ns() - t0) / rounds / 1000


def _batch_ops(records: int) -> tuple[int, int]:
    ring = _ring()
    signer = BatchSigner("broker", ring)
    sealer = Sealer("broker", ring)
    for i in range(records):
        signer.add(
            sealer.seal(
                PAYLOAD,
                kind=Kind.EGRESS,
                topic="tiaki.egress.police",
                recipient="police",
                event_id=f"e{i}",
                schema_fingerprint=FINGERPRINT,
                now=NOW,
            )
        )
        if signer.full:
            batch = signer.close(NOW)
            assert batch is not None
            verify_batch(batch.statement.encoded, ring, ops=signer.ops)
    return signer.ops.signs, signer.ops.verifies


def _codec_figures() -> dict[str, float] | None:
    try:
        module = importlib.import_module("bench.codec_bench")
    except ModuleNotFoundError as exc:
        if exc.name in ("bench.codec_bench",):
            return None
        raise
    run: Callable[[], dict[str, float]] | None = getattr(module, "run", None)
    return run() if run is not None else None


def main(records: int = PER_RECIPIENT) -> int:
    """Run the benchmark and print the figures; return 1 if the public-key budget is exceeded."""
    print(f"envelope: 1 KiB payloads, {len(RECIPIENTS)} recipients, {records} records each")
    over = False
    for suite in Suite:
        _run(suite, 200)  # warm up allocators and OpenSSL
        figures = _run(suite, records)
        per_key = _data_key_cost(suite)
        ops = figures["pk_ops_per_10k_per_recipient"]
        over |= ops > BUDGET
        print(f"  suite {suite.value}:")
        print(f"    seal+open per record per recipient   {figures['seal_open_us']:8.2f} µs")
        print(f"      seal {figures['seal_us']:.2f} µs, open {figures['open_us']:.2f} µs")
        print(f"    sealed record size (1 KiB payload)   {figures['record_bytes']:8.0f} B")
        print(f"    one data key (wrap+sign+verify+unwrap) {per_key:6.1f} µs")
        print(f"    public-key ops per 10,000 records per recipient: {ops:.1f} (budget {BUDGET})")
    signs, verifies = _batch_ops(records)
    print(
        f"  batch signatures (10,000 records per batch): {signs} sign + {verifies} verify "
        f"per {records} records"
    )
    codec = _codec_figures()
    if codec is None:
        print("codec: bench/codec_bench.py not present; skipped")
    else:
        print("codec (Avro):")
        for name, value in codec.items():
            print(f"  {name:40s} {value:8.2f}")
    if over:
        print("FAIL: public-key operations exceed the budget", file=sys.stderr)
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main())
