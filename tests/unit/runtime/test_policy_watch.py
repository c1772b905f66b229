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


def rejections(metrics: BrokerMetrics) -> float:
    return sum(
        s.value
        for family in metrics.registry.collect()
        if family.name == "tiaki_policy_rejected"
        for s in family.samples
        if s.name.endswith("_total")
    )


class CountingStore(PolicyStore):
    """A store that counts its loads: each load that succeeds swaps the engine in force."""

    loads = 0

    def load(self, folder: Path) -> object:  # type: ignore[override]
        self.loads += 1
        return super().load(folder)


def test_catching_up_takes_in_only_the_newest_release(
    release: tuple[Path, Path], tmp_path: Path
) -> None:
    """The releases a compacted topic still holds are never in force one after another at
    start: the decider reads the engine per event, so each would decide events, unaudited.
    An older release this worker refuses (say, with fewer approvals than the running set
    requires) is not counted or logged as refused, so no alert fires on every restart."""
    folder, roster = release
    good = json.loads(bundle(folder.parent))["files"]
    unsigned = {k: v for k, v in good.items() if "/approvals/" not in k}
    store = CountingStore(load_roster(roster))
    metrics = BrokerMetrics(CollectorRegistry())
    watcher = PolicyWatcher(store, metrics, tmp_path)
    watcher.catch_up([_bundle(unsigned), _bundle(good), _bundle(unsigned), _bundle(good)])
    assert store.loads == 1
    assert store.engine is not None
    assert rejections(metrics) == 0
    assert watcher.last_rejection is None


def test_catching_up_to_a_refused_newest_release_falls_back_to_the_one_before(
    release: tuple[Path, Path], tmp_path: Path
) -> None:
    folder, roster = release
    good = json.loads(bundle(folder.parent))["files"]
    unsigned = {k: v for k, v in good.items() if "/approvals/" not in k}
    store = CountingStore(load_roster(roster))
    metrics = BrokerMetrics(CollectorRegistry())
    watcher = PolicyWatcher(store, metrics, tmp_path)
    watcher.catch_up([_bundle(unsigned), _bundle(good), _bundle(unsigned), _bundle(unsigned)])
    # The newest refused (counted once), the next older refused quietly, then the good one.
    assert store.loads == 3
    assert store.engine is not None
    assert rejections(metrics) == 1
    assert watcher.last_rejection is not None
    # Nothing on the topic it takes: it keeps what it started with (here, nothing).
    store = CountingStore(load_roster(roster))
    watcher = PolicyWatcher(store, BrokerMetrics(CollectorRegistry()), tmp_path)
    watcher.catch_up([_bundle(unsigned)])
    assert store.engine is None
    watcher.catch_up([])
    assert store.loads == 1
