"""A real, secured Apache Kafka for the integration tests.

By default the session starts its own single-node cluster (TLS + SCRAM-SHA-512, ACLs
enforced) on free loopback ports in a temporary folder, provisions it from the shipped
registry, and stops it at the end, leaving no process or port behind. To run against an
existing cluster instead, set ``TIAKI_TEST_ADMIN_PROFILE`` to an admin connection profile.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from broker.platform import LocalKafka, Profile, load_profile, provision, start_provisioned
from broker.registry import Registry, load_registry

ROOT = Path(__file__).resolve().parents[2]
#: Jars are assembled once per checkout and shared by every test cluster.
SHARED_LIB = ROOT / ".tiaki" / "kafka-lib"


@dataclass(frozen=True)
class Cluster:
    registry: Registry
    profiles_dir: Path
    kafka: LocalKafka | None

    def profile(self, name: str) -> Profile:
        return load_profile(self.profiles_dir / f"{name}.json")


#: Run after every other integration module: it leaves 20,000 events' records on the
#: session's shared ingress, egress and audit topics, which tests that read a whole topic
#: (the demo's log verification, the missing-topic test's deliveries) would otherwise read too.
LAST = "test_broker_crash.py"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: item.path.name == LAST)  # stable: the rest keep their order


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    registry = load_registry(ROOT / "policies" / "agencies.yaml")
    home = tmp_path_factory.mktemp("tiaki-home")
    profiles = home / "profiles"
    external = os.environ.get("TIAKI_TEST_ADMIN_PROFILE")
    if external:
        provision(registry, load_profile(Path(external)), profiles)
        yield Cluster(registry, profiles, None)
        return
    kafka = LocalKafka(
        home / "kafka",
        ROOT / "deploy" / "kafka" / "pom.xml",
        free_port(),
        free_port(),
        lib=SHARED_LIB,
    )
    try:
        start_provisioned(kafka, registry, profiles, die_with_parent=True)
        yield Cluster(registry, profiles, kafka)
    finally:
        kafka.down()
