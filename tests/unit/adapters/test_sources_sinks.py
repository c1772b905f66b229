"""Reference adapter parts: folder and webhook sources, folder/webhook/stdout sinks, the
configuration loader and the command line's one-line errors."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import shutil
import threading
from collections.abc import Iterator, Mapping
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest

from adapters import AdapterConfigError, DeadLetter, DeadLetters, InMemoryConnection, Received
from adapters._config import load_config
from adapters._sinks import FolderSink, SinkFailed, StdoutSink, WebhookSink
from adapters._sources import FolderSource, WebhookSource
from broker._cli import main
from broker.transport import InMemoryCluster
from tests.unit.adapters.conftest import ROOT, T0, FakeClock, example, make_client

REFERENCE = ROOT / "adapters" / "reference"


class Recorder:
    def __init__(self) -> None:
        self.published: list[tuple[str, Mapping[str, Any]]] = []

    async def __call__(self, event_type: str, doc: Mapping[str, Any]) -> str:
        self.published.append((event_type, doc))
        return str(doc["header"]["event_id"])


async def test_folder_source_publishes_valid_files_and_rejects_bad_ones_with_reasons(
    connection: InMemoryConnection, clock: FakeClock, tmp_path: Path
) -> None:
    inbox = tmp_path / "exports"
    inbox.mkdir()
    good = example("FamilyHarmEpisodeReport", source_agency="police")
    del good["header"]["event_id"]  # the source derives a stable one
    (inbox / "a-good.json").write_text(json.dumps(good))
    (inbox / "b-broken.json").write_text('{"header": {"case_id": "SYN-1",\n  oops}')
    bad_item = example("TaskEvent", source_agency="police")
    del bad_item["task_id"]
    (inbox / "c-mixed.json").write_text(
        json.dumps([example("TaskEvent", source_agency="police"), bad_item])
    )
    (inbox / ".d-partial.json").write_text("{")  # still being written: never read
    (inbox / "e.json.tmp").write_text("{")
    source = FolderSource("police", inbox)
    async with make_client("police", connection, clock, tmp_path / "state") as client:
        result = await source.scan(client.publish)
        assert (result.files, result.published, result.rejected) == (2 + 1, 2, 2)
        assert client.statistics().pending == 2
        # A crash before the file moved: the same file read again publishes nothing new.
        (done_good,) = (inbox / "done").glob("*-a-good.json")
        shutil.copy2(done_good, inbox / "a-good.json")
        await source.scan(client.publish)
        assert client.statistics().pending == 2
    done = sorted(p.name.split("-", 2)[2] for p in (inbox / "done").iterdir())
    assert done == ["a-good.json", "c-mixed.json"]
    rejected = inbox / "rejected"
    (broken,) = rejected.glob("*-b-broken.json")
    assert (rejected / f"{broken.name}.reason").read_text().startswith("line 2 column 3: bad JSON")
    assert broken.read_text().endswith("oops}")  # kept whole
    (mixed,) = rejected.glob("*-c-mixed.item2.json.reason")
    reason = mixed.read_text()
    assert reason.startswith("item 2: TaskEvent:")
    assert "task_id" in reason
    assert sorted(p.name for p in inbox.iterdir() if p.is_file()) == [
        ".d-partial.json",
        "e.json.tmp",
    ]


async def test_csv_source_fills_the_template_and_rejects_bad_rows_by_line(tmp_path: Path) -> None:
    config = load_config(REFERENCE / "msd.yaml")
    csv_source = config.sources[0]
    folder = tmp_path / "requests"
    folder.mkdir()
    (folder / "today.csv").write_text(
        "case_id,request_id,respond_by,justification,urgency,holders,event_id\n"
        'SYN-C1,SYN-R1,2025-06-03T17:00:00Z,Synthetic: housing transfer,urgent,"[{""agency_id"": ""police"", ""team"": null, ""contact_role"": null}]",00000000-0000-4000-8000-0000000000c1\n'
        "SYN-C2,SYN-R2,not-a-date,Synthetic: housing transfer,urgent,,\n"
    )
    template = json.loads(config.path(csv_source.template or "", tmp_path).read_text())  # type: ignore[union-attr]
    source = FolderSource(
        "msd",
        folder,
        format="csv",
        event_type="InformationRequest",
        template=template,
        columns=csv_source.columns,  # type: ignore[union-attr]
    )
    connection = InMemoryConnection(InMemoryCluster.provisioned(["msd"]))
    async with make_client("msd", connection, FakeClock(), tmp_path / "state") as client:
        result = await source.scan(client.publish)
    assert (result.published, result.rejected) == (1, 1)
    (rejected,) = (folder / "rejected").glob("*-today.item2.json.reason")
    reason = rejected.read_text()
    assert reason.startswith("line 3: InformationRequest:")
    assert "respond_by" in reason


async def test_webhook_source_answers_202_422_and_400() -> None:
    recorder = Recorder()
    source = WebhookSource("police", "127.0.0.1", 0)
    stop = asyncio.Event()
    task = asyncio.create_task(source.run(recorder, stop))
    await source.bound.wait()

    async def post(body: bytes, path: str = "/events") -> tuple[int, dict[str, Any]]:
        reader, writer = await asyncio.open_connection("127.0.0.1", source.port)
        writer.write(
            f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        await writer.drain()
        response = await reader.read()
        writer.close()
        head, _, payload = response.partition(b"\r\n\r\n")
        return int(head.split()[1]), json.loads(payload)

    try:
        doc = example("TaskEvent", source_agency="police")
        assert await post(json.dumps(doc).encode()) == (
            202,
            {"event_id": doc["header"]["event_id"]},
        )
        status, body = await post(b'{"header": {}}')
        assert status == 422
        assert "event type" in body["error"]
        assert (await post(b"not json"))[0] == 400
        assert (await post(b"{}", path="/other"))[0] == 404
    finally:
        stop.set()
        await task
    assert [t for t, _ in recorder.published] == ["TaskEvent"]


def received() -> Received:
    return Received(
        event_id="00000000-0000-4000-8000-00000000abcd",
        event_type="TaskEvent",
        source_agency="safe-whanau",
        route="fva_s20",
        legal_basis="FVA s20",
        purpose="fv_plan_or_response",
        obligations=(),
        rule_ids=("R1",),
        field_actions={"task_id": "keep"},
        policy_hash="0" * 64,
        shared_at=T0,
        body={"task_id": "SYN-TASK-1"},
    )


async def test_folder_and_stdout_sinks_write_one_document_per_event(tmp_path: Path) -> None:
    event = received()
    await FolderSink(tmp_path).deliver(event)
    await FolderSink(tmp_path).deliver(event)  # idempotent
    written = tmp_path / f"{event.source_agency}_{event.event_id}.json"
    assert json.loads(written.read_text())["body"] == {"task_id": "SYN-TASK-1"}
    assert written.stat().st_mode & 0o777 == 0o600
    out = io.StringIO()
    await StdoutSink(out).deliver(event)
    assert json.loads(out.getvalue())["idempotency_key"] == event.idempotency_key


class _Quiet(BaseHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass


@contextlib.contextmanager
def serving(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """A local HTTP server answering with ``handler``, its /tiaki URL, stopped afterwards."""
    server = HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/tiaki"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture
def webhook_receiver() -> Iterator[tuple[str, list[tuple[str, dict[str, Any]]], list[int]]]:
    got: list[tuple[str, dict[str, Any]]] = []
    statuses = [503, 200]

    class Handler(_Quiet):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            status = statuses.pop(0) if statuses else 200
            if status == 200:
                got.append((self.headers["Idempotency-Key"], body))
            self.send_response(status)
            self.end_headers()

    with serving(Handler) as url:
        yield url, got, statuses


async def test_webhook_sink_fails_on_non_2xx_and_sends_an_idempotency_key(
    webhook_receiver: tuple[str, list[tuple[str, dict[str, Any]]], list[int]],
) -> None:
    url, got, _ = webhook_receiver
    sink = WebhookSink(url, timeout_s=5)
    with pytest.raises(SinkFailed, match="503"):
        await sink.deliver(received())
    await sink.deliver(received())
    assert got == [(f"{received().source_agency}/{received().event_id}", got[0][1])]
    assert got[0][1]["event_type"] == "TaskEvent"


def test_every_reference_configuration_loads() -> None:
    agencies = {load_config(p).agency for p in REFERENCE.glob("*.yaml")}
    assert {
        "police",
        "oranga-tamariki",
        "corrections",
        "health-nz",
        "msd",
        "safe-whanau",
        "te-whare-tiaki",
    } <= agencies


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "agency: police\nsources:\n  - kind: folder\n    format: xml\n    path: x\n",
            "4:5: sources.0.format",
        ),
        ("agency: police\nsinks:\n  - kind: pigeon\n", "3:5: sinks.0"),
        ("agency: Police!\n", "1:1: agency"),
        ("agency: police\n  bad: [\n", "bad YAML"),
        ("- just a list\n", "1:1: an adapter configuration is a mapping"),
        (
            "agency: police\nretry: {max_attempts: 5, first_delay_s: 1e20, max_delay_s: 1e20}\n",
            "2:26: retry.first_delay_s: Input should be less than or equal to 86400",
        ),
        ("agency: police\nretry:\n  max_delay_s: 86401\n", "3:3: retry.max_delay_s"),
        (
            "agency: police\nsources:\n  - kind: webhook\n    listen: 127.0.0.1:99999\n",
            "4:5: sources.0.listen: the port must be 0 to 65535",
        ),
        (
            "agency: police\nsinks:\n  - kind: webhook\n    url: http://127.0.0.1:99999/x\n",
            "4:5: sinks.0.url: not a usable URL",
        ),
        ("agency: police\nsinks:\n  - kind: webhook\n    url: http:///x\n", "needs a host"),
    ],
)
def test_bad_configuration_is_one_positioned_line(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "adapter.yaml"
    path.write_text(text)
    with pytest.raises(AdapterConfigError, match=expected.replace("[", r"\[")) as info:
        load_config(path)
    assert str(info.value).startswith(str(path))


def test_cli_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "adapter.yaml"
    path.write_text("agency: police\nretry: {max_attempts: 0}\n")
    assert main(["adapter", "check", "--config", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith(f"tiaki: error: {path}:2:")
    assert main(["adapter", "run", "--agency", "police"]) == 2
    assert "Missing option '--config'" in capsys.readouterr().err
    assert (
        main(["adapter", "check", "--config", str(REFERENCE / "police.yaml"), "--agency", "nobody"])
        == 1
    )
    assert "not 'nobody'" in capsys.readouterr().err


def test_dead_letters_command_lists_reasons_not_content(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TIAKI_HOME", str(tmp_path))
    config = tmp_path / "adapter.yaml"
    config.write_text("agency: oranga-tamariki\n")
    DeadLetters(tmp_path / "adapters" / "oranga-tamariki" / "dead-letters").put(
        DeadLetter(
            event_id="00000000-0000-4000-8000-0000000000d1",
            event_type="TaskEvent",
            source_agency="police",
            topic="tiaki.egress.oranga-tamariki",
            partition=0,
            offset=7,
            attempts=5,
            reason="ValueError: the handler raised (message not kept)",
            dead_lettered_at="2025-06-01T09:00:00.000Z",
        ),
        b"sealed bytes",
    )
    assert main(["adapter", "dead-letters", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "ValueError: the handler raised (message not kept)" in out
    assert "0000000000d1" in out


def test_dead_letters_command_reports_unreadable_files_in_one_line_each(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TIAKI_HOME", str(tmp_path))
    config = tmp_path / "adapter.yaml"
    config.write_text("agency: oranga-tamariki\n")
    folder = tmp_path / "adapters" / "oranga-tamariki" / "dead-letters"
    good = DeadLetter(
        event_id="00000000-0000-4000-8000-0000000000d2",
        event_type="TaskEvent",
        source_agency="police",
        topic="tiaki.egress.oranga-tamariki",
        partition=0,
        offset=8,
        attempts=5,
        reason="SinkFailed: the handler raised",
        dead_lettered_at="2025-06-01T09:00:00.000Z",
    )
    DeadLetters(folder).put(good, b"sealed bytes")
    foreign = {
        "a-partial.json": b'{"event_id": "x"}',
        "b-truncated.json": b"[1",
        "c-list.json": b"[1, 2]",
        "d-binary.json": b"\xff\xfe SYNTHETIC-CANARY",
        "e-wrong-type.json": json.dumps({**good.__dict__, "attempts": "SYNTHETIC-CANARY"}).encode(),
    }
    for name, data in foreign.items():
        (folder / name).write_bytes(data)
    assert main(["adapter", "dead-letters", "--config", str(config)]) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert captured.err == ""
    assert lines[0].startswith(good.event_id)
    assert lines[1:-1] == [
        "a-partial.json  unreadable: not a dead letter (missing attempts, dead_lettered_at,"
        " event_type, offset, partition, reason, source_agency, topic) (left in place)",
        "b-truncated.json  unreadable: not valid JSON (left in place)",
        "c-list.json  unreadable: not a dead letter (not a JSON object) (left in place)",
        "d-binary.json  unreadable: not valid JSON (left in place)",
        "e-wrong-type.json  unreadable: not a dead letter (wrong type: attempts) (left in place)",
    ]
    assert lines[-1].endswith("1 dead letter(s) in " + str(folder) + "; 5 unreadable file(s)")
    assert "CANARY" not in captured.out
    assert all((folder / name).read_bytes() == data for name, data in foreign.items())
    assert DeadLetters(folder).list() == [good]


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_webhook_sink_does_not_follow_a_redirect(status: int) -> None:
    """An SSO proxy sending an expired session to its login page: the page's 200 (to the GET
    urllib would send) is not a delivery."""
    seen: list[str] = []

    class Handler(_Quiet):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            seen.append("POST")
            self.send_response(status)
            self.send_header("Location", "/login")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_GET(self) -> None:
            seen.append("GET")
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

    with serving(Handler) as url:
        sink = WebhookSink(url, timeout_s=5)
        with pytest.raises(SinkFailed, match=f"webhook answered {status}"):
            await sink.deliver(received())
    assert seen == ["POST"]
