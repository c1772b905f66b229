"""The broker's shared secrets are made once, whole and durably, and never replaced."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from broker._errors import ConfigError
from broker.runtime import _secrets
from broker.runtime._secrets import shared_secret


def test_a_secret_is_made_once_owner_only_and_then_read_back(tmp_path: Path) -> None:
    path = tmp_path / "secrets" / "audit-subject.key"
    first = shared_secret(path)
    assert len(first) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert shared_secret(path) == first
    assert os.listdir(path.parent) == ["audit-subject.key"]  # no temporary file left


def test_a_secret_another_worker_made_first_is_kept_not_replaced(tmp_path: Path) -> None:
    """Two workers starting together: the one that links second reads the first one's."""
    path = tmp_path / "pseudonym.key"
    theirs = b"S" * 32
    _secrets._create(path, theirs)
    _secrets._create(path, b"T" * 32)  # lost the race: must not replace
    assert path.read_bytes() == theirs
    assert shared_secret(path) == theirs
    assert os.listdir(tmp_path) == ["pseudonym.key"]


def test_a_failed_write_leaves_no_secret_and_no_partial_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A disk that fills mid-write: the path never holds part of a secret (a partial key
    would be refused at every start, and a replaced one would orphan the audit's references)."""
    path = tmp_path / "audit-subject.key"

    def full(fd: int, data: object) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(_secrets.os, "write", full)
    with pytest.raises(ConfigError, match="cannot create a broker secret: No space left"):
        shared_secret(path)
    assert os.listdir(tmp_path) == []


def test_a_short_secret_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "audit-subject.key"
    path.write_bytes(b"short")
    path.chmod(0o600)
    with pytest.raises(ConfigError, match="needs 32 bytes"):
        shared_secret(path)


@pytest.mark.parametrize(("file_mode", "folder_mode"), [(0o644, 0o700), (0o600, 0o755)])
def test_a_secret_open_to_others_is_refused_naming_the_mode_to_set(
    tmp_path: Path, file_mode: int, folder_mode: int
) -> None:
    """An existing secret is read only if it and its folder are owner-only, as the key store
    reads private keys: a copy restored 0644 must stop the start, not be shared quietly."""
    folder = tmp_path / "broker-secrets"
    folder.mkdir()
    path = folder / "audit-subject.key"
    path.write_bytes(b"S" * 32)
    os.chmod(path, file_mode)
    os.chmod(folder, folder_mode)
    with pytest.raises(ConfigError, match=r"permissions 0(644|755) are too open") as caught:
        shared_secret(path)
    wanted, where = ("600", path) if file_mode != 0o600 else ("700", folder)
    assert f"chmod {wanted} {where}" in str(caught.value)
