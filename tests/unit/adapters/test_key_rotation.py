"""Key rotation as docs/adapters.md describes it: after an agency rotates, what the broker
sealed to its old (now retiring) encryption key still opens, new deliveries use the new key,
and its publishes are signed with the new signing key, which the broker accepts."""

from __future__ import annotations

import random
from pathlib import Path

from adapters import AdapterClient, InMemoryConnection, Received, RetryPolicy
from broker.envelope import Kind, Opener, Purpose, Sealer
from broker.platform import ingress
from broker.transport import InMemoryCluster
from tests.unit.adapters.conftest import SCHEMAS, FakeBroker, FakeClock, example, make_ring


async def test_rotation_keeps_in_flight_deliveries_and_switches_to_new_keys(
    cluster: InMemoryCluster, clock: FakeClock, tmp_path: Path
) -> None:
    ring = make_ring()  # this test's own: rotation changes it
    broker = FakeBroker(cluster, clock, sealer=Sealer("broker", ring))
    before = await broker.deliver("oranga-tamariki")

    clock.advance(hours=1)
    rand = random.Random(5).randbytes
    ring.rotate("oranga-tamariki", clock(), rand, purposes=[Purpose.ENCRYPTION, Purpose.SIGNING])
    after = await broker.deliver("oranga-tamariki")  # the broker seals to the new key

    seen: list[Received] = []
    async with AdapterClient(
        "oranga-tamariki",
        InMemoryConnection(cluster),
        ring,
        SCHEMAS,
        tmp_path,
        clock=clock,
        retry=RetryPolicy(max_attempts=1),
        send_in_background=False,
    ) as client:
        await client.receive(seen.append)
        assert client.dead_letters.list() == []
        event_id = await client.publish(
            "TaskEvent", example("TaskEvent", source_agency="oranga-tamariki")
        )
        assert await client.send_pending() == 1
    assert [e.event_id for e in seen] == [before, after]
    # Revoke the old signing key: if the adapter had signed with it, opening would now fail.
    for key in ring.keys("oranga-tamariki"):
        if key.purpose is Purpose.SIGNING and key.state_at(clock()).value == "retiring":
            ring.revoke(key.key_id, clock(), "synthetic: rotated out")
    async with cluster.reader() as reader:
        (record,) = await reader.read_all(ingress("oranga-tamariki"))
    opened = Opener("broker", ring).open(
        record.value, topic=record.topic, now=clock(), kind=Kind.INGRESS
    )
    assert opened.event_id == event_id
