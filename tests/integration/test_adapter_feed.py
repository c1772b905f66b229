"""The feed contract on real Kafka: the broker principal writes an agency's egress topic and
the agency's own principal reads it in its own consumer group."""

from __future__ import annotations

from adapters import KafkaConnection
from broker.platform import egress
from broker.transport import KafkaPublisher
from tests.integration.conftest import Cluster
from tests.unit.adapters.feed_suite import check_feed_contract


async def test_kafka_feed_keeps_the_contract(cluster: Cluster) -> None:
    topic = egress("oranga-tamariki")
    connection = KafkaConnection(cluster.profile("oranga-tamariki"))
    async with KafkaPublisher(cluster.profile("broker")) as publisher:

        async def publish(key: bytes, value: bytes, headers: tuple[tuple[str, bytes], ...]) -> None:
            await publisher.publish(topic, key, value, headers)

        await check_feed_contract(
            publish, lambda group: connection.feed(topic, group), "oranga-tamariki."
        )
