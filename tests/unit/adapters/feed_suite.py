"""One contract for the adapter's feed, run on the in-memory connection (unit tests) and on
real Kafka (``tests/integration/test_adapter_feed.py``), so the fake cannot drift.

What the SDK's commit-after-handler guarantee rests on: a feed returns a key's records in
order; a new feed in the same group starts after what was committed, so what was polled but
not committed is delivered again and what was committed is not.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable

from adapters import Feed
from broker.transport import Record

TOKEN = "tiaki-test-token"
Publish = Callable[[bytes, bytes, tuple[tuple[str, bytes], ...]], Awaitable[None]]


async def _drain(feed: Feed, token: bytes, want: int, within: float = 30.0) -> list[Record]:
    """Poll until ``want`` records with ``token`` arrived (others' records are ignored)."""
    got: list[Record] = []
    deadline = asyncio.get_running_loop().time() + within
    while len(got) < want and asyncio.get_running_loop().time() < deadline:
        for record in await feed.poll(100, 200):
            if dict(record.headers).get(TOKEN) == token:
                got.append(record)
    return got


async def check_feed_contract(
    publish: Publish, make_feed: Callable[[str], Feed], group_prefix: str, quiet_s: float = 2.0
) -> None:
    """``quiet_s``: how long "nothing more arrives" is watched for (short for the fake)."""
    token = uuid.uuid4().hex.encode()
    key = f"SYN-FEED-{token.decode()[:8]}".encode()
    values = [f"record-{n}".encode() for n in range(10)]
    for value in values:
        await publish(key, value, ((TOKEN, token),))

    group = f"{group_prefix}contract-{token.decode()[:8]}"
    async with make_feed(group) as first:
        records = await _drain(first, token, 10)
        assert [r.value for r in records] == values  # one key: publish order
        await first.commit(records[:4])  # handled four, then "crashed"

    async with make_feed(group) as second:
        again = await _drain(second, token, 6)
        # Exactly the uncommitted records come again, in order; the committed ones do not.
        assert [r.value for r in again] == values[4:]
        await second.commit(again)

    async with make_feed(group) as third:
        assert await _drain(third, token, 1, within=quiet_s) == []
