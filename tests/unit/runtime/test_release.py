"""A release approved by development officers passes the store; a tampered bundle does not."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import ClassVar

import pytest
from prometheus_client import CollectorRegistry

from broker._errors import ConfigError
from broker.policy import (
    ApprovalError,
    PolicyStore,
    load_policy_set,
    load_roster,
    policy_hash,
    sign_policy,
)
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


def _signed_by_one(release: tuple[Path, Path], tmp_path: Path, asks: int) -> Path:
    """A copy of the release that asks for ``asks`` approvals, signed by one officer only."""
    folder, _ = release
    copy = stage_release(folder, folder.parent / "schemas", tmp_path / "one-officer")
    settings = copy / "policy.yaml"
    settings.write_text(
        settings.read_text().replace("required_approvals: 2", f"required_approvals: {asks}")
    )
    for old in (copy / "approvals").glob("*.json"):
        old.unlink()
    digest = policy_hash(load_policy_set(copy))
    officers = folder.parent.parent / "officers"
    sign_policy(
        digest, "dev-officer-a", officers / "dev-officer-a.key", copy / "approvals", now=NOW
    )
    return copy


def test_a_set_cannot_lower_its_own_quorum(release: tuple[Path, Path], tmp_path: Path) -> None:
    # One trusted officer signs a set that says one approval is enough: refused, whether a
    # set is running or not (the deployment's minimum is two).
    _, roster = release
    lowered = _signed_by_one(release, tmp_path, asks=1)
    with pytest.raises(ApprovalError, match="1 of 2 required"):
        PolicyStore(load_roster(roster)).load(lowered)
    store = PolicyStore(load_roster(roster))
    running = store.load(release[0])
    assert store.load(lowered) is running
    assert isinstance(store.last_error, ApprovalError)
    # A deployment that configures a minimum of one accepts it.
    assert PolicyStore(load_roster(roster), minimum_approvals=1).load(lowered).policy_hash


def test_the_quorum_is_the_highest_of_asked_minimum_and_running() -> None:
    store = PolicyStore(())
    assert store.quorum(1) == 2
    assert store.quorum(3) == 3
    assert PolicyStore((), minimum_approvals=1).quorum(1) == 1


def test_bundle_refuses_a_file_that_is_not_text(release: tuple[Path, Path], tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "release"
    shutil.copytree(release[0].parent, copy)
    (copy / "policies" / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    with pytest.raises(ConfigError, match=r"logo\.png: not UTF-8 text"):
        bundle(copy)


class _Publisher:
    """Stands in for KafkaPublisher: keeps what would have been published."""

    sent: ClassVar[list[tuple[str, bytes, bytes]]] = []

    def __init__(self, _profile: object) -> None:
        pass

    async def __aenter__(self) -> _Publisher:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        pass

    async def publish(self, topic: str, key: bytes, value: bytes) -> None:
        self.sent.append((topic, key, value))


@pytest.fixture
def publish(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[tuple[str, bytes, bytes]]:
    """``tiaki broker publish-policy`` with Kafka faked; returns what reached the topic."""
    import broker.runtime._cli as runtime_cli

    monkeypatch.setenv("TIAKI_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(runtime_cli, "KafkaPublisher", _Publisher)
    monkeypatch.setattr(runtime_cli, "load_profile", lambda _path: None)
    sent: list[tuple[str, bytes, bytes]] = []
    monkeypatch.setattr(_Publisher, "sent", sent)
    return sent


def test_publish_policy_publishes_only_what_a_broker_would_load(
    release: tuple[Path, Path],
    publish: list[tuple[str, bytes, bytes]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import shutil

    from broker._cli import main

    folder, roster = release
    home = tmp_path / "home"

    def refused(argv: list[str], message: str) -> None:
        assert main(["broker", "publish-policy", *argv]) == 1
        err = capsys.readouterr().err
        assert message in err, err
        assert err.count("\n") == 1
        assert "Traceback" not in err
        assert publish == []

    # a missing folder is not an empty release
    refused([str(tmp_path / "nowhere"), "--roster", str(roster)], "not a policy release")
    # no trusted roster in TIAKI_HOME
    refused([str(folder.parent)], "roster.yaml")
    # approved, but not by the officers on the trusted roster (same names, other keys)
    (home / "officers").mkdir(parents=True)
    dev_officers(tmp_path).replace(home / "officers" / "roster.yaml")
    refused([str(folder.parent)], "the broker would refuse it")
    # not approved at all
    unapproved = tmp_path / "unapproved"
    shutil.copytree(folder.parent, unapproved)
    for signature in (unapproved / "policies" / "approvals").iterdir():
        signature.unlink()
    refused([str(unapproved), "--roster", str(roster)], "the broker would refuse it")
    # valid and approved, but carrying a binary file
    binary = tmp_path / "binary"
    shutil.copytree(folder.parent, binary)
    (binary / "notes.bin").write_bytes(b"\xff\xfe\x00")
    refused([str(binary), "--roster", str(roster)], "notes.bin: not UTF-8 text")

    assert main(["broker", "publish-policy", str(folder.parent), "--roster", str(roster)]) == 0
    assert capsys.readouterr().out.startswith("published policy ")
    [(topic, key, value)] = publish
    assert (topic, key) == ("tiaki.policy", b"policy")
    assert value == bundle(folder.parent)
