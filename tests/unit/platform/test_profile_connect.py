"""Connecting with a profile fails in one line that says what to fix, never a traceback.

A profile whose ``ssl_cafile`` is missing, a folder, unreadable or not a PEM certificate is a
:class:`ConfigError` naming the profile file and the field, like its other field errors
(``tests/unit/test_hostile_config.py``), when a client is built from it. A cluster that takes
the connection but never answers fails a one-shot command within
:data:`~broker.transport.CONNECT_TIMEOUT_S`, in one line naming the bootstrap address, and
without aiokafka's own log line before it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import shutil
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from broker._cli import main
from broker._errors import ConfigError
from broker.platform import Profile, load_profile
from broker.platform._tls import make_tls_material
from broker.transport import CONNECT_TIMEOUT_S
from tests.unit.test_hostile_config import _PROFILE, PASSWORD
from tests.unit.test_hostile_config import _profile as hostile_profile

ROOT = Path(__file__).resolve().parents[3]
#: Every profile here is the broker's (the operator commands' principal).
PRINCIPAL = "broker"


def _profile(folder: Path, **changes: Any) -> Path:
    return hostile_profile(folder, PRINCIPAL, **changes)


@pytest.fixture(scope="module")
def ca_pem() -> bytes:
    return make_tls_material(dt.datetime.now(dt.UTC)).ca_cert_pem


# -- the CA certificate file ----------------------------------------------------------------

#: How each bad ``ca.pem`` is made, and what the message says about it.
BAD_CA: dict[str, tuple[Callable[[Path], object], str]] = {
    "missing": (lambda ca: None, "does not exist"),
    "a folder": (lambda ca: ca.mkdir(), "is a folder, not a file"),
    "not PEM": (lambda ca: ca.write_text("not a certificate\n"), "holds no PEM certificate"),
}


@pytest.mark.parametrize("case", list(BAD_CA))
def test_a_bad_ca_file_is_one_line_naming_profile_file_and_field(tmp_path: Path, case: str) -> None:
    make, what = BAD_CA[case]
    path = _profile(tmp_path / "profiles")
    ca = tmp_path / "profiles" / "ca.pem"
    make(ca)
    profile = load_profile(path)  # reading it needs no certificate; connecting does
    builders: list[Callable[[], object]] = [profile.aiokafka_kwargs, profile.librdkafka]
    for build in builders:
        with pytest.raises(ConfigError) as caught:
            build()
        message = str(caught.value)
        assert message.startswith(f"{path}: ssl_cafile: {ca} {what} "), message
        assert "CA certificate" in message
        assert "\n" not in message
        assert PASSWORD not in message


def test_an_unreadable_ca_file_is_one_line(
    tmp_path: Path, ca_pem: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _profile(tmp_path / "profiles")
    ca = tmp_path / "profiles" / "ca.pem"
    ca.write_bytes(ca_pem)
    ca.chmod(0)
    if os.geteuid() == 0:  # root reads a file whatever its mode: refuse it as the kernel would

        def refused(self: ssl.SSLContext, cafile: Any = None, *args: Any, **kw: Any) -> None:
            raise PermissionError(13, "Permission denied", str(cafile))

        monkeypatch.setattr(ssl.SSLContext, "load_verify_locations", refused)
    with pytest.raises(ConfigError, match=r"ssl_cafile: .*ca\.pem cannot be read \(Permission"):
        load_profile(path).aiokafka_kwargs()


def test_a_profile_built_in_code_says_so(tmp_path: Path) -> None:
    profile = Profile(
        **{**_PROFILE, "sasl_plain_username": PRINCIPAL, "ssl_cafile": str(tmp_path / "none.pem")}
    )
    with pytest.raises(ConfigError) as caught:
        profile.aiokafka_kwargs()
    assert str(caught.value).startswith(f"connection profile: ssl_cafile: {tmp_path}/none.pem ")


def test_a_good_ca_file_still_builds_both_clients_settings(tmp_path: Path, ca_pem: bytes) -> None:
    path = _profile(tmp_path / "profiles")
    (tmp_path / "profiles" / "ca.pem").write_bytes(ca_pem)
    profile = load_profile(path)
    assert profile.source == path
    kwargs = profile.aiokafka_kwargs()
    assert "ssl_cafile" not in kwargs
    assert kwargs["ssl_context"].cert_store_stats()["x509_ca"] == 1
    assert profile.librdkafka()["ssl.ca.location"] == str(tmp_path / "profiles" / "ca.pem")


# -- a command against a bad CA file, or a cluster that never answers -----------------------


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Development keys for the shipped registry, made once (the commands load them)."""
    home = tmp_path_factory.mktemp("keys-home")
    with pytest.MonkeyPatch.context() as env, contextlib.redirect_stdout(None):
        env.setenv("TIAKI_HOME", str(home))
        env.setenv("TIAKI_REGISTRY", str(ROOT / "policies" / "agencies.yaml"))
        assert main(["keys", "init"]) == 0
    return home / "keys"


