"""Whatever goes wrong with one policy bundle refuses it; the watcher and the old policy go on."""

from __future__ import annotations

import datetime as dt
import json
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
RULE = "policies/rules/99-extra.yaml"


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    home = tmp_path_factory.mktemp("release")
    folder = stage_release(ROOT / "policies", ROOT / "schemas", home / "release")
    roster = dev_officers(home / "officers")
    approve_as_dev_officers(folder, home / "officers", NOW)
    return folder, roster


def _bundle(files: dict[str, str]) -> bytes:
    return json.dumps({"format": 1, "files": files}).encode()


#: Bundles that are not policy sets in ways an invalid set is not: each once escaped apply().
BAD = {
    "deeply nested YAML": lambda f: {**f, RULE: "rules: " + "[" * 400 + "]" * 400},
    "file and folder of one name": lambda f: {"policies": "x", **f},
    "lone surrogate": lambda f: {**f, RULE: "rules: []  # \udcff"},
    "NUL in a file name": lambda f: {**f, "policies/rules/a\x00.yaml": "rules: []"},
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_a_bundle_that_fails_in_any_way_is_refused(
    release: tuple[Path, Path], tmp_path: Path, name: str
) -> None:
    folder, roster = release
    store = PolicyStore(load_roster(roster))
    metrics = BrokerMetrics(CollectorRegistry())
    watcher = PolicyWatcher(store, metrics, tmp_path)
    good = json.loads(bundle(folder.parent))["files"]
    assert watcher.apply(_bundle(good))
    engine = store.engine
    assert not watcher.apply(_bundle(BAD[name](good)))  # refused, not raised
    assert store.engine is engine
    samples = [
        s
        for family in metrics.registry.collect()
        if family.name == "tiaki_policy_rejected"
        for s in family.samples
        if s.name.endswith("_total")
    ]
    assert sum(s.value for s in samples) == 1
    assert watcher.apply(_bundle(good))  # still taking in releases
    assert list(tmp_path.iterdir()) == []


def test_unbundle_turns_write_failures_into_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot be unpacked"):
        unbundle(_bundle({"policies": "x", "policies/a.yaml": "y"}), tmp_path / "a")
    with pytest.raises(ConfigError, match="cannot be unpacked"):
        unbundle(_bundle({"policies/a.yaml": "\udcff"}), tmp_path / "b")


def test_store_refuses_a_set_that_raises_something_unforeseen(
    release: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    folder, roster = release
    store = PolicyStore(load_roster(roster))
    engine = store.load(folder)

    def boom(_: Path) -> None:
        raise RuntimeError("unforeseen")

    monkeypatch.setattr("broker.policy._store.load_policy_set", boom)
    assert store.load(folder) is engine
    assert isinstance(store.last_error, RuntimeError)
    with pytest.raises(RuntimeError):  # nothing to fall back on: the caller must know
        PolicyStore(load_roster(roster)).load(folder)
