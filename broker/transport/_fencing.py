"""KIP-447 for aiokafka: offsets committed in a transaction are fenced by group membership.

aiokafka 0.14 sends TxnOffsetCommit v0, which names the consumer group but not the member, and
fetches committed offsets with OffsetFetch v1 to v3, which cannot wait for a transaction. So the
group coordinator accepts a transaction's offsets from a worker the group has already expelled,
and the worker that now owns the partitions reads the offsets as they were before a pending
transaction moves them. Kafka closes both holes with KIP-447, which this module adds for the
transport's own clients:

- **TxnOffsetCommit v3/v4** carries the consumer's generation id, member id and group instance
  id. The coordinator refuses a stale one (``ILLEGAL_GENERATION``, ``UNKNOWN_MEMBER_ID``,
  ``FENCED_INSTANCE_ID``); the hook makes that an abortable error of the transaction
  (:class:`GroupMemberFenced`), so the transaction is aborted and none of it is visible.
- **OffsetFetch v7** asks with ``require_stable``: while a transaction holding offsets for a
  partition is pending, the coordinator answers ``UNSTABLE_OFFSET_COMMIT`` for it, which the
  hook raises as a retriable error (:class:`UnstableOffsetCommit`); aiokafka's own loops then
  fetch again after ``retry_backoff_ms``, until the transaction has ended one way or the other.

Version 5 of TxnOffsetCommit is left out on purpose: it is for transactions of KIP-890's second
version, which aiokafka (AddOffsetsToTxn, EndTxn v0) does not run. OffsetFetch v8 and later
batch groups and, from v9, carry KIP-848 member epochs: nothing this needs.

The wire structures are values over bytes (encode, decode, no I/O) and are tested against
bytes worked out by hand. The hooks replace one method on one object each, never a class or a
module global, so other aiokafka clients in the process are untouched:

- ``producer._sender._do_txn_offset_commit``: sends the v3/v4 request built from the
  :class:`MemberGroupId` the transport passes as the group id (a ``str``, so aiokafka's
  AddOffsetsToTxn and its bookkeeping use it unchanged, and the member travels with exactly
  the offsets it belongs to); answers other than the fencing errors go to aiokafka's own
  handling of TxnOffsetCommit, unchanged;
- ``consumer._coordinator._do_fetch_commit_offsets``: every committed-offset fetch of the
  consumer (the ones after an assignment and ``consumer.committed``) asks for stable offsets.

Both lean on aiokafka internals, so :func:`check_aiokafka` compares them with what this module
was written against (aiokafka 0.14: names and parameters) and the transport calls it when it
starts: an aiokafka that moved them stops the worker at start-up with a
:class:`TransportError` instead of committing unfenced.
"""

from __future__ import annotations

import collections
import inspect
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import aiokafka
from aiokafka import errors as kafka_errors
from aiokafka.client import CoordinationType
from aiokafka.consumer.group_coordinator import GroupCoordinator
from aiokafka.producer.sender import Sender, TxnOffsetCommitHandler
from aiokafka.producer.transaction_manager import TransactionManager
from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.transaction import TxnOffsetCommitResponse_v0
from aiokafka.protocol.types import (
    Boolean,
    CompactArray,
    CompactString,
    Int16,
    Int32,
    Int64,
    Schema,
    TaggedFields,
)
from aiokafka.structs import OffsetAndMetadata, TopicPartition

from broker.transport._errors import TransportError

#: The aiokafka release the hooks were written against (major, minor).
AIOKAFKA_SERIES = (0, 14)

#: Error codes of Kafka's protocol that aiokafka 0.14 does not know or that matter here.
ILLEGAL_GENERATION = 22
UNKNOWN_MEMBER_ID = 25
FENCED_INSTANCE_ID = 82
UNSTABLE_OFFSET_COMMIT = 88
TRANSACTION_ABORTABLE = 120
#: The coordinator's answers meaning "this member no longer owns what it commits".
FENCING_ERRORS = {
    ILLEGAL_GENERATION: "ILLEGAL_GENERATION",
    UNKNOWN_MEMBER_ID: "UNKNOWN_MEMBER_ID",
    FENCED_INSTANCE_ID: "FENCED_INSTANCE_ID",
}
#: No committed-leader-epoch is known (the transport does not track leader epochs).
NO_LEADER_EPOCH = -1
_UNKNOWN_OFFSET = -1
_NO_TAGS: dict[int, bytes] = {}


