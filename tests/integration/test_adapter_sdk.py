"""The adapter SDK on the session's real, secured Kafka: the outbox across a Kafka outage,
and a failing handler that neither blocks the others nor loses its event."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import signal
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest

from adapters import AdapterClient, Received, RetryPolicy
from broker.codec import encode
from broker.envelope import Kind, Opener, Sealer
from broker.platform import egress, ingress
from broker.platform._local import die_when_parent_dies
from broker.transport import KafkaPublisher, KafkaReader
from tests.integration.broker_env import SCHEMAS, TIAKI, BrokerEnv, example
from tests.integration.conftest import ROOT, Cluster, free_port


@pytest.fixture(scope="module")
def env(cluster: Cluster) -> BrokerEnv:
    return BrokerEnv.prepare(cluster)


def client(env: BrokerEnv, agency: str, state: Path, **options: Any) -> AdapterClient:
    """A client built the way an agency builds one: its profile and the shared key folder."""
    return AdapterClient.from_files(
        agency,
        profile=env.cluster.profiles_dir / f"{agency}.json",
        keys_dir=env.home / "keys",
        schemas_dir=ROOT / "schemas",
        state_dir=state,
        **options,
    )


async def ingress_event_ids(env: BrokerEnv, agency: str, case: str) -> list[str]:
    """Event ids of ``case`` on ``agency``'s ingress topic, in offset order (read as the
    broker, which alone may read ingress)."""
    async with KafkaReader(env.cluster.profile("broker")) as reader:
        records = await reader.read_all(ingress(agency))
    opener = Opener("broker", env.ring)
    now = dt.datetime.now(dt.UTC)
    return [
        opener.open(r.value, topic=r.topic, now=now, kind=Kind.INGRESS, source=agency).event_id
        for r in sorted(records, key=lambda r: (r.partition, r.offset))
        if r.key == case.encode()
    ]


async def test_thousand_publishes_while_kafka_is_down_arrive_once_in_order(
    env: BrokerEnv, tmp_path: Path
) -> None:
    kafka = env.cluster.kafka
    if kafka is None:
        pytest.skip("needs the test-owned cluster (it is stopped and restarted)")
    case = f"SYN-OUTBOX-{uuid.uuid4().hex[:8]}"

    def event() -> dict[str, Any]:
        return example("TaskEvent", case_id=case, source_agency="police")

    async with client(env, "police", tmp_path) as police:
        first = await police.publish("TaskEvent", event())
        await police.flush(timeout_s=30)  # connected and sending
        await asyncio.to_thread(kafka.down)
        started = time.monotonic()
        ids = [await police.publish("TaskEvent", event()) for _ in range(1000)]
        accept_s = time.monotonic() - started
        assert police.statistics().pending == 1000  # all accepted, none sent
        await asyncio.to_thread(kafka.up, 120.0, die_with_parent=True)
        back = time.monotonic()
        await police.flush(timeout_s=120)
        drain_s = time.monotonic() - back
        stats = police.statistics()
    got = await ingress_event_ids(env, "police", case)
    assert got == [first, *ids]  # all 1,000, exactly once, in publish order
    assert stats.sent == 1001
    print(
        f"\n1,000 publishes accepted in {accept_s:.2f}s with Kafka down; drained {drain_s:.1f}s after it came back"
    )


def shared_event(doc: dict[str, Any], now: dt.datetime) -> dict[str, Any]:
    return {
        "event_id": doc["header"]["event_id"],
        "event_type": "TaskEvent",
        "source_agency": doc["header"]["source_agency"],
        "source_schema": "nz.tiaki.TaskEvent",
        "shared_at": now,
        "route": "fva_s20",
        "legal_basis": "FVA s20",
        "purpose": "fv_plan_or_response",
        "obligations": [],
        "rule_ids": ["TEST"],
        "field_actions": {"task_id": "keep"},
        "policy_hash": "0" * 64,
        "body_json": json.dumps(doc),
    }


async def deliver_as_broker(env: BrokerEnv, recipient: str, count: int) -> list[str]:
    """Write ``count`` SharedEvents to ``recipient``'s egress as the broker principal does."""
    sealer = Sealer("broker", env.ring)
    schema = SCHEMAS.latest("SharedEvent")
    now = dt.datetime.now(dt.UTC)
    ids = []
    async with KafkaPublisher(env.cluster.profile("broker")) as publisher:
        for _ in range(count):
            doc = example("TaskEvent", case_id="SYN-DLQ-CASE", source_agency="safe-whanau")
            value = sealer.seal(
                encode(schema, shared_event(doc, now)),
                kind=Kind.EGRESS,
                topic=egress(recipient),
                recipient=recipient,
                event_id=doc["header"]["event_id"],
                schema_fingerprint=schema.fingerprint,
                now=now,
            )
            await publisher.publish(egress(recipient), b"SYN-DLQ-CASE", value)
            ids.append(doc["header"]["event_id"])
    return ids


