"""The worker's shared state (case membership, open requests, the replay cache) after failed
commits, policy errors and rebalances: what the state topics hold is what the worker holds.

Each test here was a reviewer's reproduction (the in-memory transport, synthetic data only):
a failed commit left membership and requests changed in memory, so the redone batch wrote no
state record and was decided on state from later in the batch; a policy error dropped the
state record; a commit whose reply was lost was treated as aborted; every worker escalated
every request; a rebalance that gave the same partitions back was not noticed.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from broker.codec import decode, encode, from_json
from broker.envelope import Kind, Opener, ReplayCache, Sealer
from broker.platform import ingress
from broker.runtime import Accepted, Intake, Outcome, Pipeline, Verdict
from broker.runtime._cases import CaseMembership
from broker.runtime._decide import Decider
from broker.runtime._metrics import BrokerMetrics
from broker.runtime._requests import RequestBook
from broker.runtime._service import rebuild_state, state_refresh
from broker.runtime._worker import Worker, _Batch
from broker.transport import (
    InMemoryCluster,
    InMemoryReader,
    Outgoing,
    Record,
    TransactionalTransport,
    TransportError,
    Unavailable,
)
from broker.transport._memory import partition_for
from tests.unit.runtime.test_intake import NOW, REGISTRY, ROOT, SCHEMAS, make_ring
from tests.unit.runtime.test_pipeline import ScriptedDecider, verdict

RING = make_ring()
CASE = "SYN-CASE-0001"
OT = "oranga-tamariki"


def example(name: str, **header: Any) -> tuple[dict[str, Any], str]:
    """The schema's example event under a fresh event id, ``header`` fields replaced."""
    doc = json.loads((ROOT / "schemas" / "examples" / f"{name}.json").read_text())
    event_id = str(uuid.uuid4())
    doc["header"] |= {"event_id": event_id} | header
    return doc, event_id


def sealed(name: str, doc: dict[str, Any], event_id: str) -> bytes:
    source = doc["header"]["source_agency"]
    schema = SCHEMAS.latest(name)
    return Sealer(source, RING).seal(
        encode(schema, from_json(schema, doc)),
        kind=Kind.INGRESS,
        topic=ingress(source),
        recipient="broker",
        event_id=event_id,
        schema_fingerprint=schema.fingerprint,
        now=NOW,
    )


def allocation(action: str = "joined", case: str = CASE) -> tuple[str, bytes, bytes]:
    doc, event_id = example("CaseAllocation", case_id=case)
    doc["action"] = action
    return ingress("police"), case.encode(), sealed("CaseAllocation", doc, event_id)


def episode(case: str = CASE) -> tuple[str, bytes, bytes]:
    doc, event_id = example("FamilyHarmEpisodeReport", case_id=case)
    return ingress("police"), case.encode(), sealed("FamilyHarmEpisodeReport", doc, event_id)


def request(
    request_id: str = "SYN-REQ-0001", due: timedelta = timedelta(minutes=30), case: str = CASE
) -> tuple[str, bytes, bytes]:
    doc, event_id = example("InformationRequest", case_id=case)  # msd asks police
    doc["request_id"] = request_id
    doc["respond_by"] = (NOW + due).isoformat().replace("+00:00", "Z")
    return ingress("msd"), case.encode(), sealed("InformationRequest", doc, event_id)


def response(request_id: str = "SYN-REQ-0001", case: str = CASE) -> tuple[str, bytes, bytes]:
    doc, event_id = example("InformationResponse", case_id=case)  # police answers
    doc["request_id"] = request_id
    return ingress("police"), case.encode(), sealed("InformationResponse", doc, event_id)


class NeedToKnow:
    """Shares an episode with Oranga Tamariki only while it participates in the case (the
    condition the policy decider asks CaseMembership about), and every request and response
    with its recipients (so that deliveries show what was decided)."""

    policy_hash = "cd" * 32

    def __init__(self, cases: CaseMembership) -> None:
        self.cases = cases

    def decide(self, accepted: Accepted, now: datetime) -> Sequence[Verdict]:
        if accepted.event_type != "FamilyHarmEpisodeReport":
            return []
        case = str(accepted.event["header"]["case_id"])
        ok = self.cases.participates(case, OT)
        return [verdict(OT, Outcome.SHARE if ok else Outcome.DENY)]


