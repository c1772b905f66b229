"""Provisioning against a fake admin client: what is read from the cluster, what is Tiaki's,
and what a run removes (the integration tests do this against a real cluster)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from concurrent.futures import Future
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from confluent_kafka.admin import (
    AclBinding,
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    ResourcePatternType,
    ResourceType,
)

from broker.platform import ClusterAdmin, Profile, desired_state, egress, provision
from broker.platform._plan import Acl
from broker.platform._provision import _binding
from broker.registry import load_registry

ROOT = Path(__file__).resolve().parents[3]
REGISTRY = load_registry(ROOT / "policies" / "agencies.yaml")
ADMIN = Profile(
    bootstrap_servers="127.0.0.1:1",
    sasl_plain_username="admin",
    sasl_plain_password="x",
    ssl_cafile="/dev/null",
)


def done(value: Any) -> Future[Any]:
    future: Future[Any] = Future()
    future.set_result(value)
    return future


class FakeAdmin:
    """The confluent-kafka AdminClient calls provisioning makes, on a cluster that already
    matches the registry except for ``extra`` ACL bindings."""

    def __init__(self, extra: Iterable[AclBinding]) -> None:
        self.state = desired_state(REGISTRY, 1)
        self.bindings: list[AclBinding] = [_binding(a) for a in self.state.acls] + list(extra)
        self.deleted: list[AclBindingFilter] = []

    def describe_cluster(self, request_timeout: float) -> Future[Any]:
        return done(SimpleNamespace(nodes=[1]))

    def list_topics(self, timeout: float) -> Any:
        return SimpleNamespace(
            topics={
                n: SimpleNamespace(
                    partitions={
                        i: SimpleNamespace(replicas=list(range(1, s.replication + 1)))
                        for i in range(s.partitions)
                    }
                )
                for n, s in self.state.topics.items()
            }
        )

    def describe_configs(self, resources: Iterable[Any]) -> dict[Any, Future[Any]]:
        return {
            r: done(
                {k: SimpleNamespace(value=v) for k, v in self.state.topics[r.name].config.items()}
            )
            for r in resources
        }

    def describe_user_scram_credentials(self) -> Future[Mapping[str, None]]:
        return done(dict.fromkeys(self.state.principals))

    def describe_acls(self, filter: Any, request_timeout: float) -> Future[list[AclBinding]]:
        return done(self.bindings)

    def delete_acls(self, filters: list[Any], request_timeout: float) -> dict[Any, Future[Any]]:
        self.deleted += filters
        return {f: done([]) for f in filters}

    def create_acls(self, bindings: list[Any], request_timeout: float) -> dict[Any, Future[Any]]:
        return {b: done(None) for b in bindings}

    def alter_user_scram_credentials(self, changes: list[Any]) -> dict[Any, Future[Any]]:
        return {c: done(None) for c in changes}


def fake_cluster(fake: FakeAdmin) -> ClusterAdmin:
    admin = ClusterAdmin.__new__(ClusterAdmin)
    admin._admin = fake  # type: ignore[assignment]
    admin._timeout = 1.0
    return admin


def hand_grant(
    name: str,
    principal: str = "User:police",
    host: str = "*",
    rtype: ResourceType = ResourceType.TOPIC,
    pattern: ResourcePatternType = ResourcePatternType.LITERAL,
) -> AclBinding:
    return AclBinding(
        rtype, name, pattern, principal, host, AclOperation.READ, AclPermissionType.ALLOW
    )


def removed(
    grants: Iterable[AclBinding], tmp_path: Path
) -> tuple[list[str], list[tuple[Any, ...]]]:
    """What a dry run lists for removal, and what a real run then deletes (as filters)."""
    fake = FakeAdmin(grants)
    planned = provision(REGISTRY, ADMIN, tmp_path, dry_run=True, admin=fake_cluster(fake))
    listed = [c.subject for c in planned.changes if c.kind == "acl" and c.action == "remove"]
    provision(REGISTRY, ADMIN, tmp_path, admin=fake_cluster(fake))
    deleted = [
        (f.restype, f.name, f.resource_pattern_type, f.principal, f.host, f.operation)
        for f in fake.deleted
    ]
    return listed, deleted


def test_an_acl_for_one_host_is_listed_and_removed_for_that_host(tmp_path: Path) -> None:
    # police may read health-nz's egress, from one host only
    grant = hand_grant(egress("health-nz"), host="10.0.0.5")
    listed, deleted = removed([grant], tmp_path)
    assert listed == [f"User:police READ topic {egress('health-nz')} from 10.0.0.5"]
    assert deleted == [
        (
            ResourceType.TOPIC,
            egress("health-nz"),
            ResourcePatternType.LITERAL,
            "User:police",
            "10.0.0.5",
            AclOperation.READ,
        )
    ]


@pytest.mark.parametrize(
    ("grant", "subject"),
    [
        (hand_grant("*", "User:*"), "User:* READ topic *"),
        (
            hand_grant("other.", "User:*", pattern=ResourcePatternType.PREFIXED),
            "User:* READ topic other.*",
        ),
        (hand_grant("*", "User:other-system"), "User:other-system READ topic *"),
        (
            hand_grant("t", "User:other-system", pattern=ResourcePatternType.PREFIXED),
            "User:other-system READ topic t*",
        ),
        (
            hand_grant("tiaki.egress.", "User:other-system", pattern=ResourcePatternType.PREFIXED),
            "User:other-system READ topic tiaki.egress.*",
        ),
        (
            hand_grant(
                "pol",
                "User:other-system",
                rtype=ResourceType.GROUP,
                pattern=ResourcePatternType.PREFIXED,
            ),
            "User:other-system READ group pol*",
        ),
        (
            hand_grant("*", "User:other-system", rtype=ResourceType.TRANSACTIONAL_ID),
            "User:other-system READ transactional_id *",
        ),
    ],
)
def test_a_wildcard_acl_that_can_reach_tiaki_is_listed_and_removed(
    grant: AclBinding, subject: str, tmp_path: Path
) -> None:
    listed, deleted = removed([grant], tmp_path)
    assert listed == [subject]
    assert len(deleted) == 1


def test_other_systems_acls_are_left_alone(tmp_path: Path) -> None:
    others = [
        hand_grant("orders", "User:other-system"),
        hand_grant("orders.", "User:other-system", pattern=ResourcePatternType.PREFIXED),
        hand_grant(
            "billing.",
            "User:other-system",
            rtype=ResourceType.GROUP,
            pattern=ResourcePatternType.PREFIXED,
        ),
        hand_grant("kafka-cluster", "User:other-system", rtype=ResourceType.BROKER),
    ]
    assert removed(others, tmp_path) == ([], [])


def test_a_matching_cluster_reads_back_as_the_plan(tmp_path: Path) -> None:
    fake = FakeAdmin([])
    report = provision(REGISTRY, ADMIN, tmp_path, dry_run=True, admin=fake_cluster(fake))
    assert not [c for c in report.changes if c.kind in ("acl", "topic")]
    state = fake_cluster(fake).read_state({})
    assert state.acls == fake.state.acls
    assert all(isinstance(a, Acl) and a.host == "*" for a in state.acls)


def test_profiles_name_a_ca_beside_them_so_they_can_be_copied_with_it(tmp_path: Path) -> None:
    """An adapter runs in its own directory and cannot read the admin's CA path: provision
    writes ca.pem beside the profiles, which name it relatively."""
    import json

    from broker.platform import load_profile

    ca = tmp_path / "cluster-ca.pem"
    ca.write_bytes(b"-----BEGIN CERTIFICATE-----\nsynthetic\n-----END CERTIFICATE-----\n")
    admin = ADMIN.model_copy(update={"ssl_cafile": str(ca)})
    profiles = tmp_path / "profiles"
    profiles.mkdir(mode=0o700)
    provision(REGISTRY, admin, profiles, admin=fake_cluster(FakeAdmin([])))
    assert (profiles / "ca.pem").read_bytes() == ca.read_bytes()
    written = json.loads((profiles / "police.json").read_text())
    assert written["ssl_cafile"] == "ca.pem"
    elsewhere = tmp_path / "adapter" / "profiles"  # copied together, as docs/operations.md says
    elsewhere.mkdir(parents=True)
    for name in ("police.json", "ca.pem"):
        (elsewhere / name).write_bytes((profiles / name).read_bytes())
    assert load_profile(elsewhere / "police.json").ssl_cafile == str(elsewhere / "ca.pem")
    ca.write_bytes(b"a new CA")
    provision(REGISTRY, admin, profiles, admin=fake_cluster(FakeAdmin([])))
    assert (profiles / "ca.pem").read_bytes() == b"a new CA"  # every run copies it again


def test_an_unreadable_ca_stops_provision_before_it_changes_the_cluster(tmp_path: Path) -> None:
    """Profiles need the CA: reading it after resetting passwords left principals whose new
    passwords no profile held, reset again by every run."""
    from broker._errors import ProvisionError

    class Watched(FakeAdmin):
        touched = False

        def alter_user_scram_credentials(self, changes: list[Any]) -> dict[Any, Future[Any]]:
            Watched.touched = True
            return super().alter_user_scram_credentials(changes)

    admin = ADMIN.model_copy(update={"ssl_cafile": str(tmp_path / "no-such-ca.pem")})
    with pytest.raises(ProvisionError, match=r"ssl_cafile .*no-such-ca\.pem"):
        provision(REGISTRY, admin, tmp_path, admin=fake_cluster(Watched([])))
    assert not Watched.touched
    assert not list(tmp_path.glob("*.json"))