class Clock:
    def __init__(self) -> None:
        self.now = dt.datetime.now(dt.UTC)

    def __call__(self) -> dt.datetime:
        return self.now


async def test_failing_handler_gets_the_event_again_others_flow_then_dead_letter(
    env: BrokerEnv, tmp_path: Path
) -> None:
    ids = await deliver_as_broker(env, "oranga-tamariki", 20)
    poison = ids[7]
    calls: dict[str, int] = {}

    def handler(event: Received) -> None:
        if event.event_id not in ids:
            return  # other tests' deliveries
        calls[event.event_id] = calls.get(event.event_id, 0) + 1
        if event.event_id == poison:
            raise ValueError("synthetic case-system fault")

    clock = Clock()
    group = f"oranga-tamariki.test-{uuid.uuid4().hex[:6]}"
    options: dict[str, Any] = {
        "clock": clock,
        "retry": RetryPolicy(max_attempts=4),
        "group_id": group,
    }
    async with client(env, "oranga-tamariki", tmp_path, **options) as ot:
        deadline = time.monotonic() + 60
        while len(calls) < len(ids) and time.monotonic() < deadline:
            await ot.receive(handler, timeout_ms=500)
        assert {i: n for i, n in calls.items() if i != poison} == {i: 1 for i in ids if i != poison}
        assert calls[poison] == 1
        for attempt in (2, 3, 4):
            clock.now += dt.timedelta(minutes=10)
            await ot.receive(handler, timeout_ms=100)
            assert calls[poison] == attempt  # received again
        stats = ot.statistics()
        # Records other modules wrote unsealed to this topic (the feed contract) cannot be
        # opened and are dead-lettered too; this test's own is the poison event alone.
        letters = ot.dead_letters.list()
        # Dead letters are named <source>/<event id>: event ids are each source's own.
        (letter,) = [d for d in letters if d.event_id.rpartition("/")[2] in ids]
        assert all(d.reason.startswith("cannot open") for d in letters if d is not letter)
    assert letter.event_id.endswith(f"/{poison}")
    assert letter.attempts == 4
    # The reason is content free; the handler's message is only in the operators' .detail file.
    assert letter.reason == "ValueError: the handler raised (message not kept)"
    detail = ot.dead_letters.detail(letter.event_id)
    assert detail is not None
    assert "synthetic case-system fault" in detail
    assert stats.parked == 0
    # Offsets were committed: a restart on the same state and group receives nothing again,
    # and nothing was lost: 19 handled once, 1 in the dead-letter folder.
    async with client(env, "oranga-tamariki", tmp_path, **options) as again:
        for _ in range(3):
            await again.receive(handler, timeout_ms=300)
    assert sum(calls.values()) == 19 + 4


