"""What ``tiaki adapter check`` accepts, ``run`` can start with: a CSV folder source names an
event type the schemas have, and its template is a readable JSON object; ``run`` turns what
slips through into one line, never a traceback."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from adapters import AdapterConfigError, InMemoryConnection
from adapters._config import FolderSourceConfig, load_config
from adapters._runner import Adapter
from broker._cli import main
from broker.envelope import KeyStore, init_dev_keys
from broker.transport import InMemoryCluster
from tests.unit.adapters.conftest import ROOT, SCHEMAS

CSV = "agency: police\nsources:\n  - kind: folder\n    path: x\n    format: csv\n"


@pytest.fixture
def home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setenv("TIAKI_HOME", str(tmp_path))
    monkeypatch.setenv("TIAKI_REGISTRY", str(ROOT / "policies" / "agencies.yaml"))
    monkeypatch.setenv("TIAKI_SCHEMAS", str(ROOT / "schemas"))
    return tmp_path


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ("", "3:5: sources.0: a CSV folder source needs an event_type"),
        (
            "    event_type: NoSuchEvent\n",
            "6:5: sources.0.event_type: no event schema named 'NoSuchEvent'",
        ),
        (
            "    event_type: FamilyHarmEpisodeReport\n    template: '{home}/missing.json'\n",
            "7:5: sources.0.template: {home}/missing.json: cannot read the CSV template",
        ),
        (
            "    event_type: FamilyHarmEpisodeReport\n    template: '{config_dir}/list.json'\n",
            "7:5: sources.0.template: {home}/list.json: the CSV template must be a JSON object",
        ),
    ],
)
def test_check_refuses_what_run_cannot_start(
    home: Path, extra: str, expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    (home / "list.json").write_text("[1, 2]")
    path = home / "adapter.yaml"
    path.write_text(CSV + extra)
    assert main(["adapter", "check", "--config", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"tiaki: error: {path}:{expected.replace('{home}', str(home))}"), err
    assert err.count("\n") == 1
    assert "Traceback" not in err


def test_check_accepts_a_complete_csv_source(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (home / "t.json").write_text('{"header": {}}')
    path = home / "adapter.yaml"
    path.write_text(
        CSV + "    event_type: FamilyHarmEpisodeReport\n    template: '{home}/t.json'\n"
    )
    assert main(["adapter", "check", "--config", str(path)]) == 0
    assert "ok (police: 1 source(s)" in capsys.readouterr().out


def test_run_turns_a_source_it_cannot_build_into_one_line(tmp_path: Path) -> None:
    """Built from a configuration that skipped the loader's checks, the runner says what is
    wrong as an AdapterConfigError (one line at the command line), not a ValueError."""
    keys = tmp_path / "keys"
    init_dev_keys(KeyStore(keys), {"police"}, now=dt.datetime.now(dt.UTC))
    path = tmp_path / "adapter.yaml"
    path.write_text(f'agency: police\nkeys: "{keys}"\n')
    # model_construct skips validation, as a configuration built in code might
    bad = FolderSourceConfig.model_construct(
        kind="folder", path="x", format="csv", event_type=None, template=None, columns={}
    )
    config = load_config(path).model_copy(update={"sources": [bad]})
    with pytest.raises(AdapterConfigError, match="folder source x: a CSV folder source needs"):
        Adapter.from_config(
            config,
            home=tmp_path,
            schemas=SCHEMAS,
            connection=InMemoryConnection(InMemoryCluster.provisioned(["police"])),
        )
