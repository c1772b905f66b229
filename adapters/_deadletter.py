"""The dead-letter folder: received events the handler kept failing on, kept whole.

Each dead letter is two files named by the event id: ``<id>.sealed``, the record exactly as it
arrived (still sealed to the agency), and ``<id>.json``, why it is there (reason, attempts,
event type, where it was read from, when). The reason names the failure without content: for
a handler that raised, its exception's type, never its message. The message (with the
traceback) goes into a third file, ``<id>.detail``, for the agency's own operators fixing the
cause: it is the handler's own text and may quote the event, so it is the one plaintext file
here, ``0600`` like the rest, and neither ``tiaki adapter dead-letters`` nor any log shows it.
A person fixes the
cause and re-applies the event with :meth:`AdapterClient.replay_dead_letter` or by hand; nothing
in this folder is deleted by the SDK. A ``.json`` there that is not a dead letter (malformed,
truncated, someone else's) is reported by :meth:`DeadLetters.read` and left alone.
"""

from __future__ import annotations

import builtins
import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from adapters._errors import AdapterError
from adapters._private_files import write_private
from broker._yaml import SourceError, parse_json


@dataclass(frozen=True)
class DeadLetter:
    """Why one event is in the dead-letter folder (no field values)."""

    event_id: str
    event_type: str
    source_agency: str
    topic: str
    partition: int
    offset: int
    attempts: int
    reason: str
    dead_lettered_at: str


class DeadLetters:
    """The folder ``path`` (made ``0700`` on first use)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def put(self, letter: DeadLetter, sealed: bytes, detail: str | None = None) -> Path:
        """Write the files atomically (temporary name, then rename), the JSON last; return
        its path. ``detail``: the handler's exception text, for ``<id>.detail``."""
        self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
        stem = letter.event_id.replace("/", "_")
        if detail is not None:
            write_private(self.path / f"{stem}.detail", detail.encode("utf-8", "replace"))
        write_private(self.path / f"{stem}.sealed", sealed)
        target = self.path / f"{stem}.json"
        write_private(target, json.dumps(asdict(letter), indent=2, sort_keys=True).encode() + b"\n")
        return target

    def put_unsent(self, letter: DeadLetter, payload: bytes, detail: str) -> Path:
        """Keep an event of this agency's own that could never be sealed (too large for an
        envelope): its unsealed Avro payload as ``<id>.unsent``, as the outbox held it (so
        ``0600`` and as sensitive as the outbox), ``detail`` naming its schema fingerprint."""
        self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
        stem = letter.event_id.replace("/", "_")
        write_private(self.path / f"{stem}.detail", detail.encode("utf-8", "replace"))
        write_private(self.path / f"{stem}.unsent", payload)
        target = self.path / f"{stem}.json"
        write_private(target, json.dumps(asdict(letter), indent=2, sort_keys=True).encode() + b"\n")
        return target

    def has(self, event_id: str) -> bool:
        return (self.path / f"{event_id.replace('/', '_')}.json").exists()

    def list(self) -> list[DeadLetter]:
        """The dead letters that can be read (see :meth:`read` for the others)."""
        return self.read()[0]

    # ``builtins.list``: inside the class, ``list`` is the method above.
    def read(self) -> tuple[builtins.list[DeadLetter], builtins.list[tuple[Path, str]]]:
        """Every ``*.json`` in the folder: the dead letters, and the files that are not one
        (malformed, foreign, unreadable) with why, in a few words and never their content.
        Such files are left where they are, for a person to look at.

        No folder is no dead letters (it is made with the first), but only in a state folder
        that exists: without one the configuration (or ``TIAKI_HOME``) names some other
        place, and a folder that cannot be listed (no permission) is not an empty one. Both
        are an :class:`AdapterError` naming the folder (``os.scandir``: ``Path.glob`` would
        answer either with no files).
        """
        try:
            with os.scandir(self.path) as entries:
                names = sorted(e.name for e in entries if e.name.endswith(".json"))
        except FileNotFoundError:
            if self.path.parent.is_dir():
                return [], []
            raise AdapterError(
                f"{self.path.parent}: no such adapter state folder (is 'state' in the "
                "configuration, or TIAKI_HOME, right?)"
            ) from None
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise AdapterError(f"{self.path}: cannot list the dead letters: {reason}") from None
        letters: list[DeadLetter] = []
        unreadable: list[tuple[Path, str]] = []
        for path in (self.path / name for name in names):
            try:
                letters.append(_letter(path, path.read_bytes()))
            except OSError as exc:
                unreadable.append((path, f"cannot read: {exc.strerror}"))
            except ValueError as exc:
                unreadable.append((path, str(exc)))
        return letters, unreadable

    def detail(self, event_id: str) -> str | None:
        """The handler's exception text kept with a dead letter, if any (never printed by the
        listing: it may quote the event)."""
        try:
            return (self.path / f"{event_id.replace('/', '_')}.detail").read_text("utf-8")
        except FileNotFoundError:
            return None

    def sealed(self, event_id: str) -> bytes:
        return (self.path / f"{event_id.replace('/', '_')}.sealed").read_bytes()

    def remove(self, event_id: str) -> None:
        stem = event_id.replace("/", "_")
        for suffix in (".json", ".sealed", ".unsent", ".detail"):
            (self.path / f"{stem}{suffix}").unlink(missing_ok=True)


def _letter(path: Path, data: bytes) -> DeadLetter:
    """A dead letter from its JSON file ``path``, which held ``data``; :class:`ValueError`
    saying what is wrong, without any of the file's content."""
    try:
        doc: Any = parse_json(path, data.decode("utf-8"))
    except (UnicodeDecodeError, SourceError):  # also nested too deeply, an endless number
        raise ValueError("not valid JSON") from None
    if not isinstance(doc, dict):
        raise ValueError("not a dead letter (not a JSON object)")
    expected = {f.name: f.type for f in fields(DeadLetter)}
    missing = sorted(set(expected) - set(doc))
    if missing:
        raise ValueError(f"not a dead letter (missing {', '.join(missing)})")
    wrong = sorted(name for name, kind in expected.items() if not _is(doc[name], kind))
    if wrong:
        raise ValueError(f"not a dead letter (wrong type: {', '.join(wrong)})")
    return DeadLetter(**{name: doc[name] for name in expected})


def _is(value: Any, kind: Any) -> bool:
    """Whether ``value`` has the field type ``kind`` (``"int"`` or ``"str"``; a bool is no int)."""
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, str)
