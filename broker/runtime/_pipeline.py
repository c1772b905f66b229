"""The broker's pipeline for one ingress record, pure: record in, records out.

``Pipeline.process`` turns one consumed record into every record it causes, which the runtime
then produces in the same Kafka transaction as the consumed offset (exactly once):

=====================  ===================================================================
what happened          records produced
=====================  ===================================================================
rejected at intake     ``tiaki.dlq`` (the record kept whole, sealed to the broker, reason)
                       + ``tiaki.audit`` (action ``quarantine``, reason code)
membership changed     ``tiaki.state.cases`` (the case's CaseMembership), before deciding
membership refused     as rejected at intake, reason ``unauthorised_membership``: the sender
                       may not change what the event would change (``_cases.py``)
request id in use      as rejected at intake, reason ``request_id_in_use``: another agency's
                       request about the case holds the id (``_requests.py``), or
                       ``request_id_malformed``: the id holds 0x1f; nothing is routed
policy failed          ``tiaki.dlq`` (reason ``policy_error``) + audit: fail closed; the
                       state records above still go (the event's facts stand)
decided                one audit record (action ``decision``) listing the decision about
                       every candidate recipient as carried out (below), then per recipient:
share                  ``tiaki.egress.<recipient>`` (SharedEvent sealed to the recipient)
share, undeliverable   as review, and its entry in the audit record says so: outcome
                       ``review``, first reason ``recipient_key_unusable`` (no usable key to
                       seal to: revoked, expired, refused), ``output_oversized`` (a record
                       the egress topic would refuse) or ``recipient_topic_missing`` (Kafka
                       has no egress topic for it); a person releases it once the cause
                       is fixed, or declines it. Its review-afterwards copy is not written:
                       the held item is the one review item of the pair
share, reviewed        as share, + ``tiaki.review`` (the same SharedEvent sealed to the broker,
afterwards             header ``tiaki-review-kind: after_disclosure``): obligation
                       ``review_within_24h``, a disclosure in imminent danger goes at once and a
                       person reviews it within 24 hours (LAW.md)
review                 ``tiaki.review`` (SharedEvent sealed to the broker, recipient in the
                       header)
deny                   nothing beyond its entry in the audit record (outcome, reasons)
held item too large    as rejected at intake, reason ``oversized``: a review item (of either
                       kind above) that ``tiaki.review`` would refuse; the state records
                       still go, as for a policy failure
=====================  ===================================================================

Egress and review records are keyed by case id, so one case stays ordered on one partition.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

import structlog

from broker.codec import Schema, SchemaSet, encode
from broker.envelope import (
    EnvelopeConfig,
    EnvelopeError,
    KeyInfo,
    KeyRing,
    Kind,
    Opener,
    Oversized,
    Sealer,
)
from broker.platform._topics import (
    AUDIT,
    BROKER,
    DLQ,
    REVIEW,
    STATE_CASES,
    STATE_REQUESTS,
    STATE_SEEN,
    egress,
    ingress_agency,
)
from broker.policy import json_value
from broker.runtime._audit import (
    AuditContext,
    audit_base,
    case_ref,
    decision_facts,
    identifier_finder,
    key_operation_audit,
    policy_change_audit,
    quarantine_audit,
    quarantined_record,
    subject_refs,
)
from broker.runtime._cases import CaseMembership, MembershipRefused
from broker.runtime._decide import Decider, Outcome, Verdict
from broker.runtime._encoding import RecordParts
from broker.runtime._intake import Accepted, Intake, Rejected
from broker.runtime._requests import (
    RETIRED,
    RequestBook,
    RequestIdInUse,
    RequestIdMalformed,
    state_key,
)
from broker.runtime._tallies import tally_key, tally_output
from broker.transport import Headers, Outgoing, Record, TopicPartition

log = structlog.get_logger("tiaki.broker")

#: Header naming the Avro schema (hex fingerprint) of an unsealed record (audit).
SCHEMA_HEADER = "tiaki-schema"
#: Header naming the recipient a held (review) record is for.
RECIPIENT_HEADER = "tiaki-recipient"
#: Header carrying the quarantine reason code on tiaki.dlq, so operators can filter unsealed.
REASON_HEADER = "tiaki-reason"
#: Headers of a held item on tiaki.review: its id (:func:`review_id`) and its deadline
#: (epoch milliseconds).
REVIEW_ID_HEADER = "tiaki-review-id"
DEADLINE_HEADER = "tiaki-deadline"
#: Header of a held item: the subject references (keyed hashes, comma-separated) of the event
#: it was held from, so the reviewer's approve or decline audit record names the same people
#: as the decision that held it (the held body is minimised and may name nobody). The review
#: topic is the broker's alone; the same references are on the audit topic already.
SUBJECTS_HEADER = "tiaki-subjects"
#: How long a held item may wait for a person before it escalates (LAW.md: review within 24 h).
REVIEW_WINDOW = timedelta(hours=24)
#: The obligation of a share that a person reviews afterwards (policies/vocabulary.yaml): the
#: share goes at once, and a copy goes to the review queue as well.
REVIEW_AFTER_DISCLOSURE = "review_within_24h"
#: Header marking a review item's kind; ``after_disclosure`` is the copy of a share already
#: delivered, which approving records and declining audits as a finding, never resends. An
#: item without it is held: nothing was delivered, and approving releases it.
REVIEW_KIND_HEADER = "tiaki-review-kind"
AFTER_DISCLOSURE = "after_disclosure"

POLICY_ERROR = "policy_error"
#: Quarantine reason of an event with a review item too large for ``tiaki.review``.
OVERSIZED = Oversized.quarantine_reason
#: Reason codes put first on the verdict of a share held instead of delivered, so the audit
#: record and ``tiaki_held_for_review_total{reason}`` (the first reason) say why.
RECIPIENT_KEY_UNUSABLE = "recipient_key_unusable"
OUTPUT_OVERSIZED = "output_oversized"
RECIPIENT_TOPIC_MISSING = "recipient_topic_missing"
#: The step between two decision times of one case (``SharedEvent`` keeps milliseconds).
_TICK = timedelta(milliseconds=1)
#: Cases whose last decision time is kept before the ones already past are dropped.
_DECIDED_KEPT = 10_000
#: The reasons a permitted share is held undeliverable, for metrics and alerts.
UNDELIVERABLE = (RECIPIENT_KEY_UNUSABLE, OUTPUT_OVERSIZED, RECIPIENT_TOPIC_MISSING)
#: The log's error type for a share or notice not written because its topic is missing.
TOPIC_MISSING = "TopicMissing"

#: The largest record the broker writes to ``tiaki.egress.<agency>`` and ``tiaki.review``:
#: the egress topics' ``max.message.bytes`` (broker/platform/_plan.py), which is also the
#: producer's ``max_request_size``; ``tiaki.review`` has no override, so Kafka's default
#: ``message.max.bytes`` (1,048,588) applies there and the producer's limit is the lower.
MAX_EGRESS_BYTES = 1_048_576
MAX_REVIEW_BYTES = 1_048_576
#: Room kept below those limits for what Kafka wraps a record in: the record batch header
#: (61 bytes) and the record's framing (at most 21 bytes, and a length per key, header and
#: value), which :func:`_record_bytes` does not count.
RECORD_FRAMING = 256


#: The largest payload the broker seals to itself: a quarantined record on ``tiaki.dlq``
#: (an ingress record of up to 1 MiB, which intake checks, wrapped with where it came from and
#: why), whose topic takes 2 MiB; 16 KiB are left for the wrapper and the envelope's header and
#: announcement. Egress and review records have their own, lower limits, checked above.
BROKER_MAX_PAYLOAD = 2 * 1024 * 1024 - 16 * 1024


def broker_sealer(ring: KeyRing) -> Sealer:
    """The broker's :class:`Sealer`: it seals quarantined records of any size intake let
    through (the envelope's default limit, 4 KiB under 1 MiB, would refuse the largest and
    stop the worker on them)."""
    return Sealer(BROKER, ring, config=EnvelopeConfig(max_payload=BROKER_MAX_PAYLOAD))


def broker_opener(ring: KeyRing) -> Opener:
    """An :class:`Opener` for what the broker sealed to itself (``tiaki.dlq``,
    ``tiaki.review``), as large as :func:`broker_sealer` seals."""
    return Opener(BROKER, ring, max_payload=BROKER_MAX_PAYLOAD)


class _TooLargeToHold(Exception):
    """A review item larger than ``tiaki.review`` takes: the event goes to quarantine."""


def _record_bytes(output: Outgoing) -> int:
    """The bytes of ``output`` Kafka counts against a topic's limit, but for its framing."""
    size = len(output.value or b"") + len(output.key or b"")
    return size + sum(len(name.encode()) + len(value) for name, value in output.headers)


