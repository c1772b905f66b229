"""Reading hand-written YAML with positions: every complaint lands on ``file:line:column``.

A :class:`Reader` wraps one parsed file and collects errors rather than stopping at the first,
so ``tiaki policy validate`` can list every mistake in one run. Unknown words get a
``did you mean`` from :func:`difflib.get_close_matches`.

A key that is written but left without a value (``participates:``, ``recipient: {agency: }``)
is an error at the key, never the same as leaving the key out: in a rule, a missing condition
means "any", so a half-finished edit read as "not written" would widen the rule. Every typed
accessor here (:meth:`Reader.words`, :meth:`Reader.flag`, :meth:`Reader.text`,
:meth:`Reader.date`) goes through :meth:`Reader.given`, which records that error.
"""

from __future__ import annotations

import datetime as dt
import difflib
from collections.abc import Collection, Iterable, Iterator
from pathlib import Path
from typing import Any

from ruamel.yaml.comments import CommentedMap, CommentedSeq

from broker._yaml import SourceError, load_yaml
from broker.policy._errors import PolicySourceError


def _parse(path: Path) -> Any:
    try:
        return load_yaml(path)
    except SourceError as exc:
        raise PolicySourceError(exc.path, exc.line, exc.column, exc.reason) from None


#: A (container, key-or-index) pair naming one node, so errors can point at it.
Spot = tuple[Any, Any]


def suggest(word: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest choice, or an empty string."""
    close = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


class Reader:
    """One YAML file being read, with the errors found so far."""

    def __init__(self, path: Path, errors: list[PolicySourceError]) -> None:
        self.path = path
        self.errors = errors
        self.data: Any = None

    def load(self) -> Any:
        """Parse the file; on bad YAML record the error and return ``None``."""
        try:
            self.data = _parse(self.path)
        except PolicySourceError as exc:
            self.errors.append(exc)
            return None
        return self.data

    def position(self, container: Any, key: Any, *, value: bool = False) -> tuple[int, int]:
        """1-based (line, column) of ``container[key]`` (its key, or its value)."""
        try:
            if isinstance(container, CommentedMap):
                line, column = container.lc.value(key) if value else container.lc.key(key)
                return line + 1, column + 1
            if isinstance(container, CommentedSeq):
                line, column = container.lc.item(key)
                return line + 1, column + 1
        except (KeyError, IndexError, TypeError, AttributeError):
            pass
        return self.start(container)

    def start(self, node: Any) -> tuple[int, int]:
        """Where ``node`` itself begins."""
        lc = getattr(node, "lc", None)
        if lc is not None and lc.line is not None:
            return lc.line + 1, lc.col + 1
        return 1, 1

    def error(self, spot: Spot | None, reason: str, *, value: bool = True) -> None:
        """Record ``reason`` at ``spot`` (the value by default, or the key)."""
        if spot is None:
            line, column = 1, 1
        else:
            line, column = self.position(spot[0], spot[1], value=value)
        self.errors.append(PolicySourceError(self.path, line, column, reason))

    def error_at(self, node: Any, reason: str) -> None:
        """Record ``reason`` where ``node`` begins."""
        line, column = self.start(node)
        self.errors.append(PolicySourceError(self.path, line, column, reason))

    def mapping(self, node: Any, what: str, spot: Spot | None = None) -> CommentedMap | None:
        """``node`` if it is a mapping, else record an error."""
        if isinstance(node, CommentedMap):
            return node
        if spot is not None:
            self.error(spot, f"{what} must be a mapping")
        else:
            self.error_at(node, f"{what} must be a mapping")
        return None

    def keys(self, node: CommentedMap, allowed: Collection[str], what: str) -> None:
        """Complain about every key of ``node`` not in ``allowed``."""
        for key in node:
            if key not in allowed:
                self.error(
                    (node, key),
                    f"unknown key '{key}' in {what}{suggest(key, allowed)}",
                    value=False,
                )

    def given(self, node: CommentedMap, key: str) -> bool:
        """Whether ``key`` is written in ``node`` with a value.

        A key written with no value (YAML null) is recorded as an error at the key and counts
        as not given, so the caller treats it like a missing key but the file is rejected.
        """
        if key not in node:
            return False
        if node[key] is None:
            self.error(
                (node, key),
                f"'{key}' has no value: give one, or leave '{key}' out",
                value=False,
            )
            return False
        return True

    def words(
        self,
        node: CommentedMap,
        key: str,
        choices: Collection[str],
        what: str,
    ) -> frozenset[str] | None:
        """A list (or one word) under ``key``, each word checked against ``choices``.

        ``None`` when the key is not written; a key with no value or an empty list is an error.
        """
        if not self.given(node, key):
            return None
        raw = node[key]
        out: set[str] = set()
        for item, spot in self.items(node, key):
            if not isinstance(item, str):
                self.error(spot, f"{what} must be a word, not {type(item).__name__}")
            elif item not in choices:
                self.error(spot, f"unknown {what} '{item}'{suggest(item, choices)}")
            else:
                out.add(item)
        if isinstance(raw, CommentedSeq) and not raw:
            self.error((node, key), f"an empty list of {what}s matches nothing; leave it out")
        return frozenset(out)

    def items(self, node: CommentedMap, key: str) -> Iterator[tuple[Any, Spot]]:
        """Each item under ``key`` (one scalar counts as a list of one), with its spot."""
        raw = node[key]
        if isinstance(raw, CommentedSeq):
            for index, item in enumerate(raw):
                yield item, (raw, index)
        else:
            yield raw, (node, key)

    def flag(self, node: CommentedMap, key: str) -> bool | None:
        """A true/false value under ``key`` (``None`` when not written)."""
        if not self.given(node, key):
            return None
        value = node[key]
        if not isinstance(value, bool):
            self.error((node, key), f"'{key}' must be true or false")
            return None
        return value

    def text(
        self, node: CommentedMap, key: str, what: str, *, required: bool = False
    ) -> str | None:
        """A string under ``key``."""
        if not self.given(node, key):
            if required and key not in node:
                self.error_at(node, f"{what} needs '{key}'")
            return None
        value = node[key]
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            self.error((node, key), f"'{key}' must be text")
            return None
        return str(value)

    def date(self, node: CommentedMap, key: str) -> dt.date | None:
        """A ``YYYY-MM-DD`` date under ``key``."""
        if not self.given(node, key):
            return None
        value = node[key]
        if isinstance(value, dt.datetime):
            return value.date()
        if isinstance(value, dt.date):
            return value
        try:
            return dt.date.fromisoformat(str(value))
        except ValueError:
            self.error((node, key), f"bad date '{value}' for '{key}': expected YYYY-MM-DD")
            return None
