"""Shared test set-up: tests under tests/integration are marked ``integration``."""

from __future__ import annotations

import signal
from pathlib import Path
from types import FrameType

import pytest

ROOT = Path(__file__).resolve().parent.parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    integration = ROOT / "tests" / "integration"
    for item in items:
        if integration in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.integration)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_configure(config: pytest.Config) -> None:
    # A CI time-out or `timeout` sends SIGTERM: turn it into an interrupt so session fixtures
    # still stop the Kafka and broker processes they started.
    signal.signal(signal.SIGTERM, _interrupt)
