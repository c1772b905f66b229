"""Where an adapter's events come from: a watched folder of exports, or an HTTP webhook.

Both turn what a case system produces into ``(event type, document)`` pairs and hand them to
the client's :meth:`~adapters.AdapterClient.publish`, which validates and stores them in the
outbox. Nothing is lost on bad input:

* a folder file that is not valid JSON (or is nested more than :data:`MAX_DEPTH` levels
  deep), or a JSON item or CSV row that is not a valid event (any JSON value: a header that is
  not an object, a wrong type anywhere), is written to ``<folder>/rejected/`` with a
  ``.reason`` file (``line N: why``); the valid items of the same file are still published,
  the scan goes on with the next item and file, and the file itself moves to ``done/``;
  a file with more than :data:`MAX_REJECTED_ITEMS` bad items keeps that many one by one and
  is then kept whole, once, with the count of bad items as its reason;
* a JSON object that names a key twice, or a CSV header that names a column twice, is
  rejected (with the file) rather than read as "the last one wins";
* only regular files are read: a symbolic link is moved to ``rejected/`` itself, its target
  never read (else any file the adapter's user can read could be published), and so is a
  named pipe, socket or device, never waited on (see :func:`_open_regular`);
* a file the adapter cannot read or move (no permission, a full disk) is left where it is for
  the next scan, with a warning naming the error's type, and so is the folder itself when it
  is missing or cannot be listed (see :meth:`FolderSource._files`); a file replaced (the
  documented ``os.replace`` of a new export) or removed while it was being published is not
  moved: the next scan reads what is there then (see :meth:`FolderSource._retire`);
* a webhook body that is not a valid event is answered ``400``/``422`` with the reason, so
  the caller still holds it.

Nothing in ``done/`` or ``rejected/`` is ever overwritten: every name there starts with the
export file's modification time (UTC, to the microsecond) and the first 16 hex digits of its
content's SHA-256, ``<time>-<hash>-<file name>`` (``...-<stem>.item<N>.json`` for one item),
so a case system that writes ``export.json`` every hour keeps every hour's file and rejected
items, and the folders list in the order the files were written (a file kept unread has its
size, ``<size>-bytes``, or its kind, ``link`` or ``special``, in place of the hash). A file
read again after a crash gets the same names, so its rejected items are not kept twice. A file
name longer than :data:`NAME_PART_MAX` bytes is shortened there to its start, ``~`` and a hash
of the whole name, so the name always fits the file system's limit (255 bytes) and the file
can be moved.

Event ids are stable: an item without ``header.event_id`` gets one derived from the agency,
the file name, the file's content hash and the item's position (UUID 5), so a file read
again after a crash between publishing and moving it is not published twice (the outbox
ignores an event id it already holds).

Case systems should write a file under a temporary name (a leading ``.`` or a ``.tmp`` or
``.part`` suffix) and rename it when complete; such names are never read.

Logs name counts and reason codes only, never file names or contents (file names can carry
a person's name).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import csv
import datetime as dt
import errno
import hashlib
import io
import json
import os
import stat
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import structlog

from adapters._errors import AdapterConfigError, InvalidEvent, OutboxError, SourceRejected
from adapters._private_files import write_private

log = structlog.get_logger("tiaki.adapter.source")

#: ``publish(event_type, document) -> event id``: the client's publish.
PublishFn = Callable[[str, Mapping[str, Any]], Awaitable[str]]

_NAMESPACE = uuid.UUID("5f0c1a39-6a43-4c1c-9d0e-7b1e3f0a2b61")
_SKIP_SUFFIXES = (".tmp", ".part", ".reason")
MAX_BODY = 1024 * 1024
#: How deeply an export may nest lists and objects (the schemas need a handful of levels);
#: deeper input is rejected before anything recursive (copying, encoding) can overflow.
MAX_DEPTH = 64
#: Longest file-name part, in bytes, of a name in ``done/`` or ``rejected/``: with the
#: ``<time>-<hash>-`` prefix (41), an item's ``.item<N>.json``, ``.reason`` and the ``.<name>.tmp``
#: a durable write goes through, a name stays well inside the file systems' 255 bytes.
NAME_PART_MAX = 120
#: The largest folder export read (64 MiB: tens of thousands of events). A file is read whole
#: into memory, so a larger one (a mistaken dump) could exhaust it and stop the adapter on the
#: same file after every restart: it is moved to ``rejected/`` unread, with its reason.
MAX_FILE_BYTES = 64 * 1024 * 1024
#: Bad items of one file kept one by one; past this the file is kept whole, once, so a small
#: file of many bad items (10 KB of ``[1,1,...]``) cannot make thousands of fsynced files.
MAX_REJECTED_ITEMS = 100
#: Items handled between yields to the event loop, so a long file does not stall the webhook
#: or receiving while it is read.
YIELD_EVERY = 16
#: Seconds a webhook caller has to send a whole request (and to take the answer); a caller
#: that is idle or trickles bytes is answered ``408`` and disconnected.
READ_TIMEOUT_S = 30.0
#: Webhook connections served at once; one more is answered ``503`` and closed, so callers
#: cannot use up the file descriptors the folder source and the outbox need.
MAX_CONNECTIONS = 64
#: Header lines a webhook request may have.
MAX_HEADERS = 100


class Source(Protocol):
    """Runs until ``stop`` is set, publishing what it reads."""

    async def run(self, publish: PublishFn, stop: asyncio.Event) -> None: ...


def event_of(item: Any, default_type: str | None) -> tuple[str, dict[str, Any]]:
    """``(event type, document)`` from ``{"event_type": T, "event": {...}}`` or from a plain
    document whose ``header.event_type`` is ``nz.tiaki.T``; raise :class:`SourceRejected`."""
    if not isinstance(item, dict):
        raise SourceRejected("an item must be a JSON object")
    if deeper_than(item, MAX_DEPTH):
        raise SourceRejected(f"nested more than {MAX_DEPTH} levels deep")
    if "event" in item and "event_type" in item:
        if not isinstance(item["event"], dict) or not isinstance(item["event_type"], str):
            raise SourceRejected("'event' must be an object and 'event_type' a string")
        return item["event_type"], item["event"]
    header = item.get("header")
    declared = header.get("event_type") if isinstance(header, dict) else None
    if isinstance(declared, str) and declared.startswith("nz.tiaki."):
        return declared.removeprefix("nz.tiaki."), item
    if default_type:
        return default_type, item
    raise SourceRejected("cannot tell the event type: give header.event_type or 'event_type'")


def deeper_than(value: Any, limit: int) -> bool:
    """Whether ``value`` nests lists and objects more than ``limit`` levels deep (without
    recursing, so any depth can be measured)."""
    level: list[Any] = [value]
    for _ in range(limit):
        level = [
            child
            for node in level
            if isinstance(node, dict | list)
            for child in (node.values() if isinstance(node, dict) else node)
        ]
        if not level:
            return False
    return any(isinstance(node, dict | list) for node in level)


def stable_event_id(agency: str, name: str, digest: str, index: int) -> str:
    """The event id of item ``index`` of the file ``name`` with content hash ``digest``.

    A UUIDv5 over the name's bytes as the file system holds them (``os.fsencode``): a name
    that is not valid UTF-8 (a Latin-1 name written through a file share) cannot be encoded
    as text, and a UTF-8 name gives the same bytes, so the same id, as before.
    """
    name_bytes = b"/".join(
        (agency.encode(), os.fsencode(name), digest.encode(), str(index).encode())
    )
    sha = hashlib.sha1(_NAMESPACE.bytes + name_bytes, usedforsecurity=False).digest()
    return str(uuid.UUID(bytes=sha[:16], version=5))


def _with_event_id(doc: dict[str, Any], event_id: str) -> dict[str, Any]:
    header = doc.get("header")
    if header is None:
        header = {}
    if not isinstance(header, dict):
        raise SourceRejected("'header' must be an object")
    header = dict(header)
    if header.get("event_id") in (None, ""):  # absent, or an empty CSV cell
        header["event_id"] = event_id
    return {**doc, "header": header}


def _set_path(doc: dict[str, Any], dotted: str, value: Any) -> None:
    node = doc
    *parents, last = dotted.split(".")
    for part in parents:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[last] = value


def _cell(text: str) -> Any:
    """A CSV cell: empty is null; JSON literals (numbers, true, lists) are parsed; else text."""
    if text == "":
        return None
    if text[0] in '[{"' or text in ("true", "false", "null"):
        with contextlib.suppress(ValueError, RecursionError):  # _DuplicateKey too: text
            value = json.loads(text, object_pairs_hook=_unique_keys)
            if not deeper_than(value, MAX_DEPTH):
                return value
    return text


class _DuplicateKey(ValueError):
    """A JSON object names a key twice (``json`` would keep the last silently)."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``object_pairs_hook`` that refuses an object naming a key twice."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise _DuplicateKey("an object names the same key twice")
    return obj


