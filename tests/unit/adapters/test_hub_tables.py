"""A regional hub receives its monthly aggregate tables through the SDK: the client of an
agency whose registry kind is ``regional_hub`` also reads ``tiaki.hub.<region>``, and each
table sealed to it (as ``tiaki hub publish`` seals it) reaches the handler and the sinks like
any delivery, from ``broker``. The copies sealed to the region's other hubs are passed over."""

from __future__ import annotations

import datetime as dt
import json
import random
import uuid
from pathlib import Path
from typing import Any

import pytest

from adapters import AdapterClient, FolderSink, InMemoryConnection, Received
from adapters._cli import _adapter, _load
from broker._settings import Settings
from broker.aggregate._publish import Publication, publish, rounding_key
from broker.codec import encode
from broker.envelope import Algorithm, KeyRing, KeyStore, Kind, Sealer, init_dev_keys
from broker.platform import egress, hub
from broker.runtime._audit import AuditContext
from broker.transport import InMemoryCluster
from tests.unit.adapters.conftest import ROOT, SCHEMAS, T0, FakeBroker, FakeClock, make_ring

HUB = "canterbury-hub"
OTHER_HUB = "canterbury-hub-north"  # a second hub of the region (synthetic)
REGION = "canterbury"
TOPIC = hub(REGION)
SUBJECT_KEY = b"synthetic-subject-key-not-for-production-0000"


@pytest.fixture
def ring() -> KeyRing:
    ring = make_ring()
    rand = random.Random(17).randbytes
    for agency in (HUB, OTHER_HUB):
        for algorithm in Algorithm:
            ring.generate(agency, algorithm, T0, rand)
    return ring


@pytest.fixture
def cluster() -> InMemoryCluster:
    cluster = InMemoryCluster.provisioned([HUB, OTHER_HUB])
    cluster.create_topic(TOPIC, 1)  # tiaki provision makes one per hub region
    return cluster


def _client(
    cluster: InMemoryCluster, ring: KeyRing, clock: FakeClock, state: Path, **options: Any
) -> AdapterClient:
    return AdapterClient(
        HUB,
        InMemoryConnection(cluster),
        ring,
        SCHEMAS,
        state,
        clock=clock,
        send_in_background=False,
        **options,
    )


async def _publish_table(
    cluster: InMemoryCluster, ring: KeyRing, now: dt.datetime, month: str = "2025-05"
) -> Publication:
    """What ``tiaki hub publish`` writes to the hub topic: the table sealed to each hub."""
    publication = publish(
        {("Christchurch City", "European"): 8, ("Christchurch City", "Pacific Peoples"): 15},
        region=REGION,
        month=month,
        measure="family_harm_episodes",
        hubs=[HUB, OTHER_HUB],
        operator="Operator (synthetic)",
        justification="monthly hub report",
        approval=None,
        key=rounding_key(SUBJECT_KEY),
        schemas=SCHEMAS,
        sealer=Sealer("broker", ring),
        context=AuditContext(SUBJECT_KEY, None),
        now=now,
    )
    async with cluster.publisher() as publisher:
        for out in publication.outputs:
            if out.topic == TOPIC:
                await publisher.publish(out.topic, out.key, out.value or b"")
    return publication


