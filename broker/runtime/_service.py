"""``tiaki broker run``: one broker worker against real Kafka, assembled from settings.

Start-up order: settings, registry, schemas, keys (the broker's private keys only), policy
(refused unless valid and approved), case membership, open information requests and the
replay cache rebuilt from ``tiaki.state.cases``, ``tiaki.state.requests`` and
``tiaki.state.seen``, metrics endpoint, then the worker loop, which reads those three again
on every assignment and after every failed commit (:func:`state_refresh`). SIGTERM and SIGINT
set the stop event; the batch in flight commits (or aborts) before the worker closes, so a
graceful stop loses nothing and a crash (SIGKILL) loses nothing either: the next start
resumes at the last committed offsets.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import re
import signal
from collections.abc import (
    Awaitable,
    Callable,
    Collection,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, start_http_server

from broker._errors import ConfigError
from broker._settings import Settings
from broker.audit import CHECKPOINT_EVERY
from broker.codec import Schema, SchemaSet, decode, load_schemas
from broker.envelope import KeyInfo, KeyRing, KeyStore, KeyStoreError, Opener, ReplayCache
from broker.platform._profiles import load_profile, profile_path
from broker.platform._topics import (
    ACT_PREFIX,
    AUDIT,
    BROKER,
    BROKER_GROUP_PREFIX,
    CHECKPOINTS,
    DLQ,
    REVIEW,
    STATE_CASES,
    STATE_CHAINS,
    STATE_REQUESTS,
    STATE_SEEN,
    STATE_TALLIES,
    egress,
)
from broker.policy import Engine, PolicyError, PolicyStore, Pseudonymiser
from broker.registry import load_registry
from broker.runtime._background import BackgroundTasks
from broker.runtime._cases import CaseMembership
from broker.runtime._chaining import AuditChainer
from broker.runtime._intake import Intake
from broker.runtime._metrics import BrokerMetrics, observe_keys, observe_lag
from broker.runtime._pipeline import SCHEMA_HEADER, Pipeline, broker_sealer
from broker.runtime._policy import PolicyDecider
from broker.runtime._policy_watch import PolicyWatcher
from broker.runtime._requests import KEY_SEPARATOR, RequestBook, state_key
from broker.runtime._secrets import shared_secret
from broker.runtime._worker import Worker
from broker.transport import (
    KafkaReader,
    KafkaTransport,
    Reader,
    Record,
    TransactionalTransport,
    TransportClosed,
    TransportError,
)

log = structlog.get_logger("tiaki.broker")

#: The default commit interval (``tiaki broker run --commit-interval-ms``).
COMMIT_INTERVAL_MS = 40
#: The longest commit interval and the largest batch a worker takes (``tiaki broker run``'s
#: bounds): a record waits for up to the interval, and a batch is processed before its commit.
MAX_COMMIT_INTERVAL_MS = 10_000
MAX_BATCH = 10_000
#: The bounds of ``tiaki broker run --checkpoint-seconds``: how long a chained audit record
#: may wait for the signed checkpoint that covers it (the default is CHECKPOINT_EVERY, 10 s).
#: The longest is a minute: a cut of a chain's unsigned tail is undetectable from the log
#: alone (docs/compliance.md, "Limits"), so the window stays short.
MIN_CHECKPOINT_SECONDS, MAX_CHECKPOINT_SECONDS = 1, 60
#: A worker id: it names the worker's transactional id, its audit chain (kept for good) and
#: its log lines, so it is a short token an operator makes up (``1``, ``canterbury-2``), never
#: free text.
WORKER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,47}")


@dataclass(frozen=True)
class ServiceOptions:
    worker_id: str = "0"
    metrics_port: int | None = 9464
    max_batch: int = 500
    poll_timeout_ms: int = 100
    #: Transactions begin at most once per this interval (see ``Worker.serve``): a record
    #: waits for at most this, or the transaction ahead if that is longer, before its own.
    commit_interval_ms: int = COMMIT_INTERVAL_MS
    #: A worker signs its chain's head at least this often while it has unsigned records
    #: (and at once every CHECKPOINT_EVERY_RECORDS records).
    checkpoint_seconds: int = int(CHECKPOINT_EVERY.total_seconds())

    def __post_init__(self) -> None:
        if not MIN_CHECKPOINT_SECONDS <= self.checkpoint_seconds <= MAX_CHECKPOINT_SECONDS:
            raise ConfigError(
                f"checkpoint interval {self.checkpoint_seconds} s: must be from "
                f"{MIN_CHECKPOINT_SECONDS} to {MAX_CHECKPOINT_SECONDS}"
            )
        if not 0 <= self.commit_interval_ms <= MAX_COMMIT_INTERVAL_MS:
            raise ConfigError(
                f"commit interval {self.commit_interval_ms} ms: must be from 0 to "
                f"{MAX_COMMIT_INTERVAL_MS}"
            )
        if not 1 <= self.max_batch <= MAX_BATCH:
            raise ConfigError(f"batch size {self.max_batch}: must be from 1 to {MAX_BATCH}")
        if WORKER_ID.fullmatch(self.worker_id) is None:
            raise ConfigError(
                f"worker id {self.worker_id!r}: use 1 to 48 letters, digits, '.', '_' or '-', "
                "starting with a letter or digit (it names the worker's audit chain for good)"
            )
        if f"{BROKER_GROUP_PREFIX}-{self.worker_id}".startswith(ACT_PREFIX):
            raise ConfigError(
                f"worker id {self.worker_id!r}: ids starting 'act-' are the review and "
                "quarantine queues' (a worker with one would fence people's acts)"
            )


def secret_paths(settings: Settings) -> tuple[Path, Path]:
    """Where the audit subject key and the pseudonym secret live (beside the broker's keys)."""
    folder = settings.keys_dir / "broker-secrets"
    return folder / "audit-subject.key", folder / "pseudonym.key"


@dataclass
class BrokerState:
    """What a worker rebuilds from the state topics when it starts or is assigned partitions."""

    cases: CaseMembership
    requests: RequestBook
    #: (source, event id, sealed_at ms) every committed transaction admitted, for the replay
    #: cache (``tiaki.state.seen``, kept for the replay window).
    seen: list[tuple[str, str, int]]


#: How much earlier than the replay cache's horizon ``tiaki.state.seen`` is read from: records
#: are stamped by the clock of the worker that wrote them, which may differ from this one's.
SEEN_CLOCK_MARGIN_MS = 3_600_000


def _utc_now() -> datetime:
    return datetime.now(UTC)


async def rebuild_state(
    reader: Reader, schemas: SchemaSet, *, seen_since_ms: int | None = None
) -> BrokerState:
    """Case membership, open information requests and the events already admitted (those
    recorded from ``seen_since_ms`` on, or all ``tiaki.state.seen`` holds).

    Why from a time: ``tiaki.state.seen`` keeps two days, one record per transaction, and
    only what was admitted within the replay window can still be refused as a replay (older
    events are stale anyway); reading from there halves what a start or a rebalance reads.
    """
    cases, requests = CaseMembership(), RequestBook()
    async with reader:
        case_records = await reader.read_all(STATE_CASES)
        request_records = await reader.read_all(STATE_REQUESTS)
        start: dict[int, int] = {}
        if seen_since_ms is not None:
            start = await reader.offsets_at(STATE_SEEN, seen_since_ms)
        seen_records = await reader.read_from(STATE_SEEN, start)
    cases.load(decode(r.value, schemas.latest("CaseMembership")) for r in case_records)
    requests.load(request_states(request_records, schemas))
    return BrokerState(cases, requests, seen_events(seen_records, schemas))


def request_states(records: Iterable[Record], schemas: SchemaSet) -> Iterator[dict[str, Any] | str]:
    """``tiaki.state.requests`` as :meth:`RequestBook.load` takes it, oldest first: each
    record's ``RequestState`` read as the newest version (its writer is the schema its
    ``tiaki-schema`` header names, or for a record without one, written before the header and
    so before any second version, the first version); or for a record with an empty value (a
    tombstone: the reader gives a null value as ``b""``; the broker writes none, an operator
    could, to end a retired id's reservation) its key, the request id the book then forgets.
    An empty value without a key is skipped."""
    latest, first = schemas.latest("RequestState"), schemas.versions("RequestState")[0]
    writers: dict[bytes, Schema] = {}
    read: list[tuple[str | None, dict[str, Any] | None]] = []
    for record in records:
        key = None if record.key is None else record.key.decode(errors="replace")
        if not record.value:
            read.append((key, None))
            continue
        header = dict(record.headers).get(SCHEMA_HEADER)
        writer = first
        if header is not None:
            writer = writers.get(header) or writers.setdefault(
                header, schemas.by_fingerprint(bytes.fromhex(header.decode("ascii")))
            )
        read.append((key, decode(record.value, writer, latest)))
    # Records under a request id alone (an earlier broker's, or a request whose case was
    # never learned) and under request keys (id and case) sit in different partitions, read
    # in no order between them. What is written under an id alone comes first, as it did
    # in the book that wrote them (a request keyed by its case only ever follows it); and a
    # record under the id alone for a request since written under its request key, which
    # is the later, is passed over.
    keyed = {key for key, _ in read if key is not None}
    for key, state in sorted(read, key=lambda r: r[0] is not None and KEY_SEPARATOR in r[0]):
        if state is None:
            if key is not None:
                yield key
        elif key == state_key(state) or state_key(state) not in keyed:
            yield state


def state_refresh(
    reader: Callable[[], Reader],
    schemas: SchemaSet,
    cases: CaseMembership,
    requests: RequestBook,
    replay: ReplayCache,
    *,
    clock: Callable[[], datetime] = _utc_now,
    seen_window: bool = True,
    settle: bool = True,
) -> Callable[[], Awaitable[None]]:
    """The worker's ``refresh``: re-read the state topics into the shared ``cases``,
    ``requests`` and ``replay`` (after an assignment, and after a failed commit, whose
    outcome the state topics know and memory does not). With ``seen_window``, the replay
    state is read from the replay cache's horizon on (see :func:`rebuild_state`)."""

    async def refresh_state() -> None:
        now = clock()
        since = replay.horizon_ms(now) - SEEN_CLOCK_MARGIN_MS if seen_window else None
        fresh = await rebuild_state(reader(), schemas, seen_since_ms=since)
        cases.replace(fresh.cases)
        requests.replace(fresh.requests)
        # What this worker admitted and committed is known again (the failed commit's
        # admissions were forgotten; those that committed all the same are on the topic),
        # and so is what another worker admitted on partitions this one now has.
        replay.seed(fresh.seen, now)
        if settle:
            settle_heap()

    return refresh_state


def seen_events(records: Iterable[Record], schemas: SchemaSet) -> list[tuple[str, str, int]]:
    """The admitted events that ``tiaki.state.seen`` records list, oldest seal first."""
    schema = schemas.latest("SeenEvents")
    seen: list[tuple[str, str, int]] = []
    for record in records:
        for e in decode(record.value, schema)["events"]:
            seen.append((e["source"], e["event_id"], e["sealed_at_ms"]))
    seen.sort(key=lambda s: s[2])
    return seen


def settle_heap() -> None:
    """Collect, then freeze what is left out of the cyclic collector's reach.

    What is alive after the state is (re)built is long-lived: the case and request tables,
    the schemas, the compiled policy, the keys. Left in the collector's oldest generation, each
    full collection walks all of it, a pause of a few hundred milliseconds on a large case
    table that lands on whichever events are in flight (seen in the latency benchmark's tail).
    Frozen objects are still freed by reference counting when they are replaced; only cycles
    among them would stay, and the state tables hold none.
    """
    gc.collect()
    gc.freeze()


def _engine_of(store: PolicyStore) -> Callable[[], Engine]:
    def current() -> Engine:
        engine = store.engine
        if engine is None:  # the CLI loads a policy before serving; this cannot happen after
            raise PolicyError("no policy in force")
        return engine

    return current


async def serve(
    settings: Settings, store: PolicyStore, options: ServiceOptions, stop: asyncio.Event
) -> None:
    """Run one worker, following ``tiaki.policy``, until ``stop`` is set."""
    engine = _engine_of(store)
    registry = load_registry(settings.registry)
    schemas = load_schemas(settings.schemas_dir)
    principals = {a.id: a.key_ref for a in registry.agencies} | {BROKER: BROKER}
    keystore = KeyStore(settings.keys_dir)
    ring = keystore.load(principals, private_for=[BROKER])
    profile = load_profile(profile_path(settings.profiles_dir, BROKER))
    audit_key, pseudonym_key = (shared_secret(p) for p in secret_paths(settings))

    unreachable = await check_topics(KafkaReader(profile), registry.ids)
    replay = ReplayCache()

    def seen_since_ms() -> int:
        return replay.horizon_ms(datetime.now(UTC)) - SEEN_CLOCK_MARGIN_MS

    state = await rebuild_state(KafkaReader(profile), schemas, seen_since_ms=seen_since_ms())
    cases, requests = state.cases, state.requests
    replay.seed(state.seen, datetime.now(UTC))
    settle_heap()
    decider = PolicyDecider(engine, Pseudonymiser(pseudonym_key), cases, requests)
    transport = KafkaTransport(profile, worker_id=options.worker_id)
    pipeline = Pipeline(
        # A record keyed or partitioned unlike its case's events is refused (key_mismatch):
        # it would reach a worker that does not own its case.
        intake=Intake(
            registry=registry,
            schemas=schemas,
            opener=Opener(BROKER, ring, replay=replay),
            partitions=transport.partition_count,
        ),
        decider=decider,
        sealer=broker_sealer(ring),
        schemas=schemas,
        subject_key=audit_key,
        cases=cases,
        requests=requests,
    )
    metrics = BrokerMetrics(CollectorRegistry())
    metrics.policy_version.labels(engine().policy_hash).set(1)
    metrics.expect_recipients(registry.ids)
    note_unreachable(pipeline, metrics, registry.ids, unreachable)
    # Every key as this worker found it: a change made while no worker ran (say, a key revoked
    # during maintenance) is then on the audit log, as the difference between two starts.
    pipeline.note_keys(datetime.now(UTC), ring.keys(None), started=True)
    watcher = PolicyWatcher(store, metrics, note=pipeline.note_policy)
    if options.metrics_port is not None:
        start_http_server(options.metrics_port, addr="127.0.0.1", registry=metrics.registry)
    # The chain is named by the transactional id, which Kafka lets one producer use at a time.
    chain = AuditChainer(
        transport.transactional_id,
        ring,
        reader=lambda: KafkaReader(profile),
        every=timedelta(seconds=options.checkpoint_seconds),
    )

    worker = Worker(
        transport,
        pipeline,
        metrics,
        max_batch=options.max_batch,
        poll_timeout_ms=options.poll_timeout_ms,
        commit_interval_ms=options.commit_interval_ms,
        refresh=state_refresh(lambda: KafkaReader(profile), schemas, cases, requests, replay),
        chain=chain,
    )
    log.info("broker starting", worker=options.worker_id, policy_hash=engine().policy_hash)
    # A background task that dies stops the worker after its batch, and serve() then raises
    # BackgroundTaskFailed so the process exits 1 for its supervisor to restart.
    background = BackgroundTasks(stop)
    background.start("policy", watcher.follow(profile, stop))
    background.start("observer", _observe(metrics, ring, transport, stop))
    observe_refused(metrics, principals, {})  # every key set's series, from the start
    background.start(
        "keys", follow_keys(keystore, principals, ring, stop, metrics, pipeline.note_keys)
    )
    background.start("egress", watch_egress(transport, pipeline, metrics, registry.ids, stop))
    try:
        # Nothing is decided before the policy topic's newest release is in force (a stop,
        # or the watcher failing, which sets it, ends the wait too).
        await _first(watcher.ready, stop)
        if not stop.is_set():
            await worker.run(stop)
    finally:
        await background.join()
    background.check()


async def _first(*events: asyncio.Event) -> None:
    """Wait until any of ``events`` is set."""
    waits = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()


#: The topics a worker's transactions write besides the egress topics: without any one of
#: them no transaction can commit, so a worker refuses to start.
WRITTEN_TOPICS = (
    AUDIT,
    REVIEW,
    DLQ,
    STATE_CASES,
    STATE_REQUESTS,
    STATE_SEEN,
    STATE_CHAINS,
    CHECKPOINTS,
    STATE_TALLIES,
)


async def check_topics(reader: Reader, agencies: Collection[str]) -> frozenset[str]:
    """The agencies among ``agencies`` whose egress topic Kafka lacks (or hides from the
    broker); a :class:`ConfigError` naming any of :data:`WRITTEN_TOPICS` that it lacks."""
    egress_of = {egress(agency): agency for agency in agencies}
    async with reader:
        missing = await reader.missing_topics([*WRITTEN_TOPICS, *egress_of])
    platform = [topic for topic in WRITTEN_TOPICS if topic in missing]
    if platform:
        raise ConfigError(
            f"Kafka has no {', '.join(platform)} (or the broker may not see it): "
            "run `tiaki provision`, then start the broker"
        )
    return frozenset(egress_of[topic] for topic in missing)


def note_unreachable(
    pipeline: Pipeline,
    metrics: BrokerMetrics,
    agencies: Iterable[str],
    unreachable: frozenset[str],
) -> None:
    """Hold every share for the ``unreachable`` agencies from now on (their egress topics are
    missing), deliver to the others again; log each change and set
    ``tiaki_egress_topic_missing``."""
    before, pipeline.unreachable = pipeline.unreachable, unreachable
    for agency in agencies:
        metrics.egress_topic_missing.labels(agency).set(1 if agency in unreachable else 0)
    if unreachable - before:
        log.error(
            "egress topics missing: shares for these agencies are held for review until "
            "`tiaki provision` creates their topics",
            agency=",".join(sorted(unreachable - before)),
        )
    if before - unreachable:
        log.info(
            "egress topics found: shares for these agencies are delivered again (release "
            "the ones held meanwhile with tiaki review approve)",
            agency=",".join(sorted(before - unreachable)),
        )


#: How often a worker asks Kafka which egress topics exist.
EGRESS_SECONDS = 15.0


async def watch_egress(
    transport: TransactionalTransport,
    pipeline: Pipeline,
    metrics: BrokerMetrics,
    agencies: Collection[str],
    stop: asyncio.Event,
    every: float = EGRESS_SECONDS,
) -> None:
    """Follow which of ``agencies`` have an egress topic (:func:`note_unreachable`). A topic
    deleted while the worker runs fails the transactions that write it until the next look
    (they are retried; nothing is lost); one created is written from the next look on."""
    egress_of = {egress(agency): agency for agency in agencies}
    failing = False
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every)
        if stop.is_set():
            return
        try:
            missing = await transport.missing_topics(egress_of)
        except TransportClosed:  # the worker has not started its transport yet
            continue
        except TransportError as exc:  # keep what was last seen; say so once per run
            if not failing:
                log.warning(
                    "egress topics not looked up: the last look stands until one succeeds",
                    error_type=type(exc).__name__,
                )
            failing = True
            continue
        failing = False
        note_unreachable(pipeline, metrics, agencies, frozenset(egress_of[t] for t in missing))


