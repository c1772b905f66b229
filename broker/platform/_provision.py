"""Reconciling a Kafka cluster with the registry: topics, SCRAM principals, ACLs, profiles.

:func:`provision` reads the cluster, works out the changes with the pure
:func:`broker.platform._plan.diff`, and (unless ``dry_run``) applies them. Running it twice
changes nothing the second time. It manages only what is Tiaki's: users it knows (from the
registry or a profile it wrote), and ACLs held by those users or by every user (``User:*``)
or on a resource pattern that can match a Tiaki topic, group or transactional id (see
:func:`_managed`), so it is safe to point at a cluster shared with other systems.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaException
from confluent_kafka.admin import (
    AclBinding,
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewPartitions,
    NewTopic,
    ResourcePatternType,
    ResourceType,
    ScramCredentialInfo,
    ScramMechanism,
    UserScramCredentialAlteration,
    UserScramCredentialDeletion,
    UserScramCredentialUpsertion,
)

from broker._durable import replace_whole
from broker._errors import ProvisionError
from broker.platform import _topics as t
from broker.platform._local import INTERNAL_USER, LocalKafka
from broker.platform._plan import (
    Acl,
    ActualState,
    Change,
    DesiredState,
    TopicState,
    admin_acls,
    desired_state,
    diff,
    topic_config,
)
from broker.platform._profiles import (
    CA_BESIDE,
    Profile,
    load_profile,
    profile_path,
    save_profile,
)
from broker.platform._secrets import new_password
from broker.registry import Registry

_SCRAM_ITERATIONS = 8192
_TIMEOUT = 30.0


@dataclass
class ProvisionReport:
    changes: list[Change] = field(default_factory=list)
    profiles: list[Path] = field(default_factory=list)
    dry_run: bool = False

    @property
    def changed(self) -> bool:
        return any(c.action != "warn" for c in self.changes)


class ClusterAdmin:
    """The few admin calls provisioning needs, with Kafka errors turned into ProvisionError."""

    def __init__(self, profile: Profile, timeout: float = _TIMEOUT) -> None:
        config: dict[str, str | int | float | bool] = dict(profile.librdkafka())
        config["socket.timeout.ms"] = int(timeout * 1000)
        try:
            self._admin = AdminClient(config)
        except KafkaException as exc:  # e.g. a CA file librdkafka cannot read
            error = exc.args[0] if exc.args else exc
            reason = getattr(error, "str", lambda: str(error))()
            raise ProvisionError(
                f"cannot connect as {profile.sasl_plain_username}: {reason}"
            ) from None
        self._timeout = timeout

    def _wait(self, what: str, future: Any) -> Any:
        try:
            return future.result(timeout=self._timeout)
        except KafkaException as exc:
            error = exc.args[0] if exc.args else exc
            reason = getattr(error, "str", lambda: str(error))()
            raise ProvisionError(f"{what}: {reason}") from None
        except TimeoutError:
            raise ProvisionError(
                f"{what}: no answer from Kafka within {self._timeout:.0f}s"
            ) from None

    def _wait_all(self, what: str, futures: Mapping[Any, Any]) -> None:
        for key, future in futures.items():
            self._wait(f"{what} {key}", future)

    def broker_count(self) -> int:
        return len(
            self._wait(
                "describe cluster", self._admin.describe_cluster(request_timeout=self._timeout)
            ).nodes
        )

    def read_state(self, tracked: Mapping[str, Iterable[str]]) -> ActualState:
        try:
            metadata = self._admin.list_topics(timeout=self._timeout)
        except KafkaException as exc:
            raise ProvisionError(f"list topics: {exc.args[0]}") from None
        counts = {
            name: len(meta.partitions)
            for name, meta in metadata.topics.items()
            if name.startswith("tiaki.")
        }
        # The topic's replication factor is its partitions' (the fewest, if a reassignment
        # left them uneven): provisioning must never ask for more replicas in sync than that.
        replicas = {
            name: min(
                (len(p.replicas) for p in metadata.topics[name].partitions.values()), default=0
            )
            for name in counts
        }
        configs: dict[str, dict[str, str]] = {name: {} for name in counts}
        if counts:
            futures = self._admin.describe_configs(
                [ConfigResource(ResourceType.TOPIC, n) for n in counts]
            )
            for resource, future in futures.items():
                entries = self._wait(f"describe configs {resource.name}", future)
                wanted = set(tracked.get(resource.name, ()))
                configs[resource.name] = {
                    k: str(v.value) for k, v in entries.items() if k in wanted
                }
        users = self._wait("describe SCRAM users", self._admin.describe_user_scram_credentials())
        # None matches any name, principal and host (the stubs say str; the docs say None).
        any_acl = AclBindingFilter(
            ResourceType.ANY,
            None,  # type: ignore[arg-type]
            ResourcePatternType.ANY,
            None,  # type: ignore[arg-type]
            None,  # type: ignore[arg-type]
            AclOperation.ANY,
            AclPermissionType.ANY,
        )
        bindings = self._wait(
            "describe ACLs", self._admin.describe_acls(any_acl, request_timeout=self._timeout)
        )
        acls = frozenset(
            Acl(
                b.principal,
                _FROM_LIBRDKAFKA.get(b.restype.name, b.restype.name),
                b.name,
                b.resource_pattern_type.name,
                b.operation.name,
                b.host,
            )
            for b in bindings
            # Every ALLOW, whatever its host: one for a single host grants as much from there.
            if b.permission_type == AclPermissionType.ALLOW
        )
        topics = {
            name: TopicState(count, configs[name], replicas[name]) for name, count in counts.items()
        }
        return ActualState(topics, frozenset(users), acls)

    def create_topics(self, specs: Iterable[Any]) -> None:
        new = [NewTopic(s.name, s.partitions, s.replication, config=dict(s.config)) for s in specs]
        if new:
            self._wait_all(
                "create topic", self._admin.create_topics(new, request_timeout=self._timeout)
            )

    def grow_topic(self, name: str, partitions: int) -> None:
        self._wait_all(
            "add partitions", self._admin.create_partitions([NewPartitions(name, partitions)])
        )

    def set_configs(self, name: str, config: Mapping[str, str]) -> None:
        entries = [
            ConfigEntry(k, v, incremental_operation=AlterConfigOpType.SET)
            for k, v in config.items()
        ]
        resource = ConfigResource(ResourceType.TOPIC, name, incremental_configs=entries)
        self._wait_all("alter configs", self._admin.incremental_alter_configs([resource]))

    def upsert_users(self, passwords: Mapping[str, str]) -> None:
        info = ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, _SCRAM_ITERATIONS)
        changes: list[UserScramCredentialAlteration] = [
            UserScramCredentialUpsertion(u, info, p.encode()) for u, p in passwords.items()
        ]
        if changes:
            self._wait_all(
                "set SCRAM credentials for", self._admin.alter_user_scram_credentials(changes)
            )

    def wait_for_users(self, users: Iterable[str], timeout: float = 30.0) -> None:
        """Wait until the broker's metadata holds credentials for ``users``.

        A credential is written to the controller first and reaches the broker's metadata
        cache a moment later; a client that connects in between fails to authenticate.
        """
        pending = set(users)
        deadline = time.monotonic() + timeout
        while pending:
            known = self._wait(
                "describe SCRAM users", self._admin.describe_user_scram_credentials()
            )
            pending -= set(known)
            if pending and time.monotonic() > deadline:
                raise ProvisionError(
                    f"credentials for {', '.join(sorted(pending))} not visible after {timeout:.0f}s"
                )
            if pending:
                time.sleep(0.1)

    def delete_users(self, users: Iterable[str]) -> None:
        changes: list[UserScramCredentialAlteration] = [
            UserScramCredentialDeletion(u, ScramMechanism.SCRAM_SHA_512) for u in users
        ]
        if changes:
            self._wait_all(
                "delete SCRAM credentials for", self._admin.alter_user_scram_credentials(changes)
            )

    def add_acls(self, acls: Iterable[Acl]) -> None:
        bindings = [_binding(a) for a in acls]
        if bindings:
            self._wait_all(
                "create ACL", self._admin.create_acls(bindings, request_timeout=self._timeout)
            )

    def remove_acls(self, acls: Iterable[Acl]) -> None:
        filters = [_binding(a, AclBindingFilter) for a in acls]
        if filters:
            self._wait_all(
                "delete ACL", self._admin.delete_acls(filters, request_timeout=self._timeout)
            )


#: librdkafka calls Kafka's CLUSTER resource type BROKER.
_TO_LIBRDKAFKA = {"CLUSTER": "BROKER"}
_FROM_LIBRDKAFKA = {v: k for k, v in _TO_LIBRDKAFKA.items()}


def _binding(acl: Acl, cls: Any = AclBinding) -> Any:
    return cls(
        ResourceType[_TO_LIBRDKAFKA.get(acl.resource_type, acl.resource_type)],
        acl.resource_name,
        ResourcePatternType[acl.pattern],
        acl.principal,
        acl.host,
        AclOperation[acl.operation],
        AclPermissionType.ALLOW,
    )


#: Kafka's principal for every user: an ACL for it grants Tiaki's principals too.
_ANY_USER = "User:*"


#: Every Tiaki topic, and the broker's groups and transactional ids, start with this; any
#: other resource named so is taken for Tiaki's too.
_TIAKI = "tiaki"
#: The resource types whose names Tiaki's clients use: an ACL on a pattern that merely could
#: cover one of Tiaki's names (``*``, ``t``) grants access to it.
_NAMED = ("TOPIC", "GROUP", "TRANSACTIONAL_ID")


def _can_match(acl: Acl, desired: DesiredState) -> bool:
    """Whether ``acl``'s resource pattern covers some name of a Tiaki topic, group or id.

    A literal ``*`` covers every name; a prefixed pattern covers a Tiaki name if it is a
    prefix of one (``t``, ``tiaki.``, ``pol`` for ``police.`` groups) or one is a prefix of it
    (``tiaki.egress.``).
    """
    name = acl.resource_name
    if acl.resource_type not in _NAMED:
        return name.startswith(_TIAKI)
    prefixes = [_TIAKI]
    if acl.resource_type == "GROUP":
        prefixes += [t.group_prefix(p) for p in desired.principals]
    if acl.pattern == "LITERAL":
        return name == "*" or name.startswith(tuple(prefixes))
    return any(p.startswith(name) or name.startswith(p) for p in prefixes)


def _managed(state: ActualState, desired: DesiredState, profiles_dir: Path) -> ActualState:
    """Restrict ``state`` to what Tiaki manages, so other systems' users and ACLs are left alone.

    An ACL is Tiaki's if it is held by a Tiaki user or by every user, or if its resource
    pattern can match a Tiaki topic, group or transactional id: any of these can grant access
    to Tiaki's data, so one the registry does not call for is listed and removed.
    """
    known = set(desired.principals) | {p.stem for p in profiles_dir.glob("*.json")}
    # Users are removed only for an ACL naming a Tiaki resource outright: a user of another
    # system who was granted ``*`` loses that ACL, not its credentials.
    holders = {
        a.principal.removeprefix("User:") for a in state.acls if a.resource_name.startswith("tiaki")
    }
    users = frozenset(u for u in state.principals if u in known or u in holders)
    managed_users = {t.user(u) for u in users | set(desired.principals)} | {_ANY_USER}
    acls = frozenset(
        a for a in state.acls if a.principal in managed_users or _can_match(a, desired)
    )
    return ActualState(state.topics, users, acls)


def provision(
    registry: Registry,
    admin_profile: Profile,
    profiles_dir: Path,
    *,
    dry_run: bool = False,
    partitions: int = 3,
    admin: ClusterAdmin | None = None,
) -> ProvisionReport:
    """Reconcile the cluster behind ``admin_profile`` with ``registry``; write profiles."""
    ca = _read_ca(admin_profile)  # before anything changes: the profiles need it
    admin = admin or ClusterAdmin(admin_profile)
    desired = desired_state(registry, admin.broker_count(), partitions)
    tracked = {name: spec.config.keys() for name, spec in desired.topics.items()}
    actual = _managed(admin.read_state(tracked), desired, profiles_dir)
    changes = diff(desired, actual, protected=(INTERNAL_USER, admin_profile.sasl_plain_username))

    # A principal that exists but whose profile is lost gets a new password (and profile).
    passwords: dict[str, str] = {}
    for name in sorted(desired.principals):
        existing = _existing_password(profiles_dir, name, admin_profile)
        if name in actual.principals and existing is not None:
            continue
        if name in actual.principals and name == admin_profile.sasl_plain_username:
            continue  # never rotate the credential provisioning itself is using
        passwords[name] = existing or new_password()
        if name in actual.principals:
            changes.append(Change("alter", "principal", name, "password reset: no profile found"))
    report = ProvisionReport(changes=changes, dry_run=dry_run)
    if dry_run:
        return report

    grow = [
        c
        for c in changes
        if c.kind == "topic" and c.action == "alter" and c.detail.startswith("partitions")
    ]
    admin.create_topics(
        desired.topics[c.subject] for c in changes if c.kind == "topic" and c.action == "create"
    )
    for change in grow:
        admin.grow_topic(change.subject, desired.topics[change.subject].partitions)
    for name in sorted(
        {c.subject for c in changes if c.kind == "topic" and c.action == "alter"}
        - {c.subject for c in grow}
    ):
        # Within the replicas the topic has, not the cluster's size (see topic_config).
        admin.set_configs(name, topic_config(desired.topics[name], actual.topics[name].replication))
    admin.upsert_users(passwords)
    admin.wait_for_users(passwords)
    removed = [c.subject for c in changes if c.kind == "principal" and c.action == "remove"]
    admin.delete_users(removed)
    admin.remove_acls(c.acl for c in changes if c.kind == "acl" and c.action == "remove" and c.acl)
    admin.add_acls(c.acl for c in changes if c.kind == "acl" and c.action == "add" and c.acl)

    ca_beside = _copy_ca(ca, admin_profile, profiles_dir)
    for name in sorted(desired.principals):
        path = profile_path(profiles_dir, name)
        if name in passwords or not path.exists():
            password = passwords.get(name) or admin_profile.sasl_plain_password
            profile = _profile_for(admin_profile, name, password)
            save_profile(path, profile.model_copy(update={"ssl_cafile": ca_beside}))
            report.profiles.append(path)
    for name in removed:
        profile_path(profiles_dir, name).unlink(missing_ok=True)
    return report


def _read_ca(admin_profile: Profile) -> bytes:
    """The admin profile's CA certificate, or :class:`ProvisionError` in one line."""
    try:
        return Path(admin_profile.ssl_cafile).read_bytes()
    except OSError as exc:
        raise ProvisionError(
            f"the admin profile's ssl_cafile {admin_profile.ssl_cafile}: {exc.strerror}"
            " (it must be the CA certificate file)"
        ) from None


