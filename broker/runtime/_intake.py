"""Intake: the first stage of the broker's pipeline, pure.

A record read from ``tiaki.ingress.<A>`` is admitted only if every check holds, in this order:

1. the topic names an agency in the registry (else ``unknown_agency``);
2. it is not larger than the platform allows (``oversized``);
3. the envelope opens: version, binding to this topic, ingress from A to the broker, an
   authentic key announcement, an unrevoked, unexpired key, no replay (the envelope's reason
   codes: ``tampered``, ``wrong_topic``, ``replayed``, ``key_revoked`` ...);
4. the writer schema is known and is an event (``unknown_schema``, ``not_an_event``);
5. the payload is exactly one valid Avro record (``malformed_avro``);
6. the event's own header agrees with the envelope: same event id, same source agency, same
   event type (``header_mismatch``);
7. the record is where the case's other events are: its Kafka key is the header's case id (as
   UTF-8, the key the adapters send with) and, when the topic's partition count is known, its
   partition is the one Kafka's default partitioner gives that key (``key_mismatch``).

Why 7: the sending agency chooses a record's key and partition, and a worker holds the state of
the cases whose partitions it owns (membership, requests; see :mod:`broker.runtime._cases`).
A record placed elsewhere would be decided by a worker that does not own its case, on that
worker's stale copy of it, and the whole-state record it wrote would overwrite the owner's
newer one on the compacted state topic. Without the partition count (``partitions`` not given,
or it returns None) only the key is checked.

Anything else is :class:`Rejected` with its reason code, never an exception: the runtime writes
it to quarantine and an audit record, and the stream goes on. Nothing is dropped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar, Protocol

from broker._errors import TiakiError
from broker.codec import CodecError, Schema, SchemaSet
from broker.envelope import EnvelopeError, Kind, Opened, Opener
from broker.platform._topics import ingress_agency
from broker.registry import Agency, Registry
from broker.transport import partition_for

#: Default largest ingress record accepted (matches the topic's ``max.message.bytes``).
MAX_RECORD_BYTES = 1_048_576


class IncomingRecord(Protocol):
    """What intake needs of a consumed record (the transport's ``Record`` has it)."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes: ...


class IntakeError(TiakiError):
    """A record failed one of intake's own checks; ``quarantine_reason`` says which."""

    quarantine_reason: ClassVar[str] = "intake_error"


class UnknownAgency(IntakeError):
    quarantine_reason = "unknown_agency"


class OversizedRecord(IntakeError):
    quarantine_reason = "oversized"


class NotAnEvent(IntakeError):
    quarantine_reason = "not_an_event"


class HeaderMismatch(IntakeError):
    quarantine_reason = "header_mismatch"


class KeyMismatch(IntakeError):
    """The record is not keyed, or not partitioned, as its case's events are."""

    quarantine_reason = "key_mismatch"


@dataclass(frozen=True)
class Accepted:
    """An authenticated, decoded event, ready for policy."""

    source: Agency
    schema: Schema
    event: dict[str, Any]
    opened: Opened
    #: The schema the event was decoded as (the newest version of the writer's name), whose
    #: shape it has; None when that is not known (an event built by hand).
    shape: Schema | None = None

    @property
    def event_id(self) -> str:
        return self.opened.event_id

    @property
    def event_type(self) -> str:
        return self.schema.short_name


@dataclass(frozen=True)
class Rejected:
    """A record for quarantine: the reason code and what is known without trusting it."""

    reason: str
    detail: str
    source: str | None = None
    event_id: str | None = None
    event_type: str | None = None


class Intake:
    """Admit or reject ingress records. One per worker (the opener's replay cache is stateful).

    ``partitions`` gives an ingress topic's partition count, or None while it is unknown (the
    running broker asks its transport); without it, a record's partition is not checked.
    """

    def __init__(
        self,
        *,
        registry: Registry,
        schemas: SchemaSet,
        opener: Opener,
        max_record_bytes: int = MAX_RECORD_BYTES,
        partitions: Callable[[str], int | None] | None = None,
    ) -> None:
        self._agencies = {a.id: a for a in registry.agencies}
        self._schemas = schemas
        self._opener = opener
        self._max = max_record_bytes
        self._partitions = partitions
        #: (source, event id, the replay cache's watermark before it) of each record the
        #: replay cache learnt since the last commit.
        self._uncommitted: list[tuple[str, str, int]] = []
        #: Records admitted before ``_uncommitted[0]`` (committed or aborted): marks count
        #: from the start, so they stay valid as a prefix commits.
        self._settled = 0
        #: (source, event id, sealed_at ms) admitted since :meth:`take_seen` last ran.
        self._seen: list[tuple[str, str, int]] = []

    def mark(self) -> int:
        """A point in what was admitted, for :meth:`committed`: how many records have been
        admitted since this intake began (so a mark stays right as earlier ones commit)."""
        return self._settled + len(self._uncommitted)

    def committed(self, mark: int | None = None) -> None:
        """The transaction holding everything admitted up to ``mark`` (default: everything
        admitted so far) committed."""
        count = len(self._uncommitted) if mark is None else mark - self._settled
        del self._uncommitted[:count]
        self._settled += count

    def aborted(self) -> None:
        """The transaction aborted: its records will be read again, so they are not replays."""
        replay = self._opener.replay
        if replay is not None:
            for source, event_id, _ in self._uncommitted:
                replay.forget(source, event_id)
            if self._uncommitted:
                replay.restore_watermark(self._uncommitted[0][2])
        self._settled += len(self._uncommitted)
        self._uncommitted.clear()
        self._seen.clear()

    def take_seen(self) -> list[tuple[str, str, int]]:
        """What passed the replay check since the last call: the worker writes it to
        ``tiaki.state.seen`` in the transaction of the batch that admitted it."""
        seen, self._seen = self._seen, []
        return seen

    def knows(self, agency_id: str) -> bool:
        """Whether ``agency_id`` is in the registry (so its egress topic was provisioned)."""
        return agency_id in self._agencies

    def admit(self, record: IncomingRecord, now: datetime) -> Accepted | Rejected:
        """Run every check on ``record``; never raises for a bad record."""
        source_id = ingress_agency(record.topic)
        event_id: str | None = None
        event_type: str | None = None
        try:
            source = self._agencies.get(source_id or "")
            if source is None:
                raise UnknownAgency(f"topic {record.topic} names no agency in the registry")
            if len(record.value) > self._max:
                raise OversizedRecord(f"{len(record.value)} bytes, more than {self._max}")
            replay = self._opener.replay
            watermark = replay.watermark_ms if replay is not None else -1
            opened = self._opener.open(
                record.value, topic=record.topic, now=now, kind=Kind.INGRESS, source=source.id
            )
            event_id = opened.event_id
            self._uncommitted.append((source.id, event_id, watermark))
            self._seen.append((source.id, event_id, opened.sealed_at_ms))
            schema = self._schemas.by_fingerprint(opened.schema_fingerprint)
            event_type = schema.short_name
            if schema.kind != "event":
                raise NotAnEvent(f"schema {schema.label} is a shared type, not an event")
            shape = self._schemas.latest(schema.name)
            event = self._schemas.decode(opened.payload, opened.schema_fingerprint, shape)
            _check_header(event, opened, source, schema)
            self._check_placement(record, event)
            return Accepted(source, schema, event, opened, shape)
        except (IntakeError, EnvelopeError, CodecError) as exc:
            return Rejected(exc.quarantine_reason, str(exc), source_id, event_id, event_type)

    def _check_placement(self, record: IncomingRecord, event: dict[str, Any]) -> None:
        # The details name no key, case id or partition: they come from the sender's record.
        case_id = (event.get("header") or {}).get("case_id")
        if not isinstance(case_id, str) or record.key != case_id.encode():
            raise KeyMismatch("the record's key is not the case id its header names")
        count = self._partitions(record.topic) if self._partitions is not None else None
        if count and record.partition != partition_for(record.key, count):
            raise KeyMismatch("the record is on another partition than its case id's")


def _check_header(event: dict[str, Any], opened: Opened, source: Agency, schema: Schema) -> None:
    header = event.get("header") or {}
    if str(header.get("event_id")) != opened.event_id:
        raise HeaderMismatch("the event's header names another event id than its envelope")
    if header.get("source_agency") != source.id:
        raise HeaderMismatch("the event's header names another source agency than its topic")
    if header.get("event_type") not in (schema.short_name, schema.name):
        raise HeaderMismatch("the event's header names another event type than its schema")