#: How often the key folder is read again for rotations and revocations.
KEYS_SECONDS = 5.0


def refresh_keys(
    store: KeyStore,
    principals: Mapping[str, str],
    ring: KeyRing,
    note: Callable[[datetime, Sequence[KeyInfo], Sequence[KeyInfo]], None] | None = None,
) -> dict[str, KeyStoreError]:
    """Take in rotations and revocations from the key folder (``tiaki keys rotate | revoke``)
    without a restart: a revoked agency key is refused from the next record on.

    Each key set is read on its own (:meth:`KeyStore.load_each`): a document that cannot be
    read or is refused keeps that key set's keys in force and nothing else, so one agency's
    broken document never holds back another's revocation. A document that would un-revoke a
    key, or change what a key id stands for, is refused key by key. Every revocation in force
    is then recorded in the folder's revocation list (``KeyStore.record_revoked``), which
    every later read applies. Returns the refused key sets with why, by ``key_ref``.
    ``note`` (:meth:`Pipeline.note_keys`) is told the keys changed and the changes refused,
    so each is on the audit log.
    """
    try:
        fresh, refused = store.load_each(principals, private_for=[BROKER])
    except KeyStoreError as exc:
        # Only the revocation list itself raises. What it held is in force in ``ring`` already
        # (never un-revoked by a read), so the documents' own revocations still go in.
        log.warning("revocation list unreadable", error_type=type(exc).__name__, error=str(exc))
        fresh, refused = store.load_each(principals, private_for=[BROKER], apply_revoked=False)
    for ref, error in refused.items():
        log.warning(
            "key document refused; its key set's keys in force kept",
            agency=ref,
            error_type=type(error).__name__,
            error=str(error),
        )
    changed, kept = ring.update_from(fresh)
    for info in changed:
        log.info("key updated", key_id=info.key_id, agency=info.owner, key_state=info.state.value)
    for info in kept:
        log.warning(
            "key document would un-revoke a key or change it; kept as it was",
            key_id=info.key_id,
            agency=info.owner,
        )
    if note is not None:
        note(datetime.now(UTC), changed, kept)  # every refresh: RefusalsOnce needs to see it
    # Written down, so a restart with a rolled-back document cannot bring a revoked key back.
    try:
        store.record_revoked(ring.keys(None))
    except KeyStoreError as exc:
        log.warning("revocation not recorded", error_type=type(exc).__name__, error=str(exc))
    return refused


