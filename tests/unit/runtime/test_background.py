"""A background task of the broker that dies, or ends early, stops the broker and says so."""

from __future__ import annotations

import asyncio
import io
import json

import pytest

from broker._logging import configure_logging
from broker.runtime._background import BackgroundTaskFailed, BackgroundTasks


async def _until(stop: asyncio.Event) -> None:
    await stop.wait()


async def _dies() -> None:
    await asyncio.sleep(0)
    raise OSError("disk gone")


async def _returns() -> None:
    await asyncio.sleep(0)


@pytest.mark.parametrize(("work", "error_type"), [(_dies, "OSError"), (_returns, "returned")])
def test_a_task_that_ends_early_stops_the_broker(work, error_type) -> None:  # type: ignore[no-untyped-def]
    out = io.StringIO()
    configure_logging(out)

    async def main() -> BackgroundTasks:
        stop = asyncio.Event()
        tasks = BackgroundTasks(stop)
        tasks.start("keys", _until(stop))
        tasks.start("policy", work())
        # The worker loop runs until stop: here it must be set by the failing task.
        await asyncio.wait_for(stop.wait(), 5)
        await tasks.join()
        return tasks

    tasks = asyncio.run(main())
    assert tasks.failed == ["policy"]
    with pytest.raises(BackgroundTaskFailed, match="policy"):
        tasks.check()
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert {
        "event": "background task failed; stopping the broker",
        "task": "policy",
        "error_type": error_type,
    }.items() <= lines[-1].items()


def test_tasks_that_end_at_stop_are_no_failure() -> None:
    async def main() -> BackgroundTasks:
        stop = asyncio.Event()
        tasks = BackgroundTasks(stop)
        tasks.start("keys", _until(stop))
        tasks.start("observer", _until(stop))
        await asyncio.sleep(0)
        await tasks.join()
        return tasks

    tasks = asyncio.run(main())
    assert tasks.failed == []
    tasks.check()
