"""Shared values for the envelope tests: a fake clock, seeded randomness, a key ring."""

from __future__ import annotations

import random as stdlib_random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from broker.envelope import Algorithm, KeyRing

T0 = datetime(2025, 6, 1, 9, 0, tzinfo=UTC)
PRINCIPALS = ("broker", "police", "corrections", "health-nz")


@dataclass
class FakeClock:
    """Time moves only when a test says so."""

    now: datetime = T0

    def advance(self, **delta: float) -> datetime:
        self.now += timedelta(**delta)
        return self.now


def seeded(seed: int = 7) -> Callable[[int], bytes]:
    rng = stdlib_random.Random(seed)
    return rng.randbytes


def make_ring(now: datetime = T0, seed: int = 7) -> KeyRing:
    """Every principal with an Ed25519, an X25519 and a hybrid key, created at ``now``."""
    ring = KeyRing()
    rand = seeded(seed)
    for principal in PRINCIPALS:
        for algorithm in Algorithm:
            ring.generate(principal, algorithm, now, rand)
    return ring


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def ring() -> KeyRing:
    return make_ring()
