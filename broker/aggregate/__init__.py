"""Aggregate tables for regional hubs, made safe to publish (LAW.md scenario 9).

A hub receives monthly counts by territorial authority and ethnicity group, never records.
Before a table leaves, :func:`apply_output_rules` applies the Stats NZ output rules: fixed
random rounding to base 3 with totals rounded independently (IDI-01), suppression of counts
from fewer than 6 people (IDI-02), columns held back for Māori data governance (MDS-04), and
secondary suppression so that no hidden count can be derived (IDI-06)::

    table = apply_output_rules(
        counts,                          # {(territorial_authority, ethnicity): true count}
        rows=authorities,
        columns=ethnicities,
        key=rounding_key,                # >= 32 secret bytes, kept for as long as tables are
        context="canterbury|2026-11|family_harm_episodes",  # re-published; both stay stable
        withheld_columns={"Māori"},      # until governance approves
    )
    table.cells["Kaikōura", "Pacific"]   # Cell(value=None, suppressed="primary")

Render every unpublished entry as "S", whatever its reason, except a governance hold: the
reason tells the broker why, and would tell a reader which hidden counts are small.
"""

from broker.aggregate._rules import (
    MIN_KEY_BYTES,
    SUPPRESSED_PRIMARY,
    SUPPRESSED_SECONDARY,
    WITHHELD_GOVERNANCE,
    AggregateInputError,
    Cell,
    Table,
    apply_output_rules,
)

__all__ = [
    "MIN_KEY_BYTES",
    "SUPPRESSED_PRIMARY",
    "SUPPRESSED_SECONDARY",
    "WITHHELD_GOVERNANCE",
    "AggregateInputError",
    "Cell",
    "Table",
    "apply_output_rules",
]