class RefusalsOnce:
    """Passes key changes on to ``note``, and each refused change only the first time in a
    row it is refused: a document that would un-revoke a key is refused again at every
    refresh (every few seconds) until someone fixes it, and the audit log needs it once. A
    refusal that stops and comes back is noted again.

    A refusal is known by what it is about (the key id, and the state and public key the
    document claims for it), not by the whole key, whose other fields come from the document
    as written: a key with a list as its ``reason`` could not be hashed, and stopped the
    worker here."""

    def __init__(self, note: Callable[[datetime, Sequence[KeyInfo], Sequence[KeyInfo]], None]):
        self._note = note
        self._refused: set[tuple[str, str, bytes]] = set()

    def __call__(self, now: datetime, changed: Sequence[KeyInfo], kept: Sequence[KeyInfo]) -> None:
        refused = {(info.key_id, info.state.value, info.public): info for info in kept}
        new = [refused[key] for key in sorted(refused.keys() - self._refused)]
        self._refused = set(refused)
        if changed or new:
            self._note(now, changed, new)


async def follow_keys(
    store: KeyStore,
    principals: Mapping[str, str],
    ring: KeyRing,
    stop: asyncio.Event,
    metrics: BrokerMetrics | None = None,
    note: Callable[[datetime, Sequence[KeyInfo], Sequence[KeyInfo]], None] | None = None,
) -> None:
    """:func:`refresh_keys` every few seconds until ``stop``; ``tiaki_key_documents_refused``
    says which key sets' documents the last refresh refused. ``note`` hears of each change
    refused once, not at every refresh while the document stays (:class:`RefusalsOnce`)."""
    once = RefusalsOnce(note) if note is not None else None
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), KEYS_SECONDS)
        if not stop.is_set():
            refused = refresh_keys(store, principals, ring, once)
            if metrics is not None:
                observe_refused(metrics, principals, refused)


