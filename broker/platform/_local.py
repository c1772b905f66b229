"""The local Apache Kafka: assembled from Maven Central jars, run in KRaft combined mode.

Listeners (both bound to loopback):

``CLIENT`` (SASL_SSL, SCRAM-SHA-512)
    Every client and the node's own inter-broker traffic. Each principal is authenticated;
    the StandardAuthorizer with ``allow.everyone.if.no.acl.found=false`` enforces ACLs.
``CONTROLLER`` (SSL with required client certificates)
    KRaft's controller listener, which cannot use SCRAM. Only a holder of the node's own
    certificate (signed by the local CA, whose key never leaves ``.tiaki``) can connect, so
    no unauthenticated principal can reach it.

Super users are the node's certificate principal and the ``internal`` SCRAM principal, whose
password lives only in ``.tiaki/kafka/credentials.json``. The ``admin`` principal that
provisioning uses is *not* a super user: it gets cluster and topic administration ACLs and no
right to read or write any topic's data.

State, certificates and logs live under ``<home>/kafka``; nothing here touches the repo.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime as dt
import hashlib
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from broker._errors import MissingToolError, PlatformError
from broker.platform._secrets import new_password, private_dir, read_json, write_secret_json
from broker.platform._tls import (
    NODE_PRINCIPAL,
    TlsPaths,
    ca_problem,
    make_tls_material,
    node_certificate_expires,
    renew_node_certificate,
    write_tls_material,
)

KAFKA_VERSION = "4.3.1"
INTERNAL_USER = "internal"
ADMIN_USER = "admin"
SCRAM_MECHANISM = "SCRAM-SHA-512"
HOST = "127.0.0.1"


@dataclass(frozen=True)
class KafkaStatus:
    running: bool
    pid: int | None
    ready: bool
    bootstrap: str


class LocalKafka:
    """One local Kafka node under ``folder``; every method is idempotent."""

    def __init__(
        self, folder: Path, pom: Path, port: int, controller_port: int, lib: Path | None = None
    ) -> None:
        self.folder = folder.absolute()
        self.pom = pom.absolute()
        self.port = port
        self.controller_port = controller_port
        #: The assembled jars; a test session may share one folder across clusters.
        self.lib = (lib or self.folder / "lib").absolute()
        self.data = self.folder / "data"
        self.logs = self.folder / "logs"
        self.tls = TlsPaths.under(self.folder / "tls")
        self.credentials_file = self.folder / "credentials.json"
        self.pid_file = self.folder / "kafka.pid"
        #: The node's process when this object started it (so it can be reaped on stop).
        self._process: subprocess.Popen[bytes] | None = None
        self.properties = self.folder / "server.properties"

    @property
    def bootstrap(self) -> str:
        return f"{HOST}:{self.port}"

    # -- requirements -----------------------------------------------------------------------

    @staticmethod
    def check_tools(need_maven: bool) -> None:
        """Raise :class:`MissingToolError` unless Java 17+ (and Maven, if needed) are present."""
        java = shutil.which("java")
        if java is None:
            raise MissingToolError(
                "Java 17 or newer is needed to run the local Kafka, and `java` is not on PATH"
            )
        version = subprocess.run(
            [java, "-version"], capture_output=True, text=True, check=False
        ).stderr
        match = re.search(r'version "(\d+)(?:\.(\d+))?', version)
        major = int(match.group(1)) if match else 0
        if major == 1 and match and match.group(2):
            major = int(match.group(2))
        if major < 17:
            raise MissingToolError(
                f"Java 17 or newer is needed to run the local Kafka; found Java {major or 'unknown'}"
            )
        if need_maven and shutil.which("mvn") is None:
            raise MissingToolError(
                "Maven is needed once to assemble the local Kafka from Maven Central, and `mvn` is not on PATH"
            )

    # -- assembly ---------------------------------------------------------------------------

    def assemble(self) -> bool:
        """Copy Kafka's runtime jars into ``lib`` with Maven; return True if it had to."""
        stamp = self.lib / ".pom-sha256"
        digest = hashlib.sha256(self.pom.read_bytes()).hexdigest()
        if (
            stamp.exists()
            and stamp.read_text() == digest
            and any(self.lib.glob("kafka_2.13-*.jar"))
        ):
            return False
        self.check_tools(need_maven=True)
        if self.lib.exists():
            shutil.rmtree(self.lib)
        self.lib.mkdir(parents=True)
        result = subprocess.run(
            [
                "mvn",
                "-B",
                "-q",
                "-f",
                str(self.pom),
                "dependency:copy-dependencies",
                "-DincludeScope=runtime",
                f"-DoutputDirectory={self.lib}",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            tail = (result.stdout + result.stderr).strip().splitlines()[-1:] or ["no output"]
            raise PlatformError(f"assembling Kafka {KAFKA_VERSION} with Maven failed: {tail[0]}")
        stamp.write_text(digest)
        return True

    # -- credentials and TLS ------------------------------------------------------------------

    def credentials(self) -> dict[str, str]:
        """Passwords of the bootstrap principals (``internal``, ``admin``), made once."""
        stored = read_json(self.credentials_file) or {}
        creds = {
            user: str(stored.get(user) or new_password()) for user in (INTERNAL_USER, ADMIN_USER)
        }
        if creds != stored:
            write_secret_json(self.credentials_file, dict(creds))
        return creds

    def ensure_tls(self, now: dt.datetime) -> str | None:
        """Create the CA and node certificate, or renew the node's when near expiry (or
        missing); what was done, for ``up`` to report, or None. The node's certificate is
        issued under the existing CA whenever that CA can issue it (:func:`ca_problem`), so
        the copies of ``ca.pem`` clients hold stay valid; otherwise both are made anew, and
        the message says what clients need."""
        tls = self.tls
        if tls.node_keystore.exists() and tls.ca_cert.exists():
            expires = node_certificate_expires(tls.node_keystore.read_bytes())
            if expires - now > dt.timedelta(days=7):
                return None
        if tls.ca_cert.exists():
            ca_cert = tls.ca_cert.read_bytes()
            ca_key = tls.ca_key.read_bytes() if tls.ca_key.exists() else b""
            problem = ca_problem(ca_cert, ca_key, now) if ca_key else "its key is missing"
            if problem is None:
                write_tls_material(tls, renew_node_certificate(ca_cert, ca_key, now))
                return "issued a new node certificate under the same local CA"
            write_tls_material(tls, make_tls_material(now))
            return (
                f"made a new local CA ({problem}): run `tiaki provision`, then give every "
                "adapter the new profiles/ca.pem"
            )
        write_tls_material(tls, make_tls_material(now))
        return f"made a local CA and node certificate in {tls.ca_cert.parent}"

    # -- configuration ------------------------------------------------------------------------

    def server_properties(self, internal_password: str) -> str:
        jaas = (
            "org.apache.kafka.common.security.scram.ScramLoginModule required "
            f'username="{INTERNAL_USER}" password="{internal_password}";'
        )
        settings: dict[str, Any] = {
            "process.roles": "broker,controller",
            "node.id": 1,
            "controller.quorum.bootstrap.servers": f"{HOST}:{self.controller_port}",
            "listeners": f"CLIENT://{HOST}:{self.port},CONTROLLER://{HOST}:{self.controller_port}",
            "advertised.listeners": f"CLIENT://{HOST}:{self.port}",
            "listener.security.protocol.map": "CLIENT:SASL_SSL,CONTROLLER:SSL",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "CLIENT",
            "sasl.enabled.mechanisms": SCRAM_MECHANISM,
            "sasl.mechanism.inter.broker.protocol": SCRAM_MECHANISM,
            "listener.name.client.scram-sha-512.sasl.jaas.config": jaas,
            "ssl.keystore.type": "PEM",
            "ssl.keystore.location": self.tls.node_keystore,
            "ssl.truststore.type": "PEM",
            "ssl.truststore.location": self.tls.ca_cert,
            "ssl.enabled.protocols": "TLSv1.3,TLSv1.2",
            "ssl.endpoint.identification.algorithm": "https",
            "listener.name.controller.ssl.client.auth": "required",
            "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            "allow.everyone.if.no.acl.found": "false",
            "super.users": f"{NODE_PRINCIPAL};User:{INTERNAL_USER}",
            "log.dirs": self.data,
            "auto.create.topics.enable": "false",
            "num.partitions": 1,
            "default.replication.factor": 1,
            "min.insync.replicas": 1,
            "offsets.topic.replication.factor": 1,
            "transaction.state.log.replication.factor": 1,
            "transaction.state.log.min.isr": 1,
            "share.coordinator.state.topic.replication.factor": 1,
            "share.coordinator.state.topic.min.isr": 1,
            "group.initial.rebalance.delay.ms": 0,
            "transaction.max.timeout.ms": 900000,
        }
        lines = ["# Written by `tiaki kafka up`; edits are overwritten."]
        lines += [f"{key}={value}" for key, value in settings.items()]
        return "\n".join(lines) + "\n"

    def log4j_properties(self) -> str:
        return "\n".join(
            [
                "status = warn",
                "appender.file.type = RollingFile",
                "appender.file.name = file",
                f"appender.file.fileName = {self.logs}/server.log",
                f"appender.file.filePattern = {self.logs}/server.log.%i",
                "appender.file.layout.type = PatternLayout",
                "appender.file.layout.pattern = [%d] %p %m (%c)%n",
                "appender.file.policies.type = Policies",
                "appender.file.policies.size.type = SizeBasedTriggeringPolicy",
                "appender.file.policies.size.size = 20MB",
                "appender.file.strategy.type = DefaultRolloverStrategy",
                "appender.file.strategy.max = 3",
                "rootLogger.level = INFO",
                "rootLogger.appenderRef.file.ref = file",
                "logger.authorizer.name = kafka.authorizer.logger",
                "logger.authorizer.level = WARN",
                "",
            ]
        )

    def _java(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["java", "-cp", f"{self.lib}/*", *args], capture_output=True, text=True, check=False
        )

    def _java_secretly(self, main_class: str, *args: str) -> subprocess.CompletedProcess[str]:
        """Run ``main_class`` with ``args`` passed in a Java argument file (``@file``), not on
        the command line, which every local user can read (``ps``, ``/proc/<pid>/cmdline``).
        The file is made ``0600`` in the node's private folder and removed afterwards."""
        for arg in args:
            if any(c in arg for c in '"\\\n\r'):
                raise PlatformError(
                    "an argument for the Kafka tool holds a quote, backslash or line break"
                )
        path = private_dir(self.folder) / f".args-{secrets.token_hex(8)}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as file:
                file.write("".join(f'"{arg}"\n' for arg in (main_class, *args)))
            return self._java(f"@{path}")
        finally:
            path.unlink(missing_ok=True)

    def format_storage(self, creds: dict[str, str]) -> bool:
        """Format the KRaft log directory with the bootstrap SCRAM users; True if it had to."""
        if (self.data / "meta.properties").exists():
            return False
        if self.data.exists():
            shutil.rmtree(self.data)
        cluster = self._java("kafka.tools.StorageTool", "random-uuid")
        cluster_id = cluster.stdout.strip()
        if cluster.returncode != 0 or not cluster_id:
            raise PlatformError(f"kafka StorageTool random-uuid failed: {_last_line(cluster)}")
        args = [
            "format",
            "-t",
            cluster_id,
            "-c",
            str(self.properties),
            "--standalone",
        ]
        for user, password in creds.items():
            args += ["--add-scram", f"{SCRAM_MECHANISM}=[name={user},password={password}]"]
        result = self._java_secretly("kafka.tools.StorageTool", *args)
        if result.returncode != 0:
            raise PlatformError(f"kafka StorageTool format failed: {_last_line(result)}")
        return True

    # -- process ------------------------------------------------------------------------------

    def pid(self) -> int | None:
        """The pid of the running node, or None (a stale or nonsensical pid file is removed).

        Only a process id proper is believed: ``down`` signals it, and ``kill(-1)`` signals
        every process the caller may signal (as root, the whole machine), ``kill(0)`` the
        caller's own process group, and pid 1 is init."""
        try:
            text = self.pid_file.read_text(errors="replace").strip()
        except FileNotFoundError:
            return None
        pid = int(text) if text.isascii() and text.isdigit() and len(text) <= 7 else 0
        if not 1 < pid <= MAX_PID or not _alive(pid) or not _is_kafka(pid):
            self.pid_file.unlink(missing_ok=True)
            return None
        return pid

    def port_open(self) -> bool:
        with contextlib.suppress(OSError), socket.create_connection((HOST, self.port), timeout=0.5):
            return True
        return False

    def status(self) -> KafkaStatus:
        pid = self.pid()
        return KafkaStatus(
            pid is not None, pid, pid is not None and self.port_open(), self.bootstrap
        )

    def up(
        self,
        timeout: float = 120.0,
        now: dt.datetime | None = None,
        *,
        die_with_parent: bool = False,
    ) -> list[str]:
        """Assemble, configure, format and start the node; wait until it accepts clients.

        ``die_with_parent`` (Linux) ends the node when the process that started it dies, so a
        test session killed outright leaves no Kafka behind.
        """
        steps: list[str] = []
        if self.pid() is not None:
            self.wait_ready(timeout)
            return ["already running"]
        self.check_tools(need_maven=False)
        private_dir(self.folder)
        if self.assemble():
            steps.append(f"assembled Kafka {KAFKA_VERSION} from Maven Central into {self.lib}")
        renewed = self.ensure_tls(now or dt.datetime.now(dt.UTC))
        if renewed is not None:
            steps.append(renewed)
        creds = self.credentials()
        self.logs.mkdir(parents=True, exist_ok=True)
        self.properties.write_text(self.server_properties(creds[INTERNAL_USER]))
        self.properties.chmod(0o600)  # holds the internal principal's password
        log4j = self.folder / "log4j2.properties"
        log4j.write_text(self.log4j_properties())
        if self.format_storage(creds):
            steps.append(f"formatted KRaft storage in {self.data}")
        if self._port_taken():
            raise PlatformError(
                f"port {self.port} or {self.controller_port} on {HOST} is already in use by another program"
            )
        stdout = (self.logs / "stdout.log").open("ab")
        process = subprocess.Popen(
            [
                "java",
                "-Xms256m",
                "-Xmx1g",
                "-XX:+UseG1GC",
                f"-Dlog4j2.configurationFile={log4j}",
                f"-Dkafka.logs.dir={self.logs}",
                "-cp",
                f"{self.lib}/*",
                "kafka.Kafka",
                str(self.properties),
            ],
            stdout=stdout,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # survives the CLI; stopped by `tiaki kafka down`
            # The hook only calls prctl, which is safe between fork and exec.
            preexec_fn=die_when_parent_dies if die_with_parent else None,
        )
        stdout.close()
        self._process = process
        self.pid_file.write_text(f"{process.pid}\n")
        started = time.monotonic()
        self.wait_ready(timeout, process)
        steps.append(
            f"started Kafka (pid {process.pid}) on {self.bootstrap}, ready in {time.monotonic() - started:.1f}s"
        )
        return steps

    def _port_taken(self) -> bool:
        for port in (self.port, self.controller_port):
            with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=0.3):
                return True
        return False

    def wait_ready(self, timeout: float, process: subprocess.Popen[bytes] | None = None) -> None:
        """Wait until the client port accepts connections (Kafka opens it once the authorizer
        is ready); raise :class:`PlatformError` on exit or time-out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process is not None and process.poll() is not None:
                self.pid_file.unlink(missing_ok=True)
                raise PlatformError(
                    f"Kafka exited with code {process.returncode} while starting: {self._log_hint()}"
                )
            if self.port_open():
                return
            time.sleep(0.2)
        raise PlatformError(
            f"Kafka did not accept connections on {self.bootstrap} within {timeout:.0f}s: {self._log_hint()}"
        )

    def _log_hint(self) -> str:
        log = self.logs / "server.log"
        try:
            errors = [ln for ln in log.read_text(errors="replace").splitlines() if " ERROR " in ln]
        except FileNotFoundError:
            errors = []
        return (errors[-1][:300] if errors else "no error logged") + f" (see {log})"

    def down(self, timeout: float = 30.0) -> str:
        """Stop the node: SIGTERM, then SIGKILL after ``timeout`` seconds."""
        pid = self.pid()
        if pid is None:
            return "not running"
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.2)
        how = "stopped"
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
            how = "killed after time-out"
            while _alive(pid):
                time.sleep(0.05)
        self.pid_file.unlink(missing_ok=True)
        if self._process is not None:
            self._process.wait()
            self._process = None
        return f"{how} (pid {pid})"

    def purge(self) -> None:
        """Delete data, logs and credentials (keeps the assembled jars)."""
        if self.pid() is not None:
            raise PlatformError("stop Kafka (tiaki kafka down) before purging its data")
        for path in (self.data, self.logs):
            shutil.rmtree(path, ignore_errors=True)
        self.credentials_file.unlink(missing_ok=True)


def die_when_parent_dies() -> None:
    """In a child before exec: ask Linux to SIGTERM it when its parent exits (no-op elsewhere)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _alive(pid: int) -> bool:
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        waited = 0
    if waited == pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


#: Linux's largest possible process id (``PID_MAX_LIMIT``, 2^22).
MAX_PID = 4_194_304


def _is_kafka(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return not Path("/proc/self").exists()  # no /proc at all: trust the pid file
    return b"kafka.Kafka" in cmdline


def _last_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = (result.stdout + result.stderr).strip().splitlines()
    return lines[-1][:300] if lines else f"exit code {result.returncode}"
