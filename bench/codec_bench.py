"""Avro encode and decode cost per record, for a realistic ~1 KiB event.

Run ``python -m bench.codec_bench``. :func:`run` returns the figures (µs per record) so the
envelope benchmark can print them beside its own. Figures are for this machine and this run;
compare ratios within a run, not absolute times across runs (DESIGN.md, "Performance method").
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import fastavro

from broker.codec import decode, encode, from_json, load_schemas

SCHEMAS = Path(__file__).resolve().parents[1] / "schemas"
TARGET_BYTES = 1024


def fastavro_c_extension() -> bool:
    """Whether fastavro's compiled writer and reader are in use (not the pure-Python fallback)."""
    return (
        fastavro.schemaless_writer.__module__ == "fastavro._write"
        and fastavro.schemaless_reader.__module__ == "fastavro._read"
    )


def _per_record_us(call: Callable[[], object], seconds: float = 0.5) -> float:
    """Best of five timed batches, in µs per call."""
    batch = 1
    while True:  # size a batch to take about a tenth of the budget
        start = time.perf_counter()
        for _ in range(batch):
            call()
        elapsed = time.perf_counter() - start
        if elapsed > seconds / 10:
            break
        batch *= 2
    best = elapsed / batch
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(batch):
            call()
        best = min(best, (time.perf_counter() - start) / batch)
    return best * 1e6


def run() -> dict[str, float]:
    """Encode, decode and decode-with-resolution µs per record, and the record size in bytes."""
    schemas = load_schemas(SCHEMAS)
    v1, v2 = schemas.versions("FamilyHarmEpisodeReport")
    document = json.loads((SCHEMAS / "examples" / "FamilyHarmEpisodeReport.json").read_text())
    record = from_json(v2, document)
    size = len(encode(v2, record))
    record["narrative"] = str(record["narrative"]) + " Synthetic." * ((TARGET_BYTES - size) // 11)
    payload = encode(v2, record)
    old = {
        k: v for k, v in record.items() if k not in ("strangulation_indicated", "weapons_involved")
    }
    old_payload = encode(v1, old)
    return {
        "record_bytes": float(len(payload)),
        "encode_us": _per_record_us(lambda: encode(v2, record)),
        "decode_us": _per_record_us(lambda: decode(payload, v2)),
        "decode_v1_as_v2_us": _per_record_us(lambda: decode(old_payload, v1, v2)),
        "fastavro_c_extension": float(fastavro_c_extension()),
    }


def main() -> None:
    """Print the figures."""
    figures = run()
    print(f"fastavro {fastavro.__version__}, C extension loaded: {fastavro_c_extension()}")
    print(f"record: nz.tiaki.FamilyHarmEpisodeReport v2, {figures['record_bytes']:.0f} bytes")
    print(f"  encode (validating):          {figures['encode_us']:8.2f} µs/record")
    print(f"  decode (same version):        {figures['decode_us']:8.2f} µs/record")
    print(f"  decode (v1 written, v2 read): {figures['decode_v1_as_v2_us']:8.2f} µs/record")


if __name__ == "__main__":
    main()