def observe_refused(
    metrics: BrokerMetrics, principals: Mapping[str, str], refused: Mapping[str, object]
) -> None:
    """Set ``tiaki_key_documents_refused`` for every key set: 1 if refused, else 0."""
    for ref in sorted(set(principals.values()) | set(refused)):
        metrics.key_documents_refused.labels(ref).set(1 if ref in refused else 0)


#: How often the consumer-lag and key-age gauges are refreshed.
OBSERVE_SECONDS = 15.0


async def _observe(
    metrics: BrokerMetrics, ring: KeyRing, transport: KafkaTransport, stop: asyncio.Event
) -> None:
    """Refresh the gauges that are read, not counted: consumer lag and key age."""
    while not stop.is_set():
        observe_keys(metrics, ring, datetime.now(UTC))
        observe_lag(metrics, await transport.lag())
        metrics.ingress_copartitioned.set(0 if transport.copartitioning else 1)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), OBSERVE_SECONDS)


#: Seconds a worker has, after the first SIGTERM, to finish its batch before it is cancelled.
GRACE_SECONDS = 30.0


def install_stop_signals(stop: asyncio.Event, task: asyncio.Task[None]) -> None:
    """First SIGTERM/SIGINT: stop after the batch in flight (cancel after a grace period, in
    case the worker is still starting and not yet checking ``stop``); a second: cancel now.
    Commits and aborts are shielded from cancellation inside the transport."""
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        if stop.is_set():
            task.cancel()
            return
        log.info("stop requested", status="stopping")
        stop.set()
        loop.call_later(GRACE_SECONDS, task.cancel)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
