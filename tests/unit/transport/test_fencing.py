"""KIP-447's wire structures against bytes worked out by hand from Kafka's message
definitions (clients/src/main/resources/common/message/*.json in kafka-clients 4.3.1), and
the hooks' handling of the coordinator's answers, without Kafka."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka import errors as kafka_errors
from aiokafka.producer.transaction_manager import TransactionManager, TransactionState
from aiokafka.protocol.transaction import AddOffsetsToTxnRequest_v0
from aiokafka.structs import OffsetAndMetadata, TopicPartition
from hypothesis import given
from hypothesis import strategies as st

from broker.transport import PartitionsRevoked, TransportError
from broker.transport._fencing import (
    FencedTxnOffsetCommit,
    GroupMemberFenced,
    GroupMetadata,
    MemberGroupId,
    MissingGroupMetadata,
    OffsetFetchRequest_v7,
    OffsetFetchResponse_v7,
    StableOffsetFetch,
    TxnOffsetCommitRequest_v3,
    TxnOffsetCommitRequest_v4,
    TxnOffsetCommitResponse_v3,
    UnstableOffsetCommit,
    _FencedTxnOffsetCommitHandler,
    check_aiokafka,
    fence_producer,
    group_metadata,
    require_stable_offsets,
)
from broker.transport._kafka import translate

MEMBER = GroupMetadata("g", 3, "m-1")
OFFSETS = {TopicPartition("t", 1): OffsetAndMetadata(42, "")}
#: What Kafka's broker would offer: TxnOffsetCommit 0-5, OffsetFetch 1-10 (Kafka 4.3.1).
KAFKA_4_3 = {28: (0, 5), 9: (1, 10)}


def _txn_offset_commit(member: GroupMetadata = MEMBER, offsets: Any = None) -> Any:
    return FencedTxnOffsetCommit(
        transactional_id="tx",
        producer_id=7,
        producer_epoch=1,
        member=member,
        offsets=OFFSETS if offsets is None else offsets,
    )


# --- TxnOffsetCommit v3/v4 ----------------------------------------------------------------------

TXN_OFFSET_COMMIT_BODY = bytes.fromhex(
    "03 7478"  # transactional_id "tx": compact string, length + 1
    "02 67"  # group_id "g"
    "0000000000000007"  # producer_id
    "0001"  # producer_epoch
    "00000003"  # generation_id
    "04 6d2d31"  # member_id "m-1"
    "00"  # group_instance_id: null
    "02"  # one topic: compact array, count + 1
    "02 74"  # name "t"
    "02"  # one partition
    "00000001"  # partition_index
    "000000000000002a"  # committed_offset 42
    "ffffffff"  # committed_leader_epoch -1
    "01"  # committed_metadata ""
    "00"  # partition tags
    "00"  # topic tags
    "00"  # request tags
)


def test_txn_offset_commit_is_v4_on_kafka_4_3_with_the_members_metadata() -> None:
    request = _txn_offset_commit().prepare(KAFKA_4_3)
    assert type(request) is TxnOffsetCommitRequest_v4
    assert request.encode() == TXN_OFFSET_COMMIT_BODY


def test_txn_offset_commit_v3_has_the_same_body_and_a_flexible_header() -> None:
    request = _txn_offset_commit().prepare({28: (0, 3)})
    assert type(request) is TxnOffsetCommitRequest_v3
    assert request.encode() == TXN_OFFSET_COMMIT_BODY
    header = request.build_request_header(correlation_id=5, client_id="c")
    # api_key 28, api_version 3, correlation id, client_id (a plain nullable string even in
    # header v2), then the header's tagged fields.
    assert header.encode() == bytes.fromhex("001c 0003 00000005 0001 63 00")


def test_txn_offset_commit_names_a_static_member() -> None:
    request = _txn_offset_commit(GroupMetadata("g", 3, "m-1", "i")).prepare(KAFKA_4_3)
    assert request.encode() == TXN_OFFSET_COMMIT_BODY.replace(
        bytes.fromhex("04 6d2d31 00"), bytes.fromhex("04 6d2d31 02 69")
    )


@pytest.mark.parametrize("offered", [(0, 2), (0, 0), (5, 5)])
def test_txn_offset_commit_is_never_sent_without_the_member(offered: tuple[int, int]) -> None:
    with pytest.raises(kafka_errors.IncompatibleBrokerVersion, match="KIP-447"):
        _txn_offset_commit().prepare({28: offered})


def test_txn_offset_commit_response_decodes_from_hand_made_bytes() -> None:
    raw = bytes.fromhex(
        "00000000"  # throttle_time_ms
        "02 0274"  # one topic, "t"
        "02 00000001 0016 00"  # one partition: 1, ILLEGAL_GENERATION (22), tags
        "00"  # topic tags
        "00"  # response tags
    )
    response = TxnOffsetCommitResponse_v3.decode(raw)
    assert response.throttle_time_ms == 0
    assert response.topics == [("t", [(1, 22, {})], {})]
    assert response.tags == {}


_names = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=20)
_int32 = st.integers(-(2**31), 2**31 - 1)
_offsets = st.dictionaries(
    st.builds(TopicPartition, _names, st.integers(0, 2**31 - 1)),
    st.builds(OffsetAndMetadata, st.integers(0, 2**63 - 1), _names),
    min_size=1,
    max_size=6,
)
_members = st.builds(GroupMetadata, _names, _int32, _names, st.none() | _names)


@given(_members, _offsets)
def test_txn_offset_commit_round_trips(member: GroupMetadata, offsets: Any) -> None:
    encoded = _txn_offset_commit(member, offsets).prepare(KAFKA_4_3).encode()
    decoded = TxnOffsetCommitRequest_v4.decode(encoded)
    assert decoded.encode() == encoded
    got = GroupMetadata(
        decoded.group_id, decoded.generation_id, decoded.member_id, decoded.group_instance_id
    )
    assert (got, decoded.transactional_id, decoded.producer_id) == (member, "tx", 7)
    assert {
        TopicPartition(name, p): OffsetAndMetadata(offset, metadata)
        for name, partitions, _ in decoded.topics
        for p, offset, epoch, metadata, _ in partitions
        if epoch == -1
    } == offsets


# --- OffsetFetch v7 -----------------------------------------------------------------------------


def test_offset_fetch_is_v7_and_requires_stable_offsets() -> None:
    request = StableOffsetFetch("g", [TopicPartition("t", 2), TopicPartition("t", 0)])
    prepared = request.prepare(KAFKA_4_3)
    assert type(prepared) is OffsetFetchRequest_v7
    assert prepared.encode() == bytes.fromhex(
        "02 67"  # group_id "g"
        "02 0274"  # one topic, "t"
        "03 00000000 00000002"  # partition_indexes [0, 2], sorted
        "00"  # topic tags
        "01"  # require_stable
        "00"  # request tags
    )


@pytest.mark.parametrize("offered", [(1, 6), (8, 10)])
def test_offset_fetch_is_never_sent_without_require_stable(offered: tuple[int, int]) -> None:
    with pytest.raises(kafka_errors.IncompatibleBrokerVersion, match="require_stable"):
        StableOffsetFetch("g", [TopicPartition("t", 0)]).prepare({9: offered})


OFFSET_FETCH_RESPONSE = bytes.fromhex(
    "00000000"  # throttle_time_ms
    "02 0274"  # one topic, "t"
    "03"  # two partitions
    "00000000 0000000000000005 ffffffff 00 0000 00"  # 0: offset 5, no leader epoch, null
    "00000002 ffffffffffffffff ffffffff 01 0058 00"  # 2: none, "", UNSTABLE_OFFSET_COMMIT
    "00"  # topic tags
    "0000"  # error_code
    "00"  # response tags
)


def test_offset_fetch_response_decodes_from_hand_made_bytes() -> None:
    response = OffsetFetchResponse_v7.decode(OFFSET_FETCH_RESPONSE)
    assert response.topics == [
        ("t", [(0, 5, -1, None, 0, {}), (2, -1, -1, "", 88, {})], {}),
    ]
    assert (response.error_code, response.tags) == (0, {})
    assert response.encode() == OFFSET_FETCH_RESPONSE


# --- the hooks ----------------------------------------------------------------------------------


@dataclass
class FakeCoordinator:
    """Stands in for aiokafka's GroupCoordinator: answers every request with ``answers``."""

    answers: list[bytes]
    group_id: str = "g"
    generation: int = 3
    member_id: str = "m-1"
    _group_instance_id: str | None = None
    sent: list[Any] = field(default_factory=list)
    dead: int = 0

    async def _send_req(self, request: Any) -> Any:
        self.sent.append(request.prepare(KAFKA_4_3))
        return OffsetFetchResponse_v7.decode(self.answers.pop(0))

    def coordinator_dead(self) -> None:
        self.dead += 1


