"""An event too large for a Kafka record, once sealed and keyed by its case id, is refused at
``publish``; one stored before that check, or refused by Kafka for its size anyway, moves to
the dead letters rather than being retried for ever in front of every row behind it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aiokafka import errors as kafka_errors

from adapters import InMemoryConnection, InvalidEvent
from adapters._client import MAX_RECORD_BYTES, RECORD_FRAMING, SEAL_OVERHEAD
from broker.codec import encode, from_json
from broker.envelope import BROKER, Kind, Sealer
from broker.envelope._seal import DEFAULT_MAX_PAYLOAD
from broker.platform import ingress
from broker.runtime import MAX_RECORD_BYTES as BROKER_MAX_RECORD_BYTES
from broker.runtime._pipeline import RECORD_FRAMING as BROKER_RECORD_FRAMING
from broker.transport import InMemoryCluster
from broker.transport._kafka import _translated
from tests.unit.adapters.conftest import RING, SCHEMAS, T0, FakeClock, example, make_client
from tests.unit.adapters.test_client import ingress_ids

#: A case id a mis-mapped CSV column could give: a whole free-text cell.
LONG_CASE = "SYN-CASE-" + "X" * 8000


def test_the_limits_are_the_brokers() -> None:
    assert MAX_RECORD_BYTES == BROKER_MAX_RECORD_BYTES
    assert RECORD_FRAMING == BROKER_RECORD_FRAMING
    assert SEAL_OVERHEAD == MAX_RECORD_BYTES - DEFAULT_MAX_PAYLOAD  # the envelope's own room


def _task(case_id: str, size: int) -> dict[str, Any]:
    """A TaskEvent of ``size`` bytes encoded (to within a byte or two)."""
    doc = example("TaskEvent", source_agency="police", case_id=case_id)
    doc["description"] = ""
    doc["description"] = "D" * (size - _size(doc))
    return doc


def _size(doc: dict[str, Any]) -> int:
    schema = SCHEMAS.latest("TaskEvent")
    return len(encode(schema, from_json(schema, doc)))


async def test_a_long_case_id_counts_towards_the_limit(
    connection: InMemoryConnection, clock: FakeClock, tmp_path: Path
) -> None:
    """An event an envelope carries, but not with its 8 KB case id as the Kafka key."""
    doc = _task(LONG_CASE, DEFAULT_MAX_PAYLOAD - 1000)
    async with make_client("police", connection, clock, tmp_path) as client:
        with pytest.raises(InvalidEvent) as refused:
            await client.publish("TaskEvent", doc)
        assert client.statistics().pending == 0
    size = _size(doc)
    limit = MAX_RECORD_BYTES - SEAL_OVERHEAD - RECORD_FRAMING - len(LONG_CASE)
    assert str(refused.value) == (
        f"TaskEvent: the event is {size} bytes encoded, more than the {limit} bytes it may be"
        f" (a {MAX_RECORD_BYTES}-byte record less {SEAL_OVERHEAD} for the envelope,"
        f" {RECORD_FRAMING} for Kafka's framing and {len(LONG_CASE)} for the case id)"
    )


async def test_the_largest_event_publish_accepts_fits_a_record_once_sealed(
    connection: InMemoryConnection, cluster: InMemoryCluster, clock: FakeClock, tmp_path: Path
) -> None:
    limit = MAX_RECORD_BYTES - SEAL_OVERHEAD - RECORD_FRAMING - len(LONG_CASE)
    doc = _task(LONG_CASE, limit)
    while _size(doc) > limit:  # a length's varint may have grown by a byte
        doc["description"] = doc["description"][:-1]
    async with make_client("police", connection, clock, tmp_path) as client:
        event_id = await client.publish("TaskEvent", doc)
        assert await client.send_pending() == 1
        assert client.dead_letters.list() == []
        too_big = _task(LONG_CASE, limit + 1)
        while _size(too_big) <= limit:
            too_big["description"] += "D"
        with pytest.raises(InvalidEvent, match="more than the"):
            await client.publish("TaskEvent", too_big)
    async with cluster.reader() as reader:
        (record,) = await reader.read_all(ingress("police"))
    assert len(record.value) + len(record.key or b"") + RECORD_FRAMING <= MAX_RECORD_BYTES
    assert await ingress_ids(cluster, "police") == [event_id]


async def test_a_stored_row_too_large_with_its_case_id_is_dead_lettered_unsent(
    connection: InMemoryConnection, cluster: InMemoryCluster, clock: FakeClock, tmp_path: Path
) -> None:
    """A row an older SDK stored (it counted the payload only) never reaches Kafka, which
    would refuse it on every attempt: it moves aside and the rows behind it are sent."""
    schema = SCHEMAS.latest("TaskEvent")
    doc = _task(LONG_CASE, DEFAULT_MAX_PAYLOAD - 1000)
    payload = encode(schema, from_json(schema, doc))
    big_id = doc["header"]["event_id"]
    async with make_client("police", connection, clock, tmp_path) as client:
        stored = client._state.enqueue(
            big_id, "TaskEvent", LONG_CASE, schema.fingerprint, payload, 0
        )
        assert stored == "stored"
        after = await client.publish("TaskEvent", example("TaskEvent", source_agency="police"))
        assert await client.send_pending() == 1
        (letter,) = client.dead_letters.list()
        assert (letter.event_id, letter.reason) == (f"police/{big_id}", "cannot send: oversized")
        assert (tmp_path / "dead-letters" / f"police_{big_id}.unsent").read_bytes() == payload
        assert client.statistics().pending == 0
    assert await ingress_ids(cluster, "police") == [after]


async def test_kafka_refusing_a_record_for_its_size_dead_letters_it_not_the_queue(
    connection: InMemoryConnection, cluster: InMemoryCluster, clock: FakeClock, tmp_path: Path
) -> None:
    """aiokafka's own size check (or the cluster's) refused the record: the same record is
    refused every time, so it is no "Kafka unavailable" to wait out."""
    real = connection.publisher

    class RefusesTheBigOne:
        def __init__(self) -> None:
            self.inner = real()

        async def start(self) -> None:
            await self.inner.start()

        async def close(self) -> None:
            await self.inner.close()

        async def publish(
            self, topic: str, key: bytes | None, value: bytes, headers: Any = ()
        ) -> Any:
            if key == b"SYN-CASE-BIG":
                with _translated():  # as the Kafka transport raises it
                    raise kafka_errors.MessageSizeTooLargeError("synthetic")
            return await self.inner.publish(topic, key, value, headers)

    connection.publisher = RefusesTheBigOne  # type: ignore[method-assign,assignment]
    async with make_client("police", connection, clock, tmp_path) as client:
        big = await client.publish(
            "TaskEvent", example("TaskEvent", source_agency="police", case_id="SYN-CASE-BIG")
        )
        after = await client.publish("TaskEvent", example("TaskEvent", source_agency="police"))
        assert await client.send_pending() == 1
        (letter,) = client.dead_letters.list()
        assert (letter.event_id, letter.reason) == (f"police/{big}", "cannot send: oversized")
        assert client.statistics().pending == 0
    assert await ingress_ids(cluster, "police") == [after]


def test_sealing_adds_less_than_the_room_kept_for_it() -> None:
    """The largest envelope overhead (the hybrid suite's announcement, a long agency id)
    stays within :data:`SEAL_OVERHEAD`."""
    from broker.envelope import EnvelopeConfig, Suite

    for suite in Suite:
        sealer = Sealer("police", RING, config=EnvelopeConfig(suite=suite))
        sealed = sealer.seal(
            b"x" * 1000,
            kind=Kind.INGRESS,
            topic=ingress("police"),
            recipient=BROKER,
            event_id="00000000-0000-4000-8000-000000000001",
            schema_fingerprint=b"f" * 32,
            now=T0,
        )
        assert len(sealed) - 1000 < SEAL_OVERHEAD / 2
