"""``tiaki demo``: a scripted day of Integrated Safety Response work through real adapters and
the real broker on the local Kafka, and what each agency received.

The demo plays each agency's *case system*, nothing more: it writes exports into the folders
the seven reference adapters (``adapters/reference/*.yaml``) watch, and reads what their
folder sinks write. The adapters seal, sign and publish through their outboxes with their own
principals and keys; one broker worker runs in this process on an approved development
release of the shipped policy; a synthetic reviewer approves what the policy held for a
person. The day (:func:`isr_day`), in phases, each run to completion before the next:

1. overnight Police attendances (three cases) and a report of concern for the children;
2. the safety assessment meeting: case A high risk, the specialist NGO leads; case B to the
   kaupapa Māori provider; allocations of Oranga Tamariki, Corrections and the NGO;
3. tasks from the meeting to Oranga Tamariki, Corrections and the NGO, and the episode shared
   again for the plan now that the case has members;
4. each tasked agency accepts its task (built with the SDK's ``accept_task`` from what it
   received);
5. Corrections' release notice for the parolee in case A;
6. an MSD information request (a CSV export) to Police about case A;
7. Police's answer (``information_response``), once the request has reached Police;
8. a Health NZ screening outcome, which the policy holds for review;
9. the reviewer approves what was held, and it is released.

Then it prints, per agency, a table of what it received, and where to look next.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import datetime as dt
import io
import json
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka import TopicPartition as KafkaTopicPartition
from rich.console import Console
from rich.table import Table

from adapters import (
    Adapter,
    AdapterConfig,
    Received,
    accept_task,
    information_response,
    load_config,
)
from adapters._config import WebhookSourceConfig
from broker._settings import Settings
from broker.codec import decode, load_schemas
from broker.envelope import KeyStore, init_dev_keys
from broker.platform import BROKER_GROUP_PREFIX, Profile, ingress, load_profile
from broker.platform._profiles import profile_path
from broker.platform._topics import BROKER, REVIEW, STATE_REQUESTS
from broker.policy import PolicyStore, load_roster
from broker.registry import load_registry
from broker.runtime._operator import OperatorAct, operator_audit_context
from broker.runtime._pipeline import broker_opener, broker_sealer
from broker.runtime._release import approve_as_dev_officers, dev_officers, stage_release
from broker.runtime._review import decide, read_queue
from broker.runtime._service import ServiceOptions, serve
from broker.transport import KafkaPublisher, KafkaReader

#: The seven agencies whose reference adapters the demo runs.
DEMO_AGENCIES = (
    "police",
    "oranga-tamariki",
    "corrections",
    "health-nz",
    "msd",
    "safe-whanau",
    "te-whare-tiaki",
)
REFERENCE = Path(__file__).resolve().parents[2] / "adapters" / "reference"
REVIEWER = "Demo Reviewer (synthetic)"


@dataclass(frozen=True)
class Step:
    """One event an agency's case system exports. ``after`` names a (recipient, event id)
    delivery that must have happened first (an answer needs the question)."""

    source: str
    event_type: str
    document: dict[str, Any]
    note: str
    after: tuple[str, str] | None = None
    csv: bool = False

    @property
    def event_id(self) -> str:
        return str(self.document["header"]["event_id"])


@dataclass(frozen=True)
class Phase:
    time: str
    title: str
    steps: tuple[Step, ...] = ()
    approve_held: bool = False


def _iso(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _agency_ref(agency_id: str) -> dict[str, Any]:
    return {"agency_id": agency_id, "team": None, "contact_role": None}


class _Examples:
    def __init__(self, schemas_dir: Path, day: dt.date) -> None:
        self.folder = schemas_dir / "examples"
        self.day = day

    def at(self, hhmm: str) -> str:
        hour, minute = (int(x) for x in hhmm.split(":"))
        return _iso(dt.datetime.combine(self.day, dt.time(hour, minute), dt.UTC))

    def doc(
        self,
        event_type: str,
        case: str,
        source: str,
        hhmm: str,
        sharing: dict[str, Any] | None = None,
        **fields: Any,
    ) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads((self.folder / f"{event_type}.json").read_text())
        doc["header"] |= {
            "event_id": str(uuid.uuid4()),
            "case_id": case,
            "source_agency": source,
            "occurred_at": self.at(hhmm),
            "recorded_at": self.at(hhmm),
            "source_reference": f"SYN-{source.upper()}-{uuid.uuid4().hex[:6].upper()}",
        }
        if sharing is not None:
            doc["header"]["sharing"] = sharing
        doc.update(fields)
        return doc


def _as_received(step: Step) -> Received:
    """What the case system hands the SDK helpers: the event as its agency received it. The
    helpers read only identifiers (task id, parties, request id), which policy keeps."""
    return Received(
        event_id=step.event_id,
        event_type=step.event_type,
        source_agency=step.source,
        route=None,
        legal_basis=None,
        purpose=None,
        obligations=(),
        rule_ids=(),
        field_actions={},
        policy_hash="",
        shared_at=dt.datetime.now(dt.UTC),
        body=step.document,
    )


def isr_day(schemas_dir: Path, tag: str, day: dt.date | None = None) -> list[Phase]:
    """The scripted day for cases ``SYN-ISR-<tag>-A``, ``-B`` and ``-C``; everything synthetic."""
    ex = _Examples(schemas_dir, day or dt.datetime.now(dt.UTC).date())
    a, b, c = (f"SYN-ISR-{tag}-{x}" for x in "ABC")

    episodes = [
        Step(
            "police",
            "FamilyHarmEpisodeReport",
            ex.doc(
                "FamilyHarmEpisodeReport",
                case,
                "police",
                t,
                _sharing("fv_risk_needs_assessment", contains_maori_data=case == b),
            ),
            note,
        )
        for case, t, note in (
            (a, "01:40", "attendance: case A, children present"),
            (b, "03:15", "attendance: case B"),
            (c, "05:50", "attendance: case C"),
        )
    ]
    concern = Step(
        "police",
        "ReportOfConcern",
        ex.doc(
            "ReportOfConcern",
            a,
            "police",
            "02:10",
            _sharing(
                "child_reduce_risk_of_harm",
                "ota_s66c",
                child_consulted="impracticable",
                child_not_consulted_reason="Synthetic: child aged 3.",
            ),
        ),
        "report of concern for the children of case A",
    )

    meeting_a = ex.doc(
        "SafetyAssessmentMeetingOutcome",
        a,
        "police",
        "09:30",
        meeting_id=f"SYN-SAM-{tag}",
        risk_tier="high",
        lead_agency=_agency_ref("safe-whanau"),
        attending_agencies=[
            _agency_ref(x)
            for x in ("police", "oranga-tamariki", "corrections", "safe-whanau", "te-whare-tiaki")
        ],
        task_ids=[f"SYN-TASK-{tag}-{n}" for n in (1, 2, 3)],
        decision_summary="Synthetic: high risk; the NGO leads; tasks to OT, Corrections and the NGO.",
    )
    meeting_a["header"]["sharing"] = _sharing("fv_plan_or_response")
    meeting_b = ex.doc(
        "SafetyAssessmentMeetingOutcome",
        b,
        "police",
        "09:45",
        meeting_id=f"SYN-SAM-{tag}",
        risk_tier="medium",
        lead_agency=_agency_ref("te-whare-tiaki"),
        attending_agencies=[_agency_ref(x) for x in ("police", "te-whare-tiaki")],
        task_ids=[],
        decision_summary="Synthetic: medium risk; kaupapa Māori provider leads.",
    )
    meeting_b["header"]["sharing"] = _sharing("fv_plan_or_response", contains_maori_data=True)

    def allocation(agency: str, role: str) -> Step:
        doc = ex.doc(
            "CaseAllocation",
            a,
            "police",
            "09:50",
            agency=_agency_ref(agency),
            participation_role=role,
            effective_from=ex.at("09:50"),
        )
        return Step("police", "CaseAllocation", doc, f"case A allocated to {agency} ({role})")

    def task(n: int, agency: str, what: str) -> Step:
        doc = ex.doc(
            "TaskEvent",
            a,
            "police",
            "10:00",
            task_id=f"SYN-TASK-{tag}-{n}",
            transition="assigned",
            assigned_to=_agency_ref(agency),
            assigned_by=_agency_ref("police"),
            description=f"Synthetic: {what}",
            due_at=ex.at("23:00"),
        )
        doc["header"]["sharing"] = _sharing(
            "child_support_or_prevention_plan"
            if agency == "oranga-tamariki"
            else "fv_plan_or_response"
        )
        return Step("police", "TaskEvent", doc, f"task to {agency}: {what}")

    tasks = [
        task(1, "oranga-tamariki", "visit the children within 48 hours"),
        task(2, "corrections", "check the parolee's release conditions"),
        task(3, "safe-whanau", "safety plan with the victim"),
    ]
    plan_episode = ex.doc(
        "FamilyHarmEpisodeReport", a, "police", "10:05", _sharing("fv_plan_or_response")
    )
    accepts = [
        Step(
            str(t.document["assigned_to"]["agency_id"]),
            "TaskEvent",
            _with_header(
                accept_task(_as_received(t), note="Synthetic: accepted."),
                ex.at("11:00"),
                str(t.document["assigned_to"]["agency_id"]),
                "TaskEvent",
                _sharing("fv_plan_or_response"),
            ),
            f"{t.document['assigned_to']['agency_id']} accepts its task",
            after=(str(t.document["assigned_to"]["agency_id"]), t.event_id),
        )
        for t in tasks
    ]
    release = ex.doc(
        "CorrectionsReleaseNotification",
        a,
        "corrections",
        "13:00",
        release_date=(ex.day + dt.timedelta(days=5)).isoformat(),
    )
    release["header"]["sharing"] = _sharing("victim_protection")
    # MSD's housing team exports requests as CSV rows filled into its adapter's template.
    request_doc: dict[str, Any] = json.loads(
        (REFERENCE / "templates" / "msd-information-request.json").read_text()
    )
    request_doc["header"] |= {
        "event_id": str(uuid.uuid4()),
        "event_type": "nz.tiaki.InformationRequest",
        "case_id": a,
        "source_agency": "msd",
        "occurred_at": ex.at("14:00"),
        "recorded_at": ex.at("14:00"),
    }
    request_doc |= {
        "request_id": f"SYN-REQ-{tag}",
        "respond_by": _iso(dt.datetime.combine(ex.day + dt.timedelta(days=1), dt.time(17), dt.UTC)),
        "justification": "Synthetic: urgent housing transfer needs the episode history.",
        "urgency": "urgent",
    }
    request = Step(
        "msd",
        "InformationRequest",
        request_doc,
        "MSD asks Police for the episode history (housing transfer)",
        csv=True,
    )
    answer = Step(
        "police",
        "InformationResponse",
        _with_header(
            information_response(
                _as_received(request),
                decision="partial",
                decided_by_role="family harm sergeant",
                items=[
                    {
                        "category": "episode_history",
                        "occurred_on": ex.day.isoformat(),
                        "summary": "Synthetic: one family-harm episode overnight.",
                    },
                    {
                        "category": "protection_order_status",
                        "occurred_on": ex.day.isoformat(),
                        "summary": "Synthetic: no order in force.",
                    },
                ],
                decline_reasons=["not_relevant_or_necessary"],
                reason_text="Synthetic: third-party narrative withheld.",
            ),
            ex.at("14:20"),
            "police",
            "InformationResponse",
            _sharing("victim_protection"),
        ),
        "Police answer MSD's request (partial: third-party narrative withheld)",
        after=("police", request.event_id),  # Police answer once the request has reached them
    )
    health = ex.doc("HealthScreeningOutcome", a, "health-nz", "15:00")
    return [
        Phase("08:00", "Overnight Police attendances", (*episodes, concern)),
        Phase(
            "09:30",
            "Safety assessment meeting",
            (
                allocation("oranga-tamariki", "participant"),
                allocation("corrections", "participant"),
                allocation("safe-whanau", "lead"),
                Step(
                    "police",
                    "SafetyAssessmentMeetingOutcome",
                    meeting_a,
                    "case A: high risk, Safe Whānau leads",
                ),
                Step(
                    "police",
                    "SafetyAssessmentMeetingOutcome",
                    meeting_b,
                    "case B: medium risk, Te Whare Tiaki leads",
                ),
            ),
        ),
        Phase(
            "10:00",
            "Tasks from the meeting",
            (
                *tasks,
                Step(
                    "police",
                    "FamilyHarmEpisodeReport",
                    plan_episode,
                    "case A episode shared for the plan",
                ),
            ),
        ),
        Phase("11:00", "Tasks accepted", tuple(accepts)),
        Phase(
            "13:00",
            "Corrections release notice",
            (
                Step(
                    "corrections",
                    "CorrectionsReleaseNotification",
                    release,
                    "release in five days, with conditions and exclusion zones",
                ),
            ),
        ),
        Phase("14:00", "MSD information request", (request,)),
        Phase("14:20", "Police answer the request", (answer,)),
        Phase(
            "15:00",
            "Health NZ screening outcome",
            (
                Step(
                    "health-nz",
                    "HealthScreeningOutcome",
                    health,
                    "non-fatal strangulation signs; victim refuses referral",
                ),
            ),
        ),
        Phase("15:30", "Reviewer decides what was held", approve_held=True),
    ]


def _sharing(purpose: str, route: str = "fva_s20", **extra: Any) -> dict[str, Any]:
    """The sharing context an agency's adapter attaches (FVA s20: purpose, justification,
    accountable role; consent and child consultation as recorded)."""
    return {
        "purpose": purpose,
        "legal_route": route,
        "justification": "Synthetic: supports the ISR safety assessment and plan.",
        "accountable_role": "ISR co-ordinator",
        "consent": "not_sought_unsafe",
        "child_consulted": "not_applicable",
        "child_not_consulted_reason": None,
        "provenance": "direct",
        "imminent_danger": False,
        "contains_maori_data": False,
        "privileged": False,
        "suppression_order": False,
    } | extra


def _with_header(
    doc: dict[str, Any], at: str, source: str, event_type: str, sharing: dict[str, Any]
) -> dict[str, Any]:
    """Complete a helper's partial header as the SDK's ``publish`` would, so the script is
    fixed before it runs (its expected outcome can be computed from it)."""
    doc["header"] |= {
        "event_id": str(uuid.uuid4()),
        "event_type": f"nz.tiaki.{event_type}",
        "source_agency": source,
        "occurred_at": at,
        "recorded_at": at,
        "source_reference": None,
        "sharing": sharing,
    }
    return doc


@dataclass(frozen=True)
class Row:
    """One event as an agency received it (what its table shows)."""

    event_id: str
    event_type: str
    source: str
    route: str
    legal_basis: str
    kept: int
    dropped: int

    def __str__(self) -> str:
        return f"{self.event_type} from {self.source} ({self.route}, {self.legal_basis}, {self.kept}/{self.dropped})"


@dataclass
class DemoResult:
    """What the demo saw: rows per agency, and what was held and approved."""

    received: dict[str, list[Row]] = field(default_factory=dict)
    held: int = 0
    approved: int = 0
    #: Disclosures made at once in imminent danger, reviewed afterwards (review_within_24h),
    #: and how many of those the reviewer upheld.
    after_disclosure: int = 0
    upheld: int = 0
    skipped: list[str] = field(default_factory=list)
    #: request id -> holders who answered, from the broker's request book.
    requests: dict[str, tuple[str, ...]] = field(default_factory=dict)
    #: Refusal notices the Police adapter reported for the hand-written garbage record.
    refused: int = 0


class _Timeout(Exception):
    pass


async def _until(check: Any, what: str, timeout_s: float, interval_s: float = 0.1) -> None:
    """Poll ``check()`` (sync or async) until true; raise naming ``what`` after ``timeout_s``."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise _Timeout(f"timed out waiting for {what}")
        await asyncio.sleep(interval_s)


