"""A key folder is read key set by key set: a document may describe only its own keys, with
well-formed public keys, and one that does not is refused on its own."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import pytest

from broker.envelope import Algorithm, KeyInfo, KeyRing, KeyStore, KeyStoreError, Purpose
from broker.envelope._keys import b64
from broker.envelope._store import init_dev_keys

from .conftest import T0

#: Curve25519's small-order points (the ones libsodium refuses), and one with the top bit set.
SMALL_ORDER = [
    "00" * 32,
    "01" + "00" * 31,
    "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
    "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
    "ec" + "ff" * 30 + "7f",
    "ed" + "ff" * 30 + "7f",
    "ee" + "ff" * 30 + "7f",
    "00" * 31 + "80",
]
PRINCIPALS = {"police": "police", "zzz": "zzz", "broker": "broker"}


def _key(ring: KeyRing, owner: str, algorithm: Algorithm) -> KeyInfo:
    return next(k for k in ring.keys(owner) if k.algorithm is algorithm)


@pytest.fixture
def store(tmp_path: Path) -> KeyStore:
    store = KeyStore(tmp_path / "keys")
    init_dev_keys(store, ["police", "zzz"], now=T0)
    return store


def _edit(store: KeyStore, ref: str, edit: object) -> None:
    path = store.public_path(ref)
    doc = json.loads(path.read_text())
    edit(doc)  # type: ignore[operator]
    path.write_text(json.dumps(doc))


@pytest.mark.parametrize("point", SMALL_ORDER)
@pytest.mark.parametrize("algorithm", [Algorithm.X25519, Algorithm.MLKEM768_X25519])
def test_a_small_order_x25519_public_key_is_refused_naming_the_key(
    ring: KeyRing, algorithm: Algorithm, point: str
) -> None:
    """Every shared secret with such a point is guessable: a record sealed to it is open to
    anyone, so the document carrying one is refused when it is read."""
    info = _key(ring, "police", algorithm)
    doc = info.to_json()
    doc["public_key"] = b64(info.public[:-32] + bytes.fromhex(point))
    with pytest.raises(KeyStoreError, match=f"key {info.key_id}: .*small-order"):
        KeyInfo.from_json("police", doc)


def test_a_document_may_not_carry_another_key_sets_key_id(store: KeyStore) -> None:
    """zzz's document listing the broker's key id would replace the broker's key (and drop
    its private half): zzz's document is refused, the broker's key stays the broker's."""
    ring = store.load(PRINCIPALS, private_for=["broker"])
    broker_key = _key(ring, "broker", Algorithm.X25519)
    zzz_key = _key(ring, "zzz", Algorithm.X25519)

    def borrow(doc: dict[str, list[dict[str, str]]]) -> None:
        doc["keys"].append({**zzz_key.to_json(), "key_id": broker_key.key_id})

    _edit(store, "zzz", borrow)
    fresh, refused = store.load_each(PRINCIPALS, private_for=["broker"])
    assert list(refused) == ["zzz"]
    assert f"'{broker_key.key_id}' in key set 'zzz'" in str(refused["zzz"])
    assert fresh.get(broker_key.key_id) == broker_key
    assert fresh.has_private(broker_key.key_id)
    assert fresh.keys("zzz") == []  # the refused key set is taken not at all
    assert fresh.keys("police") == ring.keys("police")
    with pytest.raises(KeyStoreError, match="key set 'zzz'"):
        store.load(PRINCIPALS, private_for=["broker"])  # a start is all or nothing


@pytest.mark.parametrize(
    "key_id",
    [
        "zzz.enc.20250601T090000Z.0000000g",  # not hex
        "zzz.sig.20250601T090000Z.00000000",  # the wrong purpose
        "zz.enc.20250601T090000Z.00000000",
        "zzz.x.enc.20250601T090000Z.00000000",  # another owner's shape
    ],
)
def test_a_key_id_must_be_its_owners_and_purposes(ring: KeyRing, key_id: str) -> None:
    doc = {**_key(ring, "police", Algorithm.X25519).to_json(), "key_id": key_id}
    with pytest.raises(KeyStoreError, match=re.escape("need an id zzz.enc.<UTC time>.<8 hex>")):
        KeyInfo.from_json("zzz", doc)


def test_a_key_listed_twice_in_one_document_is_refused(store: KeyStore) -> None:
    _edit(store, "police", lambda doc: doc["keys"].append(doc["keys"][0]))
    _, refused = store.load_each(PRINCIPALS)
    assert list(refused) == ["police"]
    assert "listed twice" in str(refused["police"])


def test_a_broken_document_refuses_only_its_own_key_set(store: KeyStore) -> None:
    store.public_path("zzz").write_text("{not json")
    ring, refused = store.load_each(PRINCIPALS, private_for=["broker"])
    assert list(refused) == ["zzz"]
    assert ring.keys("zzz") == []
    assert ring.owners() == ["broker", "police"]
    assert ring.principals == PRINCIPALS


def test_a_missing_key_set_of_a_principal_is_refused(store: KeyStore) -> None:
    _, refused = store.load_each({**PRINCIPALS, "msd": "msd"})
    assert list(refused) == ["msd"]
    with pytest.raises(KeyStoreError, match="no public keys for 'msd'"):
        store.load({**PRINCIPALS, "msd": "msd"})


def test_update_from_never_changes_what_a_key_id_stands_for(ring: KeyRing) -> None:
    """A document that gives a known key id another public key is not about the same key."""
    info = _key(ring, "police", Algorithm.X25519)
    other = _key(ring, "corrections", Algorithm.X25519)
    fresh = KeyRing()
    fresh.add(replace(info, public=other.public))
    changed, refused = ring.update_from(fresh)
    assert changed == []
    assert [k.key_id for k in refused] == [info.key_id]
    assert ring.get(info.key_id) == info
    assert ring.get(info.key_id).purpose is Purpose.ENCRYPTION
