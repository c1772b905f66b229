"""The key lifecycle table, rotation, revocation and the public document format."""

from __future__ import annotations

from datetime import timedelta

import pytest

from broker.envelope import (
    ALLOWED_USES,
    TRANSITIONS,
    Algorithm,
    KeyEvent,
    KeyExpired,
    KeyInfo,
    KeyRevoked,
    KeyRing,
    KeyState,
    KeyStoreError,
    KeyUse,
    Purpose,
    UnknownKey,
)

from .conftest import T0, seeded


def _key(ring: KeyRing, who: str = "police", algorithm: Algorithm = Algorithm.X25519) -> KeyInfo:
    purpose = Purpose.SIGNING if algorithm is Algorithm.ED25519 else Purpose.ENCRYPTION
    return ring.current(who, purpose, algorithm, T0)


def test_transition_table_is_the_whole_lifecycle(ring: KeyRing) -> None:
    info = _key(ring)
    for state in KeyState:
        for event in KeyEvent:
            moved = KeyInfo(**{**info.__dict__, "state": state})
            if (state, event) in TRANSITIONS:
                assert moved.transition(event, T0).state is TRANSITIONS[(state, event)]
            else:
                with pytest.raises(KeyStoreError):
                    moved.transition(event, T0)
    assert ALLOWED_USES[KeyState.ACTIVE] == {KeyUse.PROTECT, KeyUse.ACCEPT}
    assert ALLOWED_USES[KeyState.RETIRING] == {KeyUse.ACCEPT}
    assert not ALLOWED_USES[KeyState.REVOKED]
    assert not ALLOWED_USES[KeyState.EXPIRED]


def test_keys_expire_by_time_without_a_stored_change(ring: KeyRing) -> None:
    info = _key(ring)
    assert info.state_at(info.not_after - timedelta(seconds=1)) is KeyState.ACTIVE
    assert info.state_at(info.not_after) is KeyState.EXPIRED
    with pytest.raises(KeyExpired):
        info.check(KeyUse.ACCEPT, info.not_after)
    assert [k.key_id for k in ring.expire(info.not_after)]  # materialised on request


def test_rotation_retires_old_keys_and_creates_new_ones(ring: KeyRing) -> None:
    old = {k.key_id for k in ring.keys("police")}
    new = ring.rotate("police", T0 + timedelta(hours=1), seeded(5))
    assert {k.algorithm for k in new} == set(Algorithm)
    later = T0 + timedelta(hours=2)
    for key_id in old:
        info = ring.get(key_id)
        assert info.state is KeyState.RETIRING
        assert info.allows(KeyUse.ACCEPT, later)
        assert not info.allows(KeyUse.PROTECT, later)
    assert ring.current("police", Purpose.ENCRYPTION, Algorithm.X25519, later).key_id not in old


def test_rotate_only_one_purpose(ring: KeyRing) -> None:
    new = ring.rotate("police", T0, seeded(5), purposes=[Purpose.SIGNING])
    assert [k.purpose for k in new] == [Purpose.SIGNING]


def test_revocation_is_final_and_refuses_both_uses(ring: KeyRing) -> None:
    info = ring.revoke(_key(ring).key_id, T0, "laptop stolen")
    assert (info.state, info.reason, info.revoked_at) == (KeyState.REVOKED, "laptop stolen", T0)
    for use in KeyUse:
        with pytest.raises(KeyRevoked):
            info.check(use, T0)
    with pytest.raises(KeyStoreError):
        ring.revoke(info.key_id, T0)
    with pytest.raises(KeyRevoked):
        ring.current("police", Purpose.ENCRYPTION, Algorithm.X25519, T0)
    with pytest.raises(UnknownKey):
        ring.revoke("no-such-key", T0)


