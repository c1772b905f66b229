"""``tiaki keys revoke`` keeps a broker key unless told ``--force``.

The broker's keys sealed or signed every item on the review queue and in the quarantine
(kept 30 days) and every delivery an adapter has not read yet (14 days); a revoked key opens
none of them again. The documented rotation once ended by revoking the old broker key, which
made every held share unreadable (it could be neither approved nor declined) and had adapters
dead-letter their backlog as ``key_revoked``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from broker._cli import main
from broker._settings import Settings
from broker.envelope import BROKER, KeyState, KeyStore, Purpose

REGISTRY = Path(__file__).resolve().parents[3] / "policies" / "agencies.yaml"


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> KeyStore:
    monkeypatch.setenv("TIAKI_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TIAKI_REGISTRY", str(REGISTRY))
    assert main(["keys", "init"]) == 0
    assert main(["keys", "rotate", BROKER, "--purpose", "signing"]) == 0
    return KeyStore(Settings.from_env().keys_dir)


def _retiring_broker_key(store: KeyStore) -> str:
    (old,) = [
        k.key_id
        for k in store.load().keys(BROKER)
        if k.purpose is Purpose.SIGNING and k.state is KeyState.RETIRING
    ]
    return old


def test_a_broker_key_is_not_revoked_without_force(
    store: KeyStore, capsys: pytest.CaptureFixture[str]
) -> None:
    old = _retiring_broker_key(store)
    before = store.public_path(BROKER).read_bytes()
    capsys.readouterr()
    assert main(["keys", "revoke", old, "--reason", "routine rotation"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1
    assert captured.err.startswith(
        f"tiaki: error: not revoking {old}: it is a broker key, and the review items,"
        " quarantine records and unread deliveries sealed under it would become unreadable"
    )
    assert "let it expire" in captured.err
    assert captured.err.rstrip().endswith("run again with --force")
    assert store.public_path(BROKER).read_bytes() == before  # nothing written
    assert store.load().get(old).state is KeyState.RETIRING


def test_force_revokes_a_broker_key(store: KeyStore, capsys: pytest.CaptureFixture[str]) -> None:
    old = _retiring_broker_key(store)
    capsys.readouterr()
    assert main(["keys", "revoke", old, "--reason", "key compromised", "--force"]) == 0
    assert capsys.readouterr().out == f"{old} revoked\n"
    revoked = KeyStore(store.root).load().get(old)
    assert (revoked.state, revoked.reason) == (KeyState.REVOKED, "key compromised")


def test_an_agency_key_needs_no_force(store: KeyStore) -> None:
    police = store.load().keys("police")[0].key_id
    assert main(["keys", "revoke", police, "--reason", "laptop stolen"]) == 0
    assert store.load().get(police).state is KeyState.REVOKED


def test_an_unknown_key_is_still_one_line(
    store: KeyStore, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    assert main(["keys", "revoke", "broker.sig.20250101T000000Z.0123abcd", "--force"]) == 1
    err = capsys.readouterr().err
    assert err == "tiaki: error: unknown key broker.sig.20250101T000000Z.0123abcd\n"