def _fetch_answer(partitions: str, error: str = "0000") -> bytes:
    """An OffsetFetch v7 answer about topic "t" (its partitions given as hex)."""
    return bytes.fromhex("00000000 02 0274" + partitions + "00" + error + "00")


async def test_fetching_offsets_asks_for_stable_ones_and_reads_the_answer() -> None:
    ok = "03 00000000 0000000000000005 ffffffff 00 0000 00"
    ok += "00000001 ffffffffffffffff ffffffff 01 0000 00"  # nothing committed
    coordinator = FakeCoordinator([_fetch_answer(ok)])
    require_stable_offsets(SimpleNamespace(_coordinator=coordinator))
    tps = [TopicPartition("t", 0), TopicPartition("t", 1)]
    offsets = await coordinator._do_fetch_commit_offsets(tps)  # type: ignore[attr-defined]
    assert offsets == {TopicPartition("t", 0): OffsetAndMetadata(5, "")}
    assert coordinator.sent[0].require_stable is True


async def test_an_unstable_offset_is_a_retriable_error() -> None:
    coordinator = FakeCoordinator([OFFSET_FETCH_RESPONSE])
    require_stable_offsets(SimpleNamespace(_coordinator=coordinator))
    with pytest.raises(UnstableOffsetCommit) as caught:
        await coordinator._do_fetch_commit_offsets([TopicPartition("t", 0)])  # type: ignore[attr-defined]
    assert caught.value.retriable


