"""The background sender never stops while the client runs: an outbox that cannot be read
(a disk error, a locked file) is logged once, backed off and tried again, and sending resumes
by itself when it can be read again."""

from __future__ import annotations

import asyncio
import io
import json
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import structlog

from adapters import InMemoryConnection
from broker._logging import configure_logging
from broker.transport import InMemoryCluster
from tests.unit.adapters.conftest import FakeClock, eventually, example, make_client
from tests.unit.adapters.test_client import ingress_ids


def _failing(real: Callable[..., Any], times: int) -> Callable[..., Any]:
    """``real``, raising a SQLite error on its first ``times`` calls."""
    left = [times]

    def call(*args: Any, **kwargs: Any) -> Any:
        if left[0] > 0:
            left[0] -= 1
            raise sqlite3.OperationalError("disk I/O error")
        return real(*args, **kwargs)

    return call


@pytest.fixture
def log_lines() -> Any:
    stream = io.StringIO()
    configure_logging(stream)
    try:
        yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    finally:
        structlog.reset_defaults()


@pytest.mark.parametrize("failing", ["pending_count", "pending"])
async def test_an_outbox_read_error_does_not_stop_the_sender(
    connection: InMemoryConnection,
    cluster: InMemoryCluster,
    clock: FakeClock,
    tmp_path: Path,
    log_lines: Any,
    monkeypatch: pytest.MonkeyPatch,
    failing: str,
) -> None:
    async with make_client("police", connection, clock, tmp_path) as client:
        event_id = await client.publish("TaskEvent", example("TaskEvent", source_agency="police"))
        state = client._state
        monkeypatch.setattr(state, failing, _failing(getattr(state, failing), times=3))
        sender = asyncio.create_task(client._send_forever(first_backoff=0.01, max_backoff=0.02))
        try:

            def recovered() -> bool:
                said = [line["event"] for line in log_lines()]
                return client._counts.sent == 1 and "outbox usable again" in said

            await eventually(lambda: recovered() or sender.done())
            assert not sender.done()
        finally:
            sender.cancel()
            with pytest.raises(asyncio.CancelledError):
                await sender
    assert await ingress_ids(cluster, "police") == [event_id]
    said = [(line["event"], line.get("error_type")) for line in log_lines()]
    assert said.count(("outbox unusable; will try again", "OperationalError")) == 1
    assert ("outbox usable again", "OperationalError") in said
