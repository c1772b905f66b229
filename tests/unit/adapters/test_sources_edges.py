"""The edges of the sources: a folder entry that is not a regular file (a symbolic link, a
named pipe), present when the folder is listed or swapped in afterwards, is moved to
``rejected/`` unread, never followed and never waited on; the webhook's answer to a body that
is not JSON says where, never what; and a webhook path or URL holding a control character is
refused by the configuration check."""

from __future__ import annotations

import contextlib
import json
import json.decoder
import json.scanner
import os
import re
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from adapters import AdapterConfigError
from adapters._config import load_config
from adapters._sources import FolderSource
from broker._cli import main
from tests.unit.adapters.test_sources_hostile import (
    _exports,
    _good,
    _left,
    _post,
    _webhook,
)
from tests.unit.adapters.test_sources_sinks import Recorder

CANARY = "SYNTHETIC-CANARY"
NOT_REGULAR = "not a regular file (a named pipe, socket or device)"
ONLY_REGULAR = "; the adapter publishes only regular files in its folder\n"


def _secret(tmp_path: Path) -> Path:
    """A valid export outside the watched folder, which a link must not publish."""
    secret = tmp_path / "elsewhere" / "case-notes.json"
    secret.parent.mkdir()
    secret.write_text(_good(task_id=CANARY))
    return secret


def _swap(path: Path, kind: str, secret: Path) -> None:
    """Put a named pipe, or a link to ``secret``, in ``path``'s place as one rename."""
    spare = path.with_name(".swap.tmp")
    if kind == "pipe":
        os.mkfifo(spare)
    else:
        spare.symlink_to(secret)
    os.replace(spare, path)


@contextlib.contextmanager
def _rescuer(fifo: Path, grace_s: float = 1.0) -> Iterator[list[str]]:
    """Should the source open ``fifo`` for reading and wait for a writer (the defect), open it
    for writing after ``grace_s`` so the test fails rather than hangs; yields what it did."""
    rescued: list[str] = []
    stop = threading.Event()

    def rescue() -> None:
        stop.wait(grace_s)
        while not stop.wait(0.05):
            try:  # succeeds only while something holds the pipe open for reading
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                continue
            rescued.append("a reader was waiting on the pipe")
            return

    thread = threading.Thread(target=rescue, daemon=True)
    thread.start()
    try:
        yield rescued
    finally:
        stop.set()
        thread.join()


def _rejected(folder: Path) -> tuple[Path, str]:
    """The one entry in ``rejected/`` besides reasons, and its reason."""
    (kept,) = [p for p in (folder / "rejected").iterdir() if not p.name.endswith(".reason")]
    return kept, (folder / "rejected" / f"{kept.name}.reason").read_text()


@pytest.mark.parametrize("entry", ["link to an export", "dangling link", "named pipe"])
async def test_an_entry_that_is_not_a_regular_file_is_moved_to_rejected_unread(
    tmp_path: Path, entry: str
) -> None:
    folder = _exports(tmp_path)
    secret = _secret(tmp_path)
    before = (secret.read_bytes(), secret.stat())
    odd = folder / "a-Jane-Doe.json"
    target = secret if entry == "link to an export" else tmp_path / "gone.json"
    if entry == "named pipe":
        os.mkfifo(odd)
    else:
        odd.symlink_to(target)
    (folder / "b.json").write_text(_good())
    recorder = Recorder()
    with _rescuer(odd) as rescued, capture_logs() as logs:
        result = await FolderSource("police", folder).scan(recorder)
    assert rescued == []
    assert (result.files, result.published, result.rejected) == (2, 1, 1)
    assert CANARY not in repr(recorder.published)  # the link's target is never published
    assert _left(folder) == []
    kept, reason = _rejected(folder)
    if entry == "named pipe":
        assert kept.name.endswith("-special-a-Jane-Doe.json")
        assert stat.S_ISFIFO(kept.lstat().st_mode)
        assert reason == NOT_REGULAR + ONLY_REGULAR
    else:  # the link itself is moved, pointing where it did
        assert kept.name.endswith("-link-a-Jane-Doe.json")
        assert kept.is_symlink()
        assert os.readlink(kept) == str(target)
        assert reason == "a symbolic link" + ONLY_REGULAR
    assert (secret.read_bytes(), secret.stat()) == before  # the target is untouched
    assert [p.name.split("-", 2)[2] for p in (folder / "done").iterdir()] == ["b.json"]
    codes = [e["reason"] for e in logs if e["event"] == "source file rejected"]
    assert codes == ["not_a_regular_file" if entry == "named pipe" else "symbolic_link"]
    assert "Jane" not in repr(logs)