@dataclass
class Clock:
    now: datetime = NOW

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Node:
    """One worker with its shared state and a real refresh over the in-memory state topics."""

    worker: Worker
    pipeline: Pipeline
    cases: CaseMembership
    requests: RequestBook
    replay: ReplayCache
    metrics: BrokerMetrics
    refreshes: list[int] = field(default_factory=list)


def node(
    cluster: InMemoryCluster,
    *,
    decider: Decider | None = None,
    worker_id: str = "0",
    clock: Clock | None = None,
    transport: TransactionalTransport | None = None,
    reader: Any = None,
) -> Node:
    clock = clock or Clock()
    cases, requests, replay = CaseMembership(), RequestBook(), ReplayCache()
    pipeline = Pipeline(
        intake=Intake(
            registry=REGISTRY, schemas=SCHEMAS, opener=Opener("broker", RING, replay=replay)
        ),
        decider=decider if decider is not None else NeedToKnow(cases),
        sealer=Sealer("broker", RING),
        schemas=SCHEMAS,
        subject_key=b"synthetic-test-audit-key-000000",
        cases=cases,
        requests=requests,
    )
    refresh = state_refresh(
        reader or cluster.reader,
        SCHEMAS,
        cases,
        requests,
        replay,
        clock=clock,
        seen_window=False,
        settle=False,
    )
    refreshes: list[int] = []

    async def counted() -> None:
        await refresh()
        refreshes.append(1)

    metrics = BrokerMetrics(CollectorRegistry())
    worker = Worker(
        transport or cluster.worker(worker_id=worker_id),
        pipeline,
        metrics,
        clock=clock,
        poll_timeout_ms=5,
        refresh=counted,
    )
    return Node(worker, pipeline, cases, requests, replay, metrics, refreshes)


async def publish(cluster: InMemoryCluster, *records: tuple[str, bytes, bytes]) -> None:
    async with cluster.publisher() as publisher:
        for topic, key, value in records:
            await publisher.publish(topic, key, value)


async def read(cluster: InMemoryCluster, topic: str) -> list[Record]:
    async with cluster.reader() as reader:
        return await reader.read_all(topic)


async def steps(worker: Worker, count: int = 5) -> int:
    done = 0
    for _ in range(count):
        done += await worker.step()
    return done


def membership(cases: CaseMembership, case: str = CASE) -> frozenset[str]:
    return cases.members(case)


def book(requests: RequestBook) -> list[dict[str, Any]]:
    return sorted((r for r in requests.open_requests()), key=lambda r: r["request_id"])


async def same_as_topics(cluster: InMemoryCluster, n: Node, cases: Sequence[str] = (CASE,)) -> None:
    """The node's memory equals what a fresh worker rebuilds from the state topics."""
    fresh = await rebuild_state(cluster.reader(), SCHEMAS)
    for case in cases:
        assert membership(fresh.cases, case) == membership(n.cases, case)
        assert fresh.cases.risk(case) == n.cases.risk(case)
    assert book(fresh.requests) == book(n.requests)
    assert {r["request_id"]: r for r in fresh.requests.open_requests()} == {
        r["request_id"]: r for r in n.requests.open_requests()
    }


async def escalations(cluster: InMemoryCluster) -> int:
    audit = [
        decode(r.value, SCHEMAS.latest("AuditRecord")) for r in await read(cluster, "tiaki.audit")
    ]
    return sum(a["action"] == "escalation" for a in audit)


# -- 1. a failed commit ----------------------------------------------------------------------


