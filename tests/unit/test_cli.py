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
        (  # free text would name an audit chain for good
            ["broker", "run", "--worker-id", "Synthetic Person"],
            1,
            "tiaki: error: worker id 'Synthetic Person': use 1 to 48 letters, digits,",
        ),
        (["broker", "run", "--worker-id", ""], 1, "tiaki: error: worker id '': use 1 to 48"),
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
        == "tiaki: error: invalid setting TIAKI_KAFKA_PORT='not-a-port': Input should be a valid integer, unable to parse string as an integer\n"
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


# -- the system says no: one line naming what and where, never a traceback ------------------


def _one_line(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 1, err
    assert "Traceback" not in err
    assert err.count("\n") == 1, err
    return err


def test_keys_init_in_an_unusable_home_is_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Caught at the top: broker/envelope/_store.py raises the OSError itself."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("TIAKI_HOME", str(blocker / "home"))
    err = _one_line(["keys", "init"], capsys)
    assert err.startswith("tiaki: error: cannot use a file or folder: Not a directory (")
    assert str(blocker) in err


def test_an_os_error_names_what_why_and_where() -> None:
    import errno

    from broker._cli import os_error_line

    denied = PermissionError(errno.EACCES, "Permission denied", "/srv/tiaki/keys")
    assert os_error_line(denied) == (
        "cannot use a file or folder: Permission denied (/srv/tiaki/keys)"
    )
    taken = OSError(errno.EADDRINUSE, "Address already in use")
    assert os_error_line(taken) == (
        "cannot listen on the port (is another process using it?): Address already in use"
    )


def test_a_taken_port_from_any_command_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """As ``tiaki broker run`` meets its metrics port taken (its service is not changed)."""
    import errno

    import broker.policy._cli as policy_cli

    def taken(_out: Path) -> str:
        raise OSError(errno.EADDRINUSE, "Address already in use")

    monkeypatch.setattr(policy_cli, "generate_officer_key", taken)
    err = _one_line(["policy", "keygen", "--officer", "a", "--out", "k"], capsys)
    assert err == (
        "tiaki: error: cannot listen on the port (is another process using it?): "
        "Address already in use\n"
    )


def test_policy_keygen_to_an_unwritable_place_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    out = blocker / "officers" / "a.key"
    err = _one_line(["policy", "keygen", "--officer", "a", "--out", str(out)], capsys)
    assert err == f"tiaki: error: cannot write the key to {out}: Not a directory\n"


def test_adapter_metrics_port_taken_is_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import socket

    root = Path(__file__).resolve().parents[2]
    monkeypatch.setenv("TIAKI_HOME", str(tmp_path))
    monkeypatch.setenv("TIAKI_REGISTRY", str(root / "policies" / "agencies.yaml"))
    monkeypatch.setenv("TIAKI_SCHEMAS", str(root / "schemas"))
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        config = tmp_path / "adapter.yaml"
        config.write_text(f"agency: police\nmetrics_port: {port}\n")
        err = _one_line(["adapter", "run", "--agency", "police", "--config", str(config)], capsys)
    assert err.startswith(
        f"tiaki: error: cannot serve metrics on 127.0.0.1:{port} (metrics_port): "
    )


@pytest.mark.parametrize(
    "argv",
    [
        ["keys", "revoke", "police.sig.20250101T000000Z.0123abcd", "--reason", "\udcff"],
        ["audit", "query", "--operator", "\udcff"],
        ["policy", "validate", "policies-\udcfe"],
    ],
)
def test_an_argument_that_is_not_utf8_is_refused_before_anything_runs(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """Bytes that are not UTF-8 reach Python as lone surrogates (``$'\\xff'`` in a shell):
    they used to fail at the first write, a revocation's reason in the key document or the
    operator's name in the audit index, with a traceback and the act lost."""
    assert main(argv) == 2
    position = next(i for i, a in enumerate(argv, 1) if not a.isascii())
    assert capsys.readouterr().err == f"tiaki: argument {position} is not UTF-8 text\n"