def test_a_key_is_accepted_only_for_its_owner_and_purpose(ring: KeyRing) -> None:
    key_id = _key(ring, "police").key_id
    with pytest.raises(UnknownKey):
        ring.accepted(key_id, "corrections", Purpose.ENCRYPTION, T0)
    with pytest.raises(UnknownKey):
        ring.accepted(key_id, "police", Purpose.SIGNING, T0)
    ring.bind("police-canterbury", "police")  # an agency whose registry entry says keys: police
    assert ring.accepted(key_id, "police-canterbury", Purpose.ENCRYPTION, T0).key_id == key_id


@pytest.mark.parametrize("algorithm", list(Algorithm))
def test_public_entries_round_trip_through_json(ring: KeyRing, algorithm: Algorithm) -> None:
    info = ring.revoke(_key(ring, algorithm=algorithm).key_id, T0, "test")
    assert KeyInfo.from_json("police", info.to_json()) == info


def test_malformed_entries_are_refused(ring: KeyRing) -> None:
    doc = _key(ring).to_json()
    with pytest.raises(KeyStoreError):
        KeyInfo.from_json("police", {**doc, "purpose": "signing"})
    with pytest.raises(KeyStoreError):
        KeyInfo.from_json("police", {**doc, "public_key": "AAAA"})
    with pytest.raises(KeyStoreError):
        KeyInfo.from_json("police", {k: v for k, v in doc.items() if k != "state"})


def test_update_from_takes_in_rotation_and_revocation_but_never_un_revokes() -> None:
    now, random = T0, seeded(3)
    ring = KeyRing()
    first = ring.generate("police", Algorithm.ED25519, now, random)
    other = ring.generate("msd", Algorithm.ED25519, now, random)
    fresh = KeyRing()
    fresh.add(first)
    fresh.add(other)
    later = now + timedelta(days=1)
    (rotated,) = fresh.rotate("police", later, random, timedelta(days=30), [Purpose.SIGNING])
    fresh.revoke(other.key_id, later, "compromised")

    changed, refused = ring.update_from(fresh)
    assert {i.key_id for i in changed} == {first.key_id, rotated.key_id, other.key_id}
    assert refused == []
    assert ring.get(other.key_id).state is KeyState.REVOKED  # takes effect on the next record
    assert ring.get(rotated.key_id).state is KeyState.ACTIVE
    assert ring.get(first.key_id).state is KeyState.RETIRING
    assert ring.has_private(first.key_id)  # what this ring held stays held
    assert ring.has_private(rotated.key_id)  # and a private half the folder holds comes too

    stale = KeyRing()
    stale.add(other)  # an old copy of the document, from before the revocation
    changed, refused = ring.update_from(stale)
    assert changed == []
    assert [i.key_id for i in refused] == [other.key_id]
    assert ring.get(other.key_id).state is KeyState.REVOKED
    assert ring.update_from(fresh) == ([], [])  # nothing new: nothing changes


@pytest.mark.parametrize(
    "key_id",
    ["Synthetic Person ZZZ0016", "police.sig.x", "a" * 255, "police.sig.20250101T000000Z.zz"],
)
def test_a_key_id_not_in_tiakis_format_is_described_not_repeated(
    ring: KeyRing, key_id: str
) -> None:
    """The sender writes an envelope's key id, and the error reaches the quarantine, the
    sender's refusal notice and the audit log: it must not carry what the sender put there."""
    with pytest.raises(UnknownKey) as refused:
        ring.get(key_id)
    assert key_id not in str(refused.value)
    assert "not in Tiaki's format" in str(refused.value)
    with pytest.raises(UnknownKey) as refused:
        ring.accepted(key_id, "police", Purpose.SIGNING, T0)
    assert key_id not in str(refused.value)


def test_an_unknown_key_id_in_tiakis_format_is_named(ring: KeyRing) -> None:
    key_id = "police.sig.20250101T000000Z.0123abcd"
    with pytest.raises(UnknownKey, match=f"unknown key {key_id}"):
        ring.get(key_id)
