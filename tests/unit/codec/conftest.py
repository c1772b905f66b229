"""Fixtures for the codec tests: the real schema folder, loaded once."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.codec import SchemaSet, load_schemas

SCHEMAS = Path(__file__).resolve().parents[3] / "schemas"


@pytest.fixture(scope="session")
def schema_dir() -> Path:
    return SCHEMAS


@pytest.fixture(scope="session")
def schemas() -> SchemaSet:
    return load_schemas(SCHEMAS)
