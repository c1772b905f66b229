"""``ServiceOptions`` checks its own bounds, whoever builds it (the CLI, the benchmark, tests)."""

from __future__ import annotations

import pytest

from broker._errors import ConfigError
from broker.runtime._service import (
    MAX_BATCH,
    MAX_CHECKPOINT_SECONDS,
    MAX_COMMIT_INTERVAL_MS,
    ServiceOptions,
)


@pytest.mark.parametrize("interval", [0, 1, 40, MAX_COMMIT_INTERVAL_MS])
def test_commit_intervals_within_bounds_are_taken(interval: int) -> None:
    assert ServiceOptions(commit_interval_ms=interval).commit_interval_ms == interval


@pytest.mark.parametrize("interval", [-1, MAX_COMMIT_INTERVAL_MS + 1])
def test_a_commit_interval_out_of_bounds_is_refused(interval: int) -> None:
    with pytest.raises(ConfigError, match=rf"commit interval {interval} ms: must be from 0 to"):
        ServiceOptions(commit_interval_ms=interval)


@pytest.mark.parametrize("batch", [0, -3, MAX_BATCH + 1])
def test_a_batch_size_out_of_bounds_is_refused(batch: int) -> None:
    with pytest.raises(ConfigError, match=rf"batch size {batch}: must be from 1 to"):
        ServiceOptions(max_batch=batch)


def test_the_largest_batch_is_taken() -> None:
    assert ServiceOptions(max_batch=MAX_BATCH).max_batch == MAX_BATCH


def test_the_checkpoint_interval_defaults_to_the_audit_cadence() -> None:
    assert ServiceOptions().checkpoint_seconds == 10


@pytest.mark.parametrize("seconds", [0, -1, MAX_CHECKPOINT_SECONDS + 1])
def test_a_checkpoint_interval_out_of_bounds_is_refused(seconds: int) -> None:
    with pytest.raises(ConfigError, match=rf"checkpoint interval {seconds} s: must be from 1 to"):
        ServiceOptions(checkpoint_seconds=seconds)
