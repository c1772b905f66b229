"""The Stats NZ output rules (IDI-01, IDI-02, IDI-06, MDS-04) on aggregate tables: properties
that hold for any table, worked examples that show which entries are hidden and why, and the
inputs that are refused."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.aggregate import (
    SUPPRESSED_PRIMARY,
    SUPPRESSED_SECONDARY,
    WITHHELD_GOVERNANCE,
    AggregateInputError,
    Cell,
    Table,
    apply_output_rules,
)
from broker.aggregate._rules import _complement, _draw_message, _Line, _rr3

KEY = b"tiaki-test-rounding-key-32-bytes"
OTHER_KEY = b"another-test-rounding-key-32byte"
CONTEXT = "canterbury|2026-11|family_harm_episodes"


@dataclass(frozen=True)
class Case:
    """The inputs of one table, and the true count of every entry (computed here, not by the
    module under test)."""

    counts: Mapping[tuple[str, str], int]
    rows: tuple[str, ...]
    columns: tuple[str, ...]
    key: bytes = KEY
    context: str = CONTEXT
    withheld: frozenset[str] = field(default_factory=frozenset)

    def apply(self) -> Table:
        return apply_output_rules(
            self.counts,
            self.rows,
            self.columns,
            key=self.key,
            context=self.context,
            withheld_columns=self.withheld,
        )

    def approved(self) -> Case:
        """The same table once governance approves: nothing withheld."""
        return replace(self, withheld=frozenset())

    def cell(self, row: str, column: str) -> int:
        return self.counts.get((row, column), 0)

    def row_total(self, row: str) -> int:
        return sum(self.cell(row, c) for c in self.columns)

    def column_total(self, column: str) -> int:
        return sum(self.cell(r, column) for r in self.rows)

    def total(self) -> int:
        return sum(self.counts.values())


def entries(case: Case, table: Table) -> Iterator[tuple[int, Cell]]:
    """(true count, published entry) for every cell and total."""
    for r in case.rows:
        for c in case.columns:
            yield case.cell(r, c), table.cells[r, c]
    for r in case.rows:
        yield case.row_total(r), table.row_totals[r]
    for c in case.columns:
        yield case.column_total(c), table.column_totals[c]
    yield case.total(), table.total


def counted(case: Case, table: Table) -> Iterator[tuple[frozenset[tuple[str, str]], Cell]]:
    """(the non-zero cells it counts, published entry) for every cell and total: the same
    cells are the same people."""

    def non_zero(cells: Iterable[tuple[str, str]]) -> frozenset[tuple[str, str]]:
        return frozenset(p for p in cells if case.cell(*p) > 0)

    for r in case.rows:
        for c in case.columns:
            yield non_zero([(r, c)]), table.cells[r, c]
    for r in case.rows:
        yield non_zero((r, c) for c in case.columns), table.row_totals[r]
    for c in case.columns:
        yield non_zero((r, c) for r in case.rows), table.column_totals[c]
    yield non_zero(case.counts), table.total


def lines(case: Case, table: Table) -> Iterator[list[Cell]]:
    """Every line of entries that add up: rows, columns, and the two lines of margins."""
    for r in case.rows:
        yield [table.cells[r, c] for c in case.columns] + [table.row_totals[r]]
    for c in case.columns:
        yield [table.cells[r, c] for r in case.rows] + [table.column_totals[c]]
    yield [*table.column_totals.values(), table.total]
    yield [*table.row_totals.values(), table.total]


def hidden(table: Table) -> dict[str, str]:
    """Every unpublished entry, named as the worked examples write them, and its reason."""
    named = {f"{r}/{c}": cell for (r, c), cell in table.cells.items()}
    named |= {f"{r}/total": cell for r, cell in table.row_totals.items()}
    named |= {f"total/{c}": cell for c, cell in table.column_totals.items()}
    named["total"] = table.total
    return {name: cell.suppressed for name, cell in named.items() if cell.suppressed is not None}


# Names chosen to trip up encodings and lookups: a row called "total", separators, macrons.
NAMES = st.sampled_from(["total", "", "a", "b", "a|b", "b|", "Māori", "Pacific", "x" * 3])
COUNTS = st.one_of(st.just(0), st.integers(1, 5), st.integers(6, 40), st.integers(41, 500))


@st.composite
def cases(draw: st.DrawFn, *, withheld: bool = True, min_withheld: int = 0) -> Case:
    rows = tuple(draw(st.lists(NAMES, min_size=1, max_size=5, unique=True)))
    columns = tuple(draw(st.lists(NAMES, min_size=1, max_size=5, unique=True)))
    # Absent pairs count 0; some zeros are also given explicitly.
    counts = {(r, c): draw(COUNTS) for r in rows for c in columns if draw(st.integers(0, 4)) > 0}
    held = (
        draw(st.frozensets(st.sampled_from(columns), min_size=min_withheld, max_size=2))
        if withheld
        else frozenset()
    )
    key = draw(st.binary(min_size=32, max_size=48))
    context = draw(st.text(max_size=12))
    return Case(counts, rows, columns, key, context, held)


# --- properties ---------------------------------------------------------------------------


@given(cases())
def test_published_values_are_rr3_of_the_truth(case: Case) -> None:
    for n, entry in entries(case, case.apply()):
        if entry.value is not None:
            assert entry.value % 3 == 0
            assert abs(entry.value - n) <= 2
            assert entry.suppressed is None
        else:
            assert entry.suppressed in {
                SUPPRESSED_PRIMARY,
                SUPPRESSED_SECONDARY,
                WITHHELD_GOVERNANCE,
            }


@given(cases())
def test_small_counts_are_hidden_and_zeros_published(case: Case) -> None:
    for n, entry in entries(case, case.apply()):
        if 1 <= n <= 5:
            assert entry.value is None
            assert entry.suppressed in {SUPPRESSED_PRIMARY, WITHHELD_GOVERNANCE}
        elif n == 0 and entry.suppressed != WITHHELD_GOVERNANCE:
            assert entry == Cell(0, None) or entry == Cell(None, SUPPRESSED_SECONDARY)
        else:
            assert entry.suppressed != SUPPRESSED_PRIMARY


@given(cases())
def test_no_line_has_exactly_one_hidden_entry(case: Case) -> None:
    for line in lines(case, case.apply()):
        assert sum(entry.value is None for entry in line) != 1


@given(cases())
def test_withheld_columns_publish_nothing(case: Case) -> None:
    table = case.apply()
    for c in case.withheld:
        assert table.column_totals[c] == Cell(None, WITHHELD_GOVERNANCE)
        for r in case.rows:
            assert table.cells[r, c] == Cell(None, WITHHELD_GOVERNANCE)
    for c in set(case.columns) - case.withheld:
        assert table.column_totals[c].suppressed != WITHHELD_GOVERNANCE
        for r in case.rows:
            assert table.cells[r, c].suppressed != WITHHELD_GOVERNANCE


@given(
    cases(withheld=False).filter(lambda case: not any(1 <= n <= 5 for n in case.counts.values()))
)
def test_nothing_to_protect_hides_nothing(case: Case) -> None:
    # Every count 0 or at least 6 makes every total so too: no suppression of any kind.
    assert hidden(case.apply()) == {}


@given(cases())
def test_same_inputs_give_the_same_table(case: Case) -> None:
    table = case.apply()
    assert table == case.apply()
    assert table.rows == case.rows
    assert table.columns == case.columns
    assert list(table.cells) == [(r, c) for r in case.rows for c in case.columns]
    assert list(table.row_totals) == list(case.rows)
    assert list(table.column_totals) == list(case.columns)


@settings(max_examples=300)
@given(cases(min_withheld=1))
def test_the_withheld_release_shows_only_what_the_approved_one_shows(case: Case) -> None:
    # The same reader gets both. Every figure the withheld release shows, the approved one
    # shows too, unchanged; so every entry the approved release hides is hidden in the
    # withheld one as well, and for the same reason outside the withheld columns.
    withheld, approved = case.apply(), case.approved().apply()
    for (_, mine), (_, theirs) in zip(
        entries(case, withheld), entries(case, approved), strict=True
    ):
        if mine.value is not None:
            assert mine == theirs
        if theirs.value is None:
            assert mine.value is None
            assert mine.suppressed in {theirs.suppressed, WITHHELD_GOVERNANCE}


@settings(max_examples=300)
@given(cases(min_withheld=1))
def test_the_two_releases_together_never_leave_one_hidden_entry_in_a_line(case: Case) -> None:
    # A reader holding both sees an entry unless both hide it: no line may be left with
    # exactly one such entry, or it is its line's total less the others, up to rounding.
    withheld, approved = case.apply(), case.approved().apply()
    for mine, theirs in zip(lines(case, withheld), lines(case, approved), strict=True):
        hidden_in_both = sum(
            a.value is None and b.value is None for a, b in zip(mine, theirs, strict=True)
        )
        assert hidden_in_both != 1


@given(cases())
def test_entries_counting_the_same_people_show_the_same_figure(case: Case) -> None:
    # Fixed random rounding: the same non-zero cells, wherever they are totalled, round
    # alike. Two draws for one count would narrow it to where both roundings agree.
    shown: dict[frozenset[tuple[str, str]], int] = {}
    for cells, entry in counted(case, case.apply()):
        if entry.value is not None:
            assert shown.setdefault(cells, entry.value) == entry.value


@given(st.integers(0, 10_000), st.floats(0, 1, exclude_max=True))
def test_rr3_goes_to_the_nearer_multiple_below_two_thirds(n: int, u: float) -> None:
    rounded = _rr3(n, u)
    assert rounded % 3 == 0
    if n % 3 == 0:
        assert rounded == n
    else:
        nearer = 3 * round(n / 3)
        assert rounded == (nearer if u < 2 / 3 else (nearer + 3 if nearer < n else nearer - 3))


# --- the rounding draw --------------------------------------------------------------------

# 20 x 15 counts of 7 or more, none a multiple of 3: nothing is suppressed, all are rounded.
WIDE = Case(
    counts={
        (f"r{i}", f"c{j}"): 7 + 3 * ((i * 15 + j) % 9) + (i + j) % 2
        for i in range(20)
        for j in range(15)
    },
    rows=tuple(f"r{i}" for i in range(20)),
    columns=tuple(f"c{j}" for j in range(15)),
)


def nearer_fraction(case: Case, table: Table) -> float:
    nearer = sum(
        table.cells[r, c].value == 3 * round(case.cell(r, c) / 3)
        for r in case.rows
        for c in case.columns
    )
    return nearer / (len(case.rows) * len(case.columns))


def test_rounding_goes_to_the_nearer_multiple_about_two_thirds_of_the_time() -> None:
    assert all(n % 3 != 0 for n in WIDE.counts.values())
    assert 0.55 <= nearer_fraction(WIDE, WIDE.apply()) <= 0.78


def test_a_different_key_rounds_differently() -> None:
    mine, theirs = WIDE.apply(), Case(WIDE.counts, WIDE.rows, WIDE.columns, key=OTHER_KEY).apply()
    changed = sum(mine.cells[p] != theirs.cells[p] for p in mine.cells)
    assert changed > 0
    assert 0.55 <= nearer_fraction(WIDE, theirs) <= 0.78


def test_a_different_context_rounds_differently() -> None:
    mine = WIDE.apply()
    next_month = Case(WIDE.counts, WIDE.rows, WIDE.columns, context="canterbury|2026-12|x").apply()
    assert any(mine.cells[p] != next_month.cells[p] for p in mine.cells)


Cells = tuple[tuple[str, str, str], ...]


def cell_at(row: str, column: str) -> tuple[str, str, str]:
    return ("cell", row, column)


@pytest.mark.parametrize(
    ("one", "other"),
    [
        # Where one part ends and the next begins is never ambiguous.
        (("a|b", (cell_at("c", "d"),)), ("a", (cell_at("b|c", "d"),))),
        (("ab", (cell_at("", "d"),)), ("a", (cell_at("b", "d"),))),
        (("c", (cell_at("a", "b|c"),)), ("c", (cell_at("a|b", "c"),))),
        # Nor how many cells there are, or which.
        (("c", (cell_at("a", "b"), cell_at("c", "d"))), ("c", (cell_at("a", "b"),))),
        (("c", (cell_at("a", "b"), cell_at("c", "d"))), ("c", (cell_at("a", "bcellcd"),))),
        (
            ("c", (cell_at("a", "b"), cell_at("c", "d"))),
            ("c", (cell_at("a", "b"), cell_at("cc", "d"))),
        ),
        (("", ()), ("", (cell_at("", ""),))),
    ],
)
def test_draw_messages_never_collide(one: tuple[str, Cells], other: tuple[str, Cells]) -> None:
    assert _draw_message(*one, 7) != _draw_message(*other, 7)
    assert _draw_message(*one, 17) != _draw_message(*one, 71)


def test_a_lone_cell_draws_as_it_always_has() -> None:
    # A cell's message is the one it had when every draw was keyed by position (tiaki-
    # aggregate-rr3-v1): label, then context, "cell", row, column and count, each after its
    # length in 4 bytes. A total whose only non-zero member is that cell shares it.
    assert _draw_message("ctx", (cell_at("Kaikōura", "European"),), 8) == (
        b"tiaki-aggregate-rr3-v1"
        + b"\x00\x00\x00\x03ctx"
        + b"\x00\x00\x00\x04cell"
        + b"\x00\x00\x00\x09Kaik\xc5\x8dura"
        + b"\x00\x00\x00\x08European"
        + b"\x00\x00\x00\x018"
    )


# --- the choice of partner -----------------------------------------------------------------

ROW_A = _Line(
    members=(("cell", "a", "x"), ("cell", "a", "y"), ("cell", "a", "z")),
    total=("row_total", "a", ""),
)
X, Y, Z = ROW_A.members


def test_the_partner_is_the_smallest_non_zero_published_cell_earliest_first() -> None:
    true = {X: 8, Y: 0, Z: 8, ROW_A.total: 19}
    assert _complement(ROW_A, true, {}) == X
    assert _complement(ROW_A, true, {X: SUPPRESSED_PRIMARY}) == Z
    assert _complement(ROW_A, {X: 9, Y: 0, Z: 7, ROW_A.total: 16}, {}) == Z


def test_without_a_non_zero_cell_the_partner_is_the_total() -> None:
    true = {X: 0, Y: 0, Z: 7, ROW_A.total: 7}
    assert _complement(ROW_A, true, {Z: WITHHELD_GOVERNANCE}) == ROW_A.total


def test_a_hidden_total_over_zeros_takes_a_zero_with_it() -> None:
    # The guard: no table is known to reach it with the order lines are visited in.
    true = dict.fromkeys(ROW_A.entries, 0)
    assert _complement(ROW_A, true, {ROW_A.total: SUPPRESSED_SECONDARY}) == X


# --- worked examples ----------------------------------------------------------------------

#: Three territorial authorities by three ethnicity groups; Kaikōura's Pacific count is 3.
#:
#:                  Māori  Pacific  European | total
#:     Hurunui        12       3        20   |   35
#:     Kaikōura       10       8        15   |   33
#:     Christchurch   30      40        25   |   95
#:     --------------------------------------+------
#:     total          52      51        60   |  163
SMALL_AREA = Case(
    counts={
        ("Hurunui", "Māori"): 12,
        ("Hurunui", "Pacific"): 3,
        ("Hurunui", "European"): 20,
        ("Kaikōura", "Māori"): 10,
        ("Kaikōura", "Pacific"): 8,
        ("Kaikōura", "European"): 15,
        ("Christchurch", "Māori"): 30,
        ("Christchurch", "Pacific"): 40,
        ("Christchurch", "European"): 25,
    },
    rows=("Hurunui", "Kaikōura", "Christchurch"),
    columns=("Māori", "Pacific", "European"),
)


def test_one_small_cell_costs_a_rectangle_of_four() -> None:
    # Hurunui/Pacific (3) is primary. Its row could give it away: the row's smallest other
    # count, Hurunui/Māori (12), goes too. Its column likewise: Kaikōura/Pacific (8). That
    # leaves the Māori column with one hidden entry, closed by its smallest other count,
    # Kaikōura/Māori (10), which also gives Kaikōura's row its second hidden entry. Every
    # total stays published.
    assert hidden(SMALL_AREA.apply()) == {
        "Hurunui/Pacific": SUPPRESSED_PRIMARY,
        "Hurunui/Māori": SUPPRESSED_SECONDARY,
        "Kaikōura/Pacific": SUPPRESSED_SECONDARY,
        "Kaikōura/Māori": SUPPRESSED_SECONDARY,
    }


def test_the_worked_example_is_rounded_the_same_forever() -> None:
    # Pinned figures for KEY and CONTEXT: a change to the draw or its encoding would re-round
    # every table published again, letting readers average two roundings of the same counts.
    # (The totals were re-pinned when totals came to be keyed on the cells they count rather
    # than on where they sit, before any table was published; the cells did not change.)
    table = SMALL_AREA.apply()
    assert {p: cell.value for p, cell in table.cells.items()} == {
        ("Hurunui", "Māori"): None,
        ("Hurunui", "Pacific"): None,
        ("Hurunui", "European"): 21,
        ("Kaikōura", "Māori"): None,
        ("Kaikōura", "Pacific"): None,
        ("Kaikōura", "European"): 15,
        ("Christchurch", "Māori"): 30,
        ("Christchurch", "Pacific"): 39,
        ("Christchurch", "European"): 27,
    }
    # Rounded on their own, from the true counts: 51 + 51 + 60 is not the total.
    assert [cell.value for cell in table.row_totals.values()] == [36, 33, 96]
    assert [cell.value for cell in table.column_totals.values()] == [51, 51, 60]
    assert table.total == Cell(165, None)


def test_a_withheld_column_costs_one_more_entry_in_every_row() -> None:
    # The approved table's rectangle (above) stays hidden; Hurunui/Māori and Kaikōura/Māori
    # are now held back instead, as is the rest of the column. A Māori count could still be
    # had as its row total minus the other columns, so each row without a second hidden
    # entry hides its smallest other count: Christchurch's European (25); Hurunui and
    # Kaikōura already hide their Pacific. The European column, now with one hidden entry,
    # hides its smallest other: Kaikōura (15). The Māori column total, alone in the line of
    # column totals, takes the smallest other column total with it: Pacific (51).
    withheld = Case(
        SMALL_AREA.counts, SMALL_AREA.rows, SMALL_AREA.columns, withheld=frozenset({"Māori"})
    )
    assert hidden(withheld.apply()) == {
        "Hurunui/Māori": WITHHELD_GOVERNANCE,
        "Kaikōura/Māori": WITHHELD_GOVERNANCE,
        "Christchurch/Māori": WITHHELD_GOVERNANCE,
        "total/Māori": WITHHELD_GOVERNANCE,
        "Hurunui/Pacific": SUPPRESSED_PRIMARY,
        "Kaikōura/Pacific": SUPPRESSED_SECONDARY,
        "Christchurch/European": SUPPRESSED_SECONDARY,
        "Kaikōura/European": SUPPRESSED_SECONDARY,
        "total/Pacific": SUPPRESSED_SECONDARY,
    }


#: Kaikōura's Pacific count is 2, and it has no Māori at all.
#:
#:                  Māori  Pacific  European | total
#:     Hurunui        12      20         7   |   39
#:     Kaikōura        0       2         9   |   11
#:     Christchurch   30      40         8   |   78
WITHHELD_THEN_APPROVED = Case(
    counts={
        ("Hurunui", "Māori"): 12,
        ("Hurunui", "Pacific"): 20,
        ("Hurunui", "European"): 7,
        ("Kaikōura", "Pacific"): 2,
        ("Kaikōura", "European"): 9,
        ("Christchurch", "Māori"): 30,
        ("Christchurch", "Pacific"): 40,
        ("Christchurch", "European"): 8,
    },
    rows=("Hurunui", "Kaikōura", "Christchurch"),
    columns=("Māori", "Pacific", "European"),
    withheld=frozenset({"Māori"}),
)


def test_the_withheld_release_hides_whatever_the_approved_one_hides() -> None:
    # Approved, Kaikōura's 0 Māori is shown, so its Pacific 2 needs the European 9 hidden
    # beside it. Suppressed afresh with Māori withheld, the hidden Māori 0 would have been
    # enough, the European 9 shown, and a reader of both releases would have had the
    # Pacific count as the row total less 9 and 0. The European 9 is hidden in both.
    withheld = WITHHELD_THEN_APPROVED.apply()
    approved = WITHHELD_THEN_APPROVED.approved().apply()
    assert approved.cells["Kaikōura", "Māori"] == Cell(0, None)
    for table in (withheld, approved):
        assert table.cells["Kaikōura", "Pacific"] == Cell(None, SUPPRESSED_PRIMARY)
        assert table.cells["Kaikōura", "European"] == Cell(None, SUPPRESSED_SECONDARY)
        assert table.row_totals["Kaikōura"].value is not None
    assert set(hidden(approved)) <= set(hidden(withheld))


@pytest.mark.parametrize("n", [7, 8, 10, 11, 13, 14, 28, 101])
def test_a_lone_count_shows_one_figure_in_its_cell_and_its_totals(n: int) -> None:
    # Kaikōura's European count is the table's only non-zero count: the cell, its row, its
    # column and the table all count the same people. Rounded apart they could show 9 and
    # 6 for 8, and the reader would know it is 7 or 8; they show one figure, every month.
    for month in range(1, 13):
        case = Case(
            {("Kaikōura", "European"): n},
            rows=("Hurunui", "Kaikōura"),
            columns=("Māori", "Pacific", "European"),
            context=f"canterbury|2026-{month:02d}|family_harm_episodes",
        )
        table = case.apply()
        figures = {
            table.cells["Kaikōura", "European"],
            table.row_totals["Kaikōura"],
            table.column_totals["European"],
            table.total,
        }
        assert len(figures) == 1
        assert figures.pop().value in {n - n % 3, n - n % 3 + 3}
        assert hidden(table) == {}


def test_totals_over_the_same_cells_show_one_figure() -> None:
    # Kaikōura holds every non-zero count: its row total and the grand total are the same
    # 17 people and show one figure; each column total shows its one cell's figure.
    for month in range(1, 13):
        case = Case(
            {("Kaikōura", "Pacific"): 7, ("Kaikōura", "European"): 10},
            rows=("Hurunui", "Kaikōura"),
            columns=("Māori", "Pacific", "European"),
            context=f"canterbury|2026-{month:02d}|family_harm_episodes",
        )
        table = case.apply()
        assert table.row_totals["Kaikōura"] == table.total
        for column in ("Pacific", "European"):
            assert table.column_totals[column] == table.cells["Kaikōura", column]


def test_a_row_whose_other_counts_are_zero_hides_its_total() -> None:
    # Kaikōura's only people are Māori (withheld), so its total alone would give them away:
    # there is no non-zero cell to pair with, so the total goes. The column of row totals
    # then pairs it with the smallest other row total (Hurunui, 26).
    case = Case(
        counts={
            ("Hurunui", "Māori"): 6,
            ("Hurunui", "European"): 20,
            ("Kaikōura", "Māori"): 9,
            ("Christchurch", "Māori"): 30,
            ("Christchurch", "European"): 40,
        },
        rows=("Hurunui", "Kaikōura", "Christchurch"),
        columns=("Māori", "European"),
        withheld=frozenset({"Māori"}),
    )
    table = case.apply()
    assert table.row_totals["Kaikōura"] == Cell(None, SUPPRESSED_SECONDARY)
    assert table.row_totals["Hurunui"] == Cell(None, SUPPRESSED_SECONDARY)
    assert table.cells["Kaikōura", "European"] == Cell(0, None)
    for line in lines(case, table):
        assert sum(entry.value is None for entry in line) != 1


def test_a_small_total_is_hidden_like_a_cell() -> None:
    case = Case(
        {("a", "x"): 2, ("a", "y"): 0, ("b", "x"): 30, ("b", "y"): 9}, ("a", "b"), ("x", "y")
    )
    table = case.apply()
    assert table.cells["a", "x"] == Cell(None, SUPPRESSED_PRIMARY)
    assert table.row_totals["a"] == Cell(None, SUPPRESSED_PRIMARY)
    assert table.cells["a", "y"] == Cell(0, None)


def test_the_table_cannot_be_changed() -> None:
    table = SMALL_AREA.apply()
    with pytest.raises(TypeError):
        table.cells["Hurunui", "Māori"] = Cell(0, None)  # type: ignore[index]


# --- refused inputs -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"counts": {("a", "x"): -1}}, "negative"),
        ({"counts": {("a", "x"): 2.0}}, "not an integer"),
        ({"counts": {("a", "x"): True}}, "not an integer"),
        ({"counts": {("c", "x"): 7}}, "row 'c'"),
        ({"counts": {("a", "z"): 7}}, "column 'z'"),
        ({"rows": ("a", "b", "a")}, "row 'a' is listed twice"),
        ({"columns": ("x", "x")}, "column 'x' is listed twice"),
        ({"rows": ()}, "at least one row"),
        ({"columns": []}, "at least one column"),
        ({"rows": "ab"}, "not one string"),
        ({"withheld_columns": "x"}, "not one string"),
        ({"withheld_columns": {"Māori"}}, "withheld column 'Māori'"),
        ({"key": b"k" * 31}, "at least 32 bytes"),
    ],
)
def test_bad_inputs_are_refused(changes: dict[str, object], message: str) -> None:
    arguments: dict[str, object] = {
        "counts": {("a", "x"): 7},
        "rows": ("a", "b"),
        "columns": ("x", "y"),
        "key": KEY,
        "context": CONTEXT,
    } | changes
    with pytest.raises(AggregateInputError, match=message) as raised:
        apply_output_rules(**arguments)  # type: ignore[arg-type]
    assert isinstance(raised.value, ValueError)
