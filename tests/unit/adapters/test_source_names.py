"""File names that are not UTF-8, and items that fail in ways no check foresaw, never stop
the folder source (or the adapter around it)."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

import pytest

from adapters import InMemoryConnection
from adapters._sources import _NAMESPACE, FolderSource, stable_event_id
from broker.transport import InMemoryCluster
from tests.unit.adapters.conftest import AGENCIES, FakeClock, example, make_client


@pytest.mark.parametrize("name", ["export.json", "Renée-referral.json", "tūpuna 2025.csv"])
def test_ids_of_utf8_names_are_unchanged(name: str) -> None:
    digest = "ab" * 32
    assert stable_event_id("police", name, digest, 3) == str(
        uuid.uuid5(_NAMESPACE, f"police/{name}/{digest}/3")
    )


def _write(name: bytes, data: bytes) -> None:
    with open(name, "wb") as handle:
        handle.write(data)


async def test_a_file_name_that_is_not_utf8_is_read_like_any_other(tmp_path: Path) -> None:
    exports = tmp_path / "exports"
    exports.mkdir()
    bad = os.fsencode(exports) + b"/Ren\xe9e-referral.json"
    _write(bad, json.dumps(example("TaskEvent", source_agency="police")).encode())
    (exports / "z-next.json").write_text(json.dumps(example("TaskEvent", source_agency="police")))
    connection = InMemoryConnection(InMemoryCluster.provisioned(AGENCIES))
    async with make_client("police", connection, FakeClock(), tmp_path / "state") as client:
        result = await FolderSource("police", exports).scan(client.publish)
        assert (result.published, result.rejected) == (2, 0)
        assert client.statistics().pending == 2
    assert os.listdir(os.fsencode(exports)) == [b"done"]


async def test_an_unforeseen_failure_rejects_the_item_and_the_rest_go_on(tmp_path: Path) -> None:
    exports = tmp_path / "exports"
    exports.mkdir()
    items = [example("TaskEvent", source_agency="police") for _ in range(3)]
    (exports / "a.json").write_text(json.dumps(items))
    (exports / "b.json").write_text(json.dumps(example("TaskEvent", source_agency="police")))
    published: list[str] = []
    calls = 0

    async def publish(event_type: str, doc: dict[str, Any]) -> str:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise RuntimeError("quoting the content: Jane Doe")
        published.append(doc["header"]["event_id"])
        return str(doc["header"]["event_id"])

    result = await FolderSource("police", exports).scan(publish)
    assert (result.files, result.published, result.rejected) == (2, 3, 1)
    (reason,) = (exports / "rejected").glob("*.reason")
    assert reason.read_text() == (
        "item 2: RuntimeError: cannot be read as an event (message not kept)\n"
    )


async def test_an_unforeseen_failure_reading_a_file_rejects_it_and_the_rest_go_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    exports = tmp_path / "exports"
    exports.mkdir()
    (exports / "a.json").write_text("[]")
    (exports / "b.json").write_text(json.dumps(example("TaskEvent", source_agency="police")))
    source = FolderSource("police", exports)
    real = source._items

    def items(file: Path, data: bytes) -> Any:
        if file.name == "a.json":
            raise LookupError("quoting the content")
        return real(file, data)

    monkeypatch.setattr(source, "_items", items)
    published: list[str] = []

    async def publish(event_type: str, doc: dict[str, Any]) -> str:
        published.append(doc["header"]["event_id"])
        return str(doc["header"]["event_id"])

    result = await source.scan(publish)
    assert (result.files, result.published, result.rejected) == (2, 1, 1)
    (reason,) = (exports / "rejected").glob("*.reason")
    assert reason.read_text().endswith(
        "LookupError: cannot be read as an event (message not kept)\n"
    )
    (kept,) = (exports / "rejected").glob("*-a.json")
    assert kept.read_text() == "[]"
