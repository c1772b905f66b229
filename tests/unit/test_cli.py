"""Bad input to the command line gets a one-line message and a non-zero exit, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker._cli import main


@pytest.mark.parametrize(
    ("argv", "code", "starts"),
    [
        (["bogus"], 2, "tiaki: No such command 'bogus'."),
        (["registry", "check", "--colour"], 2, "tiaki: No such option: --colour"),
        (["provision", "--partitions", "zero"], 2, "tiaki: Invalid value for '--partitions'"),
        (
            ["registry", "check", "/nonexistent/agencies.yaml"],
            1,
            "tiaki: error: /nonexistent/agencies.yaml:1:1: cannot read file",
        ),
        (
            ["quarantine", "list", "--format", "xml"],
            1,
            "tiaki: error: --format must be one of table, json",
        ),
        (
            [
                "quarantine",
                "resolve",
                "0:1",
                "--outcome",
                "deleted",
                "--operator",
                "S",
                "--justification",
                "t",
            ],
            1,
            "tiaki: error: --outcome must be one of resent, dismissed",
        ),
        (["quarantine", "resolve", "0:1"], 2, "tiaki: Missing option '--outcome'."),
        (  # the review queue's transactional id: such a worker would fence reviewers' acts
            ["broker", "run", "--worker-id", "act-review"],
            1,
            "tiaki: error: worker id 'act-review': ids starting 'act-' are the review and",
        ),
    ],
)
def test_bad_input_is_one_line(
    argv: list[str], code: int, starts: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == code
    err = capsys.readouterr().err
    assert err.startswith(starts), err
    assert err.count("\n") == 1


def test_bad_setting_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TIAKI_KAFKA_PORT", "not-a-port")
    assert main(["kafka", "status"]) == 1
    assert (
        capsys.readouterr().err
        == "tiaki: error: invalid setting kafka_port: Input should be a valid integer, unable to parse string as an integer\n"
    )


def test_missing_profile_is_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TIAKI_HOME", str(tmp_path))
    assert main(["provision", "--dry-run"]) == 1
    assert "no such profile (run `tiaki kafka up` and `tiaki provision`)" in capsys.readouterr().err


def test_registry_check_passes_on_the_shipped_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["registry", "check"]) == 0
    assert capsys.readouterr().out.startswith("ok: 9 agencies")


def test_exit_code_of_a_command_is_kept(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TIAKI_HOME", str(tmp_path))
    monkeypatch.setenv("TIAKI_KAFKA_PORT", "39193")
    assert main(["kafka", "status"]) == 1
    assert capsys.readouterr().out == "stopped\n"
