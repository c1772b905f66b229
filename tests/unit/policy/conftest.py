"""Shared fixtures: the shipped policy set, compiled once, and writable copies of it."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from broker.policy import Engine, PolicySet, compile_policy, load_policy_set

ROOT = Path(__file__).resolve().parents[3]
POLICIES = ROOT / "policies"
SCHEMAS = ROOT / "schemas"
#: Obviously synthetic: never a real pseudonym secret.
TEST_SECRET = b"tiaki-test-secret-not-for-production-use!!"


@pytest.fixture(scope="session")
def policy() -> PolicySet:
    return load_policy_set(POLICIES)


@pytest.fixture(scope="session")
def engine(policy: PolicySet) -> Engine:
    return compile_policy(policy)


def copy_policies(target: Path) -> Path:
    """A writable copy of ``policies/`` beside a link to the real ``schemas/``."""
    folder = target / "policies"
    shutil.copytree(POLICIES, folder, ignore=shutil.ignore_patterns("*.json"))
    (target / "schemas").symlink_to(SCHEMAS, target_is_directory=True)
    return folder


@pytest.fixture
def policy_copy(tmp_path: Path) -> Path:
    return copy_policies(tmp_path)


Edit = Callable[[str, str, str], tuple[Path, int, int]]


@pytest.fixture
def edit(policy_copy: Path) -> Edit:
    """Replace ``old`` by ``new`` in one file; return (path, line, column) of ``mark`` after."""

    def apply(relative: str, old: str, new: str, mark: str | None = None) -> tuple[Path, int, int]:
        path = policy_copy / relative
        text = path.read_text(encoding="utf-8")
        assert text.count(old) >= 1, old
        text = text.replace(old, new, 1)
        path.write_text(text, encoding="utf-8")
        offset = text.index(mark if mark is not None else new)
        line = text.count("\n", 0, offset) + 1
        column = offset - (text.rfind("\n", 0, offset) + 1) + 1
        return path, line, column

    return apply  # type: ignore[return-value]