@pytest.mark.parametrize("moment", ["after the listing", "after the type check"])
@pytest.mark.parametrize("kind", ["pipe", "link"])
async def test_a_file_swapped_for_a_pipe_or_link_is_rejected_not_waited_on_nor_followed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str, moment: str
) -> None:
    """A pipe in an export's place would make a plain ``open`` wait for a writer for ever (the
    whole scan with it); a link would have its target read. Whenever the swap comes, the
    entry is moved to ``rejected/`` and the scan goes on."""
    folder = _exports(tmp_path)
    secret = _secret(tmp_path)
    before = (secret.read_bytes(), secret.stat())
    for name in ("a.json", "b-Jane-Doe.json", "c.json"):
        (folder / name).write_text(_good())
    swapped = folder / "b-Jane-Doe.json"
    done: list[str] = []

    def swap_once() -> None:
        if not done:
            done.append(moment)
            _swap(swapped, kind, secret)

    if moment == "after the type check":  # between the source's lstat and its open
        real_lstat = os.lstat

        def racing(path: Any, *args: Any, **kwargs: Any) -> os.stat_result:
            seen = real_lstat(path, *args, **kwargs)
            if Path(path).name == swapped.name:
                swap_once()
            return seen

        monkeypatch.setattr(os, "lstat", racing)
    recorder = Recorder()

    async def publish(event_type: str, doc: Any) -> str:
        if moment == "after the listing":  # while a.json is published: b is listed already
            swap_once()
        return await recorder(event_type, doc)

    with _rescuer(swapped) as rescued, capture_logs() as logs:
        result = await FolderSource("police", folder).scan(publish)
    monkeypatch.undo()
    assert done == [moment]
    assert rescued == []
    assert (result.files, result.published, result.rejected) == (3, 2, 1)
    assert CANARY not in repr(recorder.published)
    assert _left(folder) == []
    kept, reason = _rejected(folder)
    assert kept.name.endswith(f"-{'special' if kind == 'pipe' else 'link'}-b-Jane-Doe.json")
    assert (stat.S_ISFIFO if kind == "pipe" else stat.S_ISLNK)(kept.lstat().st_mode)
    assert reason == (NOT_REGULAR if kind == "pipe" else "a symbolic link") + ONLY_REGULAR
    assert (secret.read_bytes(), secret.stat()) == before
    assert sorted(p.name.split("-", 2)[2] for p in (folder / "done").iterdir()) == [
        "a.json",
        "c.json",
    ]
    assert "Jane" not in repr(logs)


async def _answer(port: int, body: bytes) -> tuple[int, dict[str, Any]]:
    raw = await _post(
        port, b"POST /events HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    )
    head, _, payload = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(payload)


@pytest.mark.parametrize("parser", ["C", "pure Python"])
@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b'{"a": SYNTHETIC-CANARY}', "bad JSON at line 1 column 7"),
        (b'{\n  "a": 1,\n  SYNTHETIC-CANARY\n}', "bad JSON at line 3 column 3"),
        # the C parser points at the backslash, the pure-Python one at the letter after it
        (b'{"a": "\\SYNTHETIC-CANARY"}', "bad JSON at line 1 column [89]"),
        (b'{"a": "\xffSYNTHETIC-CANARY"}', "bad JSON: not UTF-8 text"),
    ],
)
async def test_the_webhook_says_where_a_body_is_not_json_never_what_it_holds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, parser: str, body: bytes, error: str
) -> None:
    """The parser's messages quote the body (a bad escape's character, in the pure-Python
    parser other interpreters use; a bad byte): the answer says only where it failed."""
    if parser == "pure Python":
        monkeypatch.setattr(json.decoder, "scanstring", vars(json.decoder)["py_scanstring"])
        monkeypatch.setattr(json.scanner, "make_scanner", vars(json.scanner)["py_make_scanner"])
    async with _webhook(tmp_path) as source:
        status, answer = await _answer(source.port, body)
    assert status == 400
    assert list(answer) == ["error"]
    assert re.fullmatch(error, answer["error"]), answer


_WEBHOOKS = """\
agency: police
sources:
  - kind: webhook
    listen: 127.0.0.1:8701
    path: /events
sinks:
  - kind: webhook
    url: http://127.0.0.1:9000/tiaki
"""


@pytest.mark.parametrize(
    ("old", "new", "where", "code"),
    [
        ("path: /events", r'path: "/ev\0ents"', "5:5: sources.0.path", "0000"),
        ("path: /events", r'path: "/events\n"', "5:5: sources.0.path", "000A"),
        ("path: /events", r'path: "/ev\eents"', "5:5: sources.0.path", "001B"),
        ("path: /events", r'path: "/ev\x85ents"', "5:5: sources.0.path", "0085"),
        ("/tiaki", r'/tiaki\r\nX-Injected: 1"', "8:5: sinks.0.url", "000D"),
        ("/tiaki", r'/ti\taki"', "8:5: sinks.0.url", "0009"),
        ("/tiaki", r'/ti\0aki"', "8:5: sinks.0.url", "0000"),
        ("/tiaki", r'/ti\x7faki"', "8:5: sinks.0.url", "007F"),
    ],
)
def test_a_control_character_in_a_webhook_path_or_url_is_refused_by_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], old: str, new: str, where: str, code: str
) -> None:
    path = tmp_path / "adapter.yaml"
    path.write_text(_WEBHOOKS)
    load_config(path)  # the unspoiled file loads
    spoiled = _WEBHOOKS.replace(old, new, 1)
    if old == "/tiaki":  # a quoted URL, to hold the escape
        spoiled = spoiled.replace("url: http", 'url: "http', 1)
    path.write_text(spoiled)
    expected = (
        f"{path}:{where}: a webhook path or URL cannot hold a NUL or other control "
        f"character (here U+{code})"
    )
    with pytest.raises(AdapterConfigError) as caught:
        load_config(path)
    assert str(caught.value) == expected
    assert main(["adapter", "check", "--config", str(path)]) == 1
    err = capsys.readouterr().err
    assert err == f"tiaki: error: {expected}\n"


@pytest.mark.parametrize("bad", ["events", "/my events", "/events?x=1", "/events#a"])
def test_a_webhook_path_no_request_could_reach_is_refused_by_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], bad: str
) -> None:
    path = tmp_path / "adapter.yaml"
    path.write_text(_WEBHOOKS.replace("path: /events", f'path: "{bad}"', 1))
    assert main(["adapter", "check", "--config", str(path)]) == 1
    assert capsys.readouterr().err == (
        f"tiaki: error: {path}:5:5: sources.0.path: a webhook path starts with '/' and holds "
        "no space, '?' or '#' (no request could reach it otherwise)\n"
    )
