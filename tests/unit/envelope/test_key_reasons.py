"""A key document's ``reason`` is text or absent: anything else once stopped every worker.

A key is a frozen value and gets hashed; a ``reason`` that is a JSON list or object made it
unhashable, and the broker's keys task, which kept refused keys in a set, failed on it and
took the worker down with it. The document is refused now (its key set's keys in force are
kept), and the broker remembers refusals by what they are about, not by the whole key.
"""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from broker.envelope import KeyInfo, KeyState, KeyStore, KeyStoreError, init_dev_keys
from broker.runtime._service import RefusalsOnce, refresh_keys

from .conftest import T0, make_ring

PRINCIPALS = {"police": "police", "corrections": "corrections", "broker": "broker"}


@pytest.mark.parametrize("reason", [["see ticket", 42], {"ticket": "OPS-1"}, 7, True])
def test_a_reason_that_is_not_text_is_a_malformed_key_entry(reason: object) -> None:
    doc = make_ring().keys("police")[0].to_json()
    with pytest.raises(KeyStoreError) as info:
        KeyInfo.from_json("police", {**doc, "reason": reason})
    message = str(info.value)
    assert message == f"key {doc['key_id']} in key set 'police': its reason is not text"
    assert "ticket" not in message  # what the document says is not repeated


def test_the_error_describes_a_key_id_not_in_tiaki_s_format() -> None:
    doc = make_ring().keys("police")[0].to_json()
    with pytest.raises(KeyStoreError) as info:
        KeyInfo.from_json("police", {**doc, "key_id": "x\n" * 3, "reason": ["r"]})
    assert str(info.value) == (
        "key (a key id not in Tiaki's format, 6 bytes) in key set 'police': its reason is not text"
    )


@pytest.mark.parametrize("reason", ["compromised", None])
def test_a_text_reason_or_none_is_kept(reason: str | None) -> None:
    doc = make_ring().keys("police")[0].to_json()
    assert KeyInfo.from_json("police", {**doc, "reason": reason}).reason == reason
    assert KeyInfo.from_json("police", doc).reason is None


def test_a_document_with_such_a_reason_refuses_its_key_set_only(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys")
    init_dev_keys(store, ["police", "corrections"], now=T0)
    ring = store.load(PRINCIPALS, private_for=["broker"])
    before = {k.key_id: k for k in ring.keys("police")}
    path = store.public_path("police")
    doc = json.loads(path.read_text())
    entry = doc["keys"][0]
    entry["reason"] = ["see ticket", 42]
    # ... and a change no document may make (another public key under the id), which the
    # broker used to refuse key by key, so that the key reached the set of refusals.
    other = next(k for k in make_ring(seed=9).keys("police") if k.algorithm == entry["algorithm"])
    entry["public_key"] = other.to_json()["public_key"]
    path.write_text(json.dumps(doc))
    told: list[tuple[list[str], list[str]]] = []

    def note(at: datetime, changed: Any, refused: Any) -> None:
        told.append(([i.key_id for i in changed], [i.key_id for i in refused]))

    refused = refresh_keys(store, PRINCIPALS, ring, RefusalsOnce(note))
    assert list(refused) == ["police"]
    assert "its reason is not text" in str(refused["police"])
    assert {k.key_id: k for k in ring.keys("police")} == before
    assert told == []


def test_refusals_are_noted_once_whatever_the_refused_key_carries() -> None:
    """The refused keys come from a document as written: one with an unhashable ``reason``
    (made here directly, as no reader lets one through any more) is noted, once."""
    key = make_ring().keys("police")[0]
    odd = replace(key, reason=["see ticket", 42])
    told: list[tuple[list[str], list[str]]] = []

    def note(at: datetime, changed: Any, refused: Any) -> None:
        told.append(([i.key_id for i in changed], [i.key_id for i in refused]))

    once = RefusalsOnce(note)
    for _ in range(3):
        once(T0, [], [odd])
    assert told == [([], [key.key_id])]
    # Another refusal of the same key (another state, or another public key) is noted anew.
    revoked = replace(odd, state=KeyState.REVOKED, revoked_at=T0)
    once(T0, [], [revoked])
    other_public = replace(odd, public=make_ring(seed=9).keys("police")[0].public)
    once(T0, [], [other_public])
    assert told == [([], [key.key_id])] * 3
    # A refusal that stops and comes back is noted again, as before.
    once(T0 + timedelta(seconds=5), [], [])
    once(T0 + timedelta(seconds=10), [], [other_public])
    assert len(told) == 4
