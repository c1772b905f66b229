"""``tiaki demo``: one case through the broker on the local Kafka, and what each agency saw.

It plays every agency's adapter itself (sealing with each agency's development key), runs one
broker worker in this process on an approved development release of the shipped policy,
publishes a short scripted story for one case, then opens each agency's egress topic with that
agency's own principal and key and prints what arrived. The adapters of issue 6 replace the
scripted publishing; the broker is the real one.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import uuid
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from broker._settings import Settings
from broker.codec import decode, encode, from_json, load_schemas
from broker.envelope import KeyStore, Kind, Opener, Sealer, init_dev_keys
from broker.platform._profiles import load_profile, profile_path
from broker.platform._topics import BROKER, DLQ, REVIEW, egress, ingress
from broker.policy import PolicyStore, load_roster
from broker.registry import load_registry
from broker.runtime._release import approve_as_dev_officers, dev_officers, stage_release
from broker.runtime._service import ServiceOptions, serve
from broker.transport import KafkaPublisher, KafkaReader


def _example(schemas_dir: Path, event_type: str, case: str, source: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((schemas_dir / "examples" / f"{event_type}.json").read_text())
    doc["header"] |= {"event_id": str(uuid.uuid4()), "case_id": case, "source_agency": source}
    return doc


def story(schemas_dir: Path, case: str) -> list[tuple[str, str, dict[str, Any]]]:
    """(source, event type, document): a day of multi-agency work on one case."""
    allocation = _example(schemas_dir, "CaseAllocation", case, "police")
    allocation["agency"]["agency_id"] = "corrections"
    meeting = _example(schemas_dir, "SafetyAssessmentMeetingOutcome", case, "police")
    meeting["lead_agency"]["agency_id"] = "safe-whanau"
    meeting["risk_tier"] = "high"
    episode = _example(schemas_dir, "FamilyHarmEpisodeReport", case, "police")
    episode["header"]["sharing"]["purpose"] = "fv_plan_or_response"
    return [
        (
            "police",
            "FamilyHarmEpisodeReport",
            _example(schemas_dir, "FamilyHarmEpisodeReport", case, "police"),
        ),
        ("police", "ReportOfConcern", _example(schemas_dir, "ReportOfConcern", case, "police")),
        ("police", "CaseAllocation", allocation),
        ("police", "SafetyAssessmentMeetingOutcome", meeting),
        ("police", "FamilyHarmEpisodeReport", episode),
        (
            "health-nz",
            "HealthScreeningOutcome",
            _example(schemas_dir, "HealthScreeningOutcome", case, "health-nz"),
        ),
        (
            "corrections",
            "CorrectionsReleaseNotification",
            _example(schemas_dir, "CorrectionsReleaseNotification", case, "corrections"),
        ),
        ("msd", "InformationRequest", _example(schemas_dir, "InformationRequest", case, "msd")),
        (
            "police",
            "InformationResponse",
            _example(schemas_dir, "InformationResponse", case, "police"),
        ),
    ]


async def run_demo(settings: Settings, console: Console) -> None:
    registry = load_registry(settings.registry)
    now = dt.datetime.now(dt.UTC)
    principals = {a.id: a.key_ref for a in registry.agencies} | {BROKER: BROKER}
    store_keys = KeyStore(settings.keys_dir)
    init_dev_keys(store_keys, set(principals.values()), now=now)
    ring = store_keys.load(principals, private_for=None)  # the demo plays every agency

    release = stage_release(settings.policies_dir, settings.schemas_dir, settings.home / "release")
    roster = dev_officers(settings.home / "officers")
    approve_as_dev_officers(release, settings.home / "officers", now)
    broker_settings = settings.model_copy(
        update={
            "policies_dir": release,
            "schemas_dir": release.parent / "schemas",
            "registry": release / "agencies.yaml",
        }
    )
    store = PolicyStore(load_roster(roster))
    engine = store.load(release)
    console.print(
        f"policy release approved by {', '.join(store.approved_by)}; hash {engine.policy_hash[:16]}…"
    )

    stop = asyncio.Event()
    broker = asyncio.create_task(
        serve(broker_settings, store, ServiceOptions(metrics_port=None), stop)
    )
    schemas = load_schemas(settings.schemas_dir)
    case = f"SYN-DEMO-{uuid.uuid4().hex[:6].upper()}"
    events = story(settings.schemas_dir, case)
    ids = {doc["header"]["event_id"] for _, _, doc in events}
    try:
        await asyncio.sleep(3)  # let the worker join its group
        for source, event_type, doc in events:
            schema = schemas.latest(event_type)
            sealed = Sealer(source, ring).seal(
                encode(schema, from_json(schema, doc)),
                kind=Kind.INGRESS,
                topic=ingress(source),
                recipient=BROKER,
                event_id=doc["header"]["event_id"],
                schema_fingerprint=schema.fingerprint,
                now=dt.datetime.now(dt.UTC),
            )
            async with KafkaPublisher(
                load_profile(profile_path(settings.profiles_dir, source))
            ) as publisher:
                await publisher.publish(ingress(source), case.encode(), sealed)
            console.print(f"  {source:>16} published {event_type}")
        await asyncio.sleep(8)
    finally:
        stop.set()
        await broker

    shared_schema = schemas.latest("SharedEvent")
    for agency in registry.agencies:
        async with KafkaReader(
            load_profile(profile_path(settings.profiles_dir, agency.id))
        ) as reader:
            records = await reader.read_all(egress(agency.id))
        table = Table(title=f"{agency.name} ({agency.id}) received", title_justify="left")
        for column in ("event type", "from", "route", "legal basis", "fields kept / dropped"):
            table.add_column(column)
        for record in records:
            opened = Opener(agency.id, ring).open(
                record.value,
                topic=record.topic,
                now=dt.datetime.now(dt.UTC),
                kind=Kind.EGRESS,
                source=BROKER,
            )
            shared = decode(opened.payload, shared_schema)
            if str(shared["event_id"]) not in ids:
                continue
            actions = shared["field_actions"].values()
            dropped = sum(a == "drop" for a in actions)
            table.add_row(
                shared["event_type"],
                shared["source_agency"],
                shared["route"] or "-",
                shared["legal_basis"] or "-",
                f"{len(actions) - dropped} / {dropped}",
            )
        console.print(
            table
            if table.row_count
            else f"[dim]{agency.name} ({agency.id}) received nothing about this case[/dim]"
        )

    async with KafkaReader(load_profile(profile_path(settings.profiles_dir, BROKER))) as reader:
        held = len(await reader.read_all(REVIEW))
        quarantined = len(await reader.read_all(DLQ))
    console.print(f"\nheld for review: {held} (tiaki review list)   quarantined: {quarantined}")
    console.print(
        "next: `tiaki broker run` for a long-running worker (metrics on :9464), `tiaki review list`, "
        "`tiaki policy simulate`, and the audit topic with the compliance profile"
    )
