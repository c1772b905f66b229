"""What ``publish`` fills in: an event type given by its full name is the same event type, and
a header field given as null is one not given (a CSV column left empty, an export that writes
every field)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from adapters import InMemoryConnection, load_config
from adapters._metrics import AdapterMetrics
from adapters._sources import FolderSource
from broker.codec import decode
from broker.envelope import Kind, Opener
from broker.platform import ingress
from broker.transport import InMemoryCluster
from tests.unit.adapters.conftest import RING, SCHEMAS, FakeClock, example, make_client


async def _sent_header(cluster: InMemoryCluster, clock: FakeClock) -> dict[str, object]:
    async with cluster.reader() as reader:
        (record,) = await reader.read_all(ingress("police"))
    opened = Opener("broker", RING).open(
        record.value, topic=record.topic, now=clock(), kind=Kind.INGRESS
    )
    event = decode(opened.payload, SCHEMAS.by_fingerprint(opened.schema_fingerprint))
    header: dict[str, object] = event["header"]
    return header


async def test_an_event_type_given_by_its_full_name_is_published(
    connection: InMemoryConnection, cluster: InMemoryCluster, clock: FakeClock, tmp_path: Path
) -> None:
    doc = example("TaskEvent", source_agency="police")
    del doc["header"]["event_type"]
    client = make_client("police", connection, clock, tmp_path)
    client.metrics = AdapterMetrics(CollectorRegistry())
    async with client:
        await client.publish("nz.tiaki.TaskEvent", doc)
        assert await client.send_pending() == 1
        accepted = client.metrics.registry.get_sample_value(
            "tiaki_adapter_accepted_total", {"event_type": "TaskEvent"}
        )
        assert accepted == 1
    assert (await _sent_header(cluster, clock))["event_type"] == "nz.tiaki.TaskEvent"


@pytest.mark.parametrize(
    "field", ["event_id", "event_type", "source_agency", "occurred_at", "recorded_at"]
)
async def test_a_null_header_field_is_filled_in_as_if_absent(
    connection: InMemoryConnection,
    cluster: InMemoryCluster,
    clock: FakeClock,
    tmp_path: Path,
    field: str,
) -> None:
    doc = example("TaskEvent", source_agency="police")
    doc["header"][field] = None
    async with make_client("police", connection, clock, tmp_path) as client:
        event_id = await client.publish("TaskEvent", doc)
        await client.send_pending()
    header = await _sent_header(cluster, clock)
    assert str(header["event_id"]) == event_id
    assert header["event_type"] == "nz.tiaki.TaskEvent"
    assert header["source_agency"] == "police"
    if field in ("occurred_at", "recorded_at"):
        assert header[field] == clock()


async def test_null_times_filled_in_do_not_make_a_reread_export_other_content(
    connection: InMemoryConnection, clock: FakeClock, tmp_path: Path
) -> None:
    """As with absent times: the times ``publish`` fills in are not part of the content."""
    doc = example("TaskEvent", source_agency="police")
    doc["header"] |= {"occurred_at": None, "recorded_at": None, "source_agency": None}
    async with make_client("police", connection, clock, tmp_path) as client:
        event_id = await client.publish("TaskEvent", doc)
        clock.advance(minutes=5)
        assert await client.publish("TaskEvent", doc) == event_id
        assert client.statistics().accepted == 1


def test_a_configured_full_event_type_name_is_read_as_the_short_name(tmp_path: Path) -> None:
    config = tmp_path / "adapter.yaml"
    config.write_text(
        "agency: police\nsources:\n  - kind: folder\n    path: /srv/synthetic\n"
        "    format: csv\n    event_type: nz.tiaki.TaskEvent\n"
    )
    (source,) = load_config(config, home=tmp_path, schemas=SCHEMAS).sources
    assert source.event_type == "TaskEvent"  # type: ignore[union-attr]


async def test_a_csv_source_configured_with_the_full_name_publishes_its_rows(
    connection: InMemoryConnection, cluster: InMemoryCluster, clock: FakeClock, tmp_path: Path
) -> None:
    template = example("TaskEvent", source_agency="police")
    del template["header"]["event_type"], template["header"]["event_id"]
    exports = tmp_path / "exports"
    exports.mkdir()
    (exports / "tasks.csv").write_text(f"case,id\nSYN-CASE-C1,{uuid.uuid4()}\n")
    source = FolderSource(
        "police",
        exports,
        format="csv",
        event_type="nz.tiaki.TaskEvent",  # as an unchecked configuration would pass it
        template=template,
        columns={"case": "header.case_id", "id": "header.event_id"},
    )
    async with make_client("police", connection, clock, tmp_path / "state") as client:
        result = await source.scan(client.publish)
        await client.send_pending()
    assert (result.published, result.rejected) == (1, 0)
    assert (await _sent_header(cluster, clock))["case_id"] == "SYN-CASE-C1"