def _refused(
    admitted: Accepted, exc: MembershipRefused | RequestIdInUse | RequestIdMalformed
) -> Rejected:
    """The quarantine of an admitted event whose sender may not change what it would change
    (a case's membership, or a request another agency made)."""
    return Rejected(
        exc.quarantine_reason,
        str(exc),
        admitted.source.id,
        admitted.event_id,
        admitted.event_type,
    )


def _json_default(value: Any) -> Any:
    text = json_value(value)
    if text is value:
        raise TypeError(f"cannot represent {type(value).__name__} in a shared event")
    return text


def audit_key(record: Mapping[str, Any], key: bytes | None = None) -> bytes | None:
    """The Kafka key of an audit record: its case reference (the keyed hash, never the case id
    itself, which the compliance principal has no need to see), so one case's audit records
    stay in order on one partition; ``key`` serves records about no case (an escalated
    request's id)."""
    ref = record.get("case_ref")
    return ref.encode() if ref else key


def audit_output(schema: Schema, record: Mapping[str, Any], key: bytes | None = None) -> Outgoing:
    """An audit record for ``tiaki.audit``: plain Avro, its schema named in a header, keyed by
    :func:`audit_key`."""
    return Outgoing(
        AUDIT,
        audit_key(record, key),
        encode(schema, record),
        ((SCHEMA_HEADER, schema.fingerprint_hex.encode()),),
    )


