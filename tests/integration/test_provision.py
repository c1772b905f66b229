"""`tiaki provision` against the real cluster: idempotent, removes what the registry does not
grant, and says so."""

from __future__ import annotations

import json
import stat

import pytest

from broker._cli import main
from broker.platform import PROFILE_KEYS, Acl, ClusterAdmin, egress, provision
from broker.registry import Registry
from tests.integration.conftest import Cluster
from tests.integration.kafka_probe import ALLOWED, DENIED, probe_reads

HAND_GRANTED = Acl("User:police", "TOPIC", egress("msd"), "LITERAL", "READ")


def _provision(cluster: Cluster, registry: Registry | None = None, dry_run: bool = False):  # type: ignore[no-untyped-def]
    return provision(
        registry or cluster.registry,
        cluster.profile("admin"),
        cluster.profiles_dir,
        dry_run=dry_run,
    )


def test_second_run_changes_nothing(cluster: Cluster) -> None:
    _provision(cluster)
    report = _provision(cluster)
    assert not report.changed
    assert report.profiles == []


def test_hand_granted_acl_is_removed_and_reported(cluster: Cluster) -> None:
    admin = ClusterAdmin(cluster.profile("admin"))
    admin.add_acls([HAND_GRANTED])
    assert probe_reads(cluster.profile("police"), [egress("msd")]) == {egress("msd"): ALLOWED}

    planned = _provision(cluster, dry_run=True)
    assert [str(c) for c in planned.changes] == [
        f"- acl {HAND_GRANTED}: not granted by the registry"
    ]
    # A dry run changes nothing.
    assert probe_reads(cluster.profile("police"), [egress("msd")]) == {egress("msd"): ALLOWED}

    report = _provision(cluster)
    assert [c.subject for c in report.changes if c.action == "remove"] == [str(HAND_GRANTED)]
    assert probe_reads(cluster.profile("police"), [egress("msd")]) == {egress("msd"): DENIED}
    assert not _provision(cluster).changed


def test_cli_reports_no_changes(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TIAKI_HOME", str(cluster.profiles_dir.parent))
    assert main(["provision", "--dry-run"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "no changes"


def test_agency_leaving_the_registry_loses_principal_and_acls(cluster: Cluster) -> None:
    leaving = "canterbury-hub"
    smaller = cluster.registry.model_copy(
        update={"agencies": [a for a in cluster.registry.agencies if a.id != leaving]}
    )
    try:
        report = _provision(cluster, smaller)
        removed = {(c.kind, c.subject) for c in report.changes if c.action == "remove"}
        assert ("principal", leaving) in removed
        assert all(f"User:{leaving} " in subject for kind, subject in removed if kind == "acl")
        # ingress, egress, groups, hub, and the checkpoints every agency witnesses
        assert sum(kind == "acl" for kind, _ in removed) == 5
        assert not (cluster.profiles_dir / f"{leaving}.json").exists()
        warnings = [c.subject for c in report.changes if c.action == "warn"]
        assert f"tiaki.ingress.{leaving}" in warnings  # topics hold data: reported, not deleted
    finally:
        _provision(cluster)
    assert (cluster.profiles_dir / f"{leaving}.json").exists()
    assert not _provision(cluster).changed


def test_profiles_hold_exactly_aiokafkas_arguments_and_only_their_owner_reads_them(
    cluster: Cluster,
) -> None:
    assert stat.S_IMODE(cluster.profiles_dir.stat().st_mode) == 0o700
    names = {p.stem for p in cluster.profiles_dir.glob("*.json")}
    assert names == set(cluster.registry.ids) | {"broker", "compliance", "admin"}
    for path in cluster.profiles_dir.glob("*.json"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        profile = json.loads(path.read_text())
        assert set(profile) == set(PROFILE_KEYS)
        assert profile["sasl_plain_username"] == path.stem
        assert (path.parent / profile["ssl_cafile"]).is_file()  # relative: beside the profile
        if path.stem != "admin":
            assert profile["ssl_cafile"] == "ca.pem"
