"""The broker as operators run it (``tiaki broker run`` in its own process) against the
session's real Kafka, with development keys, officers and an approved policy release.

Agencies publish sealed events with their own principals and read their own egress topics
with their own principals and keys, exactly as adapters would.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from broker.codec import Schema, decode, encode, from_json, load_schemas
from broker.envelope import (
    BadVersion,
    KeyRing,
    KeyStore,
    Kind,
    Malformed,
    Opener,
    Sealer,
    UnknownKey,
    init_dev_keys,
)
from broker.platform import egress, ingress
from broker.platform._local import die_when_parent_dies
from broker.runtime._release import approve_as_dev_officers, dev_officers, stage_release
from broker.transport import KafkaPublisher, KafkaReader, Record
from tests.integration.conftest import ROOT, Cluster, free_port

SCHEMAS = load_schemas(ROOT / "schemas")
TIAKI = Path(sys.executable).parent / "tiaki"
EGRESS_FINGERPRINTS = {SCHEMAS.latest(n).fingerprint for n in ("SharedEvent", "RefusalNotice")}


def example(event_type: str, **header: Any) -> dict[str, Any]:
    """The synthetic example of ``event_type``, with a fresh event id and header overrides."""
    doc = json.loads((ROOT / "schemas" / "examples" / f"{event_type}.json").read_text())
    doc["header"] |= {"event_id": str(uuid.uuid4())} | header
    return doc


async def egress_received(cluster: Cluster, ring: KeyRing, agency: str) -> list[dict[str, Any]]:
    """Every SharedEvent on ``agency``'s egress topic that opens with its key in ``ring``
    (event id as text, ``body`` parsed); records that are not this deployment's envelopes
    (other modules' on the session's shared topics) are skipped, and so are the broker's
    refusal notices (:func:`egress_refusals`)."""
    out = []
    for item in await _egress_opened(cluster, ring, agency, SCHEMAS.latest("SharedEvent")):
        item["event_id"] = str(item["event_id"])
        item["body"] = json.loads(item["body_json"])
        out.append(item)
    return out


async def egress_received_by(
    cluster: Cluster, ring: KeyRing, agencies: Iterable[str]
) -> dict[str, list[dict[str, Any]]]:
    """:func:`egress_received` for each of ``agencies``, read at the same time: each read
    opens its own authenticated connections, and one after another they took most of a
    second per agency."""
    names = list(agencies)
    found = await asyncio.gather(*(egress_received(cluster, ring, a) for a in names))
    return dict(zip(names, found, strict=True))


async def egress_refusals(cluster: Cluster, ring: KeyRing, agency: str) -> list[dict[str, Any]]:
    """The broker's RefusalNotices on ``agency``'s egress topic: its records it quarantined."""
    return await _egress_opened(cluster, ring, agency, SCHEMAS.latest("RefusalNotice"))


async def _egress_opened(
    cluster: Cluster, ring: KeyRing, agency: str, schema: Schema
) -> list[dict[str, Any]]:
    """The records of ``schema`` on ``agency``'s egress topic, opened with its key."""
    async with KafkaReader(cluster.profile(agency)) as reader:
        records = await reader.read_all(egress(agency))
    opener = Opener(agency, ring)
    out = []
    for record in records:
        try:
            opened = opener.open(
                record.value,
                topic=record.topic,
                now=dt.datetime.now(dt.UTC),
                kind=Kind.EGRESS,
                source="broker",
            )
        except (BadVersion, Malformed, UnknownKey):
            continue
        # This broker writes only these two on an egress topic; anything else fails the test.
        assert opened.schema_fingerprint in EGRESS_FINGERPRINTS, record
        if opened.schema_fingerprint == schema.fingerprint:
            out.append(decode(opened.payload, schema))
    return out


#: The brokers' checkpoint cadence here (``tiaki broker run --checkpoint-seconds``).
CHECKPOINT_SECONDS = 2