async def test_a_moved_coordinator_is_forgotten_and_retried() -> None:
    coordinator = FakeCoordinator([_fetch_answer("01", error="0010")])  # NOT_COORDINATOR
    require_stable_offsets(SimpleNamespace(_coordinator=coordinator))
    with pytest.raises(kafka_errors.NotCoordinatorForGroupError) as caught:
        await coordinator._do_fetch_commit_offsets([TopicPartition("t", 0)])  # type: ignore[attr-defined]
    assert caught.value.retriable
    assert coordinator.dead == 1


class FakeSender:
    """What aiokafka's TxnOffsetCommit handler needs of its Sender."""

    def __init__(self, txn_manager: TransactionManager) -> None:
        self._txn_manager = txn_manager
        self._retry_backoff = 0.1
        self.dead: list[Any] = []

    def _coordinator_dead(self, kind: Any) -> None:
        self.dead.append(kind)


async def _in_transaction() -> tuple[TransactionManager, Any, MemberGroupId]:
    """A transaction manager in a transaction whose offsets wait for TxnOffsetCommit."""
    txn_manager = TransactionManager("tx", 60_000)
    txn_manager.set_pid_and_epoch(7, 1)
    txn_manager.begin_transaction()
    group_id = MemberGroupId(MEMBER)
    future = txn_manager.add_offsets_to_txn(dict(OFFSETS), group_id)
    txn_manager.consumer_group_added(group_id)
    return txn_manager, future, group_id


def _commit_answer(error: int) -> Any:
    return TxnOffsetCommitResponse_v3(0, [("t", [(1, error, {})], {})], {})


