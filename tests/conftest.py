"""Shared test set-up: tests under tests/integration are marked ``integration``."""

from __future__ import annotations

import logging
import signal
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import pytest
import structlog
from hypothesis import HealthCheck, settings

from broker._logging import _StdlibHandler

ROOT = Path(__file__).resolve().parent.parent

# The unit tests run in two processes (``make unit``) on a machine shared with other work: an
# example's time says how busy the machine is, not whether the code is right, so neither a
# per-example deadline nor the slow-generation health check may fail a test.
settings.register_profile("tiaki", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("tiaki")


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


@pytest.fixture(autouse=True)
def _logging_as_found() -> Iterator[None]:
    """Put logging back after each test. A command run in a test may call
    ``configure_logging()``, which binds log output to the stream of that moment (pytest's
    capture, closed when the test ends): a later test's log line would then fail with
    ``I/O operation on closed file``, depending on which tests ran before it."""
    yield
    structlog.reset_defaults()
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _StdlibHandler)]:
        root.removeHandler(handler)