def _bounded(name: str) -> str:
    """``name`` if it has at most :data:`NAME_PART_MAX` bytes, else its start, ``~``, 16 hex
    digits of the SHA-256 of the whole name and its suffix: still recognisable, distinct for
    distinct names, and short enough that the names built from it fit ``NAME_MAX``."""
    raw = os.fsencode(name)
    if len(raw) <= NAME_PART_MAX:
        return name
    suffix = os.fsencode(Path(name).suffix)[:16]
    tag = b"~" + hashlib.sha256(raw).hexdigest()[:16].encode()
    room = NAME_PART_MAX - len(tag) - len(suffix)
    head = raw[:room]
    for cut in range(4):  # end on a whole character when the name is UTF-8
        with contextlib.suppress(UnicodeDecodeError):
            raw[: room - cut].decode()
            head = raw[: room - cut]
            break
    return os.fsdecode(head + tag + suffix)


def _same_file(a: os.stat_result, b: os.stat_result) -> bool:
    """Whether two stats are of the same file with the same content (as far as the file
    system tells: an ``os.replace`` gives a new inode, a rewrite in place a new size or
    modification time)."""
    return (a.st_dev, a.st_ino, a.st_size, a.st_mtime_ns) == (
        b.st_dev,
        b.st_ino,
        b.st_size,
        b.st_mtime_ns,
    )


