"""The running broker follows its key folder key set by key set: a broken or refused document
holds back only its own key set, never another's revocation."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from broker.envelope import Algorithm, KeyRevoked, KeyStore, KeyStoreError, KeyUse, Purpose
from broker.envelope._store import init_dev_keys
from broker.runtime._metrics import BrokerMetrics
from broker.runtime._service import observe_refused, refresh_keys

T0 = datetime(2025, 6, 1, 9, 0, tzinfo=UTC)
PRINCIPALS = {"police": "police", "corrections": "corrections", "broker": "broker"}


@pytest.mark.parametrize(
    "broken",
    [
        "{not json",
        '{"format": "tiaki.public-keys/v1", "owner": "corrections", "keys": [1]}',
        '{"format": "tiaki.public-keys/v1", "owner": "someone-else", "keys": []}',
    ],
)
def test_a_revocation_applies_while_another_key_sets_document_is_broken(
    tmp_path: Path, broken: str
) -> None:
    store = KeyStore(tmp_path / "keys")
    init_dev_keys(store, ["police", "corrections"], now=T0)
    now = T0 + timedelta(minutes=1)
    ring = store.load(PRINCIPALS, private_for=["broker"])
    police = ring.current("police", Purpose.SIGNING, Algorithm.ED25519, now)
    corrections = ring.keys("corrections")

    admin = store.load()  # tiaki keys revoke
    admin.revoke(police.key_id, now, "compromised")
    store.save(admin, ["police"])
    store.public_path("corrections").write_text(broken)

    refused = refresh_keys(store, PRINCIPALS, ring)

    assert list(refused) == ["corrections"]
    assert isinstance(refused["corrections"], KeyStoreError)
    with pytest.raises(KeyRevoked):
        ring.accepted(police.key_id, "police", Purpose.SIGNING, now)
    assert ring.keys("corrections") == corrections  # the broken key set's keys stay in force
    assert all(k.allows(KeyUse.ACCEPT, now) for k in corrections)

    # Operators see which key set's document is refused, and that the others are not.
    metrics = BrokerMetrics(CollectorRegistry())
    observe_refused(metrics, PRINCIPALS, refused)
    value = metrics.registry.get_sample_value
    assert value("tiaki_key_documents_refused", {"agency": "corrections"}) == 1
    assert value("tiaki_key_documents_refused", {"agency": "police"}) == 0
    observe_refused(metrics, PRINCIPALS, {})  # fixed: back to 0
    assert value("tiaki_key_documents_refused", {"agency": "corrections"}) == 0


def test_a_revocation_taken_in_live_outlasts_a_rolled_back_document(tmp_path: Path) -> None:
    """The agency (not ``tiaki keys revoke``) hands over a document with its key revoked; the
    broker takes it in and writes it down, so a later rollback is refused after a restart."""
    store = KeyStore(tmp_path / "keys")
    init_dev_keys(store, ["police", "corrections"], now=T0)
    now = T0 + timedelta(minutes=1)
    ring = store.load(PRINCIPALS, private_for=["broker"])
    police = ring.current("police", Purpose.SIGNING, Algorithm.ED25519, now)
    backup = store.public_path("police").read_text()
    doc = json.loads(backup)
    for entry in doc["keys"]:
        if entry["key_id"] == police.key_id:
            entry.update(state="revoked", revoked_at=now.isoformat(), reason="compromised")
    store.public_path("police").write_text(json.dumps(doc))

    assert refresh_keys(store, PRINCIPALS, ring) == {}
    store.public_path("police").write_text(backup)  # rolled back

    restarted = store.load(PRINCIPALS, private_for=["broker"])
    with pytest.raises(KeyRevoked):
        restarted.accepted(police.key_id, "police", Purpose.SIGNING, now)


def test_an_unreadable_revocation_list_still_lets_document_revocations_in(
    tmp_path: Path,
) -> None:
    store = KeyStore(tmp_path / "keys")
    init_dev_keys(store, ["police", "corrections"], now=T0)
    now = T0 + timedelta(minutes=1)
    ring = store.load(PRINCIPALS, private_for=["broker"])
    police = ring.current("police", Purpose.SIGNING, Algorithm.ED25519, now)
    admin = store.load()
    admin.revoke(police.key_id, now, "compromised")
    store.save(admin, ["police"])
    store.revoked_path.write_text("garbage\n")

    refresh_keys(store, PRINCIPALS, ring)
    with pytest.raises(KeyRevoked):
        ring.accepted(police.key_id, "police", Purpose.SIGNING, now)
