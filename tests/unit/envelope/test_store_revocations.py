"""Revocation is final across restarts: the key folder's revocation list is applied on every
read, so a stale or rolled-back public document cannot bring a revoked key back."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest

from broker.envelope import Algorithm, KeyInfo, KeyRing, KeyState, KeyStore, KeyStoreError
from broker.envelope._store import init_dev_keys

from .conftest import T0

NOW = T0 + timedelta(minutes=1)


@pytest.fixture
def store(tmp_path: Path) -> KeyStore:
    store = KeyStore(tmp_path / "keys")
    init_dev_keys(store, ["police", "zzz"], now=T0)
    return store


def _signing(ring: KeyRing, owner: str) -> KeyInfo:
    return next(k for k in ring.keys(owner) if k.algorithm is Algorithm.ED25519)


def _revoke(store: KeyStore, key_id: str) -> None:
    """What ``tiaki keys revoke`` does."""
    admin = store.load()
    admin.revoke(key_id, NOW, "compromised")
    store.save(admin, [admin.get(key_id).owner])


def test_a_rolled_back_document_cannot_un_revoke_a_key_after_a_restart(store: KeyStore) -> None:
    key = _signing(store.load(), "police")
    backup = store.public_path("police").read_bytes()  # a copy from before the revocation
    _revoke(store, key.key_id)
    store.public_path("police").write_bytes(backup)

    restarted = store.load({"police": "police"}, private_for=["broker"])
    info = restarted.get(key.key_id)
    assert info.state is KeyState.REVOKED
    assert (info.revoked_at, info.reason) == (NOW, "compromised")
    assert stat_mode(store.revoked_path) == 0o600


def test_the_revoked_public_key_under_a_new_key_id_is_revoked_too(store: KeyStore) -> None:
    key = _signing(store.load(), "police")
    _revoke(store, key.key_id)
    doc = json.loads(store.public_path("police").read_text())
    again = {**key.to_json(), "key_id": key.key_id[:-8] + "00000000"}
    doc["keys"].append(again)
    store.public_path("police").write_text(json.dumps(doc))

    assert store.load().get(again["key_id"]).state is KeyState.REVOKED


def test_one_key_set_cannot_revoke_anothers_public_key_by_listing_it(store: KeyStore) -> None:
    """zzz announces police's public key as a key of its own and revokes it: police's key
    (matched by fingerprint only within its own key set) stays in force."""
    ring = store.load()
    police, zzz = _signing(ring, "police"), _signing(ring, "zzz")
    doc = json.loads(store.public_path("zzz").read_text())
    doc["keys"] = [
        {**e, "public_key": police.to_json()["public_key"]} if e["key_id"] == zzz.key_id else e
        for e in doc["keys"]
    ]
    store.public_path("zzz").write_text(json.dumps(doc))
    _revoke(store, zzz.key_id)

    assert store.load().get(police.key_id).state is KeyState.ACTIVE


def test_each_revocation_is_listed_once(store: KeyStore) -> None:
    key = _signing(store.load(), "police")
    _revoke(store, key.key_id)
    store.save(store.load(), ["police"])
    assert store.record_revoked(store.load().keys()) == []
    assert len(store.revoked_path.read_text().splitlines()) == 1


def test_a_torn_last_line_is_ignored_and_cut_before_the_next_append(store: KeyStore) -> None:
    """A crash mid-append leaves a line without its newline: it was never a revocation."""
    police, zzz = _signing(store.load(), "police"), _signing(store.load(), "zzz")
    _revoke(store, police.key_id)
    with store.revoked_path.open("a") as f:
        f.write('{"format": "tiaki.rev')
    assert store.load().get(police.key_id).state is KeyState.REVOKED
    _revoke(store, zzz.key_id)
    lines = store.revoked_path.read_text().splitlines()
    assert [json.loads(line)["key_id"] for line in lines] == [police.key_id, zzz.key_id]


def test_an_unreadable_revocation_is_never_dropped(store: KeyStore) -> None:
    store.revoked_path.write_text("not a revocation\n")
    with pytest.raises(KeyStoreError, match="line 1 is not a revocation"):
        store.load()
    ring, refused = store.load_each(apply_revoked=False)
    assert refused == {}
    assert ring.owners() == ["broker", "police", "zzz"]


def stat_mode(path: Path) -> int:
    return path.stat().st_mode & 0o777