async def test_a_redone_batch_writes_the_state_records_the_aborted_one_lost() -> None:
    cluster = InMemoryCluster.provisioned(REGISTRY.ids)
    n = node(cluster)
    await publish(cluster, allocation(), request(due=timedelta(days=2)))
    async with n.worker:
        cluster.fail_next_commit()
        assert await steps(n.worker) == 2
    assert n.worker.statistics().aborted == 1
    assert len(await read(cluster, "tiaki.state.cases")) == 1
    assert len(await read(cluster, "tiaki.state.requests")) == 1
    assert OT in membership(n.cases)
    await same_as_topics(cluster, n)
    fresh = await rebuild_state(cluster.reader(), SCHEMAS)
    assert len(fresh.requests.lapse(NOW + timedelta(days=3)).escalated) == 1  # it survived


@pytest.mark.parametrize(
    ("before", "action", "delivered"),
    [(False, "joined", 0), (True, "left", 1), (True, "case_closed", 1)],
)
async def test_a_redone_batch_is_decided_on_the_state_before_it(
    before: bool, action: str, delivered: int
) -> None:
    """An episode, then a membership change, in one batch whose commit fails: the redone
    episode is decided as without the failure (Oranga Tamariki not yet on the case: not
    shared; still on it: shared), not on the change that came after it."""
    cluster = InMemoryCluster.provisioned(REGISTRY.ids)
    n = node(cluster)
    async with n.worker:
        if before:
            await publish(cluster, allocation("joined"))
            assert await steps(n.worker) == 1
        await publish(cluster, episode(), allocation(action))
        cluster.fail_next_commit()
        assert await steps(n.worker) == 2
    assert len(await read(cluster, f"tiaki.egress.{OT}")) == delivered
    await same_as_topics(cluster, n)


async def test_after_a_failed_commit_nothing_is_processed_until_the_state_is_read_again() -> None:
    """Kafka away: the re-read fails, the worker processes nothing and polls nothing (it does
    not crash), and counts the failure; once the re-read succeeds it goes on."""
    cluster = InMemoryCluster.provisioned(REGISTRY.ids)
    failing = [False]

    class Flaky(InMemoryReader):
        async def start(self) -> None:
            if failing[0]:
                raise Unavailable("KafkaConnectionError: broker away")
            await super().start()

    n = node(cluster, reader=lambda: Flaky(cluster))
    async with n.worker:
        assert await steps(n.worker, 1) == 0  # the first assignment's re-read succeeds
        await publish(cluster, allocation())
        failing[0] = True
        cluster.fail_next_commit()
        assert await steps(n.worker, 3) == 0
        assert n.worker.statistics().aborted == 1  # processed once, then nothing more
        assert await read(cluster, "tiaki.state.cases") == []
        failures = n.metrics.registry.get_sample_value("tiaki_state_refresh_failures_total")
        assert failures == 2
        failing[0] = False
        assert await steps(n.worker) == 1
    await same_as_topics(cluster, n)


async def test_serve_waits_for_the_state_and_stops_cleanly_while_it_cannot_be_read() -> None:
    cluster = InMemoryCluster.provisioned(REGISTRY.ids)
    failing = [False]

    class Flaky(InMemoryReader):
        async def start(self) -> None:
            if failing[0]:
                raise Unavailable("KafkaConnectionError: broker away")
            await super().start()

    n = node(cluster, reader=lambda: Flaky(cluster))
    await publish(cluster, allocation())
    stop = asyncio.Event()
    async with n.worker:
        failing[0] = True
        cluster.fail_next_commit()
        serving = asyncio.create_task(n.worker.serve(stop))
        await asyncio.sleep(0.3)
        assert await read(cluster, "tiaki.state.cases") == []  # nothing on stale state
        failing[0] = False
        for _ in range(100):
            await asyncio.sleep(0.05)
            if await read(cluster, "tiaki.state.cases"):
                break
        stop.set()
        await serving
    assert len(await read(cluster, "tiaki.state.cases")) == 1
    await same_as_topics(cluster, n)


# -- 2. a policy error -----------------------------------------------------------------------


