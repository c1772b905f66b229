"""An agency in the registry whose egress topic Kafka lacks, on real Kafka.

Before the worker looked for its egress topics, every transaction sharing with such an
agency waited out the producer's metadata timeout and aborted, again on every retry, and all
sharing waited behind it. Now its shares are held for a person, the others go, and once
``tiaki provision`` has created the topic the worker delivers to it again and the held items
can be released.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import uuid
from typing import Any

from broker.codec import decode
from broker.platform import AUDIT, ClusterAdmin, egress, provision
from tests.integration.broker_env import SCHEMAS, TIAKI, BrokerEnv, example
from tests.integration.conftest import ROOT, Cluster
from tests.integration.test_broker import expected_deliveries

#: No other integration test reads this agency's egress topic.
AGENCY = "te-whare-tiaki"
GAUGE = f'tiaki_egress_topic_missing{{agency="{AGENCY}"}}'


def story(case: str) -> list[tuple[str, dict[str, Any]]]:
    """Police allocate Corrections and the kaupapa Māori provider to a case, then report an
    episode in it."""
    items: list[tuple[str, dict[str, Any]]] = []
    for agency in ("corrections", AGENCY):
        allocation = example("CaseAllocation", case_id=case, source_agency="police")
        allocation["agency"]["agency_id"] = agency
        items.append(("CaseAllocation", allocation))
    episode = example("FamilyHarmEpisodeReport", case_id=case, source_agency="police")
    episode["header"]["sharing"]["purpose"] = "fv_plan_or_response"
    return [*items, ("FamilyHarmEpisodeReport", episode)]


async def decisions_about(env: BrokerEnv, ids: set[str]) -> list[tuple[str, dict[str, Any]]]:
    """(event id, decision) for every recipient decided about for events ``ids``, once each
    of them has its decision audit record (or a minute has passed)."""
    deadline = asyncio.get_running_loop().time() + 60
    while True:
        audit = [
            decode(r.value, SCHEMAS.latest("AuditRecord"))
            for r in await env.read("compliance", AUDIT)
        ]
        decided = [a for a in audit if a["event_id"] in ids and a["action"] == "decision"]
        if {a["event_id"] for a in decided} == ids or asyncio.get_running_loop().time() > deadline:
            return [(a["event_id"], d) for a in decided for d in a["decisions"]]
        await asyncio.sleep(1)


def delete_topic(cluster: Cluster, topic: str) -> None:
    admin = ClusterAdmin(cluster.profile("admin"))
    admin._wait_all("delete topic", admin._admin.delete_topics([topic]))
    deadline = time.monotonic() + 30
    while topic in admin._admin.list_topics(timeout=10).topics:
        assert time.monotonic() < deadline, f"{topic} still there"
        time.sleep(0.2)


async def delivered_to_others(
    env: BrokerEnv, expected: dict[str, set[tuple[str, str]]], ids: set[str]
) -> dict[str, set[tuple[str, str]]]:
    """What the agencies in ``expected`` received of events ``ids``, once that is as much as
    ``expected`` holds (or a minute has passed)."""
    deadline = asyncio.get_running_loop().time() + 60
    while True:
        out = {
            agency: {
                (r["event_id"], json.dumps(r["body"], sort_keys=True))
                for r in records
                if r["event_id"] in ids
            }
            for agency, records in (await env.received_by(expected)).items()
        }
        if out == expected or asyncio.get_running_loop().time() > deadline:
            return out
        await asyncio.sleep(1)


def tiaki(env: BrokerEnv, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(TIAKI), *args],
        env=env.environment(),
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )


async def test_shares_for_an_agency_without_an_egress_topic_are_held_not_stalled(
    cluster: Cluster,
) -> None:
    delete_topic(cluster, egress(AGENCY))
    try:
        with BrokerEnv.running(cluster) as env:
            missing = [line for line in env.log_lines() if "egress topics missing" in line]
            assert [json.loads(line)["agency"] for line in missing] == [AGENCY]
            assert f"{GAUGE} 1.0" in env.metrics()

            items = story(f"SYN-CASE-{uuid.uuid4().hex[:8]}")
            expected = expected_deliveries(env, items)
            assert expected[AGENCY], "the policy shares the episode with the allocated provider"
            held = {e for e, _ in expected.pop(AGENCY)}
            await env.publish("police", items)
            ids = {doc["header"]["event_id"] for _, doc in items}
            # Everyone else gets exactly what the policy permits, without waiting for it.
            assert expected["corrections"], "and with Corrections, which has its topic"
            assert await delivered_to_others(env, expected, ids) == expected
            decisions = await decisions_about(env, ids)
            assert sorted(
                (event_id, d["outcome"], d["reason_codes"][0])
                for event_id, d in decisions
                if d["recipient"] == AGENCY and d["outcome"] != "deny"
            ) == sorted((e, "review", "recipient_topic_missing") for e in held)

            # Releasing before the topic exists says why, and writes nothing.
            review_ids = [f"police/{e}/{AGENCY}" for e in sorted(held)]
            approve = ["review", "approve", review_ids[0], "--reviewer", "Reviewer (synthetic)"]
            approve += ["--justification", "topic provisioned; release"]
            early = await asyncio.to_thread(tiaki, env, *approve)
            assert early.returncode == 1
            assert early.stderr.strip().endswith(
                f"Kafka has no {egress(AGENCY)}: nothing of this act was written; "
                "run `tiaki provision`, then act again"
            )

            await asyncio.to_thread(
                provision, cluster.registry, cluster.profile("admin"), cluster.profiles_dir
            )
            env.wait_for_log("0", "egress topics found", env.processes[0], timeout=45)
            assert f"{GAUGE} 0.0" in env.metrics()
            for review_id in review_ids:
                done = await asyncio.to_thread(tiaki, env, *[*approve[:2], review_id, *approve[3:]])
                assert done.returncode == 0, done.stderr
            # The next share goes straight to the provider.
            later = story(f"SYN-CASE-{uuid.uuid4().hex[:8]}")
            await env.publish("police", later)
            later_ids = {doc["header"]["event_id"] for _, doc in later}
            direct = {e for e, _ in expected_deliveries(env, later)[AGENCY]}
            want = held | direct
            deadline = asyncio.get_running_loop().time() + 60
            while True:
                got = [r["event_id"] for r in await env.received(AGENCY)]
                if want <= set(got) or asyncio.get_running_loop().time() > deadline:
                    break
                await asyncio.sleep(1)
            assert sorted(e for e in got if e in ids | later_ids) == sorted(want)
        assert env.exit_codes == [0]
    finally:
        provision(cluster.registry, cluster.profile("admin"), cluster.profiles_dir)
