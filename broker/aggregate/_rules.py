"""The Stats NZ output rules for a two-way table of counts, applied before it leaves the broker.

Regional hubs receive monthly counts by territorial authority (rows) and ethnicity group
(columns), never records (LAW.md scenario 9). A count of people is still personal information
when it is small, or when it can be worked out from the figures around it, so every table goes
through :func:`apply_output_rules`, which applies, in this order:

1. **Totals from the truth.** Each row's, each column's and the grand total are the sums of the
   true counts of *all* cells, withheld and suppressed ones included, and are rounded on their
   own (IDI-01 "totals rounded independently"). Published totals therefore need not add up to
   the published cells; deriving a total from rounded cells would compound their errors and
   tell a reader how the cells were rounded.
2. **Fixed random rounding to base 3** (IDI-01, "rr3"). A multiple of 3 stays as it is; any
   other count goes to the nearer multiple of 3 with probability 2/3 and to the farther one with
   probability 1/3, so the published figure is unbiased and within 2 of the truth. The draw is
   ``HMAC-SHA256(key, table, cells, count)``, where ``cells`` are the non-zero cells the entry
   counts: the cell itself, or a total's non-zero members (:func:`_contributors`). So the same
   table published twice shows the same figures (averaging repeated releases learns nothing),
   without the key a reader cannot tell which way a count went (:func:`_uniform`), and the
   same people counted in two places round alike: a row whose only non-zero cell is European 8
   shows that cell and its row total as the same figure. Drawn apart, they could show 9 and 6,
   and the reader would know the count is 7 or 8. "Rounded independently" means rounded from
   the true count, not summed from rounded cells; a total with several non-zero members is a
   different group of people from any one cell, and gets a draw of its own, shared only with
   another total over exactly the same cells (a row total and the grand total when one row
   holds every non-zero cell).
3. **Primary suppression** (IDI-02). A cell or total whose true count is 1 to 5 is not
   published. A true 0 is published as 0: no person is behind it.
4. **Secondary suppression** (IDI-06), so that no unpublished entry can be worked out by
   subtraction (:func:`_suppress_secondary` says how, and where the method stops). This, with
   rule 3, is the table as published once governance approves every column.
5. **Withheld columns** (MDS-04). Every cell of a column held back for Māori data governance,
   and its column total, is not published; these holds are added *on top of* rules 3 and 4,
   and secondary suppression runs again for them. The withheld release and the approved one
   reach the same reader, so the withheld one must show nothing the approved one hides.
   Suppressed afresh, it would not: a withheld cell, even a true 0, could be the partner that
   protects a small count in its row (Pacific 2 hidden, Māori 0 withheld, European 9 shown);
   the approved release shows that 0 and hides a different partner (European), and the two
   together leave the Pacific count alone in its line: the row total less 9 and 0. Built
   this way, every entry hidden in the approved release is hidden in the withheld one, and
   the withheld one shows a subset of the approved release's figures, the same figures, so
   the pair tells a reader nothing the approved release alone does not. Two limits. Both
   releases must be of the same true counts: a count that changed in between can be
   differenced, which is the caller's job to prevent. And the withheld release's pattern of
   suppressions is the approved one's plus more, so which other entries it hides can hint
   where a withheld count is 1 to 5 (not what it is).

Everything here is a pure function of its arguments: no I/O, no clock, no global randomness.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

from broker._errors import TiakiError

#: A count of 1 to 5 (IDI-02).
SUPPRESSED_PRIMARY: Final = "primary"
#: Hidden so that a suppressed entry in the same line cannot be derived (IDI-06).
SUPPRESSED_SECONDARY: Final = "secondary"
#: A column held back until Māori data governance approves it (MDS-04).
WITHHELD_GOVERNANCE: Final = "governance"
#: The shortest rounding key accepted: the rounding is only unpredictable while the key is.
MIN_KEY_BYTES: Final = 32

#: Counts from this many people upwards may be published (IDI-02: "fewer than 6 people").
_SMALLEST_PUBLISHED = 6
#: Separates this use of the key from any other; bump the version only knowing that every
#: past table re-published afterwards would be rounded afresh (see :func:`_draw_message`).
_DRAW_LABEL = b"tiaki-aggregate-rr3-v1"

#: Where an entry sits: (kind, row, column), with "" for the part a total does not have. The
#: kind keeps totals apart from cells whatever the rows and columns are called.
_Position = tuple[str, str, str]
_CELL = "cell"
_ROW_TOTAL = "row_total"
_COLUMN_TOTAL = "column_total"
_GRAND_TOTAL: _Position = ("total", "", "")


class AggregateInputError(TiakiError, ValueError):
    """The counts, names or key given to :func:`apply_output_rules` cannot make a table.

    A :class:`ValueError` as well, so callers that guard input with ``except ValueError`` keep
    working; the message names the row or column at fault, never a count.
    """


@dataclass(frozen=True)
class Cell:
    """One published entry: a cell of the table or one of its totals.

    ``value`` is the rounded count, or None when the entry is not published; ``suppressed`` then
    says why (:data:`SUPPRESSED_PRIMARY`, :data:`SUPPRESSED_SECONDARY` or
    :data:`WITHHELD_GOVERNANCE`), and is None for a published entry.

    The reason is for the broker, the audit trail and governance, not for the reader of the
    table: telling primary from secondary suppressions would say which hidden counts are 1 to 5
    and which are not, and narrow what secondary suppression leaves open. Render both as "S"
    (IDI-02); only a governance hold may be shown as what it is.
    """

    value: int | None
    suppressed: str | None


@dataclass(frozen=True)
class Table:
    """A table ready to leave: every cell and total, each rounded or suppressed.

    ``cells`` holds every (row, column) in row-major order, ``row_totals`` and
    ``column_totals`` every row and column in the order given. The mappings are read-only.
    Tables compare by value (the same inputs give an equal table), but hold mappings, so they
    are not hashable.
    """

    rows: tuple[str, ...]
    columns: tuple[str, ...]
    cells: Mapping[tuple[str, str], Cell]
    row_totals: Mapping[str, Cell]
    column_totals: Mapping[str, Cell]
    total: Cell


def apply_output_rules(
    counts: Mapping[tuple[str, str], int],
    rows: Sequence[str],
    columns: Sequence[str],
    *,
    key: bytes,
    context: str,
    withheld_columns: Collection[str] = (),
) -> Table:
    """The publishable form of a table of true ``counts`` (module docstring: the rules).

    ``counts`` maps (row, column) to a true count; a pair left out counts 0. ``key`` is a
    secret of at least :data:`MIN_KEY_BYTES` bytes kept for as long as tables may be
    re-published: a new key re-rounds every past table, and two differently rounded copies of
    the same table narrow every count. ``context`` names the table (``"canterbury|2026-11|
    family_harm_episodes"``) so that each table is rounded independently of every other; keep
    it stable, for the same reason. ``withheld_columns`` are published as nothing at all, and
    the rest of the table as the table with none withheld, less what protects them: publish
    it again with none withheld (after governance approves) from the same ``counts``, and the
    approved release shows every figure the withheld one does, unchanged (rule 5).

    Raises :class:`AggregateInputError` (a :class:`ValueError`) for a negative or non-integer
    count, a count outside the listed rows and columns, no rows or no columns, a repeated row
    or column name, a withheld column not listed, or a key shorter than :data:`MIN_KEY_BYTES`.
    """
    _check_inputs(counts, rows, columns, key, withheld_columns)
    true = _true_counts(counts, rows, columns)
    lines = _lines(rows, columns)
    # The approved release's pattern first, whatever is withheld, then the holds on top of it
    # (module docstring, rule 5): never the holds alone.
    reasons = _primary_suppressions(true)
    _suppress_secondary(true, reasons, lines)
    held = _withheld_positions(rows, columns, frozenset(withheld_columns))
    if held:
        reasons.update(dict.fromkeys(held, WITHHELD_GOVERNANCE))
        _suppress_secondary(true, reasons, lines)
    contributors = _contributors(true, rows, columns)

    def publish(position: _Position) -> Cell:
        reason = reasons.get(position)
        if reason is not None:
            return Cell(None, reason)
        n = true[position]
        return Cell(_rr3(n, _uniform(key, context, contributors[position], n)), None)

    return Table(
        rows=tuple(rows),
        columns=tuple(columns),
        cells=MappingProxyType({(r, c): publish(_cell(r, c)) for r in rows for c in columns}),
        row_totals=MappingProxyType({r: publish(_row_total(r)) for r in rows}),
        column_totals=MappingProxyType({c: publish(_column_total(c)) for c in columns}),
        total=publish(_GRAND_TOTAL),
    )


def _check_inputs(
    counts: Mapping[tuple[str, str], int],
    rows: Sequence[str],
    columns: Sequence[str],
    key: bytes,
    withheld_columns: Collection[str],
) -> None:
    if len(key) < MIN_KEY_BYTES:
        raise AggregateInputError(f"the rounding key needs at least {MIN_KEY_BYTES} bytes")
    # A string is a sequence of strings: "AB" would silently become the rows "A" and "B".
    for what, names in (
        ("rows", rows),
        ("columns", columns),
        ("withheld_columns", withheld_columns),
    ):
        if isinstance(names, str):
            raise AggregateInputError(f"{what} must be a collection of names, not one string")
    for what, names in (("row", rows), ("column", columns)):
        if not names:
            raise AggregateInputError(f"a table needs at least one {what}")
        seen: set[str] = set()
        for name in names:
            if name in seen:
                raise AggregateInputError(f"{what} {name!r} is listed twice")
            seen.add(name)
    row_set, column_set = frozenset(rows), frozenset(columns)
    for name in withheld_columns:
        if name not in column_set:
            raise AggregateInputError(f"withheld column {name!r} is not one of the columns")
    for (row, column), n in counts.items():
        if row not in row_set:
            raise AggregateInputError(f"a count names row {row!r}, which is not listed")
        if column not in column_set:
            raise AggregateInputError(f"a count names column {column!r}, which is not listed")
        count: object = n  # typed int, but a float or bool here would round as nonsense
        if isinstance(count, bool) or not isinstance(count, int):
            raise AggregateInputError(f"the count for ({row!r}, {column!r}) is not an integer")
        if count < 0:
            raise AggregateInputError(f"the count for ({row!r}, {column!r}) is negative")


def _cell(row: str, column: str) -> _Position:
    return (_CELL, row, column)


def _row_total(row: str) -> _Position:
    return (_ROW_TOTAL, row, "")


def _column_total(column: str) -> _Position:
    return (_COLUMN_TOTAL, "", column)


def _true_counts(
    counts: Mapping[tuple[str, str], int], rows: Sequence[str], columns: Sequence[str]
) -> dict[_Position, int]:
    """The true count at every position, totals summed over every cell (rule 1)."""
    true: dict[_Position, int] = {}
    for r in rows:
        for c in columns:
            true[_cell(r, c)] = counts.get((r, c), 0)
    for r in rows:
        true[_row_total(r)] = sum(true[_cell(r, c)] for c in columns)
    for c in columns:
        true[_column_total(c)] = sum(true[_cell(r, c)] for r in rows)
    true[_GRAND_TOTAL] = sum(true[_row_total(r)] for r in rows)
    return true


def _contributors(
    true: Mapping[_Position, int], rows: Sequence[str], columns: Sequence[str]
) -> dict[_Position, tuple[_Position, ...]]:
    """The non-zero cells each entry counts, sorted: whose people it is (rule 2).

    A cell counts itself (nobody, if it is 0); a total, its non-zero members. The draw is
    keyed on these, not on where the entry sits, so two entries counting the same cells (a
    cell and the total of a line with no other non-zero cell; a row total and the grand
    total) round alike. Sorted, so that the order rows and columns are listed in, and which
    line a total closes, make no difference.
    """

    def non_zero(cells: Iterable[_Position]) -> tuple[_Position, ...]:
        return tuple(sorted(p for p in cells if true[p] > 0))

    every = [_cell(r, c) for r in rows for c in columns]
    contributors = {p: non_zero((p,)) for p in every}
    for r in rows:
        contributors[_row_total(r)] = non_zero(_cell(r, c) for c in columns)
    for c in columns:
        contributors[_column_total(c)] = non_zero(_cell(r, c) for r in rows)
    contributors[_GRAND_TOTAL] = non_zero(every)
    return contributors


def _primary_suppressions(true: Mapping[_Position, int]) -> dict[_Position, str]:
    """Every entry whose true count is 1 to 5 (rule 3), by position."""
    return {p: SUPPRESSED_PRIMARY for p, n in true.items() if 0 < n < _SMALLEST_PUBLISHED}


def _withheld_positions(
    rows: Sequence[str], columns: Sequence[str], withheld: frozenset[str]
) -> list[_Position]:
    """Every cell and column total of the withheld columns (rule 5).

    They are marked governance even where the approved pattern already hides them as primary
    or secondary: a "primary" mark there would tell the reader the very thing the hold keeps
    back.
    """
    return [
        position
        for column in columns
        if column in withheld
        for position in (*(_cell(row, column) for row in rows), _column_total(column))
    ]


@dataclass(frozen=True)
class _Line:
    """Entries that add up to one of them: ``members`` (in table order) sum to ``total``."""

    members: tuple[_Position, ...]
    total: _Position

    @property
    def entries(self) -> tuple[_Position, ...]:
        return (*self.members, self.total)


def _lines(rows: Sequence[str], columns: Sequence[str]) -> tuple[_Line, ...]:
    """Every additive line: each row, each column, and the two lines of margins."""
    return (
        *(_Line(tuple(_cell(r, c) for c in columns), _row_total(r)) for r in rows),
        *(_Line(tuple(_cell(r, c) for r in rows), _column_total(c)) for c in columns),
        _Line(tuple(_column_total(c) for c in columns), _GRAND_TOTAL),
        _Line(tuple(_row_total(r) for r in rows), _GRAND_TOTAL),
    )


def _suppress_secondary(
    true: Mapping[_Position, int], reasons: dict[_Position, str], lines: Sequence[_Line]
) -> None:
    """Suppress more entries until no line has exactly one unpublished entry (IDI-06).

    In a line whose members add up to its total, one unpublished entry is the total (or the
    difference) of the published ones, up to rounding. So while some line has exactly one, one
    more of its entries is suppressed (and marked secondary): the published member with the
    smallest non-zero true count, the earliest in table order among equals; failing that, the
    line's total; failing that (a hidden total over published zeros, kept only as a guard),
    the earliest published member. Lines are visited in a fixed order (rows, columns, the
    column totals, the row totals) and again until a pass changes nothing, so the outcome
    depends only on the table. Each step suppresses one more of finitely many entries, so it
    ends.

    Why not a zero. A published 0 is exact: rr3 leaves 0 alone and 1 to 5 never publish, so a
    0 on the page is a true 0. Hiding a second entry protects the first by leaving the reader
    only the sum of two unknowns. If the second is a true 0 that sum *is* the protected count,
    and a reader who can guess the zero -- a group that rarely lives in a small rural area,
    last month's table, another release with the same margins -- recovers it exactly. A
    non-zero partner adds people the reader cannot see. A zero also describes nobody, so
    hiding it protects no one and withholds a true fact. The smallest non-zero partner loses
    the least information; a cell is preferred to the total because the total is the figure
    readers most need.

    Where the method stops. This is the standard line-by-line heuristic, not an optimal
    cell-suppression solver: it may hide more than a minimal pattern would, and it guarantees
    no protection interval. A reader who solves all the lines together, knowing that counts
    are not negative, can sometimes narrow a hidden count well below what one line leaves
    open; one who can tell which of two hidden counts is the small one (from a shown reason,
    or the pattern of suppressions) knows the other is at least 6, so a pair that sums to 8
    leaves the small one at most 2. Two primary suppressions in a line count as protecting
    each other although their sum may itself be small. Only the lines of this one table are
    considered: other tables sharing its rows, columns or margins (the same month by another
    breakdown, earlier months, a neighbouring hub's table) can be differenced against it, and
    guarding against that is the caller's job; the one exception is the same table with and
    without its withheld columns, kept consistent by running this on the approved pattern
    (module docstring, rule 5). The rounding noise adds protection this method does not count
    on.
    """
    changed = True
    while changed:
        changed = False
        for line in lines:
            unpublished = sum(1 for position in line.entries if position in reasons)
            if unpublished == 1:
                reasons[_complement(line, true, reasons)] = SUPPRESSED_SECONDARY
                changed = True


def _complement(
    line: _Line, true: Mapping[_Position, int], reasons: Mapping[_Position, str]
) -> _Position:
    """The entry of ``line`` to suppress next to its one unpublished entry."""
    # min() keeps the first of equal counts, and members are in table order.
    smallest = min(
        (p for p in line.members if p not in reasons and true[p] > 0),
        key=true.__getitem__,
        default=None,
    )
    if smallest is not None:
        return smallest
    if line.total not in reasons:
        return line.total
    # The unpublished entry is the total and every member is a published true 0. With lines
    # visited in the order of _lines no table is known to get here (row lines hide a zero
    # row total before the margins are looked at); hiding a zero member keeps the rule whole
    # whatever the order.
    return next(p for p in line.members if p not in reasons)


def _rr3(n: int, u: float) -> int:
    """``n`` randomly rounded to base 3 by the uniform draw ``u`` in [0, 1).

    The nearer multiple of 3 with probability 2/3 and the farther with 1/3: unbiased (the
    expected published value is ``n``) and never more than 2 away.
    """
    remainder = n % 3
    if remainder == 0:
        return n
    below, above = n - remainder, n - remainder + 3
    nearer, farther = (below, above) if remainder == 1 else (above, below)
    return nearer if u < 2 / 3 else farther


def _uniform(key: bytes, context: str, cells: Sequence[_Position], n: int) -> float:
    """A number in [0, 1), fixed by (key, table, the non-zero cells counted, true count) and
    unpredictable without the key: the top 53 bits of the HMAC, the precision of a float."""
    digest = hmac.new(key, _draw_message(context, cells, n), hashlib.sha256).digest()
    return (int.from_bytes(digest[:8], "big") >> 11) / (1 << 53)


def _draw_message(context: str, cells: Sequence[_Position], n: int) -> bytes:
    """The HMAC input: a label, then the context, each cell's kind, row and column in the
    order given (sorted, from :func:`_contributors`), and the count, every part
    length-prefixed.

    No two different draws share a message: every cell is three parts, so the number of
    parts says how many cells there are, and the prefixes say where each part ends (a
    context ending in "|x" never meets a row starting with "x"; cells ("a", "b|c") and
    ("a|b", "c") stay apart). A single cell's message is (context, "cell", row, column,
    count), whether the entry is the cell or a total whose only non-zero member it is.

    This encoding is part of what was published: change it and every table published again
    is rounded afresh, which is what fixed rounding exists to prevent.
    """
    parts = (context, *(part for cell in cells for part in cell), str(n))
    encoded = (part.encode("utf-8", "surrogatepass") for part in parts)
    return _DRAW_LABEL + b"".join(len(b).to_bytes(4, "big") + b for b in encoded)