async def test_a_policy_error_keeps_the_state_change_and_commits_its_record() -> None:
    """Decided: the event is authenticated and its facts stand, so the state change is kept
    and its record goes with the quarantine; only disclosure is withheld."""
    cluster = InMemoryCluster.provisioned(REGISTRY.ids)
    n = node(cluster, decider=ScriptedDecider(error=RuntimeError("rule exploded")))
    await publish(cluster, allocation(), request(due=timedelta(days=2)))
    async with n.worker:
        assert await steps(n.worker) == 2
    assert len(await read(cluster, "tiaki.dlq")) == 2
    assert len(await read(cluster, "tiaki.state.cases")) == 1
    assert len(await read(cluster, "tiaki.state.requests")) == 1
    assert OT in membership(n.cases)
    await same_as_topics(cluster, n)


# -- 3. a commit that failed but committed ---------------------------------------------------


class LostReply:
    """A transport whose next commit lands and then raises, as KafkaTransport does when the
    reply to EndTxn is lost (commit timed out, outcome unknown)."""

    def __init__(self, inner: TransactionalTransport) -> None:
        self.inner = inner
        self.lose_next = False

    async def start(self) -> None:
        await self.inner.start()

    async def close(self) -> None:
        await self.inner.close()

    async def __aenter__(self) -> LostReply:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def poll(self, max_records: int, timeout_ms: int) -> list[Record]:
        return await self.inner.poll(max_records, timeout_ms)

    def assignment(self) -> frozenset[tuple[str, int]]:
        return self.inner.assignment()

    def assignment_generation(self) -> int:
        return self.inner.assignment_generation()

    async def rewind(self) -> None:
        await self.inner.rewind()

    async def commit(self, outputs: Sequence[Outgoing], consumed: Sequence[Record]) -> None:
        await self.inner.commit(outputs, consumed)
        if self.lose_next:
            self.lose_next = False
            raise Unavailable("KafkaTimeoutError: timed out waiting for Kafka")


async def test_a_commit_whose_reply_was_lost_is_not_undone() -> None:
    """The escalation and the episode it carried committed: the escalation is not made again,
    and a replayed copy of the episode is refused, not delivered a second time."""
    cluster = InMemoryCluster.provisioned(REGISTRY.ids)
    clock = Clock()
    transport = LostReply(cluster.worker())
    n = node(
        cluster,
        decider=ScriptedDecider([verdict(OT, Outcome.SHARE)]),
        clock=clock,
        transport=transport,
    )
    await publish(cluster, request(due=timedelta(minutes=30)))
    original = episode()
    async with n.worker:
        assert await steps(n.worker, 1) == 1
        clock.now = NOW + timedelta(hours=1)  # respond_by passes
        await publish(cluster, original)
        transport.lose_next = True
        assert await steps(n.worker, 1) == 0  # committed, but the worker cannot know
        assert n.worker.statistics().aborted == 1
        await steps(n.worker, 3)
        await publish(cluster, original)  # a replay of the committed record
        await steps(n.worker, 3)
    assert await escalations(cluster) == 1
    ids = Counter(
        Opener(OT, RING)
        .open(r.value, topic=f"tiaki.egress.{OT}", now=NOW, kind=Kind.EGRESS, source="broker")
        .event_id
        for r in await read(cluster, f"tiaki.egress.{OT}")
    )
    assert sorted(ids.values()) == [1, 1]  # the request, the episode: once each
    assert len(await read(cluster, "tiaki.dlq")) == 1  # the replay, refused
    await same_as_topics(cluster, n)


# -- 4. escalations and ownership ------------------------------------------------------------


def owner_of(nodes: Sequence[Node], topic: str, case: str) -> Node:
    partition = partition_for(case.encode(), 3)
    return next(n for n in nodes if (topic, partition) in n.worker._transport.assignment())


