"""A reference adapter assembled from its configuration, on the in-memory transport: exports
in, sealed events out; deliveries to its sinks; a failing sink retried, then dead-lettered."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from adapters import (
    Adapter,
    AdapterConfigError,
    AdapterMetrics,
    InMemoryConnection,
    RetryPolicy,
    load_config,
)
from broker.envelope import KeyStore, Kind, Opener, Sealer, init_dev_keys
from broker.platform import ingress
from broker.transport import InMemoryCluster
from tests.unit.adapters.conftest import SCHEMAS, FakeBroker, FakeClock, eventually, example

CONFIG = """\
agency: oranga-tamariki
retry: {{max_attempts: 2, first_delay_s: 0.01, max_delay_s: 0.01}}
sources:
  - kind: folder
    path: "{{home}}/exports"
    interval_s: 0.05
sinks:
  - kind: folder
    path: "{{home}}/received"
  - kind: webhook
    url: {url}
    timeout_s: 1
"""


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("keys")
    init_dev_keys(KeyStore(folder), {"oranga-tamariki", "police"}, now=dt.datetime.now(dt.UTC))
    return folder


async def test_configured_adapter_publishes_exports_and_feeds_its_sinks(
    keys: Path, tmp_path: Path
) -> None:
    cluster = InMemoryCluster.provisioned(["oranga-tamariki", "police"])
    (tmp_path / "adapter.yaml").write_text(
        CONFIG.format(url="http://127.0.0.1:9/unreachable") + f'keys: "{keys}"\n'
    )
    config = load_config(tmp_path / "adapter.yaml")
    metrics = AdapterMetrics(CollectorRegistry())
    adapter = Adapter.from_config(
        config,
        home=tmp_path,
        schemas=SCHEMAS,
        connection=InMemoryConnection(cluster),
        metrics=metrics,
    )
    adapter.sinks = adapter.sinks[:1]  # the folder sink only, for the first part
    ring = KeyStore(keys).load(private_for=None)
    broker = FakeBroker(cluster, FakeClock(dt.datetime.now(dt.UTC)), sealer=Sealer("broker", ring))
    stop = asyncio.Event()
    running = asyncio.create_task(adapter.run(stop, poll_timeout_ms=20))
    try:
        await adapter.started.wait()
        doc = example("TaskEvent", source_agency="oranga-tamariki")
        (tmp_path / "exports").mkdir()
        (tmp_path / "exports" / "task.json").write_text(json.dumps(doc))
        delivered = await broker.deliver("oranga-tamariki")
        await eventually(
            lambda: (
                adapter.client.statistics().sent == 1
                and any((tmp_path / "received").glob(f"*_{delivered}.json"))
            )
        )
    finally:
        stop.set()
        await running
    async with cluster.reader() as reader:
        (record,) = await reader.read_all(ingress("oranga-tamariki"))
    opened = Opener("broker", ring).open(
        record.value, topic=record.topic, now=dt.datetime.now(dt.UTC), kind=Kind.INGRESS
    )
    assert opened.event_id == doc["header"]["event_id"]
    (path,) = (tmp_path / "received").glob(f"*_{delivered}.json")  # <source>_<event id>
    written = json.loads(path.read_text())
    assert written["idempotency_key"] == f"{written['source_agency']}/{delivered}"
    assert written["body"]["task_id"] == "SYN-TASK-0001"
    assert (
        metrics.registry.get_sample_value("tiaki_adapter_sent_total", {"event_type": "TaskEvent"})
        == 1
    )
    assert metrics.registry.get_sample_value("tiaki_adapter_outbox_pending") == 0
    assert (
        metrics.registry.get_sample_value(
            "tiaki_adapter_handled_total", {"event_type": "TaskEvent"}
        )
        == 1
    )


async def test_failing_sink_is_retried_then_dead_lettered(keys: Path, tmp_path: Path) -> None:
    cluster = InMemoryCluster.provisioned(["oranga-tamariki", "police"])
    (tmp_path / "adapter.yaml").write_text(
        CONFIG.format(url="http://127.0.0.1:9/unreachable") + f'keys: "{keys}"\n'
    )
    metrics = AdapterMetrics(CollectorRegistry())
    adapter = Adapter.from_config(
        load_config(tmp_path / "adapter.yaml"),
        home=tmp_path,
        schemas=SCHEMAS,
        connection=InMemoryConnection(cluster),
        metrics=metrics,
    )
    ring = KeyStore(keys).load(private_for=None)
    broker = FakeBroker(cluster, FakeClock(dt.datetime.now(dt.UTC)), sealer=Sealer("broker", ring))
    event_id = await broker.deliver("oranga-tamariki")
    stop = asyncio.Event()
    running = asyncio.create_task(adapter.run(stop, poll_timeout_ms=20))
    try:
        await eventually(lambda: bool(adapter.client.dead_letters.list()), within=10)
    finally:
        stop.set()
        await running
    (letter,) = adapter.client.dead_letters.list()
    assert letter.event_id == f"{letter.source_agency}/{event_id}"  # its idempotency key
    assert letter.attempts == 2
    assert letter.reason.startswith("SinkFailed: webhook unreachable")
    assert metrics.registry.get_sample_value("tiaki_adapter_dead_lettered_total") == 1


async def test_webhook_port_in_use_stops_the_adapter_with_one_line(
    keys: Path, tmp_path: Path
) -> None:
    blocker = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = blocker.sockets[0].getsockname()[1]
    (tmp_path / "adapter.yaml").write_text(
        f'agency: police\nkeys: "{keys}"\nsources:\n  - kind: webhook\n    listen: 127.0.0.1:{port}\n'
    )
    adapter = Adapter.from_config(
        load_config(tmp_path / "adapter.yaml"),
        home=tmp_path,
        schemas=SCHEMAS,
        connection=InMemoryConnection(InMemoryCluster.provisioned(["police"])),
    )
    try:
        with pytest.raises(AdapterConfigError, match=f"cannot listen on 127.0.0.1:{port}"):
            await asyncio.wait_for(adapter.run(asyncio.Event()), 5)
    finally:
        blocker.close()
        await blocker.wait_closed()


def test_a_configuration_check_accepts_also_builds(keys: Path, tmp_path: Path) -> None:
    """At the edges of every range ``check`` allows, the adapter builds and its retry delays
    are computed without overflow (1e20 s and port 99999 are refused by ``check``)."""
    (tmp_path / "adapter.yaml").write_text(
        f'agency: police\nkeys: "{keys}"\n'
        "retry: {max_attempts: 100, first_delay_s: 86400, max_delay_s: 86400}\n"
        "sources:\n  - kind: webhook\n    listen: 127.0.0.1:65535\n"
        "sinks:\n  - kind: webhook\n    url: http://127.0.0.1:65535/tiaki\n"
    )
    adapter = Adapter.from_config(
        load_config(tmp_path / "adapter.yaml"),
        home=tmp_path,
        schemas=SCHEMAS,
        connection=InMemoryConnection(InMemoryCluster.provisioned(["police"])),
    )
    retry = adapter.client.retry
    assert [retry.delay(n) for n in (1, 2, 99)] == [dt.timedelta(days=1)] * 3


def test_retry_delays_double_up_to_the_cap_for_any_attempt() -> None:
    retry = RetryPolicy(max_attempts=100)
    expected = [2.0**k for k in range(9)] + [300.0]
    assert [retry.delay(n).total_seconds() for n in range(1, 11)] == expected
    assert retry.delay(99) == retry.delay(10_000) == dt.timedelta(minutes=5)