def sealed_for_broker(
    sealer: Sealer, schema: Schema, record: Mapping[str, Any], topic: str, now: datetime
) -> bytes:
    """``record`` sealed to the broker itself (HOLD) for ``topic``, under a fresh id: the
    quarantine, held items' decisions, the operators' resolutions, which only it reads."""
    return sealer.seal(
        encode(schema, record),
        kind=Kind.HOLD,
        topic=topic,
        recipient=BROKER,
        event_id=str(uuid.uuid4()),
        schema_fingerprint=schema.fingerprint,
        now=now,
    )


#: :func:`body_json`'s encoder, made once: ``json.dumps`` with these options makes one per call.
_BODY_ENCODER = json.JSONEncoder(
    default=_json_default, sort_keys=True, separators=(",", ":"), ensure_ascii=False
)


def body_json(body: Mapping[str, Any]) -> str:
    """The minimised event as canonical JSON (sorted keys, no insignificant whitespace).

    Bodies the policy decider projects are JSON-ready already (``FieldPlan.project``), so the
    encoder never calls back into Python for them; the hook writes any date, time, UUID or
    bytes value a body from elsewhere still holds, the same way.
    """
    return _BODY_ENCODER.encode(body)


@dataclass(frozen=True)
class Processed:
    """What one ingress record caused: the records to produce, and facts for the metrics,
    which the worker counts only once the transaction holding them has committed."""

    outputs: list[Outgoing]
    source: str | None
    event_type: str | None
    quarantine_reason: str | None = None
    verdicts: tuple[Verdict, ...] = field(default=())