def _port_free(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _demo_config(config: AdapterConfig) -> AdapterConfig:
    """The reference configuration with webhooks on a free port (so the demo never collides
    with a port already in use) and quick folder polling."""
    sources = [
        s.model_copy(update={"listen": "127.0.0.1:0"}) if isinstance(s, WebhookSourceConfig) else s
        for s in config.sources
    ]
    return config.model_copy(update={"sources": sources})


def _write_export(folder: Path, name: str, data: bytes) -> Path:
    """Write as a case system should: a hidden temporary name, then rename."""
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = folder / f".{name}.tmp"
    tmp.write_bytes(data)
    target = folder / name
    tmp.replace(target)
    return target


def _csv_row(config: AdapterConfig, doc: Mapping[str, Any]) -> bytes:
    """One CSV export row for ``doc`` with the columns the CSV source maps."""
    (source,) = [s for s in config.sources if getattr(s, "format", None) == "csv"]
    columns = dict(getattr(source, "columns", {}))
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(list(columns))
    cells = []
    for dotted in columns.values():
        value: Any = doc
        for part in dotted.split("."):
            value = value[part]
        cells.append(value if isinstance(value, str) else json.dumps(value))
    writer.writerow(cells)
    return out.getvalue().encode()


async def _broker_caught_up(profile: Profile, topics: Iterable[str]) -> bool:
    """Whether the broker's group has committed every ingress record so far."""
    consumer = AIOKafkaConsumer(
        **profile.aiokafka_kwargs(),
        group_id=BROKER_GROUP_PREFIX,
        enable_auto_commit=False,
        isolation_level="read_committed",
    )
    await consumer.start()
    try:
        # What KafkaReader does: the consumer's own metadata cache holds only what it uses.
        cluster = await consumer._client.fetch_all_metadata()
        parts = [
            KafkaTopicPartition(t, p)
            for t in topics
            for p in sorted(cluster.partitions_for_topic(t) or ())
        ]
        if not parts:
            return False
        ends = await consumer.end_offsets(parts)
        for tp in parts:
            if ends[tp] and (await consumer.committed(tp) or 0) < ends[tp]:
                return False
        return True
    finally:
        await consumer.stop()


class _Day:
    """Plays the phases against running adapters and broker."""

    def __init__(
        self,
        settings: Settings,
        adapters: Mapping[str, Adapter],
        configs: Mapping[str, AdapterConfig],
        console: Console,
        timeout_s: float,
    ) -> None:
        self.settings = settings
        self.adapters = adapters
        self.configs = configs
        self.console = console
        self.timeout_s = timeout_s
        self.broker_profile = load_profile(profile_path(settings.profiles_dir, BROKER))
        self.result = DemoResult()
        self.ids: set[str] = set()
        self.order: dict[str, int] = {}
        self.steps: dict[str, tuple[str, Step]] = {}
        self._counter = 0

    def received_path(self, agency: str, event_id: str, source: str = "x") -> Path:
        """Where ``agency``'s folder sink put ``source``'s event (``<source>_<event id>``)."""
        return (
            self.configs[agency].path("{home}/adapters/{agency}/received", self.settings.home)
            / f"{source}_{event_id}.json"
        )

    def received(self, agency: str, event_id: str) -> bool:
        """Whether ``agency``'s sink holds ``event_id``, from whichever source sent it."""
        folder = self.received_path(agency, event_id).parent
        return folder.exists() and any(folder.glob(f"*_{event_id}.json"))

    async def settle(self) -> None:
        """Wait until every export was read, every outbox drained, the broker committed all
        ingress, and every adapter polled its egress empty twice since."""
        await _until(
            lambda: all(a.client.statistics().pending == 0 for a in self.adapters.values()),
            "the adapters' outboxes to drain",
            self.timeout_s,
        )
        await _until(
            lambda: _broker_caught_up(self.broker_profile, [ingress(a) for a in self.adapters]),
            "the broker to process every ingress record",
            self.timeout_s,
            interval_s=0.3,
        )
        marks = {a: ad.client.statistics().polls for a, ad in self.adapters.items()}
        await _until(
            lambda: all(
                ad.client.statistics().polls >= marks[a] + 3
                and ad.client.statistics().idle_polls >= 2
                for a, ad in self.adapters.items()
            ),
            "the adapters to receive what the broker delivered",
            self.timeout_s,
        )

    async def play(self, phase: Phase, ring: Any, schemas: Any) -> None:
        self.console.print(f"[bold]{phase.time}  {phase.title}[/bold]")
        written: list[Path] = []
        for step in phase.steps:
            if step.after is not None:
                recipient, event_id = step.after
                if not self.received(recipient, event_id):
                    self.result.skipped.append(step.note)
                    self.console.print(
                        f"    [dim]skipped: {step.note} ({recipient} never received it)[/dim]"
                    )
                    continue
            self._counter += 1
            self.ids.add(step.event_id)
            self.order[step.event_id] = self._counter
            self.steps[step.event_id] = (phase.time, step)
            config = self.configs[step.source]
            if step.csv:
                (source,) = [s for s in config.sources if getattr(s, "format", None) == "csv"]
                folder = config.path(source.path, self.settings.home)
                written.append(
                    _write_export(
                        folder,
                        f"{self._counter:03d}-{step.event_type}.csv",
                        _csv_row(config, step.document),
                    )
                )
            else:
                folder = config.path(f"{{home}}/adapters/{step.source}/exports", self.settings.home)
                data = json.dumps(step.document, indent=2).encode()
                written.append(
                    _write_export(folder, f"{self._counter:03d}-{step.event_type}.json", data)
                )
            self.console.print(f"    {step.source:>16}  {step.event_type:<32} {step.note}")
        await _until(
            lambda: not any(p.exists() for p in written),
            "the adapters to read their exports",
            self.timeout_s,
        )
        for path in written:
            # Kept as <time>-<hash>-<name> (the adapter never overwrites a rejected file).
            for reason in sorted((path.parent / "rejected").glob(f"*-{path.name}.reason")):
                self.console.print(
                    f"    [red]rejected {path.name}: {reason.read_text().strip()}[/red]"
                )
        if phase.approve_held:
            await self.approve_held(ring, schemas)
        await self.settle()

    async def requests(self, schemas: Any) -> None:
        """The broker's book of this day's information requests (FVA s24: every request ends
        in an answer or an escalation), from ``tiaki.state.requests``."""
        async with KafkaReader(self.broker_profile) as reader:
            records = await reader.read_all(STATE_REQUESTS)
        latest: dict[str, dict[str, Any]] = {}
        for record in records:
            if not record.value:  # a tombstone
                continue
            state = decode(record.value, schemas.latest("RequestState"))
            if state.get("retired"):
                continue
            if str(state["event_id"]) in self.ids:
                latest[str(state["request_id"])] = state
        for request_id, state in sorted(latest.items()):
            answered = ", ".join(state["answered"]) or "nobody yet"
            self.result.requests[request_id] = tuple(state["answered"])
            self.console.print(
                f"request {request_id} from {state['requester']} to {', '.join(state['holders'])}:"
                f" answered by {answered}; respond by {state['respond_by']:%Y-%m-%d %H:%M} UTC"
            )

    async def refusal(self, agency: str = "police") -> None:
        """A record written to ``agency``'s ingress topic by hand, not through its adapter
        (garbage, as a misconfigured test tool would send): the broker quarantines it and
        tells the agency, whose adapter reports it."""
        before = self.adapters[agency].client.statistics().refused
        profile = load_profile(profile_path(self.settings.profiles_dir, agency))
        async with KafkaPublisher(profile) as publisher:
            await publisher.publish(ingress(agency), None, b"\x01SYN-not-an-envelope")
        await _until(
            lambda: self.adapters[agency].client.statistics().refused > before,
            f"{agency}'s adapter to hear of its refused record",
            self.timeout_s,
        )
        self.result.refused = self.adapters[agency].client.statistics().refused - before
        self.console.print(
            f"a record written to {ingress(agency)} by hand, not through the adapter: the broker"
            f" quarantined it (malformed_envelope) and {agency}'s adapter reported the refusal"
            " (`record refused by the broker` in its log, tiaki_adapter_refused_total)"
        )

    async def approve_held(self, ring: Any, schemas: Any) -> None:
        now = dt.datetime.now(dt.UTC)
        async with OperatorAct(self.broker_profile, ring, queue="review") as act:
            await self._approve_held(act, ring, schemas, now)

    async def _approve_held(self, act: OperatorAct, ring: Any, schemas: Any, now: Any) -> None:
        """The reviewer's act: every held item of the demo's, decided as it stands once the
        act holds the review queue."""
        queue = read_queue(await act.read(REVIEW), broker_opener(ring), schemas, now)
        mine = [i for i in queue.items.values() if str(i.shared["event_id"]) in self.ids]
        self.result.held = sum(not i.disclosed for i in mine)
        self.result.after_disclosure = sum(i.disclosed for i in mine)
        context = operator_audit_context(self.settings)
        outputs = []
        for item in mine:
            if item.state not in ("held", "escalated"):
                continue
            outputs += decide(
                item,
                "approve",
                reviewer=REVIEWER,
                justification="Synthetic: relevant and necessary for the ISR safety plan.",
                now=now,
                sealer=broker_sealer(ring),
                schemas=schemas,
                context=context,
            )
            if item.disclosed:
                self.result.upheld += 1
                self.console.print(
                    f"    {'reviewer':>16}  upholds the {item.shared['event_type']} disclosed at"
                    f" once to {item.recipient} (imminent danger)"
                )
                continue
            self.result.approved += 1
            self.console.print(
                f"    {'reviewer':>16}  approves {item.shared['event_type']} for {item.recipient}"
            )
        if outputs:
            await act.commit(outputs, now)

    def tables(self, registry_names: Mapping[str, str]) -> None:
        order = self.order
        for agency in self.adapters:
            rows: list[Row] = []
            folder = self.received_path(agency, "x").parent
            for path in sorted(folder.glob("*.json")) if folder.exists() else []:
                doc = json.loads(path.read_text())
                if doc["event_id"] not in self.ids:
                    continue
                actions = doc["field_actions"].values()
                dropped = sum(a == "drop" for a in actions)
                rows.append(
                    Row(
                        doc["event_id"],
                        doc["event_type"],
                        doc["source_agency"],
                        doc["route"] or "-",
                        doc["legal_basis"] or "-",
                        len(actions) - dropped,
                        dropped,
                    )
                )
            rows.sort(key=lambda r: order.get(r.event_id, 0))
            self.result.received[agency] = rows
            title = f"{registry_names.get(agency, agency)} ({agency}) received"
            if not rows:
                self.console.print(f"[dim]{title} nothing about these cases[/dim]")
                continue
            table = Table(title=title, title_justify="left")
            for column in (
                "when",
                "case",
                "event",
                "from",
                "route",
                "legal basis",
                "kept / dropped",
            ):
                table.add_column(column)
            for row in rows:
                when, step = self.steps[row.event_id]
                table.add_row(
                    when,
                    str(step.document["header"]["case_id"])[-1],
                    row.event_type,
                    row.source,
                    row.route,
                    row.legal_basis,
                    f"{row.kept} / {row.dropped}",
                )
            self.console.print(table)
        seen = {row.event_id for rows in self.result.received.values() for row in rows}
        unseen = [self.steps[i] for i in sorted(self.ids - seen, key=order.__getitem__)]
        if unseen:
            self.console.print(
                "\n[bold]reached no agency[/bold] (no sharing rule permits them for any"
                " recipient; the broker's decisions are in the audit log):"
            )
            for when, step in unseen:
                self.console.print(
                    f"  {when}  {step.source:>16}  {step.event_type:<32} {step.note}"
                )


async def run_demo(
    settings: Settings,
    console: Console,
    *,
    stay: bool = False,
    metrics_port: int | None = 9464,
    phases: list[Phase] | None = None,
    timeout_s: float = 60.0,
) -> DemoResult:
    """Play the ISR day (``phases``, default :func:`isr_day` with a fresh tag) and print what
    each agency received; with ``stay``, keep broker and adapters running until Ctrl-C."""
    registry = load_registry(settings.registry)
    now = dt.datetime.now(dt.UTC)
    principals = {a.id: a.key_ref for a in registry.agencies} | {BROKER: BROKER}
    init_dev_keys(KeyStore(settings.keys_dir), set(principals.values()), now=now)
    ring = KeyStore(settings.keys_dir).load(principals, private_for=[BROKER])

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
    if metrics_port is not None and not _port_free(metrics_port):
        console.print(
            f"[dim]port {metrics_port} is in use: the demo broker serves no metrics[/dim]"
        )
        metrics_port = None
    schemas = load_schemas(settings.schemas_dir)
    phases = phases or isr_day(settings.schemas_dir, uuid.uuid4().hex[:6].upper())

    configs = {a: _demo_config(load_config(REFERENCE / f"{a}.yaml")) for a in DEMO_AGENCIES}
    for config in configs.values():
        # As a case system's export folder is there before its adapter starts (an adapter
        # warns about a folder it cannot list).
        for source in config.sources:
            if getattr(source, "path", None) is not None:
                folder = config.path(source.path, settings.home)
                folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    adapters = {
        a: Adapter.from_config(c, home=settings.home, schemas=schemas) for a, c in configs.items()
    }
    stop_broker, stop_adapters = asyncio.Event(), asyncio.Event()
    broker = asyncio.create_task(
        serve(broker_settings, store, ServiceOptions(metrics_port=metrics_port), stop_broker)
    )
    running = [asyncio.create_task(a.run(stop_adapters)) for a in adapters.values()]
    day = _Day(settings, adapters, configs, console, timeout_s)
    console.print(f"broker and {len(adapters)} reference adapters running; the day begins\n")
    try:
        for phase in phases:
            if broker.done():
                broker.result()  # the broker stopped: show why
            await day.play(phase, ring, schemas)
        console.print()
        day.tables({a.id: a.name for a in registry.agencies})
        console.print(
            f"\nheld for review: {day.result.held} (approved {day.result.approved} as {REVIEWER});"
            f" disclosed at once and reviewed afterwards: {day.result.after_disclosure}"
            f" (upheld {day.result.upheld})"
        )
        await day.requests(schemas)
        await day.refusal()
        if stay:
            console.print(
                "\nstaying up: drop JSON exports into .tiaki/adapters/<agency>/exports/, "
                "see .tiaki/adapters/<agency>/received/; Ctrl-C to stop"
            )
            await _wait_for_interrupt()
    finally:
        stop_adapters.set()
        for task in running:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        stop_broker.set()
        with contextlib.suppress(asyncio.CancelledError):
            await broker
    where = [
        f"metrics: http://127.0.0.1:{metrics_port}/metrics (served while `tiaki demo --stay` runs)"
        if metrics_port
        else "metrics: `tiaki broker run --metrics-port 9464`, then http://127.0.0.1:9464/metrics",
        "review queue: `tiaki review list --all` (the decisions above are recorded there)",
        "audit: `tiaki audit verify`, then `tiaki audit index` and `tiaki audit query --recipient msd`"
        " (compliance profile; docs/compliance.md)",
        "each agency's view: .tiaki/adapters/<agency>/received/ (one JSON file per event)",
        "dead letters: `tiaki adapter dead-letters --config adapters/reference/<agency>.yaml`",
        "quarantine: `tiaki quarantine list`, then `tiaki quarantine resolve P:O --outcome"
        " dismissed --operator NAME --justification TEXT` (docs/operations.md)",
        "run one adapter yourself: `tiaki adapter run --agency police --config adapters/reference/police.yaml`",
    ]
    console.print("\nwhere to look next:\n  " + "\n  ".join(where))
    return day.result


async def _wait_for_interrupt() -> None:
    import signal

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
