"""The broker's background tasks, watched: one that dies stops the broker, loudly.

Beside its worker loop a broker runs tasks that keep it current: the policy watcher
(``tiaki.policy``), the key follower (rotations and revocations) and the observer (lag and key
age gauges). Each is meant to run until ``stop``. One that raises, or returns before ``stop``
is set, would otherwise leave the broker deciding on with a stale policy or stale keys and say
nothing; :class:`BackgroundTasks` instead logs ``background task failed`` with the task's name,
sets ``stop`` so the worker finishes the batch in flight and closes, and :meth:`check` then
raises :class:`BackgroundTaskFailed`, so ``tiaki broker run`` exits 1 and its supervisor
(systemd, Kubernetes) starts it again, which reloads policy and keys from scratch. Restarting
the task in place was the other choice; a fresh process was preferred because it rebuilds
every piece of state the same way a first start does (docs/operations.md).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import structlog

from broker._errors import TiakiError

log = structlog.get_logger("tiaki.broker")


class BackgroundTaskFailed(TiakiError):
    """A background task of the broker ended before the broker was asked to stop."""


class BackgroundTasks:
    """Tasks that run until ``stop``; the first to end early stops the broker."""

    def __init__(self, stop: asyncio.Event) -> None:
        self._stop = stop
        self._tasks: list[asyncio.Task[None]] = []
        #: Names of the tasks that ended early, in the order they did.
        self.failed: list[str] = []

    def start(self, name: str, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` as the background task ``name`` (a fixed word, e.g. ``policy``)."""
        self._tasks.append(asyncio.create_task(self._watch(name, work), name=name))

    async def _watch(self, name: str, work: Coroutine[Any, Any, None]) -> None:
        try:
            await work
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._fail(name, type(exc).__name__)
        else:
            if not self._stop.is_set():
                self._fail(name, "returned")

    def _fail(self, name: str, error_type: str) -> None:
        # Exception messages can name files or hosts; the type and the task say enough here.
        log.error(
            "background task failed; stopping the broker",
            task=name,
            error_type=error_type,
            status="stopping",
        )
        self.failed.append(name)
        self._stop.set()

    async def join(self) -> None:
        """Set ``stop`` and wait for every task to end; never raises for a task's failure."""
        self._stop.set()
        await asyncio.gather(*self._tasks)

    def check(self) -> None:
        """Raise :class:`BackgroundTaskFailed` if a task ended early."""
        if self.failed:
            raise BackgroundTaskFailed(
                f"background task {', '.join(self.failed)} failed; the broker stopped "
                "(see the log line 'background task failed')"
            )