class Pipeline:
    """Intake, policy, minimisation and sealing for one worker (not thread-safe)."""

    def __init__(
        self,
        *,
        intake: Intake,
        decider: Decider,
        sealer: Sealer,
        schemas: SchemaSet,
        subject_key: bytes,
        cases: CaseMembership | None = None,
        requests: RequestBook | None = None,
        max_egress_bytes: int = MAX_EGRESS_BYTES,
        max_review_bytes: int = MAX_REVIEW_BYTES,
    ) -> None:
        self._intake = intake
        #: The largest egress and review records produced, framing room included.
        self._max_egress = max_egress_bytes - RECORD_FRAMING
        self._max_review = max_review_bytes - RECORD_FRAMING
        self._decider = decider
        self._sealer = sealer
        self._audit_schema = schemas.latest("AuditRecord")
        self._shared_schema = schemas.latest("SharedEvent")
        self._quarantine_schema = schemas.latest("QuarantinedRecord")
        self._notice_schema = schemas.latest("RefusalNotice")
        self._parts = RecordParts(self._audit_schema, self._shared_schema)
        self._audit_headers: Headers = (
            (SCHEMA_HEADER, self._audit_schema.fingerprint_hex.encode()),
        )
        self._subject_key = subject_key
        self._audit_context: AuditContext | None = None
        self._cases_schema = schemas.latest("CaseMembership")
        #: Shared with the decider, which asks it whether a recipient participates.
        self.cases = cases if cases is not None else CaseMembership()
        self._requests_schema = schemas.latest("RequestState")
        #: Names the writer schema: records older than v2 have no header (see rebuild_state).
        self._requests_headers: Headers = (
            (SCHEMA_HEADER, self._requests_schema.fingerprint_hex.encode()),
        )
        self._seen_schema = schemas.latest("SeenEvents")
        self._tally_schema = schemas.latest("Tally")
        self._tally_key = tally_key(subject_key)
        self.requests = requests if requests is not None else RequestBook()
        #: Agencies whose egress topic Kafka lacks (or hides from the broker), as the service
        #: last saw the cluster (``watch_egress``). A share for one is held, reason
        #: ``recipient_topic_missing``, and no refusal notice is written to one: a produce to
        #: a missing topic fails its whole transaction only after the producer's metadata
        #: wait, again on every retry, and sharing with every agency would stop behind it.
        self.unreachable: frozenset[str] = frozenset()
        #: (request id, holder) pairs escalated since the last commit, and (request id,
        #: RETIRED) for requests retired since, undone on abort.
        self._escalated: list[tuple[str, str]] = []
        self._escalations_settled = 0  # escalations before _escalated[0], for marks
        #: Audit records of this worker's own acts (a policy or key change it took into
        #: force: :meth:`note_policy`, :meth:`note_keys`) not yet committed; the first
        #: ``_notes_taken`` of them are in a transaction already. They go out with the next
        #: :meth:`escalations`, and again after an abort, until one commits.
        self._notes: list[Outgoing] = []
        self._notes_taken = 0
        #: The last decision time given to each recent case (:meth:`_decided_at`).
        self._decided: dict[bytes, datetime] = {}
        self._notes_settled = 0  # notes before _notes[0], for marks

    def mark(self) -> tuple[int, int, int]:
        """A point in what was processed, for :meth:`committed`. A worker that processes the
        next batch while the previous one commits marks the end of each batch."""
        return (
            self._intake.mark(),
            self._escalations_settled + len(self._escalated),
            self._notes_settled + self._notes_taken,
        )

    def committed(self, mark: tuple[int, int, int] | None = None) -> None:
        """Everything processed up to ``mark`` (default: everything so far) is committed."""
        if mark is None:
            admitted, count, notes = None, len(self._escalated), self._notes_taken
        else:
            admitted = mark[0]
            count = mark[1] - self._escalations_settled
            notes = mark[2] - self._notes_settled
        self._intake.committed(admitted)
        del self._escalated[:count]
        self._escalations_settled += count
        del self._notes[:notes]
        self._notes_taken -= notes
        self._notes_settled += notes

    def notes_committed(self, mark: tuple[int, int, int]) -> None:
        """The transaction up to ``mark`` was reported failed but committed all the same (a
        lost reply, seen in the audit chain's head): its notes are on the log, and must not
        go out again after :meth:`aborted`. The rest it held the state re-read restores."""
        notes = mark[2] - self._notes_settled
        del self._notes[:notes]
        self._notes_settled += notes
        self._notes_taken = max(0, self._notes_taken - notes)

    def aborted(self) -> None:
        """Everything processed since the last commit will be processed again."""
        self._intake.aborted()
        self._notes_taken = 0  # what was taken goes out again with the next escalations
        self.requests.unescalate(self._escalated)
        self._escalations_settled += len(self._escalated)
        self._escalated.clear()

    def _context(self) -> AuditContext:
        """The audit context under the policy in force now (one per policy, not per event)."""
        policy_hash = self._decider.policy_hash
        context = self._audit_context
        if context is None or context.policy_hash != policy_hash:
            context = self._audit_context = AuditContext(self._subject_key, policy_hash)
        return context

    def _audit(self, record: Mapping[str, Any], key: bytes | None) -> Outgoing:
        return audit_output(self._audit_schema, record, key)

    def process(self, record: Record, now: datetime) -> Processed:
        """Every record that ``record`` causes; never raises for a bad record."""
        admitted = self._intake.admit(record, now)
        if isinstance(admitted, Rejected):
            return self._quarantine(record, admitted, now)
        outputs: list[Outgoing] = []
        try:
            state = self.cases.apply(
                admitted.event_type, admitted.event, now, sender=admitted.source
            )
        except MembershipRefused as exc:  # before it changed anything, or anything was shared
            return self._quarantine(record, _refused(admitted, exc), now)
        if state is not None:
            value = encode(self._cases_schema, state)
            outputs.append(Outgoing(STATE_CASES, state["case_id"].encode(), value))
        tally = tally_output(
            self._tally_schema,
            self._tally_key,
            admitted.event_type,
            admitted.event,
            admitted.source,
            now,
        )
        if tally is not None:  # counted for the hubs' aggregates, in this transaction
            outputs.append(tally)
        try:
            request = self.requests.apply(
                admitted.event_type, admitted.event, record.partition, now
            )
        except (RequestIdInUse, RequestIdMalformed) as exc:  # it changed no membership
            return self._quarantine(record, _refused(admitted, exc), now)
        answered = request is not None and admitted.event_type == "InformationResponse"
        if request is not None:
            outputs.append(self._request_state(request))
        try:
            verdicts = self._decider.decide(admitted, now)
        except Exception as exc:  # fail closed: a policy fault withholds everything, loses nothing
            detail = f"policy evaluation failed: {type(exc).__name__}"
            return self._withheld(
                record, admitted, POLICY_ERROR, detail, outputs, now, answered=answered
            )
        finder = None if admitted.shape is None else identifier_finder(admitted.shape)
        found = None if finder is None else finder(admitted.event)
        refs = subject_refs(self._subject_key, admitted.event, found)
        # The deliveries are made first, so the audit record (written before them) says what
        # was done: a share that could not be delivered was held instead. An event no rule
        # could send anywhere has no verdicts, and its decision (to nobody) is audited too.
        carried_out: list[Verdict] = []
        deliveries: list[Outgoing] = []
        if verdicts:
            head = self._parts.shared_head(
                event_id=admitted.event_id,
                event_type=admitted.event_type,
                source_agency=admitted.source.id,
                source_schema=admitted.schema.fingerprint_hex,
                shared_at=self._decided_at(_case_key(admitted), now),
            )
            bodies: dict[int, bytes] = {}  # body_json parts: recipients alike share one body
            try:
                for verdict in verdicts:
                    done, delivered = self._deliver(admitted, verdict, now, head, bodies, refs)
                    carried_out.append(done)
                    deliveries += delivered
            except _TooLargeToHold:
                detail = "a record for a recipient is larger than tiaki.review takes"
                return self._withheld(
                    record, admitted, OVERSIZED, detail, outputs, now, answered=answered
                )
        outputs.append(self._decision_audit(admitted, carried_out, now, refs))
        outputs += deliveries
        return Processed(outputs, admitted.source.id, admitted.event_type, None, tuple(carried_out))

    def _withheld(
        self,
        record: Record,
        admitted: Accepted,
        reason: str,
        detail: str,
        kept: list[Outgoing],
        now: datetime,
        *,
        answered: bool = False,
    ) -> Processed:
        """The quarantine of an admitted event whose disclosure is withheld (a policy fault, a
        review item too large to hold). The event is authenticated and its facts stand (an
        agency joined or left, a request was made): the state change it caused is kept, and
        its state records (``kept``) go with the quarantine, so the state topics say what
        memory says. A request whose holders never got it escalates at its deadline. An
        answer (``answered``: the event marked its holder answered) is not a fact the
        requester learnt: its holder waits again, and is escalated unless it answers again."""
        if answered:
            state = self.requests.unanswer(admitted.event)
            if state is not None:
                kept = [o for o in kept if o.topic != STATE_REQUESTS]
                kept.append(self._request_state(state))
        rejected = Rejected(
            reason, detail, admitted.source.id, admitted.event_id, admitted.event_type
        )
        quarantined = self._quarantine(record, rejected, now)
        return replace(quarantined, outputs=kept + quarantined.outputs)

    def _quarantine(self, record: Record, rejected: Rejected, now: datetime) -> Processed:
        kept = quarantined_record(
            rejected,
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            key=record.key,
            value=record.value,
            now=now,
        )
        sealed = sealed_for_broker(self._sealer, self._quarantine_schema, kept, DLQ, now)
        dlq = Outgoing(DLQ, record.key, sealed, ((REASON_HEADER, rejected.reason.encode()),))
        # Nothing of a rejected record is trusted, its key included: the audit record is unkeyed.
        audit = self._audit(quarantine_audit(self._context(), rejected, now), None)
        outputs = [dlq, audit]
        notice = self._refusal_notice(record, rejected, now)
        if notice is not None:
            outputs.append(notice)
        return Processed(outputs, rejected.source, rejected.event_type, rejected.reason)

    def _refusal_notice(self, record: Record, rejected: Rejected, now: datetime) -> Outgoing | None:
        """A RefusalNotice for the agency that wrote ``record``: its ingress topic says who
        (only that agency may write there), whatever the record itself claims. None for a
        record from elsewhere, from an agency not in the registry (a stray topic has no
        egress topic to write to, and a produce to a missing topic would abort every
        transaction) or from one whose egress topic is missing (:attr:`unreachable`), or for
        an agency the broker has no current key for (the quarantine and its audit record
        still say everything)."""
        agency = ingress_agency(record.topic)
        if agency is None or not self._intake.knows(agency):
            return None
        if agency in self.unreachable:
            log.warning("refusal notice not sent", agency=agency, error_type=TOPIC_MISSING)
            return None
        notice = {
            "topic": record.topic,
            "partition": record.partition,
            "offset": record.offset,
            "reason": rejected.reason,
            "detail": rejected.detail[:500],
            "event_id": rejected.event_id,
            "event_type": rejected.event_type,
            "refused_at": now,
        }
        try:
            sealed = self._sealer.seal(
                encode(self._notice_schema, notice),
                kind=Kind.EGRESS,
                topic=egress(agency),
                recipient=agency,
                event_id=str(uuid.uuid4()),
                schema_fingerprint=self._notice_schema.fingerprint,
                now=now,
            )
        except EnvelopeError as exc:
            log.warning("refusal notice not sent", agency=agency, error_type=type(exc).__name__)
            return None
        return Outgoing(egress(agency), None, sealed, ((REASON_HEADER, rejected.reason.encode()),))

    def _request_state(self, state: Mapping[str, Any]) -> Outgoing:
        value = encode(self._requests_schema, state)
        return Outgoing(STATE_REQUESTS, state_key(state).encode(), value, self._requests_headers)

    def seen(self) -> list[Outgoing]:
        """The batch's ``tiaki.state.seen`` record: the events admitted since the last call,
        so a worker that starts later, or takes these partitions over, refuses their replays
        (:func:`seen_events` reads them back). Committed with the batch or not at all."""
        seen = self._intake.take_seen()
        if not seen:
            return []
        events = [{"source": s, "event_id": e, "sealed_at_ms": t} for s, e, t in seen]
        return [Outgoing(STATE_SEEN, None, encode(self._seen_schema, {"events": events}))]

    def escalations(
        self, now: datetime, assignment: Collection[TopicPartition] | None = None
    ) -> list[Outgoing]:
        """Requests a holder has not answered by their deadline: each escalates once (FVA s24:
        no request ends silently), by the worker that owns it (with ``assignment``, this
        worker's partitions, only those it owns; see broker.runtime._requests). The caller
        commits these records or calls ``aborted``.

        The same worker retires its requests past their retention (``REQUEST_RETENTION``):
        the state record that retires one (``retired``) follows its escalations, if any.
        A retirement is undone on abort like an escalation: it is kept in ``_escalated`` as
        the pair (request key, ``RETIRED``), and the book keeps the request aside until the
        pass after its transaction settles."""
        self.requests.forget_retired({r for r, holder in self._escalated if holder == RETIRED})
        lapsed = self.requests.lapse(now, assignment)
        outputs: list[Outgoing] = []
        context = self._context()
        for state, holder in lapsed.escalated:
            self._escalated.append((state_key(state), holder))
            outputs.append(self._request_state(state))
            case_id = state["case_id"]  # None in a book rebuilt from records older than v3
            audit = audit_base(context, "escalation", now) | {
                "event_id": state["event_id"],
                "event_type": "InformationRequest",
                "case_ref": None if case_id is None else case_ref(context.subject_key, case_id),
                "source_agency": state["requester"],
                "recipient": holder,
                "outcome": "escalated",
                "reason_codes": ["request_unanswered"],
            }
            # Keyed by the case reference (audit_key), beside the case's decisions; by the
            # request id when the case is unknown.
            outputs.append(self._audit(audit, str(state["request_id"]).encode()))
        for retirement in lapsed.retirements:
            self._escalated.append((state_key(retirement), RETIRED))
            outputs.append(self._request_state(retirement))
        outputs += self._notes[self._notes_taken :]
        self._notes_taken = len(self._notes)
        return outputs

    def _decided_at(self, case: bytes, now: datetime) -> datetime:
        """When this event of ``case`` is decided (``SharedEvent.decided_at``, and its
        ``shared_at`` unless a person releases it later): ``now``, or a millisecond after the
        case's event before it if that is not earlier. A recipient orders a case's events by
        this time, a held item released later among them, so two events of one case in one
        batch (one ``now``, to the millisecond the field keeps) must not tie."""
        last = self._decided.get(case)
        decided = now if last is None or last < now else last + _TICK
        if len(self._decided) >= _DECIDED_KEPT:  # only the latest few matter: older are past
            self._decided = {c: t for c, t in self._decided.items() if t >= now}
        self._decided[case] = decided
        return decided

    def note_policy(
        self,
        now: datetime,
        *,
        replaced: str | None,
        rejected: str | None = None,
        started: bool = False,
    ) -> None:
        """Audit, with the next transaction, that the policy set now in force replaced
        ``replaced``, that one was refused (``rejected``: why) and the one in force kept, or
        (``started``) that the worker runs the one in force from now on."""
        record = policy_change_audit(
            self._context(), now, replaced=replaced, rejected=rejected, started=started
        )
        self._notes.append(self._audit(record, b"policy"))

    def note_keys(
        self,
        now: datetime,
        changed: Sequence[KeyInfo],
        refused: Sequence[KeyInfo] = (),
        *,
        started: bool = False,
    ) -> None:
        """Audit, with the next transaction, the key changes taken into force (``changed``)
        and the ones refused (``refused``), each keyed by its key set; with ``started``,
        ``changed`` is every key in force as the worker starts (reason ``worker_started``)."""
        context = self._context()
        for info, was_refused in [(i, False) for i in changed] + [(i, True) for i in refused]:
            record = key_operation_audit(
                context, now, info, refused=was_refused, started=started and not was_refused
            )
            self._notes.append(self._audit(record, info.owner.encode()))

    def _decision_audit(
        self, admitted: Accepted, verdicts: Sequence[Verdict], now: datetime, refs: list[str]
    ) -> Outgoing:
        """The decision audit record :func:`decision_audit` gives, written from its parts."""
        context = self._context()
        facts = decision_facts(context, admitted.event)
        value = self._parts.decision(
            verdicts,
            audit_id=uuid.uuid4(),
            recorded_at=now,
            event_id=admitted.event_id,  # the header's, as intake checked
            event_type=admitted.event_type,
            schema_fingerprint=admitted.schema.fingerprint_hex,
            actor=context.actor,
            source_agency=admitted.source.id,
            subject_refs=refs,
            policy_hash=context.policy_hash,
            **facts,
        )
        return Outgoing(AUDIT, audit_key(facts), value, self._audit_headers)

    def _deliver(
        self,
        admitted: Accepted,
        verdict: Verdict,
        now: datetime,
        head: bytes,
        bodies: dict[int, bytes],
        refs: list[str],
    ) -> tuple[Verdict, list[Outgoing]]:
        """``verdict`` as carried out, and the records that carry its minimised event: none
        for a deny, the egress record for a share (and its review copy if the share must be
        reviewed afterwards), the held item for a review.

        A share that cannot be delivered is held instead, and its verdict becomes a review
        whose first reason says why: ``recipient_key_unusable`` if it cannot be sealed to the
        recipient (a key revoked, expired or refused), ``output_oversized`` if the egress
        topic would refuse the record, ``recipient_topic_missing`` if Kafka has no egress
        topic for it. Nothing is lost and nothing stops: a person releases it once the cause
        is fixed (the release seals to the key current then), or declines it.
        Raises :class:`_TooLargeToHold` if a review item is too large for ``tiaki.review``.
        """
        if verdict.outcome is Outcome.DENY or verdict.body is None:
            return verdict, []
        body = bodies.get(id(verdict.body))
        if body is None:
            body = bodies[id(verdict.body)] = self._parts.body(body_json(verdict.body))
        shared = self._parts.shared_event(head, verdict, body)
        if verdict.outcome is not Outcome.SHARE:
            return verdict, [self._held(admitted, verdict, now, shared, refs)]
        delivered = self._egress_record(admitted, verdict.recipient, shared, now)
        if isinstance(delivered, Outgoing):
            outputs = [delivered]
            if REVIEW_AFTER_DISCLOSURE in verdict.obligations:
                # LAW.md: in imminent danger the disclosure goes at once and a person
                # reviews it within 24 hours; the review queue holds the copy they read.
                outputs.append(self._held(admitted, verdict, now, shared, refs, disclosed=True))
            return verdict, outputs
        reason, error_type = delivered
        log.warning("share held for review", agency=verdict.recipient, error_type=error_type)
        held = replace(
            verdict, outcome=Outcome.REVIEW, reason_codes=(reason, *verdict.reason_codes)
        )
        return held, [self._held(admitted, held, now, shared, refs)]

    def _egress_record(
        self, admitted: Accepted, recipient: str, shared: bytes, now: datetime
    ) -> Outgoing | tuple[str, str]:
        """The record delivering ``shared`` to ``recipient``, or why there can be none: the
        reason a share is held instead, and the error's type for the log."""
        if recipient in self.unreachable:
            return RECIPIENT_TOPIC_MISSING, TOPIC_MISSING
        topic = egress(recipient)
        try:
            sealed = self._sealer.seal(
                shared,
                kind=Kind.EGRESS,
                topic=topic,
                recipient=recipient,
                event_id=admitted.event_id,
                schema_fingerprint=self._shared_schema.fingerprint,
                now=now,
            )
        except EnvelopeError as exc:
            reason = OUTPUT_OVERSIZED if isinstance(exc, Oversized) else RECIPIENT_KEY_UNUSABLE
            return reason, type(exc).__name__
        delivered = Outgoing(topic, _case_key(admitted), sealed)
        if _record_bytes(delivered) > self._max_egress:
            return OUTPUT_OVERSIZED, Oversized.__name__
        return delivered

    def _held(
        self,
        admitted: Accepted,
        verdict: Verdict,
        now: datetime,
        shared: bytes,
        refs: list[str],
        *,
        disclosed: bool = False,
    ) -> Outgoing:
        """The item on ``tiaki.review`` for ``verdict``, sealed to the broker: held for a person
        before release, or (``disclosed``) the copy of a share for its review afterwards.
        Raises :class:`_TooLargeToHold` if ``tiaki.review`` would refuse it."""
        deadline = int((now + REVIEW_WINDOW).timestamp() * 1000)
        headers: Headers = (
            (RECIPIENT_HEADER, verdict.recipient.encode()),
            (REVIEW_ID_HEADER, review_id(admitted, verdict.recipient).encode()),
            (DEADLINE_HEADER, str(deadline).encode()),
            (SUBJECTS_HEADER, ",".join(refs).encode()),
        )
        if disclosed:
            headers += ((REVIEW_KIND_HEADER, AFTER_DISCLOSURE.encode()),)
        try:
            sealed = self._sealer.seal(
                shared,
                kind=Kind.HOLD,
                topic=REVIEW,
                recipient=BROKER,
                event_id=held_binding(headers),
                schema_fingerprint=self._shared_schema.fingerprint,
                now=now,
            )
        except Oversized:
            raise _TooLargeToHold() from None
        held = Outgoing(REVIEW, _case_key(admitted), sealed, headers)
        if _record_bytes(held) > self._max_review:
            raise _TooLargeToHold()
        return held