def _copy_ca(data: bytes, admin_profile: Profile, profiles_dir: Path) -> str:
    """Write the admin profile's CA certificate (``data``) as ``ca.pem`` in ``profiles_dir``
    (again on every run, so a new CA reaches it) and return the name the profiles written
    beside it use for it: relative, so a profile and ``ca.pem`` copied together still
    connect."""
    source = Path(admin_profile.ssl_cafile)
    target = profiles_dir / CA_BESIDE
    stale = not target.exists() or target.read_bytes() != data
    if source.resolve() != target.resolve() and stale:
        replace_whole(target, data, 0o644)  # a certificate, public; its folder is 0700
    return CA_BESIDE


def _existing_password(profiles_dir: Path, name: str, admin_profile: Profile) -> str | None:
    if name == admin_profile.sasl_plain_username:
        return admin_profile.sasl_plain_password
    path = profile_path(profiles_dir, name)
    if not path.exists():
        return None
    profile = load_profile(path)
    if profile.bootstrap_servers != admin_profile.bootstrap_servers:
        return None  # a profile for another cluster
    return profile.sasl_plain_password


def _profile_for(admin_profile: Profile, name: str, password: str) -> Profile:
    return admin_profile.model_copy(
        update={"sasl_plain_username": name, "sasl_plain_password": password}
    )