class _NotRegular(Exception):
    """A folder entry that is not a regular file (a symbolic link, a named pipe, a socket, a
    device), as ``seen`` by ``lstat`` (or ``fstat``, for one opened without waiting)."""

    def __init__(self, seen: os.stat_result) -> None:
        super().__init__("not a regular file")
        self.seen = seen


def _open_regular(file: Path) -> BinaryIO:
    """``file`` opened for reading if it is a regular file; :class:`_NotRegular` if not.

    A name can be swapped between the listing, the ``lstat`` and the open. ``O_NOFOLLOW``
    refuses a symbolic link put there (its target is never opened), and ``O_NONBLOCK`` makes
    the open of a named pipe return at once, where a plain ``open`` would wait for a writer
    for ever and stop every later scan; ``fstat`` then refuses what was opened unless it is a
    regular file, and reads go back to blocking (``O_NONBLOCK`` means nothing to a regular
    file, but nothing here should depend on that).
    """
    seen = os.lstat(file)
    if not stat.S_ISREG(seen.st_mode):  # refused without being opened at all
        raise _NotRegular(seen)
    try:
        fd = os.open(file, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_NOCTTY)
    except OSError as exc:
        # A link refused by O_NOFOLLOW: ELOOP (Linux, macOS) or EMLINK (FreeBSD).
        if exc.errno not in (errno.ELOOP, errno.EMLINK):
            raise
        seen = os.lstat(file)
        if not stat.S_ISLNK(seen.st_mode):
            raise
        raise _NotRegular(seen) from None
    opened = os.fstat(fd)
    if not stat.S_ISREG(opened.st_mode):
        os.close(fd)
        raise _NotRegular(opened)
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def _error_code(exc: OSError) -> str:
    """An OS error as its type and errno name (``PermissionError/EACCES``): never its
    message, which names the path."""
    code = errno.errorcode.get(exc.errno, "") if exc.errno else ""
    return f"{type(exc).__name__}/{code}" if code else type(exc).__name__