@pytest.mark.parametrize("answered", [False, True])
async def test_only_the_owner_escalates_and_nobody_overwrites_its_answers(answered: bool) -> None:
    cluster = InMemoryCluster.provisioned(REGISTRY.ids)
    clock = Clock()
    w1 = node(cluster, worker_id="1", clock=clock)
    w2 = node(cluster, worker_id="2", clock=clock)
    await publish(cluster, request(due=timedelta(minutes=30)))
    async with w1.worker:
        await steps(w1.worker, 1)
        async with w2.worker:  # scale out: both re-read the state topics
            await steps(w1.worker, 1)
            await steps(w2.worker, 1)
            owner = owner_of((w1, w2), ingress("msd"), CASE)
            assert owner is owner_of((w1, w2), ingress("police"), CASE)  # co-partitioned
            if answered:
                await publish(cluster, response())
                for _ in range(2):
                    await steps(w1.worker, 1)
                    await steps(w2.worker, 1)
            clock.now = NOW + timedelta(hours=1)  # respond_by passes
            for _ in range(2):
                await steps(w1.worker, 1)
                await steps(w2.worker, 1)
    assert await escalations(cluster) == (0 if answered else 1)
    states = [
        decode(r.value, SCHEMAS.latest("RequestState"), SCHEMAS.latest("RequestState"))
        for r in await read(cluster, "tiaki.state.requests")
    ]
    last = states[-1]
    assert (last["answered"], last["escalated"]) == (
        (["police"], []) if answered else ([], ["police"])
    )
    fresh = await rebuild_state(cluster.reader(), SCHEMAS)
    assert bool(fresh.requests.open_requests()) is not answered


# -- 6. a rebalance that gives the same partitions back --------------------------------------


@pytest.mark.parametrize("polled_between", [True, False])
async def test_partitions_that_left_and_came_back_are_read_again(polled_between: bool) -> None:
    """W2 owned a partition for a while and admitted a record there; when the partition comes
    back to W1, W1 re-reads the state even if it never polled in between (same partition set
    before and after), so a replay of that record is refused."""
    cluster = InMemoryCluster.provisioned(REGISTRY.ids)
    case = next(
        c for c in (f"SYN-CASE-{i:04d}" for i in range(100)) if partition_for(c.encode(), 3) == 1
    )
    share = ScriptedDecider([verdict(OT, Outcome.SHARE)])
    w1 = node(cluster, worker_id="1", decider=share)
    w2 = node(cluster, worker_id="2", decider=share)
    original = episode(case)
    async with w1.worker:
        await steps(w1.worker, 1)
        async with w2.worker:  # W2 takes partition 1 of every topic
            if polled_between:
                await steps(w1.worker, 1)
            await publish(cluster, original)
            await steps(w2.worker, 3)
        await publish(cluster, original)  # a replay, on the partition W1 has again
        await steps(w1.worker, 3)
    assert len(await read(cluster, f"tiaki.egress.{OT}")) == 1
    assert len(await read(cluster, "tiaki.dlq")) == 1
    assert len(w1.refreshes) == (3 if polled_between else 2)


async def test_a_batch_made_before_partitions_changed_hands_is_not_committed() -> None:
    """Its escalations were for requests the worker owned then; the worker throws it away."""
    cluster = InMemoryCluster.provisioned(REGISTRY.ids)
    n = node(cluster)
    async with n.worker:
        await steps(n.worker, 1)
        made = _Batch([], [], [Outgoing("tiaki.audit", None, b"x")], n.pipeline.mark(), [])
        made = replace(made, generation=n.worker._transport.assignment_generation())
        async with cluster.worker(worker_id="9"):  # a rebalance
            pass
        error = await n.worker._send(made)
        assert isinstance(error, TransportError)
        assert error.retriable
    assert await read(cluster, "tiaki.audit") == []


# -- a property: failures change nothing that commits -----------------------------------------

EVENTS = ("joined", "left", "episode", "answer-1", "answer-2")


def _phase_two(kinds: Sequence[str]) -> list[tuple[str, bytes, bytes]]:
    made = {
        "joined": lambda: allocation("joined"),
        "left": lambda: allocation("left"),
        "episode": episode,
        "answer-1": lambda: response("SYN-REQ-0001"),
        "answer-2": lambda: response("SYN-REQ-0002"),
    }
    return [made[kind]() for kind in kinds]  # every one on Police's topic: one order