# --- wire structures (TxnOffsetCommit 28, OffsetFetch 9), flexible versions ---------------------


def _per_partition(*fields: tuple[str, Any]) -> tuple[str, Any]:
    """The ``topics`` field these messages share: per topic its name and its partitions,
    each partition holding ``fields`` (and, as every flexible structure, tagged fields)."""
    return (
        "topics",
        CompactArray(
            ("name", CompactString("utf-8")),
            ("partitions", CompactArray(*fields, ("tags", TaggedFields))),
            ("tags", TaggedFields),
        ),
    )


_TXN_OFFSET_COMMIT_REQUEST = Schema(
    ("transactional_id", CompactString("utf-8")),
    ("group_id", CompactString("utf-8")),
    ("producer_id", Int64),
    ("producer_epoch", Int16),
    ("generation_id", Int32),
    ("member_id", CompactString("utf-8")),
    ("group_instance_id", CompactString("utf-8")),  # nullable
    _per_partition(
        ("partition_index", Int32),
        ("committed_offset", Int64),
        ("committed_leader_epoch", Int32),
        ("committed_metadata", CompactString("utf-8")),  # nullable
    ),
    ("tags", TaggedFields),
)

_TXN_OFFSET_COMMIT_RESPONSE = Schema(
    ("throttle_time_ms", Int32),
    _per_partition(("partition_index", Int32), ("error_code", Int16)),
    ("tags", TaggedFields),
)


class TxnOffsetCommitResponse_v3(Response):  # type: ignore[misc]  # aiokafka is untyped
    API_KEY = 28
    API_VERSION = 3
    SCHEMA = _TXN_OFFSET_COMMIT_RESPONSE


class TxnOffsetCommitResponse_v4(TxnOffsetCommitResponse_v3):
    """As v3; v4 only tells the broker the client knows ``TRANSACTION_ABORTABLE``."""

    API_VERSION = 4


class TxnOffsetCommitRequest_v3(RequestStruct):  # type: ignore[misc]  # aiokafka is untyped
    FLEXIBLE_VERSION = True
    API_KEY = 28
    API_VERSION = 3
    RESPONSE_TYPE = TxnOffsetCommitResponse_v3
    SCHEMA = _TXN_OFFSET_COMMIT_REQUEST


class TxnOffsetCommitRequest_v4(TxnOffsetCommitRequest_v3):
    API_VERSION = 4
    RESPONSE_TYPE = TxnOffsetCommitResponse_v4


_OFFSET_FETCH_REQUEST = Schema(
    ("group_id", CompactString("utf-8")),
    (
        "topics",
        CompactArray(  # nullable (null: every topic); never null here
            ("name", CompactString("utf-8")),
            ("partition_indexes", CompactArray(Int32)),
            ("tags", TaggedFields),
        ),
    ),
    ("require_stable", Boolean),
    ("tags", TaggedFields),
)

_OFFSET_FETCH_RESPONSE = Schema(
    ("throttle_time_ms", Int32),
    _per_partition(
        ("partition_index", Int32),
        ("committed_offset", Int64),
        ("committed_leader_epoch", Int32),
        ("metadata", CompactString("utf-8")),  # nullable
        ("error_code", Int16),
    ),
    ("error_code", Int16),
    ("tags", TaggedFields),
)


class OffsetFetchResponse_v7(Response):  # type: ignore[misc]  # aiokafka is untyped
    API_KEY = 9
    API_VERSION = 7
    SCHEMA = _OFFSET_FETCH_RESPONSE


class OffsetFetchRequest_v7(RequestStruct):  # type: ignore[misc]  # aiokafka is untyped
    FLEXIBLE_VERSION = True
    API_KEY = 9
    API_VERSION = 7
    RESPONSE_TYPE = OffsetFetchResponse_v7
    SCHEMA = _OFFSET_FETCH_REQUEST


@dataclass(frozen=True)
class GroupMetadata:
    """What the group coordinator checks a transactional offset commit against: the consumer's
    generation, its member id, and its static instance id (None for a dynamic member)."""

    group_id: str
    generation_id: int
    member_id: str
    group_instance_id: str | None = None


