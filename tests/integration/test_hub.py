"""A regional hub's monthly aggregate, end to end on real Kafka (LAW.md scenario 9).

Police report episodes; the broker counts each in its transaction on
``tiaki.state.tallies``; ``tiaki hub publish`` counts a month into a table under the Stats NZ
output rules and seals it to the hub on ``tiaki.hub.<region>``. The hub opens it with its own
key and finds only rounded counts, small cells suppressed, the Māori column withheld until a
named governance approval, and both acts on the audit log.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

from broker.codec import decode
from broker.envelope import Kind, Opener
from broker.platform import AUDIT, STATE_TALLIES, hub
from tests.integration.broker_env import SCHEMAS, BrokerEnv, example
from tests.integration.conftest import Cluster
from tests.integration.test_broker_missing_topic import tiaki

#: A month no other module's events fall in (the session's topics are shared).
MONTH = "2019-07"
HUB = "canterbury-hub"
TALLY = SCHEMAS.latest("Tally")
TABLE = SCHEMAS.latest("AggregateTable")
#: (territorial authority, the victim's ethnicity code, how many episodes).
EPISODES = [
    ("Christchurch City", "11111", 8),  # European
    ("Christchurch City", "21111", 15),  # Māori
    ("Christchurch City", "31111", 4),  # Pacific: fewer than 6
    ("Kaikōura District", "11111", 2),  # a small rural area
]


def episodes() -> list[tuple[str, dict[str, Any]]]:
    items = []
    for n, (authority, code, count) in enumerate(EPISODES):
        for i in range(count):
            doc = example(
                "FamilyHarmEpisodeReport",
                case_id=f"SYN-HUB-{n}-{i}",
                occurred_at=f"2019-07-{10 + i:02d}T02:00:00.000Z",
            )
            doc["location"] |= {"territorial_authority": authority, "region": "Canterbury"}
            for person in doc["people"]:
                if person["role"] == "victim":
                    person["person"]["ethnicity"] = [code]
            items.append(("FamilyHarmEpisodeReport", doc))
    return items


async def counted(env: BrokerEnv, expected: int) -> int:
    """How many of this month's tallies the broker has written (waits up to a minute)."""
    deadline = asyncio.get_running_loop().time() + 60
    while True:
        found = 0
        for record in await env.read("broker", STATE_TALLIES):
            if record.value and decode(record.value, TALLY)["month"] == MONTH:
                found += 1
        if found >= expected or asyncio.get_running_loop().time() > deadline:
            return found
        await asyncio.sleep(1)


async def tables(env: BrokerEnv) -> list[dict[str, Any]]:
    """Every table on the hub's topic for this month, opened as the hub opens it."""
    opener = Opener(HUB, env.ring)
    out = []
    for record in await env.read(HUB, hub("canterbury")):
        opened = opener.open(
            record.value, topic=hub("canterbury"), now=dt.datetime.now(dt.UTC), kind=Kind.EGRESS
        )
        table = decode(opened.payload, TABLE)
        if table["month"] == MONTH:
            out.append(table)
    return out


def figures(table: dict[str, Any]) -> dict[tuple[str, str], tuple[int | None, str | None]]:
    return {(c["row"], c["column"]): (c["value"], c["suppressed"]) for c in table["cells"]}


async def test_a_hub_receives_only_rounded_suppressed_counts_and_the_maori_column_after_approval(
    cluster: Cluster,
) -> None:
    with BrokerEnv.running(cluster) as env:
        await env.publish("police", episodes())
        total = sum(count for _, _, count in EPISODES)
        assert await counted(env, total) == total
        published = await asyncio.to_thread(
            tiaki,
            env,
            *("hub", "publish", "--region", "canterbury", "--month", MONTH),
            *("--operator", "Operator (synthetic)", "--justification", "monthly hub report"),
        )
        assert published.returncode == 0, published.stderr
        assert "Māori breakdown withheld" in published.stdout
        (first,) = await tables(env)
        cells = figures(first)
        assert first["governance"] == "withheld"
        # Every published figure is a count rounded to base 3, within 2 of the truth.
        true = {("Christchurch City", "European"): 8, ("Kaikōura District", "European"): 2}
        for value, mark in cells.values():
            assert (value is None) != (mark is None)
            if value is not None:
                assert value % 3 == 0
        for spot, count in true.items():
            value, _ = cells[spot]
            assert value is None or abs(value - count) <= 2
        # Fewer than 6: not published; the Māori column: withheld with its total.
        assert cells["Christchurch City", "Pacific Peoples"] == (None, "S")
        assert cells["Kaikōura District", "European"] == (None, "S")
        assert cells["Christchurch City", "Māori"] == (None, "G")
        assert cells["total", "Māori"] == (None, "G")
        # A person approves the breakdown for Māori data governance: published again, whole.
        approved = await asyncio.to_thread(
            tiaki,
            env,
            *("hub", "publish", "--region", "canterbury", "--month", MONTH),
            *("--operator", "Operator (synthetic)", "--justification", "monthly hub report"),
            *("--governance-approved-by", "Kaitiaki (synthetic)"),
            *("--governance-reference", "governance group minute 12"),
        )
        assert approved.returncode == 0, approved.stderr
        second = (await tables(env))[-1]
        assert second["governance"] == "approved"
        maori = {spot: got for spot, got in figures(second).items() if spot[1] == "Māori"}
        assert all(mark != "G" for _, mark in maori.values())
        value, mark = maori["Christchurch City", "Māori"]
        assert mark is None
        assert value is not None
        assert abs(value - 15) <= 2
        assert value % 3 == 0
        # Both publications and the approval are on the audit log, under the people's names.
        audit = [
            decode(r.value, SCHEMAS.latest("AuditRecord"))
            for r in await env.read("compliance", AUDIT)
        ]
        acts = [
            a for a in audit if a["event_type"] == "AggregateTable" and MONTH in (a["detail"] or "")
        ]
        assert sorted((a["action"], a["actor"], a["recipient"]) for a in acts) == [
            ("decision", "Operator (synthetic)", HUB),
            ("decision", "Operator (synthetic)", HUB),
            ("review", "Kaitiaki (synthetic)", None),
        ]
        # The tallies name no case: the hub's figures cannot be tied back to one.
        for record in await env.read("broker", STATE_TALLIES):
            assert b"SYN-HUB" not in (record.key or b"") + (record.value or b"")


async def test_a_bad_request_gets_one_line(cluster: Cluster) -> None:
    with BrokerEnv.running(cluster, start=False) as env:
        for args, message in [
            (
                ("--region", "otago", "--month", MONTH),
                "no regional hub is registered for region 'otago'",
            ),
            (("--region", "canterbury", "--month", "2019-13"), "--month must be YYYY-MM"),
            (
                ("--region", "canterbury", "--month", MONTH, "--measure", "episodes"),
                "unknown measure 'episodes'",
            ),
        ]:
            done = await asyncio.to_thread(
                tiaki,
                env,
                "hub",
                "publish",
                *args,
                *("--operator", "Operator (synthetic)", "--justification", "monthly hub report"),
            )
            assert done.returncode != 0
            lines = done.stderr.strip().splitlines()
            assert len(lines) == 1, done.stderr
            assert message in lines[0]