@pytest.fixture
def home(tmp_path: Path, keys: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A ``TIAKI_HOME`` with keys and the shipped registry and schemas, but no profile."""
    shutil.copytree(keys, tmp_path / "keys")
    monkeypatch.setenv("TIAKI_HOME", str(tmp_path))
    monkeypatch.setenv("TIAKI_REGISTRY", str(ROOT / "policies" / "agencies.yaml"))
    monkeypatch.setenv("TIAKI_SCHEMAS", str(ROOT / "schemas"))
    return tmp_path


def one_line(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run ``tiaki argv``; assert it failed with one line on stderr and no traceback."""
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 1, err
    assert "Traceback" not in err, err
    assert err.count("\n") == 1, err
    return err


@pytest.mark.parametrize("case", list(BAD_CA))
def test_a_command_with_a_bad_ca_file_says_which_profile_and_field(
    home: Path, case: str, capsys: pytest.CaptureFixture[str]
) -> None:
    make, what = BAD_CA[case]
    path = _profile(home / "profiles")
    make(home / "profiles" / "ca.pem")
    err = one_line(["quarantine", "list"], capsys)
    assert err.startswith(f"tiaki: error: {path}: ssl_cafile: {home}/profiles/ca.pem {what} ")
    assert PASSWORD not in err


class SilentServer:
    """Accepts TCP connections on a loopback port and never reads or writes a byte."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.accepted: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):  # the listener closed
            while True:
                self.accepted.append(self.listener.accept()[0])

    def close(self) -> None:
        # shutdown wakes the accepting thread on Linux, where close alone does not.
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        self._thread.join(timeout=5)
        for conn in self.accepted:
            conn.close()


@pytest.fixture
def silent() -> Iterator[SilentServer]:
    server = SilentServer()
    yield server
    server.close()


#: Well under aiokafka's 40 s ``request_timeout_ms``, well over the bound plus start-up.
UPPER_LIMIT_S = 35.0


#: The bound the other commands' cases run with (patched where each command reads it), so
#: the suite does not wait out 15 s for each: the first case shows the real one.
SHORT_BOUND_S = 2.0


@pytest.mark.parametrize(
    ("argv", "bound"),
    [
        (["quarantine", "list"], CONNECT_TIMEOUT_S),
        (["audit", "verify", "--operator", "SYN operator", "--profile", "broker"], SHORT_BOUND_S),
        (
            ["review", "approve", "SYN-REVIEW-1", "--reviewer", "SYN", "--justification", "SYN"],
            SHORT_BOUND_S,
        ),
    ],
    ids=["quarantine list", "audit verify", "review approve"],
)
def test_a_cluster_that_never_answers_fails_a_command_in_one_line_within_the_bound(
    home: Path,
    ca_pem: bytes,
    silent: SilentServer,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
    bound: float,
) -> None:
    for module in ("broker.runtime._operator", "broker.audit._kafka"):
        monkeypatch.setattr(f"{module}.CONNECT_TIMEOUT_S", bound)
    bootstrap = f"127.0.0.1:{silent.port}"
    path = _profile(home / "profiles", bootstrap_servers=bootstrap)
    (home / "profiles" / "ca.pem").write_bytes(ca_pem)
    started = time.monotonic()
    err = one_line(argv, capsys)
    elapsed = time.monotonic() - started
    assert silent.accepted, "the command never connected"
    assert err == (
        f"tiaki: error: no answer from Kafka at {bootstrap} within {bound:g} s: "
        f"check that Kafka is up and that {path} names it (bootstrap_servers)\n"
    )
    assert bound <= elapsed < UPPER_LIMIT_S, elapsed
