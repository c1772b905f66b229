"""A tenth agency joins, following docs/adapters.md and nothing else: a registry entry,
``tiaki registry check``, ``tiaki provision``, ``tiaki keys init``, an approved policy
release, then the SDK's public API. It exchanges events with an existing agency, and what it
receives is filtered by the policy.

This module runs its own Kafka node (the session's cluster must keep exactly the shipped
registry for the provisioning tests), started and stopped here.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from adapters import AdapterClient, Received
from broker.codec import decode, load_schemas
from broker.envelope import KeyStore
from broker.platform import LocalKafka, start_provisioned
from broker.platform._topics import STATE_CASES
from broker.registry import load_registry
from broker.runtime._release import approve_as_dev_officers, dev_officers, stage_release
from tests.integration.broker_env import TIAKI, BrokerEnv, example
from tests.integration.conftest import ROOT, SHARED_LIB, Cluster, free_port

NEW = "aroha-refuge"
ENTRY = f"""
  - id: {NEW}
    name: Aroha Refuge (synthetic specialist family-violence NGO)
    kind: specialist_ngo
    region: canterbury
    statutory:
      family_violence_agency: {{status: confirmed, evidence: "Family Violence Act 2018 s19: government-funded family violence service (MSD contract FV-SYN-0010)"}}
      child_welfare_protection_agency: {{status: no}}
      social_services_practitioner_employer: {{status: confirmed, evidence: "employs registered social workers"}}
"""


def sharing(purpose: str) -> dict[str, Any]:
    return {
        "purpose": purpose,
        "legal_route": "fva_s20",
        "justification": "Synthetic: safety planning for the victim.",
        "accountable_role": "practice lead",
        "consent": "given",
        "child_consulted": "not_applicable",
        "child_not_consulted_reason": None,
        "provenance": "direct",
        "imminent_danger": False,
        "contains_maori_data": False,
        "privileged": False,
        "suppression_order": False,
    }


@pytest.fixture(scope="module")
def joined(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerEnv]:
    """A platform running the shipped registry, which the tenth agency then joins."""
    home = tmp_path_factory.mktemp("new-agency")
    policies = home / "policies-src"
    shutil.copytree(ROOT / "policies", policies)
    kafka = LocalKafka(
        home / "kafka",
        ROOT / "deploy" / "kafka" / "pom.xml",
        free_port(),
        free_port(),
        lib=SHARED_LIB,
    )
    env: BrokerEnv | None = None
    try:
        start_provisioned(
            kafka,
            load_registry(ROOT / "policies" / "agencies.yaml"),
            home / "profiles",
            die_with_parent=True,
        )
        # Step 1: the privacy officers add the agency to the registry.
        with (policies / "agencies.yaml").open("a") as registry_file:
            registry_file.write(ENTRY)
        environment = {
            "TIAKI_HOME": str(home),
            "TIAKI_REGISTRY": str(policies / "agencies.yaml"),
            "TIAKI_KAFKA_PORT": str(kafka.port),
            "TIAKI_CONTROLLER_PORT": str(kafka.controller_port),
        }
        # Steps 2-4: check the registry, provision, make (development) keys.
        for command in (["registry", "check"], ["provision"], ["keys", "init"]):
            done = subprocess.run(
                [str(TIAKI), *command],
                env={**os.environ, **environment},
                capture_output=True,
                text=True,
                cwd=ROOT,
                check=False,
            )
            assert done.returncode == 0, (command, done.stderr)
            if command == ["provision"]:
                assert f"+ principal {NEW}" in done.stdout
        # Step 5: a release with the new registry, approved by two officers.
        now = dt.datetime.now(dt.UTC)
        release = stage_release(policies, ROOT / "schemas", home / "release")
        roster = dev_officers(home / "officers")
        approve_as_dev_officers(release, home / "officers", now)
        registry = load_registry(policies / "agencies.yaml")
        assert NEW in registry.ids
        principals = {a.id: a.key_ref for a in registry.agencies} | {"broker": "broker"}
        ring = KeyStore(home / "keys").load(principals, private_for=None)
        env = BrokerEnv(Cluster(registry, home / "profiles", kafka), home, roster, release, ring)
        env.start()
        yield env
    finally:
        codes = env.stop_all() if env is not None else []
        kafka.down()
    assert codes in ([], [0])


def client(env: BrokerEnv, agency: str, state: Path) -> AdapterClient:
    return AdapterClient.from_files(
        agency,
        profile=env.home / "profiles" / f"{agency}.json",
        keys_dir=env.home / "keys",
        schemas_dir=ROOT / "schemas",
        state_dir=state,
    )


async def receive_until(
    adapter: AdapterClient, want: set[str], within: float = 60
) -> dict[str, Received]:
    got: dict[str, Received] = {}
    deadline = asyncio.get_running_loop().time() + within
    while not want <= set(got) and asyncio.get_running_loop().time() < deadline:
        await adapter.receive(lambda e: got.__setitem__(e.event_id, e), timeout_ms=500)
    return got


async def joined_case(env: BrokerEnv, case: str, agency: str, within: float = 60) -> None:
    """Wait until the broker has committed ``agency`` as a member of ``case``: events from
    different agencies' topics are not ordered against each other."""
    schema = load_schemas(ROOT / "schemas").latest("CaseMembership")
    deadline = asyncio.get_running_loop().time() + within
    while True:
        for record in await env.read("broker", STATE_CASES):
            if record.key == case.encode() and agency in decode(record.value, schema)["members"]:
                return
        assert asyncio.get_running_loop().time() < deadline, f"{agency} never joined {case}"
        await asyncio.sleep(0.5)


