"""The adapter client: publish through a durable outbox, receive with commit-after-handling.

Publishing (:meth:`AdapterClient.publish`)::

    validate against the schema  ->  store in the outbox (SQLite, fsync)  ->  return event id
                                              |
    background sender, oldest first, one in flight:  seal to the broker, sign, send with the
    idempotent producer (acks=all)  ->  on ack, mark the row sent  ->  next row

``publish`` succeeds as soon as the event is on local disk, whether Kafka is up or not; the
sender keeps retrying (with back-off) while Kafka is unreachable and resumes in order when it
is back. Guarantees, stated exactly:

* in order: rows go in the order ``publish`` accepted them, one at a time, and the next is
  sent only after the previous one's ack, so Kafka's per-partition order is the outbox order;
* nothing lost: a row leaves the outbox only after Kafka acknowledged it with ``acks=all``;
* exactly once while the adapter process lives: the idempotent producer drops its own retries;
* after a crash between Kafka's ack and the local mark, the row is sent again, resealed under
  the same event id. The broker's replay check quarantines that copy as ``replayed`` while it
  remembers the event id (24 hours, same worker); in any case the receiving adapters drop it
  by idempotency key. So delivery to a *handler* is once; Kafka may hold a duplicate record.
* publishing an event id already in the outbox (sent or not, for ``keep_sent``) with the same
  content is a no-op, so a source that re-reads a file after a crash does not publish it
  twice; with other content it raises :class:`InvalidEvent`. Once the broker refused the
  event (its refusal notice names the event id, or the record's position), publishing it
  again is not a no-op: a record the broker could not open is queued again and sent afresh,
  and one it opened (so counts as seen) raises :class:`InvalidEvent` asking for a new id;
* a row that can never be sent (too large for an envelope, or for a Kafka record with its
  case id) moves to the dead letters, so it does not hold up the rows behind it; a key
  problem keeps every row waiting.

Receiving (:meth:`AdapterClient.receive`, :meth:`AdapterClient.run`): each record is opened
and verified, decoded into a :class:`~adapters.Received` and given to the handler. Its
offset is committed only after the handler succeeded, or after the record was durably parked
for another attempt (the handler failed) or dead-lettered (it failed ``max_attempts`` times,
or the record cannot be opened). A failing event therefore never blocks the others, and is
never lost: it is in Kafka, in the retry table or in the dead-letter folder. Idempotency keys
(``<source agency>/<event id>``) of handled events are kept, so a record delivered twice
reaches the handler once; an egress record sealed more than :data:`MAX_EGRESS_AGE` ago is
dead-lettered as stale rather than trusted to be known by its key. A regional hub's client
(``hub_region``) reads its region's ``tiaki.hub.<region>`` in the same group and hands each
aggregate table sealed to it over as a delivery from the broker.

Keys: with a key folder (:class:`~adapters._keys.KeyFolder`), the client reads it again every
5 seconds before sealing or opening, and at once when a record does not open for a key
(sealed to a key of this agency's, or signed by a broker key, that it has not loaded), trying
that record once more before it is dead-lettered. So a revocation is in force within 5
seconds for sealing and opening alike, and an agency that rotated its keys, or was given the
broker's new document, needs no restart to read what is sealed under them. The one thing a
read does not change is the agency's own signing key (:class:`~adapters._keys.KeyRings`).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import datetime as dt
import hashlib
import inspect
import json
import traceback
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
from aiokafka import errors as kafka_errors

from adapters._connection import Connection, Feed, KafkaConnection
from adapters._deadletter import DeadLetter, DeadLetters
from adapters._errors import InvalidEvent
from adapters._events import Received, idempotency_key
from adapters._keys import KeyFolder, KeyRings
from adapters._metrics import AdapterMetrics
from adapters._state import Parked, Pending, Refused, StateStore
from broker.codec import (
    CodecError,
    Schema,
    SchemaSet,
    UnknownSchema,
    decode,
    encode,
    from_json,
    load_schemas,
    to_json,
)
from broker.envelope import (
    BROKER,
    EnvelopeError,
    KeyRevoked,
    KeyRing,
    KeyUnusable,
    Kind,
    Opened,
    Opener,
    Sealer,
    Stale,
    WrongRecipient,
)
from broker.platform import egress, group_prefix, hub, ingress, load_profile
from broker.platform._topics import HUB_PREFIX
from broker.transport import Publisher, Record, ResourceBase, TransportError

log = structlog.get_logger("tiaki.adapter")
#: The quarantine reason for a copy of an event the broker already admitted.
REPLAYED = "replayed"

Handler = Callable[[Received], Awaitable[object] | object]
Clock = Callable[[], dt.datetime]


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _ms(moment: dt.datetime) -> int:
    return int(moment.timestamp() * 1000)


#: What the log says of a refusal notice: its reason, the event and where it was; its detail
#: is the broker's text, kept out of the log with the rest.
_NOTICE_FIELDS = ("reason", "event_id", "event_type", "topic", "partition", "offset")


def _where(notice: Mapping[str, Any]) -> dict[str, Any]:
    return {name: notice[name] for name in _NOTICE_FIELDS}


def _unopenable(exc: Exception) -> str:
    """A dead letter's reason for a record that does not open: the quarantine reason code of
    the envelope or codec error (never its message)."""
    return f"cannot open: {getattr(exc, 'quarantine_reason', type(exc).__name__)}"


def _handler_failure(exc: Exception) -> str:
    """The reason kept (retry table, dead-letter file, ``tiaki adapter dead-letters``) for a
    handler that raised: the exception's type and a fixed description, never its message,
    which may quote the event (a pydantic ``ValidationError`` carries the input values).
    Only an exception class that declares ``message_is_content_free`` (the reference sinks'
    :class:`~adapters._sinks.SinkFailed`: status codes and OS error names) keeps its message.
    The full text goes only to the dead letter's ``.detail`` file (see :func:`_detail`)."""
    name = type(exc).__name__
    if getattr(type(exc), "message_is_content_free", False) is True:
        return f"{name}: {exc}"[:1000]
    return f"{name}: the handler raised (message not kept)"


