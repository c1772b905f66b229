"""A release approved by development officers passes the store; a tampered bundle does not."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from broker._errors import ConfigError
from broker.policy import PolicyStore, load_roster
from broker.runtime._metrics import BrokerMetrics
from broker.runtime._policy_watch import PolicyWatcher
from broker.runtime._release import (
    approve_as_dev_officers,
    bundle,
    dev_officers,
    stage_release,
    unbundle,
)

ROOT = Path(__file__).resolve().parents[3]
NOW = dt.datetime(2026, 11, 23, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    home = tmp_path_factory.mktemp("release")
    folder = stage_release(ROOT / "policies", ROOT / "schemas", home / "release")
    roster = dev_officers(home / "officers")
    approve_as_dev_officers(folder, home / "officers", NOW)
    return folder, roster


def test_approved_release_loads(release: tuple[Path, Path]) -> None:
    folder, roster = release
    store = PolicyStore(load_roster(roster))
    assert store.load(folder).policy_hash
    assert set(store.approved_by) == {"dev-officer-a", "dev-officer-b"}


def test_bundle_round_trip_and_tampering(release: tuple[Path, Path], tmp_path: Path) -> None:
    folder, roster = release
    data = bundle(folder.parent)
    store = PolicyStore(load_roster(roster))
    good = store.load(unbundle(data, tmp_path / "one"))
    tampered = data.replace(b"required_approvals: 2", b"required_approvals: 0")
    assert tampered != data
    assert store.load(unbundle(tampered, tmp_path / "two")) is good  # old engine kept
    assert store.last_error is not None


def test_bundle_cannot_escape_its_folder(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="outside its folder"):
        unbundle(b'{"format": 1, "files": {"../evil.yaml": "x"}}', tmp_path / "out")
    with pytest.raises(ConfigError, match="not a policy bundle"):
        unbundle(b"garbage", tmp_path / "out2")


def test_watcher_swaps_valid_bundles_and_refuses_others(
    release: tuple[Path, Path], tmp_path: Path
) -> None:
    folder, roster = release
    store = PolicyStore(load_roster(roster))
    metrics = BrokerMetrics(CollectorRegistry())
    watcher = PolicyWatcher(store, metrics, tmp_path)
    data = bundle(folder.parent)
    assert watcher.apply(data)
    engine = store.engine
    assert engine is not None
    assert not watcher.apply(data.replace(b"required_approvals: 2", b"required_approvals: 1"))
    assert not watcher.apply(b"not a bundle")
    assert store.engine is engine
    value = metrics.registry.get_sample_value
    assert value("tiaki_policy_version", {"policy_hash": engine.policy_hash}) == 1
    assert value("tiaki_policy_rejected_total", {"reason": "ApprovalError"}) == 1
    assert value("tiaki_policy_rejected_total", {"reason": "ConfigError"}) == 1
    assert list(tmp_path.iterdir()) == []  # each bundle's folder is gone once it was read