def bootstrap_admin(
    bootstrap: str, ca_file: Path, credentials: Mapping[str, str], profiles_dir: Path
) -> Path:
    """On a cluster Tiaki started itself: grant ``admin`` its ACLs and write its profile.

    Uses the ``internal`` super user, whose password never leaves the Kafka state folder.
    Creating an ACL that exists is a no-op, so this is idempotent.
    """
    internal = Profile(
        bootstrap_servers=bootstrap,
        sasl_plain_username=INTERNAL_USER,
        sasl_plain_password=credentials[INTERNAL_USER],
        ssl_cafile=str(ca_file),
    )
    ClusterAdmin(internal).add_acls(sorted(admin_acls()))
    path = profile_path(profiles_dir, t.ADMIN)
    save_profile(path, _profile_for(internal, t.ADMIN, credentials[t.ADMIN]))
    return path


def start_provisioned(
    kafka: LocalKafka,
    registry: Registry,
    profiles_dir: Path,
    *,
    timeout: float = 180.0,
    die_with_parent: bool = False,
    partitions: int = 3,
) -> Profile:
    """Start ``kafka``, grant the admin principal its ACLs and provision ``registry`` onto it
    (what ``tiaki kafka up`` then ``tiaki provision`` do); return the admin profile."""
    kafka.up(timeout=timeout, die_with_parent=die_with_parent)
    admin = load_profile(
        bootstrap_admin(kafka.bootstrap, kafka.tls.ca_cert, kafka.credentials(), profiles_dir)
    )
    provision(registry, admin, profiles_dir, partitions=partitions)
    return admin