def _detail(exc: Exception) -> str:
    """The handler's exception with its traceback, for the dead letter's ``.detail`` file."""
    return "".join(traceback.format_exception(exc))[-_MAX_DETAIL:]


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)

#: How long (seconds) an idle sender sleeps before it looks at the clock again.
_IDLE_WAKE_S = 60.0

#: The oldest an egress record read from the topic may be (by its authenticated ``sealed_at``);
#: an older one is dead-lettered as ``cannot open: stale``. The egress topic keeps records 14
#: days (``broker.platform._plan.RETENTION_DAYS``), and Kafka deletes whole segments, so one
#: may outlive that by a segment's roll time (a week by default): 21 days is past both, and no
#: record the topic still holds is refused. It is under ``keep_sent`` (30 days), so a record
#: that passes was handled, if ever, recently enough for its idempotency key to be kept: an
#: old record written to the topic again (by a Kafka administrator, or a restore from backup)
#: is refused here or dropped as a duplicate, never handed over as new. Retries and dead
#: letters the adapter holds itself are not checked again.
MAX_EGRESS_AGE = dt.timedelta(days=21)

#: How much of a traceback a ``.detail`` file keeps (its end: the exception and where).
_MAX_DETAIL = 64 * 1024

#: The largest record an ingress topic takes: its ``max.message.bytes``, the producer's
#: ``max_request_size`` and what the broker's intake admits (``broker.runtime.MAX_RECORD_BYTES``).
MAX_RECORD_BYTES = 1_048_576
#: What sealing adds to a payload at most (header, key announcement, tag: about 1.5 KiB with
#: the hybrid suite): the room the envelope keeps between its payload limit and its record
#: limit (an :class:`~broker.envelope.Opener` takes records of ``max_payload + 4096``).
SEAL_OVERHEAD = 4096
#: Room for what Kafka wraps a record in (the batch header, the record's framing and
#: lengths), as the broker keeps it (``broker.runtime._pipeline.RECORD_FRAMING``).
RECORD_FRAMING = 256

#: Produce errors about the record itself (its size): the same record is refused on every
#: attempt, so it is moved aside rather than retried as if Kafka were away. The transport
#: raises them as a plain :class:`TransportError` whose cause is aiokafka's error.
_RECORD_TOO_LARGE = (kafka_errors.MessageSizeTooLargeError, kafka_errors.RecordListTooLargeError)


def _too_large(exc: TransportError) -> bool:
    return isinstance(exc.__cause__, _RECORD_TOO_LARGE)


#: Header fields ``publish`` fills in when absent; a null counts as absent.
_FILLED = frozenset({"event_id", "event_type", "source_agency", "occurred_at", "recorded_at"})


def _event_type(name: str) -> str:
    """An event type as ``publish`` takes it: ``TaskEvent``, also when given as its schema's
    full name (``nz.tiaki.TaskEvent``, as the header spells it)."""
    return name.removeprefix("nz.tiaki.")


