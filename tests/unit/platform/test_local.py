"""The local Kafka's configuration and tool checks (no Java started here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker._cli import main
from broker._errors import MissingToolError
from broker.platform import LocalKafka

ROOT = Path(__file__).resolve().parents[3]


def kafka(tmp_path: Path) -> LocalKafka:
    return LocalKafka(tmp_path / "kafka", ROOT / "deploy" / "kafka" / "pom.xml", 39093, 39094)


def props(tmp_path: Path) -> dict[str, str]:
    text = kafka(tmp_path).server_properties("synthetic-internal-password")
    pairs = (line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))
    return dict(pairs)


def test_no_listener_lets_a_principal_bypass_acls(tmp_path: Path) -> None:
    config = props(tmp_path)
    assert config["allow.everyone.if.no.acl.found"] == "false"
    assert config["authorizer.class.name"].endswith("StandardAuthorizer")
    protocols = dict(
        item.split(":") for item in config["listener.security.protocol.map"].split(",")
    )
    assert protocols == {"CLIENT": "SASL_SSL", "CONTROLLER": "SSL"}
    assert config["listener.name.controller.ssl.client.auth"] == "required"
    assert "ANONYMOUS" not in config["super.users"]
    for listener in config["listeners"].split(","):
        assert "://127.0.0.1:" in listener


def test_missing_java_is_one_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(MissingToolError, match="Java 17 or newer is needed"):
        LocalKafka.check_tools(need_maven=False)


def test_missing_maven_is_one_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    java = tmp_path / "java"
    java.write_text("#!/bin/sh\necho 'openjdk version \"17.0.15\" 2025-04-15' >&2\n")
    java.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    LocalKafka.check_tools(need_maven=False)
    with pytest.raises(MissingToolError, match="Maven is needed"):
        LocalKafka.check_tools(need_maven=True)


def test_old_java_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    java = tmp_path / "java"
    java.write_text("#!/bin/sh\necho 'java version \"1.8.0_402\"' >&2\n")
    java.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(MissingToolError, match="found Java 8"):
        LocalKafka.check_tools(need_maven=False)


def test_cli_kafka_up_without_java_prints_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("TIAKI_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(ROOT)
    assert main(["kafka", "up"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("tiaki: error: Java 17 or newer is needed")


def test_status_of_a_stopped_node(tmp_path: Path) -> None:
    status = kafka(tmp_path).status()
    assert not status.running
    assert status.pid is None
    assert kafka(tmp_path).down() == "not running"


def test_renewing_the_node_certificate_keeps_the_ca_clients_trust(tmp_path: Path) -> None:
    """Every adapter and tool holds a copy of ca.pem (ssl_cafile): a renewal that made a new
    CA would cut them all off from Kafka at once."""
    import datetime as dt

    from cryptography import x509

    node = kafka(tmp_path)
    start = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
    assert node.ensure_tls(start) is not None  # made
    ca = node.tls.ca_cert.read_bytes()
    first = node.tls.node_keystore.read_bytes()
    assert node.ensure_tls(start + dt.timedelta(days=300)) is None  # not yet due
    renewal = start + dt.timedelta(days=395)
    assert node.ensure_tls(renewal) == "issued a new node certificate under the same local CA"
    assert node.tls.ca_cert.read_bytes() == ca
    renewed = node.tls.node_keystore.read_bytes()
    assert renewed != first
    cert = x509.load_pem_x509_certificates(renewed)[0]
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate(ca))
    assert cert.not_valid_before_utc <= renewal < cert.not_valid_after_utc


def test_a_ca_near_its_own_expiry_is_made_anew_and_said(tmp_path: Path) -> None:
    import datetime as dt

    node = kafka(tmp_path)
    start = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
    node.ensure_tls(start)
    ca = node.tls.ca_cert.read_bytes()
    late = start + dt.timedelta(days=3650 - 100)  # the node's due, the CA outlives it too little
    done = node.ensure_tls(late)
    assert done is not None
    assert "it would expire before a new node certificate" in done
    assert "run `tiaki provision`, then give every adapter the new profiles/ca.pem" in done
    assert node.tls.ca_cert.read_bytes() != ca


def test_a_lost_node_key_store_is_reissued_under_the_same_ca(tmp_path: Path) -> None:
    import datetime as dt

    node = kafka(tmp_path)
    start = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
    node.ensure_tls(start)
    ca, ca_key = node.tls.ca_cert.read_bytes(), node.tls.ca_key.read_bytes()
    node.tls.node_keystore.unlink()
    assert node.ensure_tls(start) == "issued a new node certificate under the same local CA"
    assert (node.tls.ca_cert.read_bytes(), node.tls.ca_key.read_bytes()) == (ca, ca_key)


@pytest.mark.parametrize("spoil", ["missing", "another"])
def test_a_ca_whose_key_is_lost_or_not_its_own_is_made_anew_and_said(
    tmp_path: Path, spoil: str
) -> None:
    """An interrupted write, or a hand-copied key, must not give a node certificate that
    does not verify against ca.pem; the message says why and what clients need."""
    import datetime as dt

    from broker.platform._tls import make_tls_material

    node = kafka(tmp_path)
    start = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
    node.ensure_tls(start)
    ca = node.tls.ca_cert.read_bytes()
    node.tls.node_keystore.unlink()
    if spoil == "missing":
        node.tls.ca_key.unlink()
    else:
        node.tls.ca_key.write_bytes(make_tls_material(start).ca_key_pem)
    done = node.ensure_tls(start)
    assert done is not None
    why = "its key is missing" if spoil == "missing" else "its key is not its certificate's"
    assert done.startswith(f"made a new local CA ({why})")
    assert node.tls.ca_cert.read_bytes() != ca


def test_bootstrap_passwords_never_reach_the_command_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Formatting the node's storage with its SCRAM users passes their passwords in a private
    argument file: a process's command line is readable by every local user."""
    import os
    import stat
    import subprocess

    node = kafka(tmp_path)
    creds = {"internal": "synthetic-pw-internal-0001", "admin": "synthetic-pw-admin-0002"}
    calls: list[tuple[list[str], str, int]] = []

    def run(argv: list[str], **_: object) -> subprocess.CompletedProcess[str]:
        argfiles = [a[1:] for a in argv if a.startswith("@")]
        text, mode = "", 0
        for name in argfiles:
            text += Path(name).read_text()
            mode = stat.S_IMODE(os.stat(name).st_mode)
        calls.append((argv, text, mode))
        out = "synthetic-cluster-id\n" if "random-uuid" in argv else ""
        return subprocess.CompletedProcess(argv, 0, out, "")

    monkeypatch.setattr("broker.platform._local.subprocess.run", run)
    node.folder.mkdir(parents=True)
    assert node.format_storage(creds)
    (argv, text, mode), *_ = [c for c in calls if "random-uuid" not in c[0]]
    for password in creds.values():
        assert not any(password in arg for arg in argv)
        assert password in text
    assert mode == 0o600
    assert '"kafka.tools.StorageTool"\n"format"\n' in text
    assert '"--add-scram"\n"SCRAM-SHA-512=[name=admin,password=synthetic-pw-admin-0002]"\n' in text
    assert [p.name for p in node.folder.iterdir() if p.name.startswith(".args-")] == []


