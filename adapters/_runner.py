"""A reference adapter: a configuration's sources and sinks wired to one client.

``tiaki adapter run --agency police --config adapters/reference/police.yaml`` builds an
:class:`Adapter` from the file and runs it until SIGTERM: every source publishes into the
client's outbox, and every received event goes to every sink (in the order configured). A
sink that fails makes the event fail, so the SDK retries it and, after ``retry.max_attempts``,
dead-letters it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, start_http_server

from adapters._client import AdapterClient, RetryPolicy
from adapters._config import (
    AdapterConfig,
    FolderSinkConfig,
    FolderSourceConfig,
    StdoutSinkConfig,
    WebhookSinkConfig,
    WebhookSourceConfig,
    read_template,
)
from adapters._connection import Connection, KafkaConnection
from adapters._errors import AdapterConfigError
from adapters._events import Received
from adapters._keys import KeyFolder
from adapters._metrics import AdapterMetrics
from adapters._sinks import FolderSink, Sink, StdoutSink, WebhookSink
from adapters._sources import FolderSource, Source, WebhookSource
from broker.codec import SchemaSet
from broker.platform import load_profile

log = structlog.get_logger("tiaki.adapter")


class Adapter:
    """Sources and sinks around one :class:`AdapterClient`."""

    def __init__(
        self, client: AdapterClient, sources: Sequence[Source], sinks: Sequence[Sink]
    ) -> None:
        self.client = client
        self.sources = list(sources)
        self.sinks = list(sinks)
        self.started = asyncio.Event()

    @classmethod
    def from_config(
        cls,
        config: AdapterConfig,
        *,
        home: Path,
        schemas: SchemaSet,
        connection: Connection | None = None,
        metrics: AdapterMetrics | None = None,
        **client_options: Any,
    ) -> Adapter:
        """Build the adapter ``config`` describes; paths resolve ``{home}``."""
        # Read again every few seconds and when a record does not open for a key (rotations
        # and revocations taken in without a restart), whoever builds the adapter: the
        # command, the demo, a test.
        keys = KeyFolder(config.path(config.keys, home), config.agency, config.key_ref)
        client_options.setdefault("key_folder", keys)
        ring = keys.load()
        if connection is None:
            connection = KafkaConnection(load_profile(config.path(config.profile, home)))
        retry = RetryPolicy(
            max_attempts=config.retry.max_attempts,
            first_delay=dt.timedelta(seconds=config.retry.first_delay_s),
            max_delay=dt.timedelta(seconds=config.retry.max_delay_s),
        )
        client = AdapterClient(
            config.agency,
            connection,
            ring,
            schemas,
            config.path(config.state, home),
            retry=retry,
            metrics=metrics,
            **client_options,
        )
        sources: list[Source] = []
        for source in config.sources:
            if isinstance(source, FolderSourceConfig):
                template = None
                if source.template:
                    template = read_template(config.path(source.template, home))
                try:
                    folder = FolderSource(
                        config.agency,
                        config.path(source.path, home),
                        format=source.format,
                        event_type=source.event_type,
                        template=template,
                        columns=source.columns,
                        interval_s=source.interval_s,
                    )
                except ValueError as exc:  # load_config checks this first; this is the backstop
                    raise AdapterConfigError(f"folder source {source.path}: {exc}") from None
                sources.append(folder)
            elif isinstance(source, WebhookSourceConfig):
                host, _, port = source.listen.rpartition(":")
                sources.append(WebhookSource(config.agency, host, int(port), source.path))
        sinks: list[Sink] = []
        for sink in config.sinks:
            if isinstance(sink, FolderSinkConfig):
                sinks.append(FolderSink(config.path(sink.path, home)))
            elif isinstance(sink, WebhookSinkConfig):
                sinks.append(WebhookSink(sink.url, sink.timeout_s))
            elif isinstance(sink, StdoutSinkConfig):
                sinks.append(StdoutSink())
        return cls(client, sources, sinks)

    async def handle(self, event: Received) -> None:
        for sink in self.sinks:
            await sink.deliver(event)

    async def run(self, stop: asyncio.Event, *, poll_timeout_ms: int = 200) -> None:
        """Run every source and the receiving loop until ``stop`` is set; the client closes
        with whatever is unsent still in its outbox."""
        async with self.client:
            tasks = [
                asyncio.create_task(source.run(self.client.publish, stop))
                for source in self.sources
            ]
            receiving = asyncio.create_task(
                self.client.run(self.handle, stop, poll_timeout_ms=poll_timeout_ms)
            )
            self.started.set()
            log.info("adapter started", agency=self.client.agency, count=len(tasks))
            stopping = asyncio.create_task(stop.wait())
            everything = [*tasks, receiving]
            try:
                # Until asked to stop, or until a source or the receiving loop fails (a
                # webhook port taken, the state folder unwritable): then stop the rest too.
                await asyncio.wait([stopping, *everything], return_when=asyncio.FIRST_COMPLETED)
            finally:
                stop.set()
                await stopping
                results = await asyncio.gather(*everything, return_exceptions=True)
            failures = [r for r in results if isinstance(r, Exception)]
            log.info("adapter stopped", agency=self.client.agency, status="stopped")
            if failures:
                raise failures[0]


def serve_metrics(port: int) -> AdapterMetrics:
    """Adapter metrics on ``127.0.0.1:port`` (its own registry)."""
    metrics = AdapterMetrics(CollectorRegistry())
    try:
        start_http_server(port, addr="127.0.0.1", registry=metrics.registry)
    except OSError as exc:  # the port taken, most likely: say which setting to change
        raise AdapterConfigError(
            f"cannot serve metrics on 127.0.0.1:{port} (metrics_port): {exc.strerror or exc}"
        ) from None
    return metrics