def _iso(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class RetryPolicy:
    """How often a failing handler is tried: ``max_attempts`` in all, waiting
    ``first_delay * 2**(attempt - 1)`` (at most ``max_delay``) between attempts."""

    max_attempts: int = 5
    first_delay: dt.timedelta = dt.timedelta(seconds=1)
    max_delay: dt.timedelta = dt.timedelta(minutes=5)

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")

    def delay(self, attempts: int) -> dt.timedelta:
        # Doubling stops at max_delay: 2**(attempts - 1) times a timedelta overflows from
        # about the 48th attempt, and the receive loop must never raise for a retry.
        delay = self.first_delay
        for _ in range(max(attempts - 1, 0)):
            if delay >= self.max_delay - delay:  # doubling would reach the cap
                return self.max_delay
            delay *= 2
        return min(delay, self.max_delay)


@dataclass(frozen=True)
class ClientStatistics:
    accepted: int
    sent: int
    pending: int
    received: int
    handled: int
    duplicates: int
    failures: int
    parked: int
    dead_lettered: int
    #: The broker's refusal notices: records this agency sent that the broker quarantined.
    refused: int = 0
    #: Receive rounds so far, and how many of the latest in a row polled nothing (an idle
    #: adapter: everything committed to its egress topic so far has reached the handler).
    polls: int = 0
    idle_polls: int = 0
    #: Records on a regional hub's topic sealed to another hub of its region, passed over.
    skipped: int = 0


@dataclass
class _Counts:
    accepted: int = 0
    sent: int = 0
    received: int = 0
    handled: int = 0
    duplicates: int = 0
    failures: int = 0
    dead_lettered: int = 0
    refused: int = 0
    polls: int = 0
    idle_polls: int = 0
    skipped: int = 0
    last_send_error: str | None = field(default=None)


class AdapterClient(ResourceBase):
    """One agency's connection to Tiaki; an async context manager.

    Build it with :meth:`from_files` (a profile and a key folder, as ``tiaki provision`` and
    ``tiaki keys init`` make them) or directly with a :class:`Connection` (for example an
    :class:`~adapters.InMemoryConnection` in tests). ``state_dir`` holds the outbox database
    and the dead-letter folder; ``None`` keeps state in memory (tests only: not durable).
    ``clock`` is injected so tests never wait for a retry delay. ``send_in_background=False``
    leaves sending to explicit :meth:`send_pending` calls (deterministic tests). Sent event
    ids and handled keys older than ``keep_sent`` are forgotten every ``prune_every``
    (``keep_sent`` must be longer than :data:`MAX_EGRESS_AGE`). ``key_folder`` (set by
    :meth:`from_files`): where ``ring`` came from, read again every 5 seconds and when a
    record does not open for a key (:class:`~adapters._keys.KeyRings`). ``hub_region``: for a
    regional hub (registry kind ``regional_hub``), its region, whose ``tiaki.hub.<region>``
    the client reads beside its egress topic (``tiaki adapter run`` sets it from the
    registry); each aggregate table sealed to this agency arrives as a :class:`Received` of
    type ``AggregateTable`` from ``broker``.
    """

    def __init__(
        self,
        agency: str,
        connection: Connection,
        ring: KeyRing,
        schemas: SchemaSet,
        state_dir: Path | None,
        *,
        clock: Clock = _utc_now,
        retry: RetryPolicy | None = None,
        group_id: str | None = None,
        metrics: AdapterMetrics | None = None,
        send_in_background: bool = True,
        keep_sent: dt.timedelta = dt.timedelta(days=30),
        prune_every: dt.timedelta = dt.timedelta(hours=1),
        key_folder: KeyFolder | None = None,
        hub_region: str | None = None,
    ) -> None:
        self.agency = agency
        self.group_id = group_id or f"{group_prefix(agency)}adapter"
        if not self.group_id.startswith(group_prefix(agency)):
            raise ValueError(f"consumer groups of {agency} start with {group_prefix(agency)!r}")
        if keep_sent <= MAX_EGRESS_AGE:
            # Below it, an old record written to the topic again would be neither refused as
            # stale nor known by its idempotency key.
            raise ValueError(f"keep_sent must be longer than {MAX_EGRESS_AGE.days} days")
        #: The topics the client reads: its egress topic, and a regional hub's aggregates.
        self.topics = (egress(agency),) + ((hub(hub_region),) if hub_region else ())
        self.schemas = schemas
        self.retry = retry or RetryPolicy()
        self.metrics = metrics
        self._connection = connection
        self._clock = clock
        self._keys = KeyRings(agency, ring, key_folder)
        self._sealer = Sealer(agency, self._keys.sealing)
        self._opener = Opener(agency, self._keys.opening)
        self._state = StateStore(state_dir / "adapter.sqlite" if state_dir else None)
        self.dead_letters = DeadLetters(
            state_dir / "dead-letters" if state_dir else Path("dead-letters")
        )
        self._background = send_in_background
        self._keep_sent = keep_sent
        self._prune_every = prune_every
        self._next_prune: dt.datetime | None = None
        self._counts = _Counts()
        self._publisher: Publisher | None = None
        self._feed: Feed | None = None
        self._wake = asyncio.Event()
        self._sender: asyncio.Task[None] | None = None
        self._send_lock = asyncio.Lock()
        self._closed = False
        #: The last outbox failure the send loop logged (its type), so it logs each once.
        self._outbox_failure: str | None = None

    @classmethod
    def from_files(
        cls,
        agency: str,
        *,
        profile: Path,
        keys_dir: Path,
        schemas_dir: Path = Path("schemas"),
        state_dir: Path,
        key_ref: str | None = None,
        **options: Any,
    ) -> AdapterClient:
        """The client an agency runs: its profile, its own private keys, public keys of the
        broker, and the schemas. Only ``agency``'s private keys are loaded. The key folder is
        read again every 5 seconds and when a record does not open for a key
        (:class:`~adapters._keys.KeyRings`)."""
        folder = KeyFolder(keys_dir, agency, key_ref)
        return cls(
            agency,
            KafkaConnection(load_profile(profile)),
            folder.load(),
            load_schemas(schemas_dir),
            state_dir,
            key_folder=folder,
            **options,
        )

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        self._prune_if_due()
        if self.metrics is not None:
            self.metrics.outbox_pending.set(self._state.pending_count())
        if self._background:
            self._sender = asyncio.create_task(self._send_forever())

    async def close(self) -> None:
        """Stop sending and receiving; whatever is unsent stays in the outbox for next time."""
        if self._closed:
            return
        self._closed = True
        if self._sender is not None:
            self._sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sender
        for resource in (self._publisher, self._feed):
            if resource is not None:
                with contextlib.suppress(Exception):
                    await asyncio.shield(resource.close())
        self._publisher = self._feed = None
        self._state.close()

    def _prune_if_due(self) -> None:
        """Forget sent event ids and handled keys older than ``keep_sent``, at start and then
        every ``prune_every`` (by the injected clock) from the send and receive loops, so the
        state file of an adapter that runs for months stays the size of 30 days."""
        now = self._clock()
        if self._next_prune is not None and now < self._next_prune:
            return
        self._next_prune = now + self._prune_every
        self._state.prune(_ms(now - self._keep_sent))

    def statistics(self) -> ClientStatistics:
        c = self._counts
        return ClientStatistics(
            accepted=c.accepted,
            sent=c.sent,
            pending=self._state.pending_count(),
            received=c.received,
            handled=c.handled,
            duplicates=c.duplicates,
            failures=c.failures,
            parked=self._state.parked_count(),
            dead_lettered=c.dead_lettered,
            refused=c.refused,
            polls=c.polls,
            idle_polls=c.idle_polls,
            skipped=c.skipped,
        )

    # -- publishing ----------------------------------------------------------------------

    async def publish(self, event_type: str, document: Mapping[str, Any]) -> str:
        """Validate ``document`` (plain JSON, as in ``schemas/examples``) as ``event_type``
        (``TaskEvent``, or its full name ``nz.tiaki.TaskEvent``) and store it for sending;
        return its event id.

        The header may be partial: ``event_id`` (a new UUID), ``event_type``,
        ``source_agency`` (this agency), ``occurred_at`` and ``recorded_at`` (now) are filled
        in when absent or null (an empty ``event_id`` too). Raises :class:`InvalidEvent` if
        the document or its header is not an object, if the event does not match its schema,
        claims another source, is too large to send (:meth:`_check_size`), reuses a known
        event id with other content, or reuses the id of an event the broker refused after
        reading it; nothing is stored then. The id of an event the broker refused without
        reading it (a key it did not know, say) is queued again and sent afresh.
        """
        now = self._clock()
        event_type = _event_type(event_type)
        if not isinstance(document, Mapping):
            raise InvalidEvent(f"{event_type}: an event must be a JSON object")
        try:
            doc = copy.deepcopy(dict(document))
        except RecursionError:
            raise InvalidEvent(f"{event_type}: nested too deeply") from None
        header, filled = self._header(event_type, doc.get("header"), now)
        doc["header"] = header
        try:
            schema = self.schemas.latest(event_type)
            if schema.kind != "event":  # the broker would quarantine it as not_an_event
                raise InvalidEvent(f"{event_type}: a shared type, not an event")
            payload = encode(schema, from_json(schema, doc))
        except (CodecError, KeyError) as exc:
            raise InvalidEvent(f"{event_type}: {exc}") from None
        except RecursionError:
            raise InvalidEvent(f"{event_type}: nested too deeply") from None
        case_id = str(header["case_id"])
        self._check_size(event_type, payload, case_id)
        event_id = str(header["event_id"])
        outcome = self._state.enqueue(
            event_id,
            event_type,
            case_id,
            schema.fingerprint,
            payload,
            _ms(now),
            self._content_hash(schema, doc, filled, payload),
        )
        if isinstance(outcome, Refused):
            raise InvalidEvent(
                f"{event_type}: the broker refused event {event_id} ({outcome.reason}) after"
                " reading its id; publish it under a new event id"
            )
        if outcome == "different":
            raise InvalidEvent(
                f"{event_type}: event id {event_id} was published before with other content;"
                " give changed content a new event id"
            )
        if outcome in ("stored", "requeued"):
            self._counts.accepted += 1
            if self.metrics is not None:
                self.metrics.accepted.labels(event_type).inc()
                self.metrics.outbox_pending.inc()
        self._wake.set()
        return event_id

    def _header(
        self, event_type: str, given: object, now: dt.datetime
    ) -> tuple[dict[str, Any], list[str]]:
        """The header to encode, with what :meth:`publish` fills in, and the names of the
        times it filled in (which the content hash does not count)."""
        if given is None:
            given = {}
        if not isinstance(given, Mapping):
            raise InvalidEvent(f"{event_type}: 'header' must be an object")
        # A null is "not given" for what publish fills in: a CSV column left empty, a JSON
        # export that writes every field.
        header = {k: v for k, v in given.items() if not (k in _FILLED and v is None)}
        if header.get("source_agency", self.agency) != self.agency:
            raise InvalidEvent(f"{event_type}: source_agency must be {self.agency!r}")
        if header.get("event_id", "") == "":
            header["event_id"] = str(uuid.uuid4())
        else:
            # The envelope carries the id as given and the payload its canonical form: an
            # upper-case, braced or urn:uuid: GUID (SQL Server, .NET) would differ between
            # the two (the broker refuses that as header_mismatch) and be three events here.
            try:
                header["event_id"] = str(uuid.UUID(str(header["event_id"])))
            except ValueError:
                raise InvalidEvent(f"{event_type}: header.event_id is not a UUID") from None
        header.setdefault("event_type", f"nz.tiaki.{event_type}")
        header["source_agency"] = self.agency
        filled = [name for name in ("occurred_at", "recorded_at") if name not in header]
        for name in filled:
            header[name] = _iso(now)
        for optional in ("source_reference", "correlation_id", "sharing"):
            header.setdefault(optional, None)
        return header, filled

    def _check_size(self, event_type: str, payload: bytes, case_id: str) -> None:
        """Refuse an event that could not be sent: sealed (up to :data:`SEAL_OVERHEAD` more),
        with its case id as the Kafka key and Kafka's framing, it must fit a record
        (:data:`MAX_RECORD_BYTES`). That also keeps it within what an envelope carries (its
        ``max_payload`` is the record less :data:`SEAL_OVERHEAD`)."""
        key = len(case_id.encode())
        limit = MAX_RECORD_BYTES - SEAL_OVERHEAD - RECORD_FRAMING - key
        if len(payload) > limit:
            raise InvalidEvent(
                f"{event_type}: the event is {len(payload)} bytes encoded, more than the"
                f" {limit} bytes it may be (a {MAX_RECORD_BYTES}-byte record less"
                f" {SEAL_OVERHEAD} for the envelope, {RECORD_FRAMING} for Kafka's framing and"
                f" {key} for the case id)"
            )

    @staticmethod
    def _content_hash(
        schema: Schema, doc: dict[str, Any], filled: list[str], payload: bytes
    ) -> bytes:
        """SHA-256 of the event as the caller gave it: the times ``publish`` filled in with
        "now" are hashed as a fixed time, so a source reading the same export again after a
        crash (same id, same content, a later "now") is the no-op it was."""
        if filled:
            header = dict(doc["header"])
            for name in filled:
                header[name] = _iso(_EPOCH)
            payload = encode(schema, from_json(schema, {**doc, "header": header}))
        return hashlib.sha256(schema.fingerprint + payload).digest()

    async def send_pending(self, limit: int | None = None) -> int:
        """Send outbox rows oldest first until it is empty, ``limit`` is reached or Kafka
        fails; return how many were sent (a row moved to the dead letters counts towards
        ``limit``, not the result). Never raises for Kafka being unavailable."""
        sent = 0
        before = self._counts.sent
        async with self._send_lock:
            self._prune_if_due()
            while limit is None or sent < limit:
                batch = self._state.pending(limit=100)
                if not batch:
                    break
                for row in batch:
                    if limit is not None and sent >= limit:
                        break
                    if not await self._send(row):
                        return self._counts.sent - before
                    sent += 1
        return self._counts.sent - before

    async def _send(self, row: Pending) -> bool:
        now = self._clock()
        key = row.case_id.encode()
        self._keys.refresh_if_due(now)  # a revoked key is not sealed to
        try:
            if self._publisher is None:
                publisher = self._connection.publisher()
                try:
                    await publisher.start()
                except BaseException:
                    with contextlib.suppress(Exception):
                        await publisher.close()
                    raise
                self._publisher = publisher
            sealed = self._sealer.seal(
                row.payload,
                kind=Kind.INGRESS,
                topic=ingress(self.agency),
                recipient=BROKER,
                event_id=row.event_id,
                schema_fingerprint=row.fingerprint,
                now=now,
            )
            if len(sealed) + len(key) + RECORD_FRAMING > MAX_RECORD_BYTES:
                # Only a row stored before publish counted the case id and the framing.
                self._unsendable(row, "cannot send: oversized", "RecordTooLarge")
                return True
            record = await self._publisher.publish(ingress(self.agency), key, sealed)
        except KeyUnusable as exc:
            # A key problem (expired, revoked, the broker's key unknown) needs a person; the
            # event waits in the outbox and is sent once the key folder has the fix (read
            # every 5 seconds; the agency's own new signing key only after a restart). It is
            # the same for every row, so nothing is gained by skipping one.
            self._counts.last_send_error = type(exc).__name__
            log.error(
                "cannot seal; event kept in the outbox",
                agency=self.agency,
                event_id=row.event_id,
                error_type=type(exc).__name__,
            )
            return False
        except EnvelopeError as exc:
            # Anything else (the payload too large for an envelope, a row stored before
            # publish checked the size) fails the same way for this row on every attempt:
            # move it aside so the rows behind it are not stuck for ever.
            self._unsendable(row, f"cannot seal: {exc.quarantine_reason}", type(exc).__name__)
            return True
        except TransportError as exc:
            if _too_large(exc):  # this record, on every attempt: not Kafka being away
                self._unsendable(row, "cannot send: oversized", type(exc.__cause__).__name__)
                return True
            self._state.attempted(row.seq)
            self._counts.last_send_error = type(exc).__name__
            log.warning(
                "kafka unavailable; event kept in the outbox",
                agency=self.agency,
                event_id=row.event_id,
                error_type=type(exc).__name__,
            )
            await self._drop_publisher()
            if self.metrics is not None:
                self.metrics.send_failures.inc()
            return False
        self._state.sent(row.seq, _ms(self._clock()), record.partition, record.offset)
        self._counts.sent += 1
        if self.metrics is not None:
            self.metrics.sent.labels(row.event_type).inc()
            self.metrics.outbox_pending.dec()
        return True

    def _unsendable(self, row: Pending, reason: str, error_type: str) -> None:
        """Move an outbox row that can never be sent to the dead-letter folder (its unsealed
        payload as ``<agency>_<id>.unsent``), then out of the outbox: a crash in between
        leaves both."""
        self.dead_letters.put_unsent(
            DeadLetter(
                event_id=idempotency_key(self.agency, row.event_id),
                event_type=row.event_type,
                source_agency=self.agency,
                topic=ingress(self.agency),
                partition=-1,
                offset=-1,
                attempts=row.attempts,
                reason=reason,
                dead_lettered_at=_iso(self._clock()),
            ),
            row.payload,
            f"schema fingerprint {row.fingerprint.hex()}; payload {len(row.payload)} bytes;"
            f" case id {len(row.case_id.encode())} bytes\n",
        )
        self._state.drop(row.seq)
        self._counts.dead_lettered += 1
        self._counts.last_send_error = error_type
        log.error(
            "cannot send; event moved to the dead letters",
            agency=self.agency,
            event_id=row.event_id,
            event_type=row.event_type,
            reason=reason,
            error_type=error_type,
        )
        if self.metrics is not None:
            self.metrics.dead_lettered.inc()
            self.metrics.outbox_pending.dec()

    async def _drop_publisher(self) -> None:
        publisher, self._publisher = self._publisher, None
        if publisher is not None:
            with contextlib.suppress(Exception):
                await publisher.close()

    async def _send_forever(self, first_backoff: float = 0.2, max_backoff: float = 5.0) -> None:
        """Send until cancelled. Nothing but cancellation ends it: an outbox that cannot be
        read (a disk error, a locked or corrupt file) is logged once per kind of failure and
        tried again with the same back-off as Kafka being away, so sending resumes by itself
        when the cause passes rather than stopping until a restart."""
        backoff = first_backoff
        while True:
            self._wake.clear()
            try:
                await self.send_pending()
                waiting = self._state.pending_count()
            except Exception as exc:  # the outbox itself failed: keep trying, said once
                self._outbox_failed(exc)
                waiting = 1
            else:
                self._outbox_recovered()
            if waiting:
                await asyncio.sleep(backoff)  # Kafka or the outbox is away: back off, retry
                backoff = min(backoff * 2, max_backoff)
            else:
                backoff = first_backoff
                # Wake at least now and then with nothing to send, to prune (see above).
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), _IDLE_WAKE_S)

    def _outbox_failed(self, exc: Exception) -> None:
        """Log an outbox failure the first time in a row it is of its kind (the loop retries
        every few seconds; the log needs it once, and again if it changes or comes back)."""
        kind = type(exc).__name__
        self._counts.last_send_error = kind
        if self._outbox_failure != kind:
            self._outbox_failure = kind
            log.error("outbox unusable; will try again", agency=self.agency, error_type=kind)

    def _outbox_recovered(self) -> None:
        if self._outbox_failure is not None:
            log.info("outbox usable again", agency=self.agency, error_type=self._outbox_failure)
            self._outbox_failure = None

    async def flush(self, timeout_s: float = 30.0) -> None:
        """Wait until the outbox is empty; :class:`TimeoutError` if it is not within
        ``timeout_s`` (the events stay in the outbox)."""
        async with asyncio.timeout(timeout_s):
            while self._state.pending_count():
                if self._background:
                    self._wake.set()
                    await asyncio.sleep(0.05)
                elif not await self.send_pending():
                    await asyncio.sleep(0.2)

    # -- receiving -----------------------------------------------------------------------

    async def receive(
        self, handler: Handler, *, timeout_ms: int = 200, max_records: int = 100
    ) -> int:
        """One round: poll the egress topic once, handle what came, retry what is due, then
        commit. Return how many records were polled. Kafka being unavailable is logged and
        reported as 0 (the next round tries again)."""
        try:
            feed = await self._open_feed()
            records = await feed.poll(max_records, timeout_ms)
        except TransportError as exc:
            log.warning(
                "kafka unavailable; will poll again",
                agency=self.agency,
                error_type=type(exc).__name__,
            )
            await self._drop_feed()
            return 0
        self._counts.polls += 1
        self._prune_if_due()
        self._keys.refresh_if_due(self._clock())  # every few seconds, records or none
        self._counts.idle_polls = 0 if records else self._counts.idle_polls + 1
        for record in records:
            await self._deliver(record, handler)
        try:
            await feed.commit(records)
        except TransportError as exc:
            # Redelivered later; the idempotency keys stop the handler seeing them twice.
            log.warning("offset commit failed", agency=self.agency, error_type=type(exc).__name__)
            await self._drop_feed()
        await self.retry_due(handler)
        return len(records)

    async def run(
        self, handler: Handler, stop: asyncio.Event, *, poll_timeout_ms: int = 200
    ) -> None:
        """Receive until ``stop`` is set."""
        backoff = 0.2
        while not stop.is_set():
            if self._feed is None and not await self._feed_ok():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            backoff = 0.2
            await self.receive(handler, timeout_ms=poll_timeout_ms)

    async def _feed_ok(self) -> bool:
        try:
            await self._open_feed()
        except TransportError:
            return False
        return True

    async def _open_feed(self) -> Feed:
        if self._feed is None:
            feed = self._connection.feed(self.topics, self.group_id)
            try:
                await feed.start()
            except BaseException:
                with contextlib.suppress(Exception):
                    await feed.close()
                raise
            self._feed = feed
        return self._feed

    async def _drop_feed(self) -> None:
        feed, self._feed = self._feed, None
        if feed is not None:
            with contextlib.suppress(Exception):
                await feed.close()

    def _open(self, topic: str, value: bytes) -> Received:
        """:meth:`_open_any` for a record known to be an event (parked, dead-lettered)."""
        opened = self._open_any(topic, value)
        if not isinstance(opened, Received):
            raise ValueError("a refusal notice, not an event")
        return opened

    def _open_any(
        self, topic: str, value: bytes, *, arrived: bool = False
    ) -> Received | dict[str, Any]:
        """Verify, decrypt and decode one record of a topic the client reads: on its egress
        topic an event, or the broker's refusal notice about a record this agency sent; on a
        hub topic an aggregate table (raises Envelope/Codec errors). ``arrived``: just read
        from the topic, not a retry or dead letter the adapter holds, so an egress record
        sealed more than :data:`MAX_EGRESS_AGE` ago is refused (:class:`Stale`)."""
        now = self._clock()
        self._keys.refresh_if_due(now)  # a revoked key does not open anything
        opened = self._unseal(topic, value, now)
        if topic.startswith(HUB_PREFIX):
            # Kept a year for the hub to read back: no age bound (docs/adapters.md).
            return self._table(opened)
        if arrived and opened.sealed_at < now - MAX_EGRESS_AGE:
            raise Stale(f"sealed more than {MAX_EGRESS_AGE.days} days ago")
        notice = self.schemas.latest("RefusalNotice")
        if opened.schema_fingerprint == notice.fingerprint:
            return decode(opened.payload, notice)
        # By the writer its envelope names (records outlive SharedEvent versions), read as
        # the newest: a record from before v2 has no decided_at.
        shared = self.schemas.decode(
            opened.payload, opened.schema_fingerprint, self.schemas.latest("SharedEvent")
        )
        return Received.from_shared(shared, json.loads(shared["body_json"]))

    def _unseal(self, topic: str, value: bytes, now: dt.datetime) -> Opened:
        """Open a record from the broker. One that does not open for a key is tried once more
        if reading the key folder again brought something new (a rotation, the broker's new
        document). A revoked key stays refused: no read can change that."""
        try:
            return self._opener.open(value, topic=topic, now=now, kind=Kind.EGRESS, source=BROKER)
        except KeyRevoked:
            raise
        except KeyUnusable:
            if not self._keys.refresh():
                raise
        return self._opener.open(value, topic=topic, now=now, kind=Kind.EGRESS, source=BROKER)

    def _table(self, opened: Opened) -> Received:
        """A regional hub's aggregate table, as a delivery from the broker."""
        schema = self.schemas.latest("AggregateTable")
        if self.schemas.by_fingerprint(opened.schema_fingerprint).name != schema.name:
            raise UnknownSchema("a hub topic carries aggregate tables only")
        table = self.schemas.decode(opened.payload, opened.schema_fingerprint, schema)
        return Received.from_table(opened.event_id, table["published_at"], to_json(schema, table))

    def _refused(self, notice: Mapping[str, Any]) -> None:
        """The broker quarantined a record this agency sent: say so where the agency's IT
        team looks (log and metric), and mark its outbox row, so publishing the event again
        does what it can (:meth:`StateStore.enqueue`): a record the broker could not open
        (the notice names no event id) is sent afresh under the same id; one it opened (it
        names the id, which the broker now counts as seen) needs a new event id."""
        self._counts.refused += 1
        if self.metrics is not None:
            self.metrics.refused.labels(notice["reason"]).inc()
        # A replay is this agency's own event sent twice (a resend after a lost ack, or after
        # a crash before the outbox recorded the ack): the broker has the first copy already.
        if notice["reason"] == REPLAYED:
            log.info(
                "duplicate refused by the broker; its first copy was accepted",
                **_where(notice),
                agency=self.agency,
            )
            return
        event_id = None
        if notice["topic"] == ingress(self.agency):
            event_id = self._state.refused(
                notice["reason"],
                event_id=notice["event_id"],
                partition=notice["partition"],
                offset=notice["offset"],
            )
        log.warning(
            "record refused by the broker",
            **(_where(notice) | {"event_id": notice["event_id"] or event_id}),
            agency=self.agency,
            outcome=(
                "not in the outbox"
                if event_id is None
                else "publish it again under a new event id"
                if notice["event_id"] is not None
                else "publish it again"
            ),
        )

    async def _deliver(self, record: Record, handler: Handler) -> None:
        try:
            event = self._open_any(record.topic, record.value, arrived=True)
        except (EnvelopeError, CodecError, ValueError, KeyError) as exc:
            if isinstance(exc, WrongRecipient) and record.topic.startswith(HUB_PREFIX):
                # A region's table is sealed to each of its hubs on the one topic: the other
                # hubs' copies are not for this agency, and not a fault either.
                self._counts.skipped += 1
                return
            self._counts.received += 1
            where = f"{record.topic}-{record.partition}-{record.offset}"
            self._dead_letter(Parked.of(record, where), None, attempts=0, reason=_unopenable(exc))
            return
        self._counts.received += 1
        if not isinstance(event, Received):
            self._refused(event)
            return
        if self.metrics is not None:
            self.metrics.received.labels(event.event_type).inc()
        if self._known(event):
            self._counts.duplicates += 1  # delivered again (a commit that did not land)
            return
        await self._attempt(event, Parked.of(record, event.idempotency_key), handler)

    def _known(self, event: Received) -> bool:
        """Whether ``event`` was handled, is waiting for a retry or is a dead letter. Under
        its idempotency key, or under its bare event id, as an SDK before keys named the
        source recorded it: an upgrade never hands an event over twice (for the 30 days such
        keys are kept, an event of another source with the same id is taken for it)."""
        return any(
            self._state.was_handled(key)
            or self._state.parked(key) is not None
            or self.dead_letters.has(key)
            for key in (event.idempotency_key, event.event_id)
        )

    async def _attempt(self, event: Received, parked: Parked, handler: Handler) -> None:
        attempts = parked.attempts + 1
        try:
            result = handler(event)
            if inspect.isawaitable(result):
                await result
        except Exception as exc:
            self._counts.failures += 1
            reason = _handler_failure(exc)
            log.warning(
                "handler failed",
                agency=self.agency,
                source=event.source_agency,
                event_id=event.event_id,
                event_type=event.event_type,
                attempt=attempts,
                error_type=type(exc).__name__,
            )
            if self.metrics is not None:
                self.metrics.handler_failures.labels(event.event_type).inc()
            if attempts >= self.retry.max_attempts:
                self._dead_letter(
                    parked, event, attempts=attempts, reason=reason, detail=_detail(exc)
                )
                return
            next_at = self._clock() + self.retry.delay(attempts)
            self._state.park(
                dataclasses.replace(parked, attempts=attempts, next_ms=_ms(next_at), reason=reason)
            )
            return
        self._state.mark_handled(event.idempotency_key, _ms(self._clock()), parked.event_id)
        self._counts.handled += 1
        if self.metrics is not None:
            self.metrics.handled.labels(event.event_type).inc()

    async def retry_due(self, handler: Handler) -> int:
        """Try again every parked event whose delay has passed; return how many were tried."""
        due = self._state.due(_ms(self._clock()))
        for parked in due:
            try:
                event = self._open(parked.topic, parked.value)
            except (EnvelopeError, CodecError, ValueError, KeyError) as exc:
                # Opened once already: a key revoked or expired since it was parked.
                self._dead_letter(parked, None, attempts=parked.attempts, reason=_unopenable(exc))
                continue
            await self._attempt(event, parked, handler)
        return len(due)

    def _dead_letter(
        self,
        parked: Parked,
        event: Received | None,
        *,
        attempts: int,
        reason: str,
        detail: str | None = None,
    ) -> None:
        # The folder first, then forget the retry: a crash in between leaves both, never neither.
        # Under the event's key (a retry an older SDK parked has its bare event id).
        self.dead_letters.put(
            DeadLetter(
                event_id=event.idempotency_key if event else parked.event_id,
                event_type=event.event_type if event else "unknown",
                source_agency=event.source_agency if event else "unknown",
                topic=parked.topic,
                partition=parked.partition,
                offset=parked.offset,
                attempts=attempts,
                reason=reason,
                dead_lettered_at=_iso(self._clock()),
            ),
            parked.value,
            detail,
        )
        self._state.unpark(parked.event_id)
        self._counts.dead_lettered += 1
        log.error(
            "event dead-lettered",
            agency=self.agency,
            source=event.source_agency if event else None,
            event_id=event.event_id if event else parked.event_id,
            event_type=event.event_type if event else "unknown",
            attempt=attempts,
        )
        if self.metrics is not None:
            self.metrics.dead_lettered.inc()

    async def replay_dead_letter(self, event_id: str, handler: Handler) -> bool:
        """Hand one dead letter (``event_id`` as the folder names it: the idempotency key,
        ``<source>/<event id>``) to ``handler`` again (after a person fixed the cause); on
        success it leaves the folder and its idempotency key is recorded. Raises
        :class:`KeyError` for no such dead letter, :class:`FileNotFoundError` for one with no
        sealed record (this agency's own event that was never sent: its ``.unsent``), an
        envelope or codec error if it still does not open, and whatever the handler raises."""
        letter = next((d for d in self.dead_letters.list() if d.event_id == event_id), None)
        if letter is None:
            raise KeyError(event_id)
        await self._reapply(letter, self._reopen(letter), handler)
        return True

    async def replay_dead_letters(self, handler: Handler) -> list[tuple[str, str | None]]:
        """:meth:`replay_dead_letter` for every dead letter in the folder, in name order:
        ``(id, None)`` for one applied, ``(id, reason)`` for one still there, the reason as
        a dead letter's is (a code, or the handler's exception type: never content)."""
        results: list[tuple[str, str | None]] = []
        for letter in self.dead_letters.list():
            results.append((letter.event_id, await self._replay(letter, handler)))
        return results

    async def _replay(self, letter: DeadLetter, handler: Handler) -> str | None:
        """Re-apply ``letter``; None, or why it is still a dead letter."""
        try:
            event = self._reopen(letter)
        except FileNotFoundError:
            if letter.source_agency == self.agency and letter.partition == -1:
                return f"never sent, so not replayed ({letter.reason}); see its .unsent file"
            return "its sealed record is missing from the folder"
        except (EnvelopeError, CodecError, ValueError, KeyError) as exc:
            return _unopenable(exc)
        try:
            await self._reapply(letter, event, handler)
        except Exception as exc:
            return _handler_failure(exc)
        return None

    def _reopen(self, letter: DeadLetter) -> Received:
        return self._open(letter.topic, self.dead_letters.sealed(letter.event_id))

    async def _reapply(self, letter: DeadLetter, event: Received, handler: Handler) -> None:
        result = handler(event)
        if inspect.isawaitable(result):
            await result
        self._state.mark_handled(event.idempotency_key, _ms(self._clock()))
        self.dead_letters.remove(letter.event_id)