def review_id(admitted: Accepted, recipient: str) -> str:
    """The id of ``admitted``'s item held for ``recipient``: ``<source>/<event id>/<recipient>``.
    It names the source because each source chooses its own event ids (the replay cache keys
    on both), so two sources' items for one recipient never share an id. Agency ids have no
    ``/`` and event ids are UUIDs, so the parts stay apart."""
    return f"{admitted.source.id}/{admitted.event_id}/{recipient}"


#: The headers of a held item that say what it is; :func:`held_binding` seals them in.
_BOUND_HEADERS = (
    REVIEW_ID_HEADER,
    RECIPIENT_HEADER,
    DEADLINE_HEADER,
    SUBJECTS_HEADER,
    REVIEW_KIND_HEADER,
)


def held_binding(headers: Headers) -> str:
    """What a held item's envelope authenticates as its event id: its review id, then a
    digest of the headers that say who it is for, until when, about whom and of which kind.

    Kafka headers are not sealed, and a held item's are what a release acts on: whoever can
    write ``tiaki.review`` (Kafka's operators) could otherwise copy an item with another
    recipient in its header, and a reviewer's approval would release one agency's minimised
    record to another. :func:`broker.runtime._review.read_queue` refuses an item whose
    headers do not give the id its envelope carries."""
    found = dict(headers)
    digest = hashlib.sha256()
    for name in _BOUND_HEADERS:
        value = found.get(name, b"")
        digest.update(len(value).to_bytes(4, "big") + value)
    return f"{found.get(REVIEW_ID_HEADER, b'').decode(errors='replace')}#{digest.hexdigest()[:32]}"


def _case_key(admitted: Accepted) -> bytes:
    """Egress and review records are keyed by case id, so one case stays on one partition."""
    return str(admitted.event["header"]["case_id"]).encode()