class FencedTxnOffsetCommit(
    Request[TxnOffsetCommitRequest_v3 | TxnOffsetCommitRequest_v4]  # type: ignore[misc]
):
    """TxnOffsetCommit with the member's group metadata: v4, or v3 from a broker without v4.

    A broker offering neither (older than Kafka 2.5) cannot fence: the request is refused
    with :class:`aiokafka.errors.IncompatibleBrokerVersion`, never sent as v0."""

    API_KEY = 28

    def __init__(
        self,
        *,
        transactional_id: str,
        producer_id: int,
        producer_epoch: int,
        member: GroupMetadata,
        offsets: Mapping[TopicPartition, OffsetAndMetadata],
    ) -> None:
        self._values = (
            transactional_id,
            member.group_id,
            producer_id,
            producer_epoch,
            member.generation_id,
            member.member_id,
            member.group_instance_id,
            _by_topic(
                (tp, (tp.partition, o.offset, NO_LEADER_EPOCH, o.metadata, _NO_TAGS))
                for tp, o in sorted(offsets.items())
            ),
            _NO_TAGS,
        )

    def build(
        self, request_struct_class: type[TxnOffsetCommitRequest_v3 | TxnOffsetCommitRequest_v4]
    ) -> TxnOffsetCommitRequest_v3 | TxnOffsetCommitRequest_v4:
        return request_struct_class(*self._values)

    def prepare(
        self, versions: dict[int, tuple[int, int]]
    ) -> TxnOffsetCommitRequest_v3 | TxnOffsetCommitRequest_v4:
        try:
            return super().prepare(versions)  # type: ignore[no-any-return]
        except NotImplementedError:
            raise kafka_errors.IncompatibleBrokerVersion(
                "the broker offers no TxnOffsetCommit v3 or v4 (KIP-447)"
            ) from None


class StableOffsetFetch(Request[OffsetFetchRequest_v7]):  # type: ignore[misc]
    """OffsetFetch v7 with ``require_stable``; like :class:`FencedTxnOffsetCommit`, refused
    rather than sent as a version that would hand out unstable offsets."""

    API_KEY = 9

    def __init__(self, group_id: str, partitions: Iterable[TopicPartition]) -> None:
        self._values = (
            group_id,
            _by_topic((tp, tp.partition) for tp in sorted(partitions)),
            True,
            _NO_TAGS,
        )

    def build(self, request_struct_class: type[OffsetFetchRequest_v7]) -> OffsetFetchRequest_v7:
        return request_struct_class(*self._values)

    def prepare(self, versions: dict[int, tuple[int, int]]) -> OffsetFetchRequest_v7:
        try:
            return super().prepare(versions)  # type: ignore[no-any-return]
        except NotImplementedError:
            raise kafka_errors.IncompatibleBrokerVersion(
                "the broker offers no OffsetFetch v7 (require_stable, KIP-447)"
            ) from None


def _by_topic(items: Iterable[tuple[TopicPartition, Any]]) -> list[tuple[str, list[Any], Any]]:
    """Per-partition entries grouped by topic in first-seen order, each topic with no tags."""
    grouped: dict[str, list[Any]] = collections.defaultdict(list)
    for tp, entry in items:
        grouped[tp.topic].append(entry)
    return [(topic, entries, _NO_TAGS) for topic, entries in grouped.items()]


# --- errors -------------------------------------------------------------------------------------


class GroupMemberFenced(kafka_errors.KafkaError):  # type: ignore[misc]  # aiokafka is untyped
    """The group coordinator refused the transaction's offsets: the member named in them is no
    longer the group's (expelled, or the group moved to a newer generation)."""

    def __init__(self, code: str, member: GroupMetadata) -> None:
        super().__init__(f"{code} for generation {member.generation_id} of {member.group_id}")
        self.code = code
        self.member = member


class UnstableOffsetCommit(kafka_errors.KafkaError):  # type: ignore[misc]
    """A transaction holding offsets for the partition is pending; fetch again later."""

    retriable = True


class MissingGroupMetadata(kafka_errors.KafkaError):  # type: ignore[misc]
    """Offsets reached the fenced producer without the member's metadata (a programming error:
    the transaction is aborted rather than committed unfenced)."""


# --- hooks into aiokafka 0.14 -------------------------------------------------------------------