def spawn(argv: list[str], environment: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """Start a ``tiaki`` process as an operator would, logging to ``log_path``; it dies with
    the test session."""
    with log_path.open("wb") as log:
        return subprocess.Popen(
            argv,
            env=os.environ | environment,
            cwd=ROOT,
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            preexec_fn=die_when_parent_dies,
        )


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text: str = response.read().decode()
    return text


async def test_tiaki_adapter_run_publishes_exports_serves_metrics_and_stops_cleanly(
    env: BrokerEnv, tmp_path: Path
) -> None:
    port = free_port()
    config = tmp_path / "police.yaml"
    config.write_text(
        f'agency: police\nprofile: "{env.cluster.profiles_dir}/police.json"\n'
        f'keys: "{env.home}/keys"\nstate: "{tmp_path}/state"\nmetrics_port: {port}\n'
        f'sources:\n  - kind: folder\n    path: "{tmp_path}/exports"\n    interval_s: 0.2\n'
        f'sinks:\n  - kind: folder\n    path: "{tmp_path}/received"\n'
    )
    case = f"SYN-RUN-{uuid.uuid4().hex[:8]}"
    doc = example("FamilyHarmEpisodeReport", case_id=case, source_agency="police")
    (tmp_path / "exports").mkdir()
    (tmp_path / "exports" / "attendance.json").write_text(json.dumps(doc))
    process = spawn(
        [str(TIAKI), "adapter", "run", "--agency", "police", "--config", str(config)],
        {"TIAKI_HOME": str(env.home)},
        tmp_path / "adapter.log",
    )
    try:
        deadline = time.monotonic() + 60
        sent = ""
        while time.monotonic() < deadline and process.poll() is None:
            with contextlib.suppress(OSError):
                sent = scrape(port)
                if 'tiaki_adapter_sent_total{event_type="FamilyHarmEpisodeReport"} 1.0' in sent:
                    break
            await asyncio.sleep(0.2)
        assert 'tiaki_adapter_sent_total{event_type="FamilyHarmEpisodeReport"} 1.0' in sent, (
            tmp_path / "adapter.log"
        ).read_text()[-2000:]
        assert "tiaki_adapter_outbox_pending 0.0" in sent
        assert list((tmp_path / "exports" / "done").glob("*-attendance.json"))
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=30)
    assert code == 0  # SIGTERM: a clean stop
    assert await ingress_event_ids(env, "police", case) == [doc["header"]["event_id"]]
    logged = (tmp_path / "adapter.log").read_text()
    assert "Test Victim" not in logged  # no personal data in the adapter's logs
    assert "attendance.json" not in logged  # nor file names


async def test_adapter_killed_mid_drain_loses_nothing_and_keeps_order(
    env: BrokerEnv, tmp_path: Path
) -> None:
    """SIGKILL while the outbox drains: after a restart every event arrives, in order of first
    arrival; at most the one record in flight at the kill appears twice (same event id, which
    the broker's replay check and the recipients' idempotency keys drop)."""
    port = free_port()
    config = tmp_path / "police.yaml"
    config.write_text(
        f'agency: police\nprofile: "{env.cluster.profiles_dir}/police.json"\n'
        f'keys: "{env.home}/keys"\nstate: "{tmp_path}/state"\nmetrics_port: {port}\n'
        f'sources:\n  - kind: folder\n    path: "{tmp_path}/exports"\n    interval_s: 0.2\n'
    )
    case = f"SYN-KILL-{uuid.uuid4().hex[:8]}"
    docs = [example("TaskEvent", case_id=case, source_agency="police") for _ in range(300)]
    ids = [d["header"]["event_id"] for d in docs]
    (tmp_path / "exports").mkdir()
    (tmp_path / "exports" / "batch.json").write_text(json.dumps(docs))
    argv = [str(TIAKI), "adapter", "run", "--agency", "police", "--config", str(config)]
    first = spawn(argv, {"TIAKI_HOME": str(env.home)}, tmp_path / "first.log")
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and first.poll() is None:
            with contextlib.suppress(OSError):
                sent = [
                    float(ln.rsplit(" ", 1)[1])
                    for ln in scrape(port).splitlines()
                    if ln.startswith("tiaki_adapter_sent_total{")
                ]
                if sent and sent[0] >= 50:
                    break
            await asyncio.sleep(0.05)
    finally:
        first.kill()
        first.wait()
    before = await ingress_event_ids(env, "police", case)
    assert 0 < len(before) < 300, "killed mid-drain"
    second = spawn(argv, {"TIAKI_HOME": str(env.home)}, tmp_path / "second.log")
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and second.poll() is None:
            got = await ingress_event_ids(env, "police", case)
            if set(got) == set(ids):
                break
            await asyncio.sleep(0.5)
    finally:
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=30) == 0
    got = await ingress_event_ids(env, "police", case)
    first_seen = list(dict.fromkeys(got))
    assert first_seen == ids  # nothing lost, in publish order
    assert len(got) - len(ids) <= 1  # at most the record in flight at the kill, resent
    print(
        f"\nkilled after {len(before)} of 300; after restart {len(got)} records, {len(got) - 300} duplicate(s)"
    )
