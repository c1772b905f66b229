"""``tiaki keys``: development keys land in TIAKI_HOME with owner-only permissions."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from broker._cli import main
from broker._settings import Settings
from broker.envelope import BROKER, KeyState, KeyStore, Kind, Opener, Sealer
from broker.registry import load_registry

from .conftest import T0

REGISTRY = Path(__file__).resolve().parents[3] / "policies" / "agencies.yaml"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TIAKI_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TIAKI_REGISTRY", str(REGISTRY))
    return tmp_path / "home"


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _principals() -> dict[str, str]:
    registry = load_registry(REGISTRY)
    return {a.id: a.key_ref for a in registry.agencies} | {BROKER: BROKER}


def test_init_creates_keys_for_every_agency_and_the_broker(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["keys", "init"]) == 0
    keys = Settings.from_env().keys_dir
    refs = set(_principals().values())
    assert {p.stem for p in (keys / "public").glob("*.json")} == refs
    for folder in (keys, keys / "public", keys / "private", *(keys / "private").iterdir()):
        assert _mode(folder) == 0o700, folder
    private_files = list((keys / "private").rglob("*.json"))
    assert len(private_files) == 3 * len(refs)
    assert all(_mode(f) == 0o600 for f in private_files)
    doc = json.loads((keys / "public" / "police.json").read_text())
    assert doc["format"] == "tiaki.public-keys/v1"
    assert len(doc["keys"]) == 3
    assert "private" not in json.dumps(doc)
    assert "created" in capsys.readouterr().out


def test_init_is_idempotent_unless_forced(home: Path) -> None:
    assert main(["keys", "init"]) == 0
    before = (Settings.from_env().keys_dir / "public" / "police.json").read_bytes()
    assert main(["keys", "init"]) == 0
    assert (Settings.from_env().keys_dir / "public" / "police.json").read_bytes() == before
    assert main(["keys", "init", "--force"]) == 0
    assert (Settings.from_env().keys_dir / "public" / "police.json").read_bytes() != before


def test_generated_keys_seal_and_open_through_the_registry(home: Path) -> None:
    assert main(["keys", "init"]) == 0
    store = KeyStore(Settings.from_env().keys_dir)
    agency_ring = store.load(_principals(), private_for=["police"])
    broker_ring = store.load(_principals(), private_for=[BROKER])
    now = max(k.created_at for k in agency_ring.keys(owner=None))
    record = Sealer("police", agency_ring).seal(
        b"p",
        kind=Kind.INGRESS,
        topic="tiaki.ingress.police",
        recipient=BROKER,
        event_id="e",
        schema_fingerprint=b"f",
        now=now,
    )
    opened = Opener(BROKER, broker_ring).open(record, topic="tiaki.ingress.police", now=now)
    assert opened.payload == b"p"
    assert not agency_ring.has_private(broker_ring.keys(BROKER)[0].key_id)
    assert now > T0


def test_rotate_list_and_revoke(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keys", "init"]) == 0
    assert main(["keys", "rotate", "corrections", "--purpose", "signing"]) == 0
    store = KeyStore(Settings.from_env().keys_dir)
    ring = store.load()
    states = sorted(k.state.value for k in ring.keys("corrections"))
    assert states == ["active", "active", "active", "retiring"]
    new_id = capsys.readouterr().out.splitlines()[-1].split()[0]
    assert main(["keys", "revoke", new_id, "--reason", "test"]) == 0
    assert KeyStore(store.root).load().get(new_id).state is KeyState.REVOKED
    assert main(["keys", "list", "corrections"]) == 0
    assert "revoked" in capsys.readouterr().out


def test_errors_are_one_line(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keys", "list"]) == 1
    assert main(["keys", "init"]) == 0
    capsys.readouterr()
    assert main(["keys", "revoke", "no-such-key"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("tiaki: error:")
    assert main(["keys", "list", "polce"]) == 1  # once an empty table, exit 0
    assert capsys.readouterr().err.startswith("tiaki: error: no key set 'polce' in ")


def test_private_keys_readable_by_others_are_refused(home: Path) -> None:
    assert main(["keys", "init"]) == 0
    keys = Settings.from_env().keys_dir
    victim = next((keys / "private" / "police").glob("*.json"))
    victim.chmod(0o644)
    assert main(["keys", "rotate", "police"]) == 1


def test_a_revocation_goes_through_while_another_agency_s_document_is_broken(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["keys", "init"]) == 0
    store = KeyStore(Settings.from_env().keys_dir)
    police = store.load().keys("police")[0].key_id
    store.public_path("corrections").write_text("{not json")  # someone else's broken document
    capsys.readouterr()
    assert main(["keys", "revoke", police, "--reason", "compromised"]) == 0
    captured = capsys.readouterr()
    assert f"{police} revoked" in captured.out
    assert "corrections's key document is refused" in captured.err
    ring, refused = KeyStore(store.root).load_each()
    assert ring.get(police).state is KeyState.REVOKED
    assert list(refused) == ["corrections"]
    # A key of the broken key set itself cannot be revoked until its document is fixed.
    assert main(["keys", "revoke", "corrections.sig.20250101T000000Z.0123abcd"]) == 1
    assert "corrections's key document is refused" in capsys.readouterr().err


def test_a_revocation_during_a_rotation_is_not_lost_from_the_document(
    home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Both read the key set's document, change it and write it back: without the folder's
    lock the rotation, writing last, would put back the key the revocation had just revoked."""
    import threading

    from broker.envelope import KeyRing

    assert main(["keys", "init"]) == 0
    store = KeyStore(Settings.from_env().keys_dir)
    victim = next(k.key_id for k in store.load().keys("corrections"))
    rotating, release = threading.Event(), threading.Event()
    rotate = KeyRing.rotate

    def slow_rotate(self: KeyRing, *args: object, **kwargs: object) -> object:
        rotating.set()
        assert release.wait(10)
        return rotate(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(KeyRing, "rotate", slow_rotate)
    codes: dict[str, int] = {}
    rotation = threading.Thread(
        target=lambda: codes.update(rotate=main(["keys", "rotate", "corrections"]))
    )
    revocation = threading.Thread(
        target=lambda: codes.update(revoke=main(["keys", "revoke", victim, "--reason", "test"]))
    )
    rotation.start()
    assert rotating.wait(10)
    revocation.start()
    revocation.join(0.5)
    assert revocation.is_alive()  # waiting for the rotation's lock, not writing beside it
    release.set()
    rotation.join(10)
    revocation.join(10)
    assert codes == {"rotate": 0, "revoke": 0}
    document = json.loads(store.public_path("corrections").read_text())
    states = {k["key_id"]: k["state"] for k in document["keys"]}
    assert states[victim] == "revoked"
    assert sum(state == "active" for state in states.values()) >= 2  # the rotation's new keys


def test_a_command_stuck_holding_the_lock_holds_no_one_for_ever(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A `tiaki keys` command stuck while holding the folder's lock (a hung disk, a stopped
    terminal) used to make every later one wait without end, an incident's revocation too."""
    import fcntl
    import os

    assert main(["keys", "init"]) == 0
    store = KeyStore(Settings.from_env().keys_dir)
    victim = next(k.key_id for k in store.load().keys("corrections"))
    before = store.public_path("corrections").read_bytes()
    capsys.readouterr()
    stuck = os.open(store.root / ".lock", os.O_RDWR)
    try:
        fcntl.flock(stuck, fcntl.LOCK_EX)
        assert main(["keys", "revoke", victim, "--reason", "test", "--wait", "0.3"]) == 1
    finally:
        os.close(stuck)
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("tiaki: note: waiting up to 0.3 s for ")
    assert err[-1].endswith(
        "another `tiaki keys` command has held it for over 0.3 s; nothing was changed. "
        f"Find it (fuser {store.root / '.lock'}) and let it finish or stop it, then run this again"
    )
    assert store.public_path("corrections").read_bytes() == before
    # Once it has let go, the revocation goes through.
    assert main(["keys", "revoke", victim, "--reason", "test", "--wait", "0.3"]) == 0
    assert store.load().get(victim).state is KeyState.REVOKED
