"""The replay cache: window, clock skew, bounded memory, and undo on abort."""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.envelope import ReplayCache, Replayed, Stale
from broker.envelope._replay import to_ms

from .conftest import T0

NOW_MS = to_ms(T0)


def test_window_and_skew() -> None:
    cache = ReplayCache(window=timedelta(minutes=10), skew=timedelta(seconds=30))
    cache.check_and_remember("police", "a", NOW_MS, T0)
    with pytest.raises(Replayed):
        cache.check("police", "a", NOW_MS, T0)
    cache.check("corrections", "a", NOW_MS, T0)  # the key is (source, event id)
    with pytest.raises(Stale):
        cache.check("police", "b", NOW_MS + 31_000, T0)
    with pytest.raises(Stale):
        cache.check("police", "b", NOW_MS - 601_000, T0)
    assert issubclass(Stale, Replayed)


def test_old_entries_age_out_and_old_records_stay_refused() -> None:
    cache = ReplayCache(window=timedelta(minutes=10))
    cache.check_and_remember("police", "a", NOW_MS, T0)
    later = T0 + timedelta(minutes=11)
    cache.remember("police", "b", to_ms(later), later)
    assert len(cache) == 1
    with pytest.raises(Stale):
        cache.check("police", "a", NOW_MS, later)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 5_000), min_size=1, max_size=200), st.integers(1, 20))
def test_bounded_memory_never_accepts_a_replayed_record(offsets: list[int], size: int) -> None:
    """A replayed record carries its original ``sealed_at``; eviction must not let it back in."""
    cache = ReplayCache(max_entries=size)
    accepted: set[str] = set()
    for offset in offsets:
        event = f"e{offset}"
        try:
            cache.check_and_remember("police", event, NOW_MS + offset, T0 + timedelta(seconds=10))
        except Replayed:
            continue
        assert event not in accepted, "a replay was accepted"
        accepted.add(event)
        assert len(cache) <= size


def test_forget_undoes_remember() -> None:
    cache = ReplayCache()
    cache.check_and_remember("police", "a", NOW_MS, T0)
    cache.forget("police", "a")
    cache.check_and_remember("police", "a", NOW_MS, T0)
    stats = cache.statistics()
    assert (stats.entries, stats.remembered) == (1, 2)


def test_times_need_a_zone() -> None:
    with pytest.raises(ValueError, match="zone"):
        to_ms(T0.replace(tzinfo=None))


def test_seeding_refuses_what_was_accepted_before_and_skips_what_aged_out() -> None:
    cache = ReplayCache(window=timedelta(hours=1))
    seen = [
        ("police", "e-recent", NOW_MS - 60_000),
        ("police", "e-aged", NOW_MS - 2 * 3_600_000),  # older than the window: stale anyway
        ("msd", "e-recent", NOW_MS - 1_000),  # another source, the same id: its own entry
    ]
    assert cache.seed(seen, T0) == 2
    assert cache.seed(seen, T0) == 0  # seeding again changes nothing
    with pytest.raises(Replayed):
        cache.check("police", "e-recent", NOW_MS - 60_000, T0)
    with pytest.raises(Replayed):
        cache.check("msd", "e-recent", NOW_MS - 1_000, T0)
    with pytest.raises(Stale):
        cache.check("police", "e-aged", NOW_MS - 2 * 3_600_000, T0)
    cache.check("police", "e-new", NOW_MS, T0)  # anything else is still accepted