#: The name :meth:`FolderSource._left` tracks the folder itself under (no file has it).
_FOLDER = "."


def _is_folder(entry: os.DirEntry[str]) -> bool:
    """Whether a listed entry is a folder (``done/``, ``rejected/``); a link to one is not.
    An entry that cannot be looked at is listed, so its own error is met, and warned about,
    when it is read rather than failing the whole listing."""
    try:
        return entry.is_dir(follow_symlinks=False)
    except OSError:
        return False


@dataclass
class ScanResult:
    files: int = 0
    published: int = 0
    rejected: int = 0


class FolderSource:
    """A watched folder of ``*.json`` (one event, or a list) or ``*.csv`` (one event per row)
    exports; see the module docs for what happens to each file."""

    def __init__(
        self,
        agency: str,
        path: Path,
        *,
        format: str = "json",
        event_type: str | None = None,
        template: Mapping[str, Any] | None = None,
        columns: Mapping[str, str] | None = None,
        interval_s: float = 1.0,
        max_file_bytes: int = MAX_FILE_BYTES,
    ) -> None:
        if format == "csv" and not event_type:
            raise ValueError("a CSV folder source needs an event_type")
        self.max_file_bytes = max_file_bytes
        self.agency = agency
        self.path = path
        self.format = format
        self.event_type = event_type
        self.template = dict(template or {})
        self.columns = dict(columns or {})
        self.interval_s = interval_s
        self.done = path / "done"
        self.rejected = path / "rejected"
        # Names of files left for the next scan after an OS error, so each is warned about
        # once, not every interval (in memory only: never logged).
        self._failing: set[str] = set()

    async def run(self, publish: PublishFn, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.scan(publish)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.interval_s)

    def _files(self) -> list[Path]:
        """The export files to read, oldest name first; none, with one warning until it can
        be listed again, if the folder is missing (a typo in the configuration) or cannot be
        listed (no permission). ``os.scandir``, because ``Path.glob`` answers both with an
        empty list, which would publish nothing and say nothing."""
        suffix = f".{self.format}"
        try:
            with os.scandir(self.path) as entries:
                names = sorted(
                    entry.name
                    for entry in entries
                    if entry.name.endswith(suffix)  # what the glob ``*.json`` matched
                    and not entry.name.startswith(".")
                    and not entry.name.endswith(_SKIP_SUFFIXES)
                    # a link or a pipe is listed, to be moved to rejected/ rather than ignored
                    and not _is_folder(entry)
                )
        except OSError as exc:  # try again next interval
            self._left(_FOLDER, exc, "source folder cannot be listed; tried again every scan")
            return []
        self._failing.discard(_FOLDER)  # listed again: a later failure is warned about anew
        return [self.path / name for name in names]

    async def scan(self, publish: PublishFn) -> ScanResult:
        """Read every complete file once (oldest name first); return what happened.

        Only an outbox failure raises: an OS error on one file (it cannot be read, ``done/``
        cannot be written, the disk is full) leaves that file for the next scan and the scan
        goes on, so no file stops the adapter. A file left half-way is read again whole:
        its events keep their ids (so are not sent twice) and its rejected items their names.
        """
        result = ScanResult()
        for file in self._files():
            try:
                await self._scan_file(file, publish, result)
            except OutboxError:
                raise  # the outbox failed, not the file: it stays to be read again
            except OSError as exc:
                self._left(file.name, exc)
            else:
                self._failing.discard(file.name)
        if result.files:
            log.info(
                "folder scanned",
                agency=self.agency,
                count=result.published,
                quarantined=result.rejected,
            )
        return result

    def _left(
        self, name: str, exc: OSError, message: str = "source file left for the next scan"
    ) -> None:
        """Warn (once per file, or for the folder itself) that a file is left for the next
        scan; the error's type and errno only, as its message names the path."""
        if name not in self._failing:
            self._failing.add(name)
            log.warning(message, agency=self.agency, reason=_error_code(exc))

    async def _scan_file(self, file: Path, publish: PublishFn, result: ScanResult) -> None:
        limit = self.max_file_bytes
        try:
            with _open_regular(file) as handle:
                seen = os.fstat(handle.fileno())
                data = handle.read(limit + 1) if seen.st_size <= limit else b""
        except FileNotFoundError:  # moved away since the listing: not ours any more
            return
        except _NotRegular as exc:
            self._reject_not_regular(file, exc.seen, result)
            return
        if seen.st_size > limit or len(data) > limit:  # (or it grew while being read)
            self._reject_oversized(file, seen, result)
            return
        result.files += 1
        digest = hashlib.sha256(data).hexdigest()
        kept = f"{_stamp(seen.st_mtime_ns)}-{digest[:16]}-"
        name = _bounded(file.name)
        try:
            items = self._items(file, data)
        except Exception as exc:  # no file, whatever is in it, stops the source
            reason = exc.reason if isinstance(exc, SourceRejected) else _unexpected(exc)
            self._reject(kept + name, data, reason)
            # Retired through a hidden name (never read, never listed as rejected) so that a
            # file replaced meanwhile is given back rather than deleted; see _retire.
            hidden = self.rejected / f".{kept}{name}.read"
            if self._retire(file, seen, hidden):
                hidden.unlink()
            result.rejected += 1
            return
        bad = 0
        for index, (line, item) in enumerate(items):
            if index % YIELD_EVERY == YIELD_EVERY - 1:
                await asyncio.sleep(0)  # let the webhook and receiving run meanwhile
            try:
                event_type, doc = event_of(item, self.event_type)
                doc = _with_event_id(doc, stable_event_id(self.agency, file.name, digest, index))
                await publish(event_type, doc)
                result.published += 1
            except OutboxError:
                raise  # the outbox failed, not the item: the file stays to be read again
            except Exception as exc:  # no item, whatever its shape, stops the source
                if isinstance(exc, SourceRejected):
                    reason = exc.reason
                elif isinstance(exc, InvalidEvent):
                    reason = str(exc)
                else:
                    reason = _unexpected(exc)
                bad += 1
                if bad <= MAX_REJECTED_ITEMS:
                    self._reject_item(kept + Path(name).stem, index, line, item, reason)
                result.rejected += 1
        if bad > MAX_REJECTED_ITEMS:
            self._reject(
                kept + name,
                data,
                f"{bad} of {len(items)} items are not valid events; the first "
                f"{MAX_REJECTED_ITEMS} are kept one by one with their reasons, this file "
                "holds them all",
                code="too_many_invalid_items",
            )
        self.done.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._retire(file, seen, self.done / (kept + name))

    def _reject_oversized(self, file: Path, seen: os.stat_result, result: ScanResult) -> None:
        """Move a file larger than :attr:`max_file_bytes` to ``rejected/`` as it is, unread
        (so under its time and size rather than a hash of its content), with its reason. A
        file still growing is left for the next scan (:meth:`_retire`)."""
        result.files += 1
        self.rejected.mkdir(parents=True, exist_ok=True, mode=0o700)
        name = f"{_stamp(seen.st_mtime_ns)}-{seen.st_size}-bytes-{_bounded(file.name)}"
        if not self._retire(file, seen, self.rejected / name):
            return
        reason = (
            f"the file is {seen.st_size} bytes, more than the {self.max_file_bytes} a folder "
            "export may be: split it into smaller files"
        )
        write_private(self.rejected / f"{name}.reason", f"{reason}\n".encode())
        log.warning("source file rejected", agency=self.agency, reason="oversized_file")
        result.rejected += 1

    def _reject_not_regular(self, file: Path, seen: os.stat_result, result: ScanResult) -> None:
        """Move an entry that is not a regular file to ``rejected/`` as it is, unread (a
        symbolic link itself, never its target), under its time and kind, with its reason. An
        entry changed meanwhile is left for the next scan (:meth:`_retire`)."""
        result.files += 1
        self.rejected.mkdir(parents=True, exist_ok=True, mode=0o700)
        link = stat.S_ISLNK(seen.st_mode)
        kind = "link" if link else "special"
        name = f"{_stamp(seen.st_mtime_ns)}-{kind}-{_bounded(file.name)}"
        if not self._retire(file, seen, self.rejected / name):
            return
        what = "a symbolic link" if link else "not a regular file (a named pipe, socket or device)"
        reason = f"{what}; the adapter publishes only regular files in its folder"
        write_private(self.rejected / f"{name}.reason", f"{reason}\n".encode())
        code = "symbolic_link" if link else "not_a_regular_file"
        log.warning("source file rejected", agency=self.agency, reason=code)
        result.rejected += 1

    def _retire(self, file: Path, seen: os.stat_result, target: Path) -> bool:
        """Move ``file``, read as ``seen`` (the open file's ``fstat``), to ``target``, but only
        if it is still the file read; return whether it moved.

        The documented way to export is to write ``a.json.tmp`` and ``os.replace`` it onto
        ``a.json``. Done while ``a.json`` was being published, that leaves new, unpublished
        content under the name, and moving it to ``done/`` would lose it without a trace. So
        the path is compared (inode, size, modification time) with what was read: changed, or
        gone, it is not touched, and the next scan reads what is there then. This was chosen
        over claiming the file by renaming it before reading: a claimed file left by a crash
        would need a recovery step, and an unreadable one would hide under its claim name;
        the check needs neither. The stat and the move are one synchronous step (no
        ``await``), so only a replacement in those microseconds can slip in; it is caught
        after the move (the moved file is not the one read) and given back to the export
        folder for the next scan, never over a newer export, whether or not the file system
        has hard links (:func:`_give_back`). Links are never followed (``lstat``), so what
        moves, or is given back, is the entry itself.
        """
        try:
            if not _same_file(os.lstat(file), seen):
                return False  # replaced: the next scan publishes the new content
            os.replace(file, target)
        except FileNotFoundError:  # removed since it was read: nothing is left to move
            return False
        moved = os.lstat(target)
        if _same_file(moved, seen):
            return True
        _give_back(target, file)
        return False

    def _items(self, file: Path, data: bytes) -> list[tuple[int, Any]]:
        """(line, item) pairs; :class:`SourceRejected` if the file as a whole is unreadable."""
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise SourceRejected("not UTF-8 text") from None
        if self.format == "json":
            too_deep = f"nested more than {MAX_DEPTH} levels deep"
            try:
                parsed = json.loads(text, object_pairs_hook=_unique_keys)
            except json.JSONDecodeError as exc:
                raise SourceRejected(
                    f"line {exc.lineno} column {exc.colno}: bad JSON: {exc.msg}"
                ) from None
            except _DuplicateKey as exc:
                raise SourceRejected(f"bad JSON: {exc}") from None
            except RecursionError:
                raise SourceRejected(too_deep) from None
            # The list of items is one level; each item may nest MAX_DEPTH more.
            if deeper_than(parsed, MAX_DEPTH + 1):
                raise SourceRejected(too_deep)
            return [(1, item) for item in parsed] if isinstance(parsed, list) else [(1, parsed)]
        reader = csv.DictReader(io.StringIO(text))
        if not reader.fieldnames:
            raise SourceRejected("line 1: a CSV export needs a header row")
        twice = sorted({c for c in reader.fieldnames if reader.fieldnames.count(c) > 1})
        if twice:  # DictReader would keep the last column's cell silently
            raise SourceRejected(f"line 1: the header names {', '.join(twice)} twice")
        unknown = [c for c in self.columns if c not in reader.fieldnames]
        if unknown:
            raise SourceRejected(f"line 1: missing columns {', '.join(sorted(unknown))}")
        items: list[tuple[int, Any]] = []
        try:
            for row in reader:
                doc = copy.deepcopy(self.template)
                if None in row:
                    items.append((reader.line_num, _BadRow("more cells than header columns")))
                    continue
                for column, dotted in self.columns.items():
                    _set_path(doc, dotted, _cell(row[column] or ""))
                items.append((reader.line_num, doc))
        except csv.Error as exc:
            raise SourceRejected(f"line {reader.line_num}: bad CSV: {exc}") from None
        return items

    def _reject(
        self, name: str, data: bytes, reason: str, *, code: str = "unreadable_file"
    ) -> None:
        write_private(self.rejected / name, data)
        write_private(self.rejected / f"{name}.reason", f"{reason}\n".encode())
        log.warning("source file rejected", agency=self.agency, reason=code)

    def _reject_item(self, stem: str, index: int, line: int, item: Any, reason: str) -> None:
        name = f"{stem}.item{index + 1}.json"
        body = item.document if isinstance(item, _BadRow) else item
        if isinstance(item, _BadRow):
            reason = item.reason
        write_private(self.rejected / name, json.dumps(body, indent=2).encode() + b"\n")
        where = f"line {line}: " if self.format == "csv" else f"item {index + 1}: "
        write_private(self.rejected / f"{name}.reason", f"{where}{reason}\n".encode())
        log.warning("source item rejected", agency=self.agency, reason="invalid_event")


