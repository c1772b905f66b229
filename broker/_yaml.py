"""YAML with positions, for files people edit by hand (the agency registry, policies).

ruamel.yaml keeps each node's line and column; :func:`locate` walks a validation error's
location (``("agencies", 3, "kind")``) back to the deepest node that exists, so every error
points at ``file:line:column`` in the text the privacy officer is looking at.

:func:`read_text` is how every command reads a file given to it (YAML or JSON): a file that
cannot be read, or is not UTF-8, is a :class:`SourceError` at the first bad byte's line and
column, never a ``UnicodeDecodeError``. :func:`load_yaml` and :func:`parse_json` refuse a file
whose lists and mappings nest more than :data:`MAX_DEPTH` levels deep (:func:`too_deep`), so
the readers that walk what they parsed recursively never meet a ``RecursionError``; they also
refuse, at its line and column, a decimal integer longer than Python converts
(``sys.get_int_max_str_digits()``, 4300 digits by default), where ``int()`` raises a bare
``ValueError``. A reader of a JSON file should go through :func:`parse_json` (:func:`load_json`
for a whole file) rather than ``json.loads`` alone, so a hostile file is its one-line error,
never a traceback.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.constructor import ConstructorError, RoundTripConstructor
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.reader import ReaderError

from broker._errors import TiakiError


class SourceError(TiakiError):
    """An error in a hand-edited file, located as ``file:line:column`` (1-based)."""

    def __init__(self, path: Path | str, line: int, column: int, reason: str) -> None:
        self.path = Path(path)
        self.line = line
        self.column = column
        self.reason = reason
        super().__init__(f"{self.path}:{line}:{column}: {reason}")


class _TextTimestamps(RoundTripConstructor):
    """Round-trip YAML that leaves timestamps as text, so a bad date gets a position.

    ruamel would build ``datetime.date`` itself and raise a bare ``ValueError`` (no line, no
    column) for ``2024-13-31``; readers parse the text and point at it instead.
    """


_TextTimestamps.add_constructor(
    "tag:yaml.org,2002:timestamp", RoundTripConstructor.construct_yaml_str
)


def _construct_int(constructor: RoundTripConstructor, node: Any) -> Any:
    """ruamel's integer; one longer than Python converts is a :class:`ConstructorError` at
    the node (``int()`` itself raises a bare ``ValueError``, with no line or column)."""
    try:
        return RoundTripConstructor.construct_yaml_int(constructor, node)
    except ValueError:
        raise ConstructorError(problem=_too_long(), problem_mark=node.start_mark) from None


_TextTimestamps.add_constructor("tag:yaml.org,2002:int", _construct_int)


#: How deeply a file may nest lists and mappings. Tiaki's own files need fewer than ten
#: levels; the limit keeps a broken or hostile file from exhausting Python's stack in the
#: readers that walk it recursively.
MAX_DEPTH = 100


def read_text(path: Path) -> str:
    """The text of ``path``; :class:`SourceError` if it cannot be read or is not UTF-8 (at the
    line and column of the first byte that is not)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SourceError(path, 1, 1, f"cannot read file: {exc.strerror or exc}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line_start = data.rfind(b"\n", 0, exc.start) + 1
        line = data.count(b"\n", 0, exc.start) + 1
        # What precedes the first bad byte decodes, so the column counts characters.
        column = len(data[line_start : exc.start].decode("utf-8")) + 1
        raise SourceError(
            path, line, column, f"not UTF-8 text (byte 0x{data[exc.start]:02x})"
        ) from None


def too_deep(node: Any, limit: int = MAX_DEPTH) -> Any:
    """The first list or mapping in ``node`` nested more than ``limit`` levels deep, or
    ``None``."""
    # YAML aliases share nodes (and may make cycles): a node is walked again only when it is
    # reached deeper than before, so sharing costs nothing and a cycle runs into the limit.
    reached: dict[int, int] = {}
    stack = [(node, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, Mapping):
            children: Iterable[Any] = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth >= limit:
            return item
        if reached.get(id(item), -1) >= depth:
            continue
        reached[id(item)] = depth
        stack.extend((child, depth + 1) for child in children)
    return None


def parse_json(path: Path, text: str, line: int = 1) -> Any:
    """JSON from ``text``, which starts at ``line`` of ``path``; :class:`SourceError` at the
    fault, if lists and objects nest more than :data:`MAX_DEPTH` levels deep, or at an integer
    longer than Python converts."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SourceError(path, line + exc.lineno - 1, exc.colno, f"bad JSON: {exc.msg}") from None
    except RecursionError:  # deeper than even the parser allows
        raise SourceError(path, line, 1, f"bad JSON: {_TOO_DEEP}") from None
    except ValueError:  # the one other: int() refusing a number too long to convert
        at_line, column = _long_integer(text)
        raise SourceError(path, line + at_line - 1, column, f"bad JSON: {_too_long()}") from None
    if too_deep(data) is not None:
        raise SourceError(path, line, 1, f"bad JSON: {_TOO_DEEP}")
    return data


def load_json(path: Path) -> Any:
    """The JSON file at ``path`` (:func:`read_text`, then :func:`parse_json`);
    :class:`SourceError` if it cannot be read, is not UTF-8 or is not acceptable JSON."""
    return parse_json(path, read_text(path))


#: A JSON string (skipped) or number: its whole part, fraction and exponent. Only a number
#: with neither fraction nor exponent is an integer (the others are floats, with no limit).
_JSON_NUMBER = re.compile(r'"(?:[^"\\]|\\.)*"|-?([0-9]+)(\.[0-9]+)?([eE][-+]?[0-9]+)?')


def _long_integer(text: str) -> tuple[int, int]:
    """The 1-based (line, column) of the first integer in JSON ``text`` longer than Python
    converts, or (1, 1). The JSON parser stops there without saying where; all before it
    parsed, so its strings are whole and the scan cannot mistake a string's digits."""
    limit = sys.get_int_max_str_digits()
    for match in _JSON_NUMBER.finditer(text):
        digits, fraction, exponent = match.groups()
        if limit and digits and fraction is None and exponent is None and len(digits) > limit:
            at = match.start()
            return text.count("\n", 0, at) + 1, at - (text.rfind("\n", 0, at) + 1) + 1
    return 1, 1


def _too_long() -> str:
    return f"an integer of more than {sys.get_int_max_str_digits()} digits"


def load_yaml(path: Path) -> Any:
    """Parse ``path`` keeping positions; raise :class:`SourceError` on unreadable or bad YAML."""
    text = read_text(path)
    yaml = YAML(typ="rt")
    yaml.Constructor = _TextTimestamps
    yaml.allow_duplicate_keys = False
    try:
        data = yaml.load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, column = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
        problem = exc.problem or exc.context or "invalid YAML"
        raise SourceError(path, line, column, f"bad YAML: {problem}") from None
    except ReaderError as exc:  # a character YAML does not allow, at a character index
        at = int(exc.position)
        line, column = text.count("\n", 0, at) + 1, at - (text.rfind("\n", 0, at) + 1) + 1
        character = exc.character if isinstance(exc.character, int) else ord(exc.character)
        raise SourceError(
            path, line, column, f"bad YAML: character #x{character:04x} is not allowed"
        ) from None
    except YAMLError as exc:  # other errors without a mark
        raise SourceError(path, 1, 1, f"bad YAML: {' '.join(str(exc).split())}") from None
    except RecursionError:  # ruamel composes nested nodes recursively
        raise SourceError(path, 1, 1, f"bad YAML: {_TOO_DEEP}") from None
    deep = too_deep(data)
    if deep is not None:
        line, column = (deep.lc.line + 1, deep.lc.col + 1) if hasattr(deep, "lc") else (1, 1)
        raise SourceError(path, line, column, f"bad YAML: {_TOO_DEEP}")
    return data


_TOO_DEEP = f"lists or mappings nested more than {MAX_DEPTH} levels deep"


def locate(root: Any, loc: Sequence[str | int]) -> tuple[int, int]:
    """Return the 1-based (line, column) of the deepest node along ``loc`` that exists.

    A key a mapping took from a YAML merge (``<<: *anchor``) has no position of its own in
    it: such a step ends the walk at the mapping that holds the merge, which is where the
    person reading the error wrote it (the anchor may be far away, and shared by others).
    """
    line, column = 1, 1
    node = root
    for step in loc:
        if isinstance(node, CommentedMap) and step in node:
            try:
                key_line, key_col = node.lc.key(step)
            except KeyError:  # merged in: not in the mapping's own positions
                line, column = node.lc.line + 1, node.lc.col + 1
                break
            line, column = key_line + 1, key_col + 1
            node = node[step]
        elif isinstance(node, CommentedSeq) and isinstance(step, int) and 0 <= step < len(node):
            item_line, item_col = node.lc.item(step)
            line, column = item_line + 1, item_col + 1
            node = node[step]
        else:
            break
    return line, column
