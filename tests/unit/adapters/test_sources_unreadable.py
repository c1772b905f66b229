"""Folders the adapter cannot use are said so, never taken for empty ones, and an export
replaced in the instant of its move comes back for the next scan on any file system.

* An export folder that is missing (a typo in ``path``) or cannot be listed warns once, with
  the error's type and errno, until it can be listed again (``Path.glob`` answered both with
  no files: nothing published, nothing said).
* ``tiaki adapter dead-letters`` on a folder it cannot list, or for a state folder that does
  not exist, is a one-line error, not ``0 dead letter(s)``.
* An export replaced between the check and the move is given back even where the file system
  has no hard links (exFAT, vfat, many SMB and FUSE mounts): it was left in ``done/`` (or
  hidden in ``rejected/``) under the old content's name, never read.

The tests run as root, where permissions stop nothing: a refusal is simulated by patching.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from adapters import AdapterError, DeadLetters
from adapters._sources import FolderSource
from broker._cli import main
from tests.unit.adapters.test_sources_hostile import _client, _exports, _good, _left

# vfat and exFAT refuse a hard link with EPERM; SMB and FUSE mounts often with ENOTSUP.
NO_LINKS = [pytest.param(errno.EPERM, id="EPERM"), pytest.param(errno.ENOTSUP, id="ENOTSUP")]
FOLDER_WARNING = "source folder cannot be listed; tried again every scan"


def _refuse_listing(monkeypatch: pytest.MonkeyPatch, folder: Path, error: int) -> None:
    """``os.scandir`` of ``folder`` (only) fails as it would for a user without permission."""
    real_scandir = os.scandir

    def scandir(path: Any = ".") -> Any:
        if Path(path) == folder:
            raise OSError(error, os.strerror(error), str(path))  # PermissionError for EACCES
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)


def _no_hard_links(monkeypatch: pytest.MonkeyPatch, error: int) -> None:
    def link(*args: Any, **kwargs: Any) -> None:
        raise OSError(error, os.strerror(error))

    monkeypatch.setattr(os, "link", link)


def _replace_on_move(
    monkeypatch: pytest.MonkeyPatch, folder: Path, into: str, after: str | None = None
) -> None:
    """Replace ``a.json`` with new content (``task_id`` NEW) in the instant between the check
    and the move into ``into``; with ``after``, once more just after the move."""
    real_replace = os.replace

    def racing(src: Any, dst: Any) -> None:
        moving = Path(src).name == "a.json" and Path(dst).parent.name == into
        if moving:
            _export(folder, "NEW", real_replace)
        real_replace(src, dst)
        if moving and after is not None:
            _export(folder, after, real_replace)

    monkeypatch.setattr(os, "replace", racing)


def _export(folder: Path, task_id: str, replace: Any) -> None:
    """What a case system does: write a temporary name, rename it onto ``a.json``."""
    (folder / "a.json.tmp").write_text(_good(task_id=task_id))
    replace(folder / "a.json.tmp", folder / "a.json")


def _task_ids(folder: Path) -> list[str]:
    return sorted(json.loads((folder / name).read_text())["task_id"] for name in _left(folder))


# -- an export folder that cannot be listed ---------------------------------------------------


@pytest.mark.parametrize(
    ("error", "reason"),
    [(errno.EACCES, "PermissionError/EACCES"), (errno.EIO, "OSError/EIO")],
)
async def test_an_export_folder_that_cannot_be_listed_warns_once_until_it_can(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: int, reason: str
) -> None:
    folder = _exports(tmp_path)
    (folder / "a.json").write_text(_good())
    async with _client(tmp_path) as client:
        source = FolderSource("police", folder)
        with capture_logs() as logs:
            _refuse_listing(monkeypatch, folder, error)
            refused = [await source.scan(client.publish) for _ in range(3)]
            monkeypatch.undo()
            listed = await source.scan(client.publish)
            _refuse_listing(monkeypatch, folder, error)
            await source.scan(client.publish)
    assert [r.files for r in refused] == [0, 0, 0]
    assert listed.published == 1  # the same file, once the folder can be listed
    warnings = [e for e in logs if e["log_level"] == "warning"]
    # Once while refused, once again after it was listed in between: never per scan.
    assert [(w["event"], w["reason"]) for w in warnings] == [(FOLDER_WARNING, reason)] * 2
    assert str(tmp_path) not in repr(logs)  # the path is never logged


async def test_a_missing_export_folder_warns_once_and_is_read_once_it_exists(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "exprots"  # the typo in a configuration's path
    async with _client(tmp_path) as client:
        source = FolderSource("police", folder)
        with capture_logs() as logs:
            await source.scan(client.publish)
            await source.scan(client.publish)
            folder.mkdir()
            (folder / "a.json").write_text(_good())
            found = await source.scan(client.publish)
    assert found.published == 1
    warnings = [(e["event"], e["reason"]) for e in logs if e["log_level"] == "warning"]
    assert warnings == [(FOLDER_WARNING, "FileNotFoundError/ENOENT")]
    assert "exprots" not in repr(logs)


async def test_a_folder_that_is_listed_reads_as_before(tmp_path: Path) -> None:
    """The listing keeps what the glob chose: ``*.json`` only (case as written), no hidden
    or temporary name, no folder, but a link (to be rejected, never followed)."""
    folder = _exports(tmp_path)
    for name in ("b.json", "a.json", "c.JSON", ".d.json", "e.json.tmp", "f.json.part", "g.csv"):
        (folder / name).write_text(_good())
    (folder / "h.json").mkdir()
    (folder / "i.json").symlink_to(folder / "a.json")
    source = FolderSource("police", folder)
    assert [p.name for p in source._files()] == ["a.json", "b.json", "i.json"]


# -- the dead-letter listing ----------------------------------------------------------------


def _adapter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """A configuration and its dead-letter folder (state under ``TIAKI_HOME``)."""
    monkeypatch.setenv("TIAKI_HOME", str(tmp_path))
    config = tmp_path / "adapter.yaml"
    config.write_text("agency: oranga-tamariki\n")
    return config, tmp_path / "adapters" / "oranga-tamariki" / "dead-letters"


def test_a_dead_letter_folder_that_cannot_be_listed_is_an_error_not_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config, folder = _adapter(tmp_path, monkeypatch)
    folder.mkdir(parents=True)
    (folder / "x.json").write_text("{}")
    _refuse_listing(monkeypatch, folder, errno.EACCES)
    with pytest.raises(AdapterError) as caught:
        DeadLetters(folder).read()
    assert str(caught.value) == f"{folder}: cannot list the dead letters: Permission denied"
    assert main(["adapter", "dead-letters", "--config", str(config)]) == 1
    out = capsys.readouterr()
    assert out.out == ""  # no "0 dead letter(s)"
    assert out.err == f"tiaki: error: {folder}: cannot list the dead letters: Permission denied\n"


def test_dead_letters_for_a_state_folder_that_does_not_exist_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config, folder = _adapter(tmp_path, monkeypatch)  # no adapter has run with this state
    assert main(["adapter", "dead-letters", "--config", str(config)]) == 1
    out = capsys.readouterr()
    assert out.out == ""
    assert out.err.startswith(f"tiaki: error: {folder.parent}: no such adapter state folder")
    assert out.err.count("\n") == 1


def test_no_dead_letter_folder_in_a_state_folder_is_no_dead_letters(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config, folder = _adapter(tmp_path, monkeypatch)
    folder.parent.mkdir(parents=True)  # the folder is made with the first dead letter
    assert DeadLetters(folder).read() == ([], [])
    assert main(["adapter", "dead-letters", "--config", str(config)]) == 0
    assert capsys.readouterr().out == f"0 dead letter(s) in {folder}\n"
    folder.mkdir()
    assert main(["adapter", "dead-letters", "--config", str(config)]) == 0
    assert capsys.readouterr().out == f"0 dead letter(s) in {folder}\n"


# -- an export replaced in the instant of its move, without hard links -----------------------


@pytest.mark.parametrize("error", NO_LINKS)
async def test_an_export_replaced_in_the_move_to_done_is_given_back_without_hard_links(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: int
) -> None:
    folder = _exports(tmp_path)
    (folder / "a.json").write_text(_good(task_id="OLD"))
    published: list[str] = []
    async with _client(tmp_path) as client:

        async def publish(event_type: str, doc: dict[str, Any]) -> str:
            published.append(doc["task_id"])
            return await client.publish(event_type, doc)

        source = FolderSource("police", folder)
        _no_hard_links(monkeypatch, error)
        _replace_on_move(monkeypatch, folder, into="done")
        with capture_logs() as logs:
            await source.scan(publish)
        monkeypatch.undo()
        assert list((folder / "done").iterdir()) == []  # new content is not "done" unpublished
        assert _task_ids(folder) == ["NEW"]  # back in the folder, under a new name
        assert not [e for e in logs if e["log_level"] == "warning"]
        await source.scan(publish)
    assert published == ["OLD", "NEW"]
    assert _left(folder) == []


@pytest.mark.parametrize("error", NO_LINKS)
async def test_an_export_replaced_in_the_move_to_rejected_is_given_back_without_hard_links(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: int
) -> None:
    folder = _exports(tmp_path)
    (folder / "a.json").write_text("not JSON")
    async with _client(tmp_path) as client:
        source = FolderSource("police", folder)
        _no_hard_links(monkeypatch, error)
        _replace_on_move(monkeypatch, folder, into="rejected")
        await source.scan(client.publish)
        monkeypatch.undo()
        kept, reason = sorted((folder / "rejected").iterdir())  # nothing hidden beside them
        assert reason.name == f"{kept.name}.reason"
        assert kept.read_text() == "not JSON"
        assert _task_ids(folder) == ["NEW"]
        result = await source.scan(client.publish)
    assert result.published == 1
    assert _left(folder) == []


async def test_an_export_given_back_without_hard_links_never_overwrites_a_newer_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = _exports(tmp_path)
    (folder / "a.json").write_text(_good(task_id="OLD"))
    async with _client(tmp_path) as client:
        source = FolderSource("police", folder)
        _no_hard_links(monkeypatch, errno.EPERM)
        _replace_on_move(monkeypatch, folder, into="done", after="NEWER")
        await source.scan(client.publish)
        monkeypatch.undo()
        assert json.loads((folder / "a.json").read_text())["task_id"] == "NEWER"
        assert _task_ids(folder) == ["NEW", "NEWER"]
        result = await source.scan(client.publish)
    assert result.published == 2
    assert _left(folder) == []
