"""The systemd units in ``deploy/systemd`` run the commands they mean to, with the options they
mean to, give a stopping broker the time its own timeouts need, escalate overdue review items
on a timer (nothing else does), and keep each adapter to its own agency's files: no adapter
runs as the broker or can read the broker's state (keys of every agency's ingress, every
profile), as the trust model allows no one party the whole picture."""

from __future__ import annotations

import inspect
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

import adapters._cli as adapter_cli
import broker.aggregate._cli as hub_cli
import broker.runtime._cli as broker_cli
import broker.runtime._review_cli as review_cli
from broker._cli import main
from broker._errors import TiakiError
from broker._settings import Settings
from broker.runtime._service import GRACE_SECONDS, ServiceOptions
from broker.transport import KafkaTransport

UNITS = Path(__file__).resolve().parents[2] / "deploy" / "systemd"
BROKER = UNITS / "tiaki-broker@.service"
ADAPTER = UNITS / "tiaki-adapter@.service"
ESCALATE = UNITS / "tiaki-review-escalate.service"
TIMER = UNITS / "tiaki-review-escalate.timer"
HUB = UNITS / "tiaki-hub-publish@.service"
HUB_TIMER = UNITS / "tiaki-hub-publish@.timer"


def unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """A unit file's sections, each key with every value it is given (systemd allows a key
    more than once)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"{path.name}: {line!r} outside a section"
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def env_file(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {k.strip(): v.strip() for k, v in pairs if not k.lstrip().startswith("#")}


#: Where each ``EnvironmentFile=`` of the units comes from in this folder, by instance.
EXAMPLES = {
    "/etc/tiaki/tiaki.env": "tiaki.env.example",
    "/etc/tiaki/broker-%i.env": "broker-%i.env.example",
}


def environment(path: Path, instance: str) -> dict[str, str]:
    """The environment systemd gives ``instance`` of the unit, with the example files in place
    of ``/etc/tiaki``: ``Environment=`` first, then each ``EnvironmentFile=`` in order, a file's
    setting overriding ``Environment=`` (systemd.exec(5))."""
    service = unit(path)["Service"]
    env: dict[str, str] = {}
    for value in service.get("Environment", []):
        for assignment in shlex.split(value.replace("%i", instance)):
            key, _, val = assignment.partition("=")
            env[key] = val
    for name in service.get("EnvironmentFile", []):
        optional = name.startswith("-")
        example = UNITS / EXAMPLES[name.removeprefix("-")].replace("%i", instance)
        if example.exists() or not optional:
            env.update(env_file(example))
    return env


def state_directories(path: Path, instance: str) -> list[Path]:
    """The unit's ``StateDirectory=`` folders, as absolute paths (a system unit's are under
    ``/var/lib``)."""
    service = unit(path)["Service"]
    return [
        Path("/var/lib") / name.replace("%i", instance)
        for value in service.get("StateDirectory", [])
        for name in value.split()
    ]


def command_line(path: Path, instance: str, env: Mapping[str, str]) -> list[str]:
    """``ExecStart`` as systemd would run it for ``instance``, ``${VAR}`` from ``env``."""
    (line,) = unit(path)["Service"]["ExecStart"]
    line = line.replace("%i", instance)
    line = re.sub(r"\$\{(\w+)\}", lambda m: env[m.group(1)], line)
    return shlex.split(line)


class Captured(TiakiError):
    """Raised in place of starting the service."""


def started_with(monkeypatch: pytest.MonkeyPatch, argv: list[str]) -> Any:
    """Run ``tiaki`` on ``argv`` up to the point where the service would begin; return what it
    would have begun with (the broker's options; the adapter's agency, configuration and
    TIAKI_HOME; the TIAKI_HOME of the broker's tools an operator command opens)."""
    seen: list[Any] = []

    def options(**kwargs: Any) -> None:
        seen.append(ServiceOptions(**kwargs))
        raise Captured("captured")

    def load(config: Path, agency: str, settings: Settings) -> None:
        seen.append((agency, config, settings.home))
        raise Captured("captured")

    def tools() -> None:
        seen.append(Settings.from_env().home)
        raise Captured("captured")

    monkeypatch.setattr(broker_cli, "ServiceOptions", options)
    monkeypatch.setattr(adapter_cli, "_load", load)
    monkeypatch.setattr(review_cli, "BrokerTools", tools)
    monkeypatch.setattr(hub_cli, "BrokerTools", tools)
    assert main(argv) == 1  # the capture, reported as an error like any other
    assert len(seen) == 1, "the command never reached the service"
    return seen[0]


def test_a_broker_instance_runs_as_the_worker_its_name_says(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    env = environment(BROKER, "1")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    argv = command_line(BROKER, "1", env)
    assert argv[0] == "/opt/tiaki/.venv/bin/tiaki"
    options = started_with(monkeypatch, argv[1:])
    assert options == ServiceOptions(worker_id="1", metrics_port=int(env["TIAKI_METRICS_PORT"]))


def test_an_adapter_instance_runs_for_the_agency_its_name_says_in_its_own_home(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Through the real CLI with the unit's environment: the agency, its configuration, and a
    TIAKI_HOME that is this instance's own state directory (so the configuration's default
    ``{home}/profiles/{agency}.json``, ``{home}/keys`` and ``{home}/adapters/{agency}`` are
    its own), not the broker's."""
    env = environment(ADAPTER, "corrections")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    argv = command_line(ADAPTER, "corrections", env)
    assert argv[0] == "/opt/tiaki/.venv/bin/tiaki"
    agency, config, home = started_with(monkeypatch, argv[1:])
    assert (agency, config) == ("corrections", Path("/etc/tiaki/adapters/corrections.yaml"))
    assert home == Path("/var/lib/tiaki-adapter/corrections")
    assert state_directories(ADAPTER, "corrections") == [home]


def test_the_escalation_runs_tiaki_review_escalate_as_the_broker(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Through the real CLI with the unit's environment: ``tiaki review escalate`` from the
    virtualenv the other units run, opening the broker's keys and profile in the broker's
    TIAKI_HOME (it re-seals held items as the broker)."""
    env = environment(ESCALATE, "")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    argv = command_line(ESCALATE, "", env)
    assert argv == ["/opt/tiaki/.venv/bin/tiaki", "review", "escalate"]
    assert command_line(BROKER, "1", environment(BROKER, "1"))[0] == argv[0]
    home = started_with(monkeypatch, argv[1:])
    assert home == Settings.from_env(environment(BROKER, "1")).home
    assert state_directories(ESCALATE, "") == [home]


def test_the_escalation_has_the_brokers_user_environment_and_hardening() -> None:
    """It acts as the broker, with the broker's keys: everything but what makes the broker a
    long-running worker is the broker unit's, so it cannot drift looser than the broker."""
    escalate, broker = unit(ESCALATE)["Service"], unit(BROKER)["Service"]
    worker = {"Type", "ExecStart", "KillMode", "TimeoutStopSec", "Restart", "RestartSec"}
    assert {k: v for k, v in escalate.items() if k not in worker | {"TimeoutStartSec"}} == {
        k: v for k, v in broker.items() if k not in worker
    } | {"EnvironmentFile": ["/etc/tiaki/tiaki.env"]}  # not the worker's own metrics port
    assert escalate["Type"] == ["oneshot"]
    assert "Restart" not in escalate  # the timer tries again


def test_the_timer_escalates_every_5_minutes_and_catches_up() -> None:
    timer = unit(TIMER)
    assert timer["Timer"]["Unit"] == [ESCALATE.name]
    assert timer["Timer"]["OnCalendar"] == ["*:0/5"]
    assert timer["Timer"]["Persistent"] == ["true"]  # a run missed while down runs on boot
    assert timer["Install"]["WantedBy"] == ["timers.target"]
    assert "Install" not in unit(ESCALATE)  # started by the timer, never on its own


def test_a_hung_escalation_is_stopped_before_the_next_is_due() -> None:
    """The timer starts nothing while a run is still active, so one that hangs (a Kafka that
    accepts connections and never answers) would hold off every later one."""
    (every,) = unit(TIMER)["Timer"]["OnCalendar"]
    (timeout,) = unit(ESCALATE)["Service"]["TimeoutStartSec"]
    interval, limit = re.fullmatch(r"\*:0/(\d+)", every), re.fullmatch(r"(\d+)min", timeout)
    assert interval is not None, every
    assert limit is not None, timeout
    assert 0 < int(limit[1]) < int(interval[1])


def test_systemd_waits_for_a_stopping_broker_as_long_as_its_own_timeouts() -> None:
    """SIGTERM: the worker stops after the batch in flight, or is cancelled after
    GRACE_SECONDS; then the transport waits up to its close timeout for a commit or abort.
    Killing it sooner would leave that transaction to its restart to end."""
    close = inspect.signature(KafkaTransport).parameters["close_timeout_s"].default
    service = unit(BROKER)["Service"]
    assert int(service["TimeoutStopSec"][0]) >= GRACE_SECONDS + close + 10
    assert service["KillMode"] == ["mixed"]  # SIGTERM to the worker, not its whole group


@pytest.mark.parametrize("path", [BROKER, ADAPTER], ids=lambda p: p.name)
def test_services_restart_and_never_give_up(path: Path) -> None:
    assert unit(path)["Service"]["Restart"] == ["always"]
    assert unit(path)["Unit"]["StartLimitIntervalSec"] == ["0"]


@pytest.mark.parametrize("path", [BROKER, ADAPTER, ESCALATE], ids=lambda p: p.name)
def test_units_run_unprivileged_and_keep_their_files_private(path: Path) -> None:
    service = unit(path)["Service"]
    assert service["User"] != ["root"]
    assert service["UMask"] == ["0077"]  # keys and the outbox are written here
    assert service["NoNewPrivileges"] == ["yes"]
    assert service["ProtectSystem"] == ["strict"]
    assert service["StateDirectoryMode"] == ["0700"]
    assert service["EnvironmentFile"][0] == "/etc/tiaki/tiaki.env"


@pytest.mark.parametrize(("path", "instance"), [(BROKER, "1"), (ADAPTER, "police"), (ESCALATE, "")])
def test_each_unit_works_in_its_own_state_directory(path: Path, instance: str) -> None:
    """TIAKI_HOME, after systemd has applied every environment file, is the unit's own state
    directory (systemd creates it, owned by the unit's user, mode 0700)."""
    home = Settings.from_env(environment(path, instance)).home
    assert state_directories(path, instance) == [home]


def test_each_adapter_instance_runs_as_its_own_user_in_its_own_directory() -> None:
    """Not the broker's user, and not another agency's: a user named by the instance, and a
    state directory of its own, beside the broker's rather than inside it."""
    adapter, broker = unit(ADAPTER)["Service"], unit(BROKER)["Service"]
    assert adapter["User"] == ["tiaki-%i"]
    assert adapter["Group"] == ["tiaki-%i"]
    assert adapter["User"] != broker["User"]
    assert adapter["StateDirectory"] == ["tiaki-adapter/%i"]
    police, corrections = (state_directories(ADAPTER, a) for a in ("police", "corrections"))
    assert police != corrections
    (broker_state,) = state_directories(BROKER, "1")
    for (own,) in (police, corrections):
        assert not own.is_relative_to(broker_state)
        assert not broker_state.is_relative_to(own)


def test_no_adapter_can_read_the_brokers_state() -> None:
    """The broker's state (every agency's profile, the admin and compliance profiles, the
    broker's private keys) is 0700 to the broker's own user, which no adapter runs as, and
    is hidden from every adapter outright, so even a loosened mode cannot expose it."""
    adapter, broker = unit(ADAPTER)["Service"], unit(BROKER)["Service"]
    (broker_state,) = state_directories(BROKER, "1")
    assert broker["StateDirectoryMode"] == ["0700"]
    assert broker["User"] not in (["root"], adapter["User"])
    hidden = [
        Path(p.removeprefix("-"))
        for value in adapter.get("InaccessiblePaths", [])
        for p in value.split()
    ]
    assert any(broker_state.is_relative_to(p) for p in hidden), hidden
    assert broker_state != Path("/var/lib")  # hiding it must not hide all of /var/lib
    # and the adapter's own home is not under what is hidden
    (own,) = state_directories(ADAPTER, "police")
    assert not any(own.is_relative_to(p) for p in hidden)


def test_the_shared_environment_sets_no_home() -> None:
    """tiaki.env is read by broker and adapters alike, after each unit's Environment=: a
    TIAKI_HOME there would point every adapter at the broker's state."""
    assert "TIAKI_HOME" not in env_file(UNITS / "tiaki.env.example")


def test_the_shared_environment_is_tiakis_own_settings() -> None:
    env = env_file(UNITS / "tiaki.env.example")
    assert set(env) <= {
        "TIAKI_HOME",
        "TIAKI_REGISTRY",
        "TIAKI_KAFKA_PORT",
        "TIAKI_CONTROLLER_PORT",
        "TIAKI_SCHEMAS",
        "TIAKI_POLICIES",
    }
    settings = Settings.from_env(env)
    assert settings.policies_dir == Path(env["TIAKI_POLICIES"])


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_systemd_reads_the_units_without_complaint(tmp_path: Path) -> None:
    """``systemd-analyze verify``, with the program path pointed at this checkout's ``tiaki``
    (it checks that the program exists): no unknown key, no value it cannot parse."""
    tiaki = Path(sys.executable).parent / "tiaki"
    units = (BROKER, ADAPTER, ESCALATE, TIMER, HUB, HUB_TIMER)
    for path in units:
        text = path.read_text().replace("/opt/tiaki/.venv/bin/tiaki", str(tiaki))
        (tmp_path / path.name).write_text(text)
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *(path.name for path in units)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == ""


def test_the_monthly_hub_publication_runs_as_the_broker_for_its_region(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``tiaki hub publish`` for the instance's region and last month, through the real CLI
    with the unit's environment, as the broker (it reads the tallies and seals with the
    broker's keys), with everything of the broker unit but what makes it a long-running
    worker."""
    env = environment(HUB, "canterbury")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    argv = command_line(HUB, "canterbury", env)
    assert argv[:6] == [
        "/opt/tiaki/.venv/bin/tiaki",
        "hub",
        "publish",
        "--region",
        "canterbury",
        "--month",
    ]
    assert argv[6] == "last"
    assert argv[argv.index("--operator") + 1] == "scheduled (tiaki-hub-publish@canterbury.timer)"
    home = started_with(monkeypatch, argv[1:])
    assert home == Settings.from_env(environment(BROKER, "1")).home
    hub, broker = unit(HUB)["Service"], unit(BROKER)["Service"]
    worker = {"Type", "ExecStart", "KillMode", "TimeoutStopSec", "Restart", "RestartSec"}
    assert {k: v for k, v in hub.items() if k not in worker | {"TimeoutStartSec"}} == {
        k: v for k, v in broker.items() if k not in worker
    } | {"EnvironmentFile": ["/etc/tiaki/tiaki.env"]}
    assert hub["Type"] == ["oneshot"]
    timer = unit(HUB_TIMER)
    assert timer["Timer"]["Unit"] == ["tiaki-hub-publish@%i.service"]
    assert timer["Timer"]["OnCalendar"] == ["*-*-02 03:00:00 Pacific/Auckland"]
    assert timer["Timer"]["Persistent"] == ["true"]
    assert "Install" not in unit(HUB)
