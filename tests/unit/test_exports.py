"""Each package says what it offers: ``__all__`` names exist, are public, and are sorted."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import adapters
import broker

PACKAGES = sorted(
    {"broker", "adapters"}
    | {m.name for m in pkgutil.walk_packages(broker.__path__, "broker.") if m.ispkg}
    | {m.name for m in pkgutil.walk_packages(adapters.__path__, "adapters.") if m.ispkg}
)


@pytest.mark.parametrize("name", PACKAGES)
def test_package_exports(name: str) -> None:
    module = importlib.import_module(name)
    exported = getattr(module, "__all__", None)
    assert exported is not None, f"{name} has no __all__"
    for symbol in exported:
        assert not symbol.startswith("_"), symbol
        assert hasattr(module, symbol), f"{name}.__all__ names missing {symbol}"
    assert len(set(exported)) == len(exported)
