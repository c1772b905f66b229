"""The adapter's logs carry no personal information: canary names and identifiers go through
publishing, a bad export, a failing handler and a dead letter, and none reaches the log."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from adapters import FolderSource, InMemoryConnection, Received
from broker._logging import configure_logging
from tests.unit.adapters.conftest import FakeBroker, FakeClock, example, make_client
from tests.unit.runtime.test_audit import CANARIES, with_canaries


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    configure_logging(stream)
    try:
        yield stream
    finally:
        structlog.reset_defaults()


async def test_no_canary_reaches_the_log(
    log_stream: io.StringIO,
    connection: InMemoryConnection,
    fake_broker: FakeBroker,
    clock: FakeClock,
    tmp_path: Path,
) -> None:
    connection.down = True  # send failures are logged too
    exports = tmp_path / "exports"
    exports.mkdir()
    good = example("FamilyHarmEpisodeReport", source_agency="police")
    with_canaries(good)
    bad = example("TaskEvent", source_agency="police")
    with_canaries(bad)
    del bad["task_id"]
    (exports / f"{CANARIES[0]}.json").write_text(json.dumps([good, bad]))  # a name in the file name
    (exports / f"{CANARIES[1]}.json").write_text('{"broken": "' + CANARIES[2])
    async with make_client("police", connection, clock, tmp_path / "police") as police:
        await FolderSource("police", exports).scan(police.publish)
        await police.send_pending()

    await fake_broker.deliver("oranga-tamariki")

    def handler(event: Received) -> None:
        raise ValueError(f"case system refused {CANARIES[0]} {CANARIES[2]}")

    async with make_client(
        "oranga-tamariki", connection, clock, tmp_path / "ot", max_attempts=1
    ) as ot:
        await ot.receive(handler)
        (letter,) = ot.dead_letters.list()
    logged = log_stream.getvalue()
    assert "handler failed" in logged
    assert "event dead-lettered" in logged
    assert "kafka unavailable" in logged
    assert "source item rejected" in logged
    for canary in CANARIES:
        assert canary not in logged
    assert CANARIES[0] not in letter.reason  # printed by `tiaki adapter dead-letters`
    detail = ot.dead_letters.detail(letter.event_id)
    assert detail is not None
    assert CANARIES[0] in detail  # the agency's own operators' file keeps the handler's text