@dataclass
class BrokerEnv:
    cluster: Cluster
    home: Path
    roster: Path
    release: Path
    ring: KeyRing
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    metrics_ports: dict[str, int] = field(default_factory=dict)
    #: Exit codes of the broker processes, once :meth:`running` has stopped them.
    exit_codes: list[int] = field(default_factory=list)
    #: This environment's own log folder: the home is the session's, shared by every module,
    #: and a line another module's broker wrote must not satisfy this one's wait.
    log_dir: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_dir = self.home / "broker-logs" / uuid.uuid4().hex[:8]
        self.log_dir.mkdir(parents=True)

    @classmethod
    def prepare(cls, cluster: Cluster) -> BrokerEnv:
        home = cluster.profiles_dir.parent
        now = dt.datetime.now(dt.UTC)
        store = KeyStore(home / "keys")
        principals = {a.id: a.key_ref for a in cluster.registry.agencies} | {"broker": "broker"}
        init_dev_keys(store, set(principals.values()), now=now)
        release = stage_release(ROOT / "policies", ROOT / "schemas", home / "release")
        roster = dev_officers(home / "officers")
        approve_as_dev_officers(release, home / "officers", now)
        ring = store.load(principals, private_for=None)
        return cls(cluster, home, roster, release, ring)

    def environment(self) -> dict[str, str]:
        return os.environ | {
            "TIAKI_HOME": str(self.home),
            "TIAKI_POLICIES": str(self.release),
            "TIAKI_SCHEMAS": str(self.release.parent / "schemas"),
            "TIAKI_REGISTRY": str(self.release / "agencies.yaml"),
        }

    @classmethod
    @contextmanager
    def running(
        cls, cluster: Cluster, *, start: bool = True, stop_signal: int = signal.SIGTERM
    ) -> Iterator[BrokerEnv]:
        """A module's broker environment (with one worker started, if ``start``); every
        broker process it started is stopped with ``stop_signal`` afterwards, and their exit
        codes are kept in :attr:`exit_codes`."""
        environment = cls.prepare(cluster)
        try:
            if start:
                environment.start()
            yield environment
        finally:
            environment.exit_codes = environment.stop_all(stop_signal)

    def start(self, worker_id: str = "0", wait: bool = True) -> subprocess.Popen[bytes]:
        path = self._log_path(worker_id)
        since = path.stat().st_size if path.exists() else 0  # a restart's own lines only
        log = path.open("ab")
        self.metrics_ports[worker_id] = port = free_port()
        process = subprocess.Popen(
            [
                str(TIAKI),
                "broker",
                "run",
                "--worker-id",
                worker_id,
                "--metrics-port",
                str(port),
                "--roster",
                str(self.roster),
                # Tests wait for every audit record to be signed: 2 s, not the default 10.
                "--checkpoint-seconds",
                str(CHECKPOINT_SECONDS),
            ],
            env=self.environment(),
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            cwd=ROOT,
            preexec_fn=die_when_parent_dies,  # no broker outlives a killed test session
        )
        log.close()
        self.processes.append(process)
        if wait:
            self.wait_for_log(worker_id, "worker started", process, since=since)
        return process

    def _log_path(self, worker_id: str) -> Path:
        return self.log_dir / f"broker-{worker_id}.log"

    def log_lines(self, worker_id: str = "0", since: int = 0) -> list[str]:
        """Lines worker ``worker_id`` of this environment logged, from byte ``since`` on."""
        path = self._log_path(worker_id)
        if not path.exists():
            return []
        with path.open("rb") as file:
            file.seek(since)
            return file.read().decode(errors="replace").splitlines()

    def wait_for_log(
        self,
        worker_id: str,
        text: str,
        process: subprocess.Popen[bytes],
        timeout: float = 60,
        since: int = 0,
    ) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(text in line for line in self.log_lines(worker_id, since)):
                return
            if process.poll() is not None:
                raise AssertionError(
                    f"broker exited {process.returncode}: {self.log_lines(worker_id)[-5:]}"
                )
            time.sleep(0.1)
        raise AssertionError(f"broker did not log {text!r} in {timeout}s")

    def stop_all(self, sig: int = signal.SIGTERM) -> list[int]:
        codes = []
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(sig)
            try:
                codes.append(process.wait(timeout=60))
            except subprocess.TimeoutExpired:
                process.kill()
                codes.append(process.wait())
        self.processes.clear()
        return codes

    def seal(
        self,
        agency: str,
        event_type: str,
        doc: dict[str, Any],
        *,
        payload: bytes | None = None,
        fingerprint: bytes | None = None,
        topic: str | None = None,
        sealed_at: dt.datetime | None = None,
    ) -> bytes:
        """``doc`` sealed by ``agency`` for the broker; the keywords forge a bad record."""
        schema = SCHEMAS.latest(event_type)
        return Sealer(agency, self.ring).seal(
            payload if payload is not None else encode(schema, from_json(schema, doc)),
            kind=Kind.INGRESS,
            topic=topic or ingress(agency),
            recipient="broker",
            event_id=doc["header"]["event_id"],
            schema_fingerprint=fingerprint or schema.fingerprint,
            now=sealed_at or dt.datetime.now(dt.UTC),
        )

    async def publish(self, agency: str, items: list[tuple[str, dict[str, Any]]]) -> None:
        """Publish (event type, document) pairs as ``agency`` would, keyed by case id."""
        sealer_values = [
            (doc["header"]["case_id"].encode(), self.seal(agency, t, doc)) for t, doc in items
        ]
        async with KafkaPublisher(self.cluster.profile(agency)) as publisher:
            for key, value in sealer_values:
                await publisher.publish(ingress(agency), key, value)

    async def publish_raw(
        self,
        agency: str,
        values: list[bytes],
        key: bytes = b"SYN-RAW",
        keys: Mapping[bytes, bytes] | None = None,
    ) -> None:
        """Publish record values as they are, keyed ``key`` (or, per value, by ``keys``): the
        broker admits a record only if it is keyed by its case id (``key_mismatch``)."""
        async with KafkaPublisher(self.cluster.profile(agency)) as publisher:
            for value in values:
                own = key if keys is None else keys.get(value, key)
                await publisher.publish(ingress(agency), own, value)

    async def received(self, agency: str) -> list[dict[str, Any]]:
        """Every SharedEvent this environment's broker put on ``agency``'s egress topic,
        opened with the agency's key.

        The session's topics are shared with other modules: the adapter tests put records
        that are not envelopes on an egress topic (to dead-letter them), and the demo runs a
        broker with keys of its own. Those are skipped; anything else that fails to open is
        this broker's record and fails the test.
        """
        return await egress_received(self.cluster, self.ring, agency)

    async def received_by(
        self, agencies: Iterable[str] | None = None
    ) -> dict[str, list[dict[str, Any]]]:
        """:meth:`received` for each of ``agencies`` (default: every agency), read at once."""
        chosen = self.cluster.registry.ids if agencies is None else agencies
        return await egress_received_by(self.cluster, self.ring, chosen)

    async def read(self, principal: str, topic: str) -> list[Record]:
        async with KafkaReader(self.cluster.profile(principal)) as reader:
            return await reader.read_all(topic)

    def metrics(self, worker_id: str = "0") -> str:
        """The worker's Prometheus exposition, as an operator's scraper sees it."""
        url = f"http://127.0.0.1:{self.metrics_ports[worker_id]}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            text: str = response.read().decode()
        return text
