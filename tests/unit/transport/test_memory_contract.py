"""The transport contract on the in-memory cluster (the same tests run on real Kafka)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

import pytest

from broker.platform import egress, ingress
from broker.transport import (
    InMemoryCluster,
    InMemoryPublisher,
    InMemoryReader,
    InMemoryTransport,
    Outgoing,
)
from tests.contract.transport_suite import TOKEN_HEADER, TransportContract

AGENCIES = ("police", "corrections", "msd")


@dataclass
class MemoryHarness:
    cluster: InMemoryCluster = field(
        default_factory=lambda: InMemoryCluster.provisioned(AGENCIES, partitions=3)
    )
    input_topic: str = ingress("police")
    output_topic: str = egress("msd")
    partitions: int = 3
    token: bytes = field(default_factory=lambda: uuid.uuid4().hex.encode())

    def __post_init__(self) -> None:
        self.cluster.deny_writes(ingress("corrections"))

    async def new_group(self) -> str:
        return f"tiaki-broker-test-{uuid.uuid4().hex[:8]}"

    def worker(self, group_id: str, name: str) -> InMemoryTransport:
        return self.cluster.worker(group_id, f"{group_id}-{name}", topics=[self.input_topic])

    def publisher(self) -> InMemoryPublisher:
        return self.cluster.publisher()

    def reader(self) -> InMemoryReader:
        return self.cluster.reader()

    def output(self, value: str) -> Outgoing:
        return Outgoing(self.output_topic, None, value.encode(), ((TOKEN_HEADER, self.token),))

    def poison(self) -> Outgoing:
        return Outgoing(ingress("corrections"), b"k", b"not allowed here")


@pytest.fixture
def harness() -> MemoryHarness:
    return MemoryHarness()


class TestInMemoryTransport(TransportContract):
    pass