def _give_back(moved: Path, file: Path) -> None:
    """Put ``moved``, new content moved away from ``file`` unread, back in the export folder
    for the next scan, never over a file there.

    ``os.link`` never overwrites: under ``file``'s own name if that is free, else (a newer
    export took it) under a new one, as new content is new events anyway. A file system
    without hard links (exFAT, vfat, many SMB and FUSE mounts) refuses both; there ``moved``
    is renamed to a new name that does not exist. ``os.rename`` would overwrite, so the name
    is random as well as checked: only a writer of that very name in the same instant could
    be overwritten. Whatever fails here is an OS error the scan warns about.
    """
    for name in (file, _spare_name(file)):
        try:
            os.link(moved, name, follow_symlinks=False)
        except FileExistsError:  # a newer export holds the name: a new one
            continue
        except OSError:  # no hard links on this file system
            break
        moved.unlink()
        return
    os.rename(moved, _spare_name(file))


def _spare_name(file: Path) -> Path:
    """A name beside ``file`` that no entry has, which the next scan reads (no leading ``.``,
    the same suffix): ``<12 random hex digits>-<name>``."""
    while True:
        spare = file.with_name(f"{uuid.uuid4().hex[:12]}-{_bounded(file.name)}")
        if not os.path.lexists(spare):
            return spare