class MemberGroupId(str):
    """A group id that carries the member's :class:`GroupMetadata`.

    aiokafka keeps the group id it is given with the pending offsets and hands it back to
    ``_do_txn_offset_commit``; riding on it, the metadata belongs to exactly those offsets
    (no slot on the producer that a later transaction could overwrite or forget to set)."""

    member: GroupMetadata

    def __new__(cls, member: GroupMetadata) -> MemberGroupId:
        self = super().__new__(cls, member.group_id)
        self.member = member
        return self


#: aiokafka internals the hooks use, with the parameters they were written against.
_EXPECTED: tuple[tuple[Any, str, tuple[str, ...]], ...] = (
    (Sender, "_do_txn_offset_commit", ("self", "offsets", "group_id")),
    (Sender, "_find_coordinator", ("self", "coordinator_type", "coordinator_key")),
    (TxnOffsetCommitHandler, "__init__", ("self", "sender", "offsets", "group_id")),
    (TxnOffsetCommitHandler, "create_request", ("self",)),
    (TxnOffsetCommitHandler, "handle_response", ("self", "resp")),
    (TxnOffsetCommitHandler, "do", ("self", "node_id")),
    (TransactionManager, "error_transaction", ("self", "exc")),
    (TransactionManager, "offset_committed", ("self", "tp", "offset", "group_id")),
    (TransactionManager, "wait_for_transaction_end", ("self",)),
    (GroupCoordinator, "_do_fetch_commit_offsets", ("self", "partitions")),
    (GroupCoordinator, "fetch_committed_offsets", ("self", "partitions")),
    (GroupCoordinator, "_send_req", ("self", "request")),
    (GroupCoordinator, "coordinator_dead", ("self",)),
)


def check_aiokafka(version: str | None = None) -> None:
    """Raise :class:`TransportError` unless the installed aiokafka is the series the hooks were
    written against and still has the internals they replace or call, as they were."""
    found = version if version is not None else aiokafka.__version__
    series = tuple(int(part) for part in found.split(".")[:2] if part.isdigit())
    if series != AIOKAFKA_SERIES:
        raise TransportError(
            f"aiokafka {found} is not {'.'.join(map(str, AIOKAFKA_SERIES))}.x: the KIP-447 "
            "hooks (broker/transport/_fencing.py) must be checked against it first",
            retriable=False,
        )
    for owner, name, params in _EXPECTED:
        method = getattr(owner, name, None)
        got = tuple(inspect.signature(method).parameters) if callable(method) else None
        if got != params:
            raise TransportError(
                f"aiokafka {found}: {owner.__name__}.{name} is not what the KIP-447 hooks "
                f"expect (parameters {got}, expected {params})",
                retriable=False,
            )


def group_metadata(consumer: Any) -> GroupMetadata | None:
    """The consumer's current membership, or None if it has none (not joined, or aiokafka has
    reset it after the coordinator refused a heartbeat). Commit no offsets without one: a
    transactional offset commit without a generation is exactly what Kafka lets through
    unfenced, for clients older than KIP-447."""
    coordinator = consumer._coordinator
    if coordinator is None or coordinator.generation < 0 or not coordinator.member_id:
        return None
    return GroupMetadata(
        coordinator.group_id,
        coordinator.generation,
        coordinator.member_id,
        coordinator._group_instance_id,
    )


def _abortable(txn_manager: Any, exc: BaseException) -> None:
    """Fail the transaction with ``exc`` so that it can only abort, as aiokafka fails it when
    the group is refused. The error reaches the caller through ``send_offsets_to_transaction``
    (and ``commit_transaction`` would raise it again); the copy aiokafka also keeps on the
    transaction's waiter, which an abort replaces unread, is marked seen so asyncio does not
    log it as never retrieved."""
    txn_manager.error_transaction(exc)
    txn_manager.wait_for_transaction_end().exception()


