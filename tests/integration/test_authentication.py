"""Only authenticated principals over TLS reach Kafka; the controller listener needs the
node's own client certificate."""

from __future__ import annotations

import socket
import ssl

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError, KafkaError

from broker.platform import Profile
from tests.integration.conftest import Cluster


async def _connects(**kwargs: object) -> bool:
    producer = AIOKafkaProducer(request_timeout_ms=5000, metadata_max_age_ms=5000, **kwargs)  # type: ignore[arg-type]
    try:
        await producer.start()
    except (KafkaError, OSError):
        return False
    finally:
        await producer.stop()
    return True


async def test_valid_credentials_connect(cluster: Cluster) -> None:
    assert await _connects(**cluster.profile("police").aiokafka_kwargs())


async def test_wrong_password_is_refused(cluster: Cluster) -> None:
    profile = cluster.profile("police").model_copy(
        update={"sasl_plain_password": "not-the-password"}
    )
    assert not await _connects(**profile.aiokafka_kwargs())


async def test_unknown_user_is_refused(cluster: Cluster) -> None:
    profile: Profile = cluster.profile("police").model_copy(
        update={"sasl_plain_username": "mallory"}
    )
    assert not await _connects(**profile.aiokafka_kwargs())


async def test_plaintext_is_refused(cluster: Cluster) -> None:
    bootstrap = cluster.profile("police").bootstrap_servers
    assert not await _connects(bootstrap_servers=bootstrap, security_protocol="PLAINTEXT")


async def test_sasl_without_tls_is_refused(cluster: Cluster) -> None:
    profile = cluster.profile("police")
    assert not await _connects(
        bootstrap_servers=profile.bootstrap_servers,
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_plain_username=profile.sasl_plain_username,
        sasl_plain_password=profile.sasl_plain_password,
    )


async def test_tls_without_sasl_is_refused(cluster: Cluster) -> None:
    kwargs = cluster.profile("police").aiokafka_kwargs()
    assert not await _connects(
        bootstrap_servers=kwargs["bootstrap_servers"],
        security_protocol="SSL",
        ssl_context=kwargs["ssl_context"],
    )


def test_controller_listener_needs_the_node_certificate(cluster: Cluster) -> None:
    if cluster.kafka is None:
        pytest.skip("external cluster: its controller is not ours to probe")
    context = ssl.create_default_context(cafile=str(cluster.kafka.tls.ca_cert))
    address = ("127.0.0.1", cluster.kafka.controller_port)
    # TLS 1.3 reports a missing client certificate after the handshake, on first read.
    with (
        socket.create_connection(address, timeout=5) as raw,
        pytest.raises((ssl.SSLError, ConnectionError)),
    ):
        _handshake_and_read(context, raw)


def _handshake_and_read(context: ssl.SSLContext, raw: socket.socket) -> None:
    with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        tls.sendall(b"\x00\x00\x00\x00")
        if not tls.recv(1):
            raise ConnectionResetError("closed without a client certificate")


async def test_plaintext_connection_error_is_a_connection_failure(cluster: Cluster) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=cluster.profile("police").bootstrap_servers, request_timeout_ms=3000
    )
    with pytest.raises(KafkaConnectionError):
        await producer.start()
    await producer.stop()
