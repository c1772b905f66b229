"""Counting for the regional hubs: one de-identified tally per counted unit.

Regional hubs receive monthly aggregates, never unit records (LAW.md scenario 9; the policy's
``forbid-unit-records-to-hubs``). The broker is the one place that sees every agency's events,
so it counts them: for each family harm episode and each outcome indicator it admits, it writes
a :class:`Tally` to the compacted ``tiaki.state.tallies`` in the event's own transaction (so a
count is exactly once, like everything else the event causes), and ``tiaki hub publish``
(:mod:`broker.aggregate`) later counts them into a table under the Stats NZ output rules.

A tally holds what the table's cells need and nothing else: the measure, the month, the region,
the territorial authority and one ethnic group. No case, person or event id: its key is a keyed
hash of the unit (the case and the episode's time, or the case, indicator and period), so a
re-sent, replayed or re-reported unit replaces its own tally instead of counting twice, and
nobody who reads the topic can tie a tally to a case without the deployment's secret.

Ethnicity is prioritised to one Stats NZ level-1 group (Māori, then Pacific Peoples, Asian,
MELAA, Other, European; "not stated" when none is given), as the health and justice sectors
report it, so that a table's cells add up to its totals. A group given as a label ("Māori")
rather than a code counts as its code (:func:`broker.policy.maori_breakdown` reads labels the
same way).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
from collections.abc import Iterable, Mapping
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from broker.codec import Schema, encode
from broker.platform import STATE_TALLIES
from broker.policy._model import folded, names_maori
from broker.registry import NATIONAL, Agency
from broker.transport import Outgoing

#: What is counted, by event type.
EPISODES = "family_harm_episodes"
INDICATOR_PREFIX = "indicator:"
TALLIED = frozenset({"FamilyHarmEpisodeReport", "OutcomeIndicator"})

#: Stats NZ level-1 ethnic groups, by code, as a table's columns name them.
GROUPS: Mapping[str, str] = {
    "2": "Māori",
    "3": "Pacific Peoples",
    "4": "Asian",
    "5": "Middle Eastern, Latin American and African",
    "6": "Other ethnicity",
    "1": "European",
    "9": "Not stated",
}
#: The order in which one group is chosen for a person of several (prioritised ethnicity).
PRIORITY = ("2", "3", "4", "5", "6", "1")
MAORI = "2"
NOT_STATED = "9"
UNKNOWN = "unknown"

try:
    NZ: dt.tzinfo = ZoneInfo("Pacific/Auckland")
except ZoneInfoNotFoundError:  # a host without the time zone database: months in UTC
    NZ = dt.UTC


def tally_key(secret: bytes) -> bytes:
    """The key of tally keys, derived from the deployment's subject key (its own purpose)."""
    return hmac.new(secret, b"tiaki tally key v1", hashlib.sha256).digest()


def ethnicity_group(codes: Iterable[Any]) -> str:
    """The prioritised level-1 group of a person's ethnicity codes (or labels)."""
    found = set()
    for code in codes:
        text = str(code).strip()
        if text[:1] in GROUPS and text[:1] != NOT_STATED:
            found.add(text[:1])
        elif names_maori(text):
            found.add(MAORI)
    return next((group for group in PRIORITY if group in found), NOT_STATED)


def region_id(text: Any) -> str:
    """A region as the registry names it: ``Manawatū-Whanganui`` is ``manawatu-whanganui``."""
    if not isinstance(text, str) or not text.strip():
        return UNKNOWN
    return "-".join(folded(text).replace("region", " ").split()) or UNKNOWN


#: New Zealand's 67 territorial authorities (Stats NZ, 2023), as a table's rows name them. A
#: territorial authority is free text in an event: anything that is not one of these (a typo,
#: an address in the wrong field) is counted as ``unknown``, never published as a row label.
TERRITORIAL_AUTHORITIES = (
    "Far North District", "Whangārei District", "Kaipara District", "Auckland",
    "Thames-Coromandel District", "Hauraki District", "Waikato District",
    "Matamata-Piako District", "Hamilton City", "Waipā District", "Ōtorohanga District",
    "South Waikato District", "Waitomo District", "Taupō District",
    "Western Bay of Plenty District", "Tauranga City", "Rotorua District",
    "Whakatāne District", "Kawerau District", "Ōpōtiki District", "Gisborne District",
    "Wairoa District", "Hastings District", "Napier City", "Central Hawke's Bay District",
    "New Plymouth District", "Stratford District", "South Taranaki District",
    "Ruapehu District", "Whanganui District", "Rangitīkei District", "Manawatū District",
    "Palmerston North City", "Tararua District", "Horowhenua District",
    "Kāpiti Coast District", "Porirua City", "Upper Hutt City", "Lower Hutt City",
    "Wellington City", "Masterton District", "Carterton District",
    "South Wairarapa District", "Tasman District", "Nelson City", "Marlborough District",
    "Kaikōura District", "Buller District", "Grey District", "Westland District",
    "Hurunui District", "Waimakariri District", "Christchurch City", "Selwyn District",
    "Ashburton District", "Timaru District", "Mackenzie District", "Waimate District",
    "Chatham Islands Territory", "Waitaki District", "Central Otago District",
    "Queenstown-Lakes District", "Dunedin City", "Clutha District", "Southland District",
    "Gore District", "Invercargill City",
)  # fmt: skip