def _event_id(table_id: str, now: dt.datetime) -> str:
    """The event id ``tiaki hub publish`` gives a table published at ``now``."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"tiaki:{table_id}:{now.isoformat()}"))


async def test_a_hub_receives_its_table_as_a_delivery_from_the_broker(
    cluster: InMemoryCluster, ring: KeyRing, clock: FakeClock, tmp_path: Path
) -> None:
    publication = await _publish_table(cluster, ring, clock())
    seen: list[Received] = []
    sink = FolderSink(tmp_path / "received")

    async def handle(event: Received) -> None:
        seen.append(event)
        await sink.deliver(event)

    async with _client(cluster, ring, clock, tmp_path / "state", hub_region=REGION) as client:
        assert client.topics == (egress(HUB), TOPIC)
        await client.receive(handle)
        stats = client.statistics()
        assert client.dead_letters.list() == []
    (event,) = seen
    event_id = _event_id(publication.table_id, clock())
    assert (event.event_type, event.source_agency, event.event_id) == (
        "AggregateTable",
        "broker",
        event_id,
    )
    assert event.idempotency_key == f"broker/{event_id}"
    assert event.shared_at == event.decided_at == clock()
    assert event.body["table_id"] == "canterbury/2025-05/family_harm_episodes"
    assert event.body["governance"] == "withheld"
    assert event.body["published_at"] == "2025-06-01T09:00:00.000Z"
    assert {"row", "column", "value", "suppressed"} == set(event.body["cells"][0])
    # The region's other hub's copy is passed over: not received, not a dead letter.
    assert (stats.received, stats.handled, stats.skipped, stats.dead_lettered) == (1, 1, 1, 0)
    written = json.loads((tmp_path / "received" / f"broker_{event_id}.json").read_text())
    assert written["event_type"] == "AggregateTable"
    assert written["body"] == dict(event.body)


async def test_each_hub_of_the_region_opens_its_own_copy(
    cluster: InMemoryCluster, ring: KeyRing, clock: FakeClock, tmp_path: Path
) -> None:
    await _publish_table(cluster, ring, clock())
    tables: dict[str, Any] = {}
    for agency in (HUB, OTHER_HUB):
        async with AdapterClient(
            agency,
            InMemoryConnection(cluster),
            ring,
            SCHEMAS,
            tmp_path / agency,
            clock=clock,
            send_in_background=False,
            hub_region=REGION,
        ) as client:
            seen: list[Received] = []
            await client.receive(seen.append)
            assert client.statistics().skipped == 1
        (event,) = seen
        tables[agency] = event.body
    assert tables[HUB] == tables[OTHER_HUB]


async def test_a_table_read_again_reaches_the_handler_once(
    cluster: InMemoryCluster, ring: KeyRing, clock: FakeClock, tmp_path: Path
) -> None:
    publication = await _publish_table(cluster, ring, clock())
    async with cluster.publisher() as publisher:  # the same records written again
        for out in publication.outputs:
            if out.topic == TOPIC:
                await publisher.publish(out.topic, out.key, out.value or b"")
    seen: list[Received] = []
    async with _client(cluster, ring, clock, tmp_path / "state", hub_region=REGION) as client:
        await client.receive(seen.append)
        assert client.statistics().duplicates == 1
    assert len(seen) == 1


async def test_the_hub_topic_is_read_beside_the_egress_topic(
    cluster: InMemoryCluster, ring: KeyRing, clock: FakeClock, tmp_path: Path
) -> None:
    await _publish_table(cluster, ring, clock())
    await FakeBroker(cluster, clock, sealer=Sealer("broker", ring)).deliver(HUB)
    seen: list[Received] = []
    async with _client(cluster, ring, clock, tmp_path / "state", hub_region=REGION) as client:
        for _ in range(3):
            await client.receive(seen.append)
    assert sorted(e.event_type for e in seen) == ["AggregateTable", "TaskEvent"]


async def test_without_a_hub_region_the_hub_topic_is_not_read(
    cluster: InMemoryCluster, ring: KeyRing, clock: FakeClock, tmp_path: Path
) -> None:
    await _publish_table(cluster, ring, clock())
    async with _client(cluster, ring, clock, tmp_path / "state") as client:
        assert client.topics == (egress(HUB),)
        assert await client.receive(lambda event: None) == 0


async def test_a_table_a_year_old_is_still_handed_over(
    cluster: InMemoryCluster, ring: KeyRing, clock: FakeClock, tmp_path: Path
) -> None:
    """The hub topic keeps tables 400 days for the hub to read back: the egress topic's age
    bound does not apply to it."""
    await _publish_table(cluster, ring, clock())
    clock.advance(days=360)
    seen: list[Received] = []
    async with _client(cluster, ring, clock, tmp_path / "state", hub_region=REGION) as client:
        await client.receive(seen.append)
    assert [e.event_type for e in seen] == ["AggregateTable"]


async def test_a_hub_record_that_is_not_a_table_is_dead_lettered(
    cluster: InMemoryCluster, ring: KeyRing, clock: FakeClock, tmp_path: Path
) -> None:
    notice = SCHEMAS.latest("RefusalNotice")
    sealed = Sealer("broker", ring).seal(
        encode(
            notice,
            {
                "topic": "tiaki.ingress.canterbury-hub",
                "partition": 0,
                "offset": 0,
                "reason": "tampered",
                "detail": "synthetic refusal",
                "event_id": None,
                "event_type": None,
                "refused_at": clock(),
            },
        ),
        kind=Kind.EGRESS,
        topic=TOPIC,
        recipient=HUB,
        event_id=str(uuid.uuid4()),
        schema_fingerprint=notice.fingerprint,
        now=clock(),
    )
    async with cluster.publisher() as publisher:
        await publisher.publish(TOPIC, b"SYN", sealed)
    seen: list[Received] = []
    async with _client(cluster, ring, clock, tmp_path / "state", hub_region=REGION) as client:
        await client.receive(seen.append)
        (letter,) = client.dead_letters.list()
        assert client.statistics().refused == 0
    assert seen == []
    assert letter.reason == "cannot open: unknown_schema"


# -- tiaki adapter run: the hub region comes from the registry -----------------------------


@pytest.mark.parametrize(
    ("agency", "topics"),
    [
        (HUB, (egress(HUB), TOPIC)),  # regional_hub in canterbury, in the shipped registry
        ("police", (egress("police"),)),
    ],
)
def test_the_command_reads_the_hub_topic_of_a_registered_regional_hub(
    agency: str, topics: tuple[str, ...], tmp_path: Path
) -> None:
    keys = tmp_path / "keys"
    init_dev_keys(KeyStore(keys), {agency}, now=dt.datetime.now(dt.UTC))
    config = tmp_path / "adapter.yaml"
    config.write_text(f'agency: {agency}\nkeys: "{keys}"\nstate: "{tmp_path}/state"\n')
    settings = Settings(
        home=tmp_path, registry=ROOT / "policies" / "agencies.yaml", schemas_dir=ROOT / "schemas"
    )
    loaded, registered = _load(config, agency, settings)
    adapter = _adapter(
        loaded, registered, settings, connection=InMemoryConnection(InMemoryCluster())
    )
    assert adapter.client.topics == topics
