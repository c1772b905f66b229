"""Probes that ask the real Kafka whether a principal may read, write or join a group.

Writes and group joins go through aiokafka, the data path's client. Reads use
confluent-kafka's consumer because aiokafka's consumer retries silently on an authorization
failure, whereas librdkafka reports it: at the metadata stage for topics the principal may not
even describe, and from the Fetch itself for topics it may describe (write-only ingress).
"""

from __future__ import annotations

import time

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import GroupAuthorizationFailedError, TopicAuthorizationFailedError
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

from broker.platform import Profile

DENIED = "denied"
ALLOWED = "allowed"


def probe_reads(profile: Profile, topics: list[str], timeout: float = 15.0) -> dict[str, str]:
    """For each topic: ``allowed`` if a fetch from partition 0 succeeds, ``denied`` if Kafka
    answers with TOPIC_AUTHORIZATION_FAILED. Any other outcome fails the probe."""
    consumer = Consumer(
        profile.librdkafka()
        | {
            "group.id": f"{profile.sasl_plain_username}.probe",
            "enable.partition.eof": True,
            "enable.auto.commit": False,
        }
    )
    results: dict[str, str] = {}
    try:
        for topic in topics:
            metadata = consumer.list_topics(topic, timeout=timeout).topics[topic]
            if metadata.error is not None:
                if metadata.error.code() != KafkaError.TOPIC_AUTHORIZATION_FAILED:
                    raise AssertionError(f"{topic}: unexpected metadata error {metadata.error}")
                results[topic] = DENIED
                continue
            consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
            deadline = time.monotonic() + timeout
            while topic not in results:
                if time.monotonic() > deadline:
                    raise AssertionError(f"{topic}: neither data nor an authorization error")
                message = consumer.poll(0.2)
                if message is None:
                    continue
                error = message.error()
                if error is None or error.code() == KafkaError._PARTITION_EOF:
                    results[topic] = ALLOWED
                elif error.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED:
                    results[topic] = DENIED
            consumer.unassign()
    finally:
        consumer.close()
    return results


async def probe_writes(profile: Profile, topics: list[str]) -> dict[str, str]:
    """For each topic: ``allowed`` if a produce is acknowledged, ``denied`` if it fails with
    TopicAuthorizationFailedError.

    Not idempotent on purpose: an idempotent producer first asks for a producer id, which a
    principal with no WRITE anywhere (compliance) is refused as a whole; this judges each
    topic on its own ACLs.
    """
    producer = AIOKafkaProducer(
        **profile.aiokafka_kwargs(), enable_idempotence=False, acks="all", request_timeout_ms=15000
    )
    results: dict[str, str] = {}
    try:
        await producer.start()
        for topic in topics:
            try:
                await producer.send_and_wait(topic, b"isolation-probe", key=b"probe")
            except TopicAuthorizationFailedError:
                results[topic] = DENIED
            else:
                results[topic] = ALLOWED
    finally:
        await producer.stop()
    return results


async def probe_group(profile: Profile, group: str, topic: str) -> str:
    """``allowed`` if ``profile`` can join ``group`` (subscribed to ``topic``) and commit,
    ``denied`` if Kafka answers GroupAuthorizationFailedError."""
    consumer = AIOKafkaConsumer(
        topic,
        **profile.aiokafka_kwargs(),
        group_id=group,
        enable_auto_commit=False,
        request_timeout_ms=15000,
        auto_offset_reset="earliest",
    )
    try:
        await consumer.start()
        await consumer.getmany(timeout_ms=500)
        await consumer.commit()
    except GroupAuthorizationFailedError:
        return DENIED
    finally:
        await consumer.stop()
    return ALLOWED