def test_a_password_the_argument_file_cannot_hold_is_refused(tmp_path: Path) -> None:
    from broker._errors import PlatformError

    node = kafka(tmp_path)
    with pytest.raises(PlatformError, match="quote, backslash or line break"):
        node._java_secretly("kafka.tools.StorageTool", 'pass"word')


@pytest.mark.parametrize(
    "text", ["-1", "0", "1", "99999999999999999999", "4194305", "\xff", "9" * 5000]
)
def test_a_nonsensical_pid_file_is_never_signalled(tmp_path: Path, text: str) -> None:
    """`tiaki kafka down` signals the pid in the file: -1 would be every process the caller
    may signal (as root, the machine), 0 its own group, 1 init; a huge number used to raise
    OverflowError. None is believed, and the file is removed."""
    node = kafka(tmp_path)
    node.pid_file.parent.mkdir(parents=True)
    node.pid_file.write_text(text + "\n", errors="surrogateescape")
    assert node.pid() is None
    assert node.status().running is False
    assert node.down() == "not running"
    assert not node.pid_file.exists()


def test_a_pid_of_a_process_that_is_not_kafka_is_not_believed(tmp_path: Path) -> None:
    import os

    node = kafka(tmp_path)
    node.pid_file.parent.mkdir(parents=True)
    node.pid_file.write_text(f"{os.getpid()}\n")  # alive, but pytest, not Kafka
    assert node.pid() is None