async def test_tenth_agency_exchanges_events_filtered_by_policy(
    joined: BrokerEnv, tmp_path: Path
) -> None:
    case = f"SYN-NEW-{uuid.uuid4().hex[:8]}"
    release = example("CorrectionsReleaseNotification", case_id=case, source_agency="corrections")
    release["header"]["sharing"] = sharing("victim_protection")
    release["programme_notes"] = "Synthetic: programme notes that must not leave Corrections."
    allocation = example("CaseAllocation", case_id=case, source_agency="police")
    allocation["agency"]["agency_id"] = "corrections"
    # The release notice goes to the victim's own specialist service only (LAW.md scenario
    # 3): Police, which coordinates cases, allocates the new agency to the case.
    joining = example("CaseAllocation", case_id=case, source_agency="police")
    joining["agency"]["agency_id"] = NEW
    # A health disclosure about another case, which the new agency does not work on.
    other = f"SYN-NEW-{uuid.uuid4().hex[:8]}"
    health = example("HealthScreeningOutcome", case_id=other, source_agency="health-nz")
    plan = example("SafetyPlanUpdate", case_id=case, source_agency=NEW)
    plan["header"]["sharing"] = sharing("fv_plan_or_response") | {"child_consulted": "yes"}

    async with (
        client(joined, NEW, tmp_path / NEW) as aroha,
        client(joined, "corrections", tmp_path / "corrections") as corrections,
        client(joined, "police", tmp_path / "police") as police,
        client(joined, "health-nz", tmp_path / "health-nz") as health_nz,
    ):
        await police.publish("CaseAllocation", allocation)
        await police.publish("CaseAllocation", joining)
        await police.flush()
        await joined_case(joined, case, NEW)
        await corrections.publish("CorrectionsReleaseNotification", release)
        await health_nz.publish("HealthScreeningOutcome", health)
        await corrections.flush()
        await health_nz.flush()
        # The new agency receives the release notice, minimised by the policy...
        got = await receive_until(aroha, {release["header"]["event_id"]})
        notice = got[release["header"]["event_id"]]
        assert notice.legal_basis == "fva_s20_disclosure"
        assert notice.field_actions["programme_notes"] == "drop"
        assert "programme_notes" not in notice.body
        assert "Synthetic: programme notes" not in json.dumps(notice.body)
        # ...and publishes its safety plan, which reaches the participating agency only.
        await aroha.publish("SafetyPlanUpdate", plan)
        await aroha.flush()
        reached = await receive_until(corrections, {plan["header"]["event_id"]})
        assert reached[plan["header"]["event_id"]].source_agency == NEW
        # Police does not participate in the case: the plan is not theirs to see.
        police_got = await receive_until(police, set(), within=0)
        for _ in range(4):
            await police.receive(lambda e: police_got.__setitem__(e.event_id, e), timeout_ms=300)
        assert plan["header"]["event_id"] not in police_got
        # Nor does the NGO take part in the other case: the health disclosure needs it.
        for _ in range(4):
            await aroha.receive(lambda e: got.__setitem__(e.event_id, e), timeout_ms=300)
        assert health["header"]["event_id"] not in got