def _unexpected(exc: Exception) -> str:
    """The reason kept for an item or file that failed in a way no check foresaw: the
    exception's type only (its message may quote the export's content)."""
    return f"{type(exc).__name__}: cannot be read as an event (message not kept)"


def _stamp(ns: int) -> str:
    """A file's modification time as a sortable UTC name part, ``20250601T090000.000000Z``."""
    try:
        moment = dt.datetime.fromtimestamp(ns // 1_000_000_000, dt.UTC)
    except (OverflowError, OSError, ValueError):  # a clock far off: sorts first, still unique
        moment = dt.datetime.fromtimestamp(0, dt.UTC)
    return f"{moment:%Y%m%dT%H%M%S}.{ns % 1_000_000_000 // 1000:06d}Z"


@dataclass
class _BadRow:
    reason: str
    document: Any = None


class WebhookSource:
    """``POST <path>`` with one event as JSON (either form :func:`event_of` accepts).

    Answers ``202 {"event_id": ...}`` once the event is in the outbox, ``400`` for a body
    that is not JSON (saying where it fails, line and column, never quoting it) or whose
    object names a key twice, ``422`` for an invalid event,
    ``404``/``405``/``413``/``431`` otherwise; ``408`` to a caller that has not sent its whole
    request within ``read_timeout_s`` (:data:`READ_TIMEOUT_S`), and ``503`` to a connection
    beyond ``max_connections`` (:data:`MAX_CONNECTIONS`) open at once, so idle or trickling
    callers can neither hold connections for ever nor use up the process's file descriptors.
    A caller that retries should send ``header.event_id`` so a retry is not a second event.
    Bind it to loopback or put it behind the agency's own TLS proxy: it does no
    authentication itself.
    """

    def __init__(
        self,
        agency: str,
        host: str,
        port: int,
        path: str = "/events",
        *,
        read_timeout_s: float = READ_TIMEOUT_S,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        self.agency = agency
        self.host = host
        self.port = port
        self.path = path
        self.read_timeout_s = read_timeout_s
        self.max_connections = max_connections
        self.bound = asyncio.Event()

    async def run(self, publish: PublishFn, stop: asyncio.Event) -> None:
        active = 0

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal active
            if active >= self.max_connections:
                log.warning("webhook connection refused", agency=self.agency, reason="busy")
                await self._answer(writer, 503, {"error": "too many connections; retry later"})
                return
            active += 1
            try:
                try:
                    status, body = await self._exchange(reader, publish)
                except TimeoutError:
                    status, body = (
                        408,
                        {"error": f"send the request within {self.read_timeout_s} s"},
                    )
                except (asyncio.IncompleteReadError, ConnectionError, ValueError):
                    status, body = 400, {"error": "malformed HTTP request"}
                await self._answer(writer, status, body)
            finally:
                active -= 1

        try:
            server = await asyncio.start_server(serve, self.host, self.port)
        except OSError as exc:
            raise AdapterConfigError(
                f"webhook source: cannot listen on {self.host}:{self.port}: {exc.strerror}"
            ) from None
        self.port = server.sockets[0].getsockname()[1]
        self.bound.set()
        async with server:
            await stop.wait()

    async def _answer(
        self, writer: asyncio.StreamWriter, status: int, body: dict[str, Any]
    ) -> None:
        """Send the answer and close; a caller that does not take it within the deadline is
        cut off (the connection aborted), so it cannot hold the connection either."""
        payload = json.dumps(body).encode()
        reason = {
            202: "Accepted",
            400: "Bad Request",
            404: "Not Found",
            405: "Method Not Allowed",
            408: "Request Timeout",
            413: "Payload Too Large",
            422: "Unprocessable Entity",
            431: "Request Header Fields Too Large",
            503: "Service Unavailable",
        }.get(status, "Error")
        writer.write(
            f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode()
            + payload
        )
        try:
            await asyncio.wait_for(writer.drain(), self.read_timeout_s)
        except TimeoutError:
            writer.transport.abort()
        except ConnectionError:
            pass
        writer.close()

    async def _exchange(
        self, reader: asyncio.StreamReader, publish: PublishFn
    ) -> tuple[int, dict[str, Any]]:
        # The deadline covers reading the request only: publishing is the outbox's business,
        # and cancelling it half-way would answer a caller whose event may be stored.
        async with asyncio.timeout(self.read_timeout_s):
            request = (await reader.readline()).decode("latin-1").split()
            headers: dict[str, str] = {}
            while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
                if len(headers) >= MAX_HEADERS:
                    return 431, {"error": f"at most {MAX_HEADERS} header lines"}
                name, _, value = line.decode("latin-1").partition(":")
                headers[name.strip().lower()] = value.strip()
            if len(request) < 2:
                return 400, {"error": "malformed HTTP request"}
            method, target = request[0], request[1]
            if target.split("?")[0] != self.path:
                return 404, {"error": f"post events to {self.path}"}
            if method != "POST":
                return 405, {"error": "use POST"}
            length = int(headers.get("content-length", "0"))
            if length > MAX_BODY:
                return 413, {"error": f"at most {MAX_BODY} bytes"}
            data = await reader.readexactly(length)
        try:
            item = json.loads(data, object_pairs_hook=_unique_keys)
        except json.JSONDecodeError as exc:
            # Where only: the parser's message may quote the body (the pure-Python one quotes
            # a bad escape's character), and the answer may reach a log the body must not.
            return 400, {"error": f"bad JSON at line {exc.lineno} column {exc.colno}"}
        except UnicodeDecodeError:  # its message quotes the byte
            return 400, {"error": "bad JSON: not UTF-8 text"}
        except _DuplicateKey as exc:
            return 400, {"error": f"bad JSON: {exc}"}
        except RecursionError:
            return 422, {"error": f"nested more than {MAX_DEPTH} levels deep"}
        try:
            event_type, doc = event_of(item, None)
            event_id = await publish(event_type, doc)
        except SourceRejected as exc:
            return 422, {"error": exc.reason}
        except InvalidEvent as exc:
            return 422, {"error": str(exc)}
        return 202, {"event_id": event_id}