@pytest.mark.parametrize(
    ("code", "name"), [(22, "ILLEGAL_GENERATION"), (25, "UNKNOWN_MEMBER_ID"), (82, "FENCED")]
)
async def test_a_refused_member_leaves_the_transaction_only_abortable(code: int, name: str) -> None:
    txn_manager, future, group_id = await _in_transaction()
    offsets, _ = txn_manager.offsets_to_commit()
    handler = _FencedTxnOffsetCommitHandler(FakeSender(txn_manager), offsets, group_id)
    assert handler.create_request().prepare(KAFKA_4_3).encode() == TXN_OFFSET_COMMIT_BODY
    assert handler.handle_response(_commit_answer(code)) is None
    assert txn_manager.state is TransactionState.ABORTABLE_ERROR
    with pytest.raises(GroupMemberFenced, match=name):
        future.result()
    with pytest.raises(GroupMemberFenced):
        txn_manager.committing_transaction()  # a commit now raises instead of committing
    error = translate(future.exception())
    assert type(error) is PartitionsRevoked
    assert error.retriable
    assert "generation 3" in str(error)


async def test_other_answers_are_handled_as_aiokafka_handles_them() -> None:
    txn_manager, future, group_id = await _in_transaction()
    offsets, _ = txn_manager.offsets_to_commit()
    sender = FakeSender(txn_manager)
    handler = _FencedTxnOffsetCommitHandler(sender, offsets, group_id)
    assert handler.handle_response(_commit_answer(16)) == 0.1  # NOT_COORDINATOR: again
    assert len(sender.dead) == 1
    assert not future.done()
    assert handler.handle_response(_commit_answer(0)) is None
    assert future.done()
    assert future.exception() is None


async def test_offsets_without_the_member_abort_the_transaction() -> None:
    txn_manager = TransactionManager("tx", 60_000)
    txn_manager.set_pid_and_epoch(7, 1)
    txn_manager.begin_transaction()
    future = txn_manager.add_offsets_to_txn(dict(OFFSETS), "g")
    producer = SimpleNamespace(_sender=FakeSender(txn_manager))
    fence_producer(producer)
    await producer._sender._do_txn_offset_commit(dict(OFFSETS), "g")  # type: ignore[attr-defined]
    with pytest.raises(MissingGroupMetadata):
        future.result()
    assert txn_manager.state is TransactionState.ABORTABLE_ERROR


def test_the_member_rides_on_a_group_id_that_is_still_the_group_id() -> None:
    group_id = MemberGroupId(MEMBER)
    assert group_id == "g"
    assert group_id.member is MEMBER
    # aiokafka's AddOffsetsToTxn sends it as the plain group id.
    plain = AddOffsetsToTxnRequest_v0("tx", 7, 1, "g").encode()
    assert AddOffsetsToTxnRequest_v0("tx", 7, 1, group_id).encode() == plain


@pytest.mark.parametrize(
    ("generation", "member_id", "expected"),
    [
        (3, "m-1", GroupMetadata("g", 3, "m-1")),
        (-1, "", None),  # aiokafka's reset after a refused heartbeat
        (-1, "m-1", None),
        (3, "", None),
    ],
)
def test_group_metadata_is_none_without_a_membership(
    generation: int, member_id: str, expected: GroupMetadata | None
) -> None:
    consumer = SimpleNamespace(_coordinator=FakeCoordinator([], "g", generation, member_id))
    assert group_metadata(consumer) == expected


def test_group_metadata_is_none_before_start() -> None:
    assert group_metadata(SimpleNamespace(_coordinator=None)) is None


def test_the_installed_aiokafka_is_the_one_the_hooks_were_written_for() -> None:
    check_aiokafka()


@pytest.mark.parametrize("version", ["0.15.0", "1.0.0", "0.13.1", "0.1"])
def test_another_aiokafka_stops_the_transport_at_start(version: str) -> None:
    with pytest.raises(TransportError, match="KIP-447") as caught:
        check_aiokafka(version)
    assert not caught.value.retriable


def test_a_moved_internal_stops_the_transport_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    from aiokafka.producer.sender import Sender

    async def moved(self: Any, offsets: Any, group_id: Any, extra: Any) -> None: ...

    monkeypatch.setattr(Sender, "_do_txn_offset_commit", moved)
    with pytest.raises(TransportError, match="_do_txn_offset_commit"):
        check_aiokafka()
