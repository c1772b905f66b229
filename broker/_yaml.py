"""YAML with positions, for files people edit by hand (the agency registry, policies).

ruamel.yaml keeps each node's line and column; :func:`locate` walks a validation error's
location (``("agencies", 3, "kind")``) back to the deepest node that exists, so every error
points at ``file:line:column`` in the text the privacy officer is looking at.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.constructor import RoundTripConstructor
from ruamel.yaml.error import MarkedYAMLError, YAMLError

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


def load_yaml(path: Path) -> Any:
    """Parse ``path`` keeping positions; raise :class:`SourceError` on unreadable or bad YAML."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SourceError(path, 1, 1, f"cannot read file: {exc.strerror or exc}") from None
    yaml = YAML(typ="rt")
    yaml.Constructor = _TextTimestamps
    yaml.allow_duplicate_keys = False
    try:
        return yaml.load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, column = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
        problem = exc.problem or exc.context or "invalid YAML"
        raise SourceError(path, line, column, f"bad YAML: {problem}") from None
    except YAMLError as exc:  # errors without a mark
        raise SourceError(path, 1, 1, f"bad YAML: {exc}") from None


def locate(root: Any, loc: Sequence[str | int]) -> tuple[int, int]:
    """Return the 1-based (line, column) of the deepest node along ``loc`` that exists."""
    line, column = 1, 1
    node = root
    for step in loc:
        if isinstance(node, CommentedMap) and step in node:
            key_line, key_col = node.lc.key(step)
            line, column = key_line + 1, key_col + 1
            node = node[step]
        elif isinstance(node, CommentedSeq) and isinstance(step, int) and 0 <= step < len(node):
            item_line, item_col = node.lc.item(step)
            line, column = item_line + 1, item_col + 1
            node = node[step]
        else:
            break
    return line, column
