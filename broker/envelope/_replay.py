"""A bounded, pure replay cache keyed by (source, event id).

Freshness is judged on the record's own ``sealed_at``, which the AEAD authenticates, so the cache
must only be consulted *after* a record has been opened: checking earlier would let anyone who
can write to a topic poison the cache with forged event ids and block the real events.

Rules:

* a record sealed more than ``skew`` ahead of ``now`` is :class:`Stale`;
* a record sealed before ``now - window``, or at or before the *watermark*, is :class:`Stale`:
  the cache can no longer prove it unseen;
* a (source, event id) already in the cache is :class:`Replayed`;
* otherwise it is remembered. Entries older than the window are dropped; when more than
  ``max_entries`` remain, the oldest are dropped and the watermark rises to the newest dropped
  ``sealed_at``, so memory stays bounded without ever accepting a replayed record (a replay
  carries its original, authenticated ``sealed_at``).

What it does not promise: a sender that *re-seals* an event id it already sent (a new record,
with a new ``sealed_at``) is caught while the first copy is still in the cache, not after.

The cache lives in one process; :meth:`ReplayCache.seed` fills it with what was accepted
elsewhere or before (the broker keeps every committed transaction's admitted events on
``tiaki.state.seen`` and seeds from it when a worker starts or is assigned partitions). The
runtime should call :meth:`ReplayCache.forget` when a Kafka transaction that remembered an event
aborts, so the retried record is not mistaken for a replay.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from broker.envelope._errors import Malformed, Replayed, Stale

DEFAULT_WINDOW = timedelta(hours=24)
DEFAULT_SKEW = timedelta(minutes=5)
DEFAULT_MAX_ENTRIES = 1_000_000


def to_ms(moment: datetime) -> int:
    """Milliseconds since the Unix epoch; ``moment`` must carry a time zone."""
    if moment.tzinfo is None:
        raise ValueError("times must carry a time zone")
    return int(moment.timestamp() * 1000)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: The last millisecond a :class:`datetime` can hold (in the year 9999). A time field on the
#: wire has eight bytes, room for far later times, which name no time Python can hold.
MAX_MS = (datetime.max.replace(tzinfo=UTC) - _EPOCH) // timedelta(milliseconds=1)


def from_ms(ms: int) -> datetime:
    """The UTC time ``ms`` milliseconds after the Unix epoch, read from the wire: raises
    :class:`Malformed`, not :class:`ValueError`, for one no :class:`datetime` can hold."""
    if not 0 <= ms <= MAX_MS:
        raise Malformed()
    return _EPOCH + timedelta(milliseconds=ms)


@dataclass(frozen=True)
class ReplayStatistics:
    entries: int
    remembered: int
    replays: int
    stale: int
    evicted: int
    watermark_ms: int


class ReplayCache:
    """Remembers (source, event id) pairs for a window; see the module docstring."""

    def __init__(
        self,
        *,
        window: timedelta = DEFAULT_WINDOW,
        skew: timedelta = DEFAULT_SKEW,
        max_entries: int = DEFAULT_MAX_ENTRIES,
    ) -> None:
        if max_entries < 1 or window <= timedelta(0):
            raise ValueError("the replay window and size must be positive")
        self._window_ms = int(window.total_seconds() * 1000)
        self._skew_ms = int(skew.total_seconds() * 1000)
        self._max = max_entries
        self._seen: dict[tuple[str, str], int] = {}
        self._heap: list[tuple[int, str, str]] = []
        self._watermark = -1
        self._remembered = self._replays = self._stale = self._evicted = 0

    def horizon_ms(self, now: datetime) -> int:
        """The earliest time a record of still-remembered events can have been written: an
        event older than the window is refused as stale whatever is remembered, and one
        written at ``t`` was sealed no later than ``t`` plus the allowed skew."""
        return to_ms(now) - self._window_ms - self._skew_ms

    def check(self, source: str, event_id: str, sealed_at_ms: int, now: datetime) -> None:
        """Raise :class:`Replayed` or :class:`Stale` if the record cannot be accepted."""
        self._check(source, event_id, sealed_at_ms, to_ms(now))

    def _check(self, source: str, event_id: str, sealed_at_ms: int, now_ms: int) -> None:
        if sealed_at_ms > now_ms + self._skew_ms or sealed_at_ms < now_ms - self._window_ms:
            self._stale += 1
            raise Stale()
        if sealed_at_ms <= self._watermark:
            self._stale += 1
            raise Stale()
        if (source, event_id) in self._seen:
            self._replays += 1
            raise Replayed()

    def remember(self, source: str, event_id: str, sealed_at_ms: int, now: datetime) -> None:
        """Record the pair as seen (after :meth:`check` passed), then enforce the bounds."""
        self._remember(source, event_id, sealed_at_ms, to_ms(now))

    def _remember(self, source: str, event_id: str, sealed_at_ms: int, now_ms: int) -> None:
        key = (source, event_id)
        if key not in self._seen:
            self._seen[key] = sealed_at_ms
            heapq.heappush(self._heap, (sealed_at_ms, source, event_id))
            self._remembered += 1
        self._evict(now_ms)

    def check_and_remember(
        self, source: str, event_id: str, sealed_at_ms: int, now: datetime
    ) -> None:
        now_ms = to_ms(now)  # once per record: it is on every ingress record's path
        self._check(source, event_id, sealed_at_ms, now_ms)
        self._remember(source, event_id, sealed_at_ms, now_ms)

    def seed(self, seen: Iterable[tuple[str, str, int]], now: datetime) -> int:
        """Remember (source, event id, sealed_at ms) triples accepted before or elsewhere;
        return how many were new. Those already outside the window are skipped: they would be
        refused as stale whatever the cache held."""
        horizon = to_ms(now) - self._window_ms
        before = self._remembered
        for source, event_id, sealed_at_ms in seen:
            if sealed_at_ms >= horizon:
                self.remember(source, event_id, sealed_at_ms, now)
        return self._remembered - before

    def forget(self, source: str, event_id: str) -> None:
        """Undo :meth:`remember` (the transaction that saw the event aborted)."""
        self._seen.pop((source, event_id), None)  # its heap entry is skipped lazily

    @property
    def watermark_ms(self) -> int:
        """Events sealed at or before this are refused as stale: a full cache dropped an
        entry that recent for space (-1: none yet)."""
        return self._watermark

    def restore_watermark(self, watermark_ms: int) -> None:
        """Undo what evictions since :attr:`watermark_ms` was ``watermark_ms`` raised it (the
        transaction that admitted those events aborted; with :meth:`forget`). Entries that
        were dropped for space are not put back: the state re-read seeds them again, which
        raises the watermark again as far as they require. Without this, an event the first
        attempt admitted (and that, the oldest in a full cache, evicted itself) would be
        refused as stale when its batch is processed again."""
        self._watermark = min(self._watermark, watermark_ms)

    def __len__(self) -> int:
        return len(self._seen)

    def _evict(self, now_ms: int) -> None:
        horizon = now_ms - self._window_ms
        heap = self._heap
        while heap:
            sealed, source, event_id = heap[0]
            live = self._seen.get((source, event_id)) == sealed
            if live and sealed >= horizon and len(self._seen) <= self._max:
                break
            heapq.heappop(heap)
            if live:
                del self._seen[(source, event_id)]
                self._evicted += 1
                if sealed >= horizon:  # dropped for space, not age: raise the watermark
                    self._watermark = max(self._watermark, sealed)

    def statistics(self) -> ReplayStatistics:
        return ReplayStatistics(
            entries=len(self._seen),
            remembered=self._remembered,
            replays=self._replays,
            stale=self._stale,
            evicted=self._evicted,
            watermark_ms=self._watermark,
        )