async def _run(
    phase_one: Sequence[tuple[str, bytes, bytes]],
    phase_two: Sequence[tuple[str, bytes, bytes]],
    failures: Sequence[str],
    max_batch: int,
) -> tuple[Counter[tuple[str, str]], int, Node, InMemoryCluster]:
    """Run the worker over both phases, the i-th commit failing as ``failures[i]`` says
    (``abort``, or ``lost``: committed, then reported failed); the deliveries (recipient,
    event id), the escalations, the node and its cluster."""
    cluster = InMemoryCluster.provisioned(REGISTRY.ids)
    clock = Clock()
    transport = LostReply(cluster.worker())
    n = node(cluster, clock=clock, transport=transport)
    n.worker._max_batch = max_batch
    plan = list(failures)

    async def step() -> int:
        failure = plan.pop(0) if plan else "ok"
        if failure == "abort":
            cluster.fail_next_commit()
        transport.lose_next = failure == "lost"
        done = await n.worker.step()
        cluster._commit_failures.clear()  # an injected failure no commit met
        transport.lose_next = False
        return done

    group = n.worker._transport.inner.group_id  # type: ignore[attr-defined]

    async def drain(expected: int) -> None:
        for _ in range(200):
            if not plan and _consumed(cluster, cluster.committed(group)) >= expected:
                return
            await step()
        raise AssertionError("the worker did not drain")

    async with n.worker:
        await publish(cluster, *phase_one)
        await drain(len(phase_one))
        clock.now = NOW + timedelta(hours=1)  # request 1 is overdue, request 2 is not
        for _ in range(3):
            await step()  # the escalation, alone, perhaps failing
        await publish(cluster, *phase_two)
        await drain(len(phase_one) + len(phase_two))
        for _ in range(2):
            await step()
    deliveries: Counter[tuple[str, str]] = Counter()
    for agency in REGISTRY.ids:
        for r in await read(cluster, f"tiaki.egress.{agency}"):
            opened = Opener(agency, RING).open(
                r.value, topic=f"tiaki.egress.{agency}", now=NOW, kind=Kind.EGRESS, source="broker"
            )
            deliveries[(agency, opened.event_id)] += 1
    return deliveries, await escalations(cluster), n, cluster


def _consumed(cluster: InMemoryCluster, committed: dict[tuple[str, int], int]) -> int:
    """How many visible ingress records lie below the committed offsets."""
    total = 0
    for (topic, partition), offset in committed.items():
        total += sum(1 for e in cluster._logs[topic][partition] if e.visible and e.offset < offset)
    return total


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    kinds=st.lists(st.sampled_from(EVENTS), min_size=1, max_size=10),
    failures=st.lists(st.sampled_from(["ok", "abort", "lost"]), max_size=12),
    max_batch=st.integers(min_value=1, max_value=4),
)
def test_commit_failures_change_nothing_that_commits(
    kinds: list[str], failures: list[str], max_batch: int
) -> None:
    """Whatever commits fail (aborted, or committed with the reply lost), and however the
    records fall into batches: the state topics, replayed into a fresh worker, equal the
    running worker's memory, and the deliveries and escalations equal a failure-free run's."""
    phase_one = [request("SYN-REQ-0001"), request("SYN-REQ-0002", due=timedelta(days=1))]
    phase_two = _phase_two(kinds)

    async def check() -> None:
        expected, escalated, _, _ = await _run(phase_one, phase_two, [], 500)
        assert escalated == 1  # request 1's holder, once
        got, got_escalated, n, cluster = await _run(phase_one, phase_two, failures, max_batch)
        assert got == expected
        assert all(count == 1 for count in got.values())
        assert got_escalated == escalated
        await same_as_topics(cluster, n)
        fresh = await rebuild_state(cluster.reader(), SCHEMAS)
        assert {k: r.state() for k, r in fresh.requests._requests.items()} == {
            k: r.state() for k, r in n.requests._requests.items()
        }

    asyncio.run(check())