def _plain_name(text: str) -> str:
    return " ".join(folded(text).split())


_AUTHORITIES = {_plain_name(name): name for name in TERRITORIAL_AUTHORITIES} | {
    "hutt city": "Lower Hutt City",
    "auckland council": "Auckland",
}


def territorial_authority(text: Any) -> str:
    """``text`` as one of :data:`TERRITORIAL_AUTHORITIES` (case, macrons and spacing aside),
    or ``unknown``."""
    if not isinstance(text, str):
        return UNKNOWN
    return _AUTHORITIES.get(_plain_name(text), UNKNOWN)


def _month(value: Any) -> str | None:
    if isinstance(value, dt.datetime):
        local = value.astimezone(NZ) if value.tzinfo is not None else value
        return f"{local.year:04d}-{local.month:02d}"
    if isinstance(value, dt.date):
        return f"{value.year:04d}-{value.month:02d}"
    return None


def tally_of(
    event_type: str, event: Mapping[str, Any], source: Agency
) -> tuple[bytes, dict[str, Any] | None] | None:
    """(unit, tally) for ``event``, or None if it counts nothing. ``unit`` names the counted
    unit (hashed into the record's key); a tally of None ends the unit's count (an indicator
    whose value went back to zero)."""
    header = event.get("header") or {}
    case = str(header.get("case_id", ""))
    fallback_region = source.region if source.region != NATIONAL else UNKNOWN
    if event_type == "FamilyHarmEpisodeReport":
        month = _month(header.get("occurred_at"))
        if month is None:
            return None
        location = event.get("location") or {}
        region = region_id(location.get("region"))
        victims = [p for p in event.get("people") or () if (p or {}).get("role") == "victim"]
        codes = ((victims[0] or {}).get("person") or {}).get("ethnicity") or () if victims else ()
        # The episode's own number where the sender gives one: a report of it sent again
        # with a corrected time (or a time its adapter filled in anew) is the same episode.
        number = event.get("episode_number")
        which = (
            f"n:{number}"
            if isinstance(number, str) and number.strip()
            else (f"t:{header.get('occurred_at')}")
        )
        episode = f"{EPISODES}\x1f{case}\x1f{which}"
        return episode.encode(), {
            "measure": EPISODES,
            "month": month,
            "region": region if region != UNKNOWN else fallback_region,
            "territorial_authority": territorial_authority(location.get("territorial_authority")),
            "ethnicity_group": ethnicity_group(codes),
        }
    if event_type == "OutcomeIndicator":
        month = _month(event.get("period_start"))
        if month is None:
            return None
        measure = f"{INDICATOR_PREFIX}{event.get('indicator', UNKNOWN)}"
        unit = f"{measure}\x1f{case}\x1f{event.get('period_start')}".encode()
        value = event.get("value")
        if not isinstance(value, int | float) or value == 0:
            return unit, None  # not (or no longer) counted
        return unit, {
            "measure": measure,
            "month": month,
            "region": fallback_region,
            "territorial_authority": territorial_authority(event.get("territorial_authority")),
            "ethnicity_group": ethnicity_group(event.get("ethnicity") or ()),
        }
    return None


def tally_output(
    schema: Schema,
    key: bytes,
    event_type: str,
    event: Mapping[str, Any],
    source: Agency,
    now: dt.datetime,
) -> Outgoing | None:
    """The ``tiaki.state.tallies`` record ``event`` causes, if any (see :func:`tally_of`)."""
    if event_type not in TALLIED:
        return None
    found = tally_of(event_type, event, source)
    if found is None:
        return None
    unit, tally = found
    record_key = hmac.new(key, unit, hashlib.sha256).hexdigest().encode()
    if tally is None:
        return Outgoing(STATE_TALLIES, record_key, None)
    return Outgoing(STATE_TALLIES, record_key, encode(schema, tally | {"recorded_at": now}))