class _FencedTxnOffsetCommitHandler(TxnOffsetCommitHandler):  # type: ignore[misc]
    """aiokafka's TxnOffsetCommit handler with the member's metadata in the request."""

    def __init__(self, sender: Any, offsets: Any, group_id: MemberGroupId) -> None:
        super().__init__(sender, offsets, group_id)
        self._member = group_id.member

    def create_request(self) -> FencedTxnOffsetCommit:
        txn_manager = self._sender._txn_manager
        return FencedTxnOffsetCommit(
            transactional_id=txn_manager.transactional_id,
            producer_id=txn_manager.producer_id,
            producer_epoch=txn_manager.producer_epoch,
            member=self._member,
            offsets=self._offsets,
        )

    def handle_response(self, resp: Any) -> float | None:
        codes = {code for _, partitions, _ in resp.topics for _, code, _ in partitions}
        fencing = sorted(FENCING_ERRORS[c] for c in codes if c in FENCING_ERRORS)
        if fencing:
            _abortable(self._sender._txn_manager, GroupMemberFenced(fencing[0], self._member))
            return None
        if TRANSACTION_ABORTABLE in codes:
            _abortable(
                self._sender._txn_manager,
                kafka_errors.KafkaError("TRANSACTION_ABORTABLE from the group coordinator"),
            )
            return None
        # Everything else exactly as aiokafka handles the answer to its own v0 request.
        errors = [(name, [(p, code) for p, code, _ in parts]) for name, parts, _ in resp.topics]
        return super().handle_response(TxnOffsetCommitResponse_v0(resp.throttle_time_ms, errors))  # type: ignore[no-any-return]


def fence_producer(producer: Any) -> None:
    """Make ``producer`` (transactional, not yet started) commit offsets with KIP-447 fencing:
    ``send_offsets_to_transaction`` must then be given a :class:`MemberGroupId`."""
    sender = producer._sender

    async def do_txn_offset_commit(offsets: Any, group_id: str) -> None:
        if not offsets:
            return
        txn_manager = sender._txn_manager
        if not isinstance(group_id, MemberGroupId):
            _abortable(txn_manager, MissingGroupMetadata(f"group {group_id}"))
            return
        try:
            node_id = await sender._find_coordinator(CoordinationType.GROUP, group_id)
        except kafka_errors.GroupAuthorizationFailedError as exc:
            _abortable(txn_manager, exc)
            return
        await _FencedTxnOffsetCommitHandler(sender, offsets, group_id).do(node_id)

    sender._do_txn_offset_commit = do_txn_offset_commit


def require_stable_offsets(consumer: Any) -> None:
    """Make every committed-offset fetch of ``consumer`` (started, not yet subscribed) wait out
    pending transactions that hold offsets for the partitions asked about."""
    coordinator = consumer._coordinator

    async def do_fetch_commit_offsets(
        partitions: Iterable[TopicPartition],
    ) -> dict[TopicPartition, OffsetAndMetadata]:
        response = await coordinator._send_req(StableOffsetFetch(coordinator.group_id, partitions))
        _raise_for(coordinator, response.error_code, None)
        offsets: dict[TopicPartition, OffsetAndMetadata] = {}
        for topic, partitions_found, _ in response.topics:
            for partition, offset, _epoch, metadata, code, _ in partitions_found:
                tp = TopicPartition(topic, partition)
                if _raise_for(coordinator, code, tp) and offset != _UNKNOWN_OFFSET:
                    offsets[tp] = OffsetAndMetadata(offset, metadata or "")
        return offsets

    coordinator._do_fetch_commit_offsets = do_fetch_commit_offsets


def _raise_for(coordinator: Any, code: int, tp: TopicPartition | None) -> bool:
    """Raise the error an OffsetFetch answer's ``code`` stands for, as aiokafka's own fetch
    does (retriable ones are fetched again by its callers); True if there is an offset to use,
    False for a partition the coordinator does not know (skipped, as aiokafka skips it)."""
    if code == 0:
        return True
    if code == UNSTABLE_OFFSET_COMMIT:
        raise UnstableOffsetCommit(f"a pending transaction holds offsets for {tp}")
    error_type = kafka_errors.for_code(code)
    if error_type is kafka_errors.GroupLoadInProgressError:
        raise error_type()
    if error_type in (
        kafka_errors.NotCoordinatorForGroupError,
        kafka_errors.GroupCoordinatorNotAvailableError,
    ):
        coordinator.coordinator_dead()
        raise error_type()
    if error_type is kafka_errors.UnknownTopicOrPartitionError and tp is not None:
        return False
    if error_type is kafka_errors.GroupAuthorizationFailedError:
        raise error_type(coordinator.group_id)
    raise kafka_errors.KafkaError(repr(error_type()))
