"""The feed contract on the in-memory connection."""

from __future__ import annotations

from adapters import InMemoryConnection
from broker.platform import egress
from broker.transport import InMemoryCluster
from tests.unit.adapters.feed_suite import check_feed_contract


async def test_in_memory_feed_keeps_the_contract(cluster: InMemoryCluster) -> None:
    connection = InMemoryConnection(cluster)
    topic = egress("oranga-tamariki")

    async def publish(key: bytes, value: bytes, headers: tuple[tuple[str, bytes], ...]) -> None:
        async with cluster.publisher() as publisher:
            await publisher.publish(topic, key, value, headers)

    await check_feed_contract(
        publish, lambda group: connection.feed(topic, group), "oranga-tamariki.", quiet_s=0.2
    )
