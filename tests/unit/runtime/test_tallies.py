"""Counting for the regional hubs: what a tally holds, and that it holds nothing more."""

from __future__ import annotations

import copy
import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.codec import decode, from_json
from broker.platform import STATE_TALLIES
from broker.runtime._tallies import (
    EPISODES,
    TERRITORIAL_AUTHORITIES,
    ethnicity_group,
    region_id,
    tally_key,
    tally_of,
    tally_output,
    territorial_authority,
)
from tests.unit.runtime.test_intake import REGISTRY, SCHEMAS

ROOT = Path(__file__).resolve().parents[3]
NOW = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
KEY = tally_key(b"synthetic-subject-key-not-for-production-0000")
TALLY = SCHEMAS.latest("Tally")
POLICE = REGISTRY.get("police")


def example(name: str) -> dict[str, Any]:
    schema = SCHEMAS.latest(name)
    doc = json.loads((ROOT / "schemas" / "examples" / f"{name}.json").read_text())
    record: dict[str, Any] = from_json(schema, doc)
    return record


def test_an_episode_is_counted_by_month_region_authority_and_the_victims_group() -> None:
    episode = example("FamilyHarmEpisodeReport")
    out = tally_output(TALLY, KEY, "FamilyHarmEpisodeReport", episode, POLICE, NOW)
    assert out is not None
    assert out.topic == STATE_TALLIES
    tally = decode(out.value or b"", TALLY)
    assert tally == {
        "measure": EPISODES,
        "month": "2025-03",  # 21:15 UTC on 4 March is 5 March in New Zealand
        "region": "canterbury",
        "territorial_authority": "Christchurch City",
        "ethnicity_group": "2",  # the victim's code 21111
        "recorded_at": NOW,
    }


def test_a_tally_holds_no_identifier_of_the_case_the_people_or_the_event() -> None:
    episode = example("FamilyHarmEpisodeReport")
    out = tally_output(TALLY, KEY, "FamilyHarmEpisodeReport", episode, POLICE, NOW)
    assert out is not None
    text = (out.key or b"") + (out.value or b"")
    header = episode["header"]
    for value in (header["case_id"], str(header["event_id"]), "SYN-0001", "Test Victim"):
        assert value.encode() not in text
    assert len(out.key or b"") == 64  # a keyed hash, hex


def test_the_same_episode_sent_again_replaces_its_tally_and_another_counts_apart() -> None:
    episode = example("FamilyHarmEpisodeReport")
    again = copy.deepcopy(episode)
    again["header"]["event_id"] = "00000000-0000-4000-8000-000000000001"  # re-sent
    corrected = copy.deepcopy(episode)  # the same episode, its time corrected
    corrected["header"]["occurred_at"] = episode["header"]["occurred_at"] + dt.timedelta(hours=1)
    other = copy.deepcopy(episode)
    other["episode_number"] = "SYN-EP-OTHER"
    keys = [
        tally_output(TALLY, KEY, "FamilyHarmEpisodeReport", e, POLICE, NOW)
        for e in (episode, again, other, corrected)
    ]
    assert keys[3] is not None
    assert keys[3].key == keys[0].key
    assert keys[0] is not None
    assert keys[1] is not None
    assert keys[2] is not None
    assert keys[0].key == keys[1].key
    assert keys[0].key != keys[2].key
    # Another deployment's secret gives other keys: nobody links tallies across them.
    elsewhere = tally_output(
        TALLY,
        tally_key(b"another-synthetic-key-000000000000000"),
        "FamilyHarmEpisodeReport",
        episode,
        POLICE,
        NOW,
    )
    assert elsewhere is not None
    assert elsewhere.key != keys[0].key


def test_an_indicator_counts_while_its_value_is_not_zero() -> None:
    indicator = example("OutcomeIndicator")
    indicator["value"] = 1.0
    agency = REGISTRY.get("safe-whanau")  # a regional service: its region is the tally's
    out = tally_output(TALLY, KEY, "OutcomeIndicator", indicator, agency, NOW)
    assert out is not None
    tally = decode(out.value or b"", TALLY)
    assert tally["measure"] == "indicator:repeat_episode_12_months"
    assert (tally["month"], tally["region"]) == ("2025-01", agency.region)
    indicator["value"] = 0.0  # no longer counted: the unit's tally is removed
    gone = tally_output(TALLY, KEY, "OutcomeIndicator", indicator, agency, NOW)
    assert gone is not None
    assert (gone.key, gone.value) == (out.key, None)


def test_other_events_count_nothing() -> None:
    assert tally_output(TALLY, KEY, "TaskEvent", example("TaskEvent"), POLICE, NOW) is None


@pytest.mark.parametrize(
    ("codes", "group"),
    [
        (["11111", "21111"], "2"),  # prioritised: Māori first
        (["31111", "11111"], "3"),
        (["11111"], "1"),
        (["Māori"], "2"),
        ([], "9"),
        (["99999"], "9"),
        (["garbage"], "9"),
    ],
)
def test_ethnicity_is_prioritised_to_one_level_one_group(codes: list[str], group: str) -> None:
    assert ethnicity_group(codes) == group


@given(st.lists(st.text(max_size=8), max_size=5))
def test_every_list_of_codes_gives_one_known_group(codes: list[str]) -> None:
    assert ethnicity_group(codes) in {"1", "2", "3", "4", "5", "6", "9"}


def test_regions_are_named_as_the_registry_names_them() -> None:
    assert region_id("Canterbury") == "canterbury"
    assert region_id("Manawatū-Whanganui Region") == "manawatu-whanganui"
    assert region_id("Tāmaki Makaurau") == "tamaki-makaurau"
    assert region_id(None) == region_id("  ") == "unknown"
    assert tally_of("FamilyHarmEpisodeReport", {"header": {}}, POLICE) is None  # no time


def test_a_territorial_authority_is_one_of_new_zealands_or_unknown() -> None:
    """It is free text in an event, and a table's row label: anything else (a typo, an
    address in the wrong field) is never published, only counted as unknown."""
    assert len(set(TERRITORIAL_AUTHORITIES)) == 67
    assert territorial_authority("christchurch  city") == "Christchurch City"
    assert territorial_authority("Kaikoura District") == "Kaikōura District"
    assert territorial_authority("Hutt City") == "Lower Hutt City"
    # A typographic apostrophe, as a word processor writes it.
    assert (
        territorial_authority("Central Hawke\u2019s Bay District") == "Central Hawke's Bay District"
    )
    for text in ("Aroha Te Whatu, 12 Example St", "Christchruch City", "", None, 7):
        assert territorial_authority(text) == "unknown"
    episode = example("FamilyHarmEpisodeReport")
    episode["location"]["territorial_authority"] = "Aroha Te Whatu, 12 Example St"
    out = tally_output(TALLY, KEY, "FamilyHarmEpisodeReport", episode, POLICE, NOW)
    assert out is not None
    assert decode(out.value or b"", TALLY)["territorial_authority"] == "unknown"
