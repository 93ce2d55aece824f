"""A real single-node Kafka (KRaft, combined broker+controller) for local runs and tests.

The broker is the Apache Kafka jars resolved by `make setup`, started as
`java -cp "<kafka-jars>/*" kafka.Kafka <server.properties>` in its own session so it
outlives the command that started it. Everything it writes (data, generated config,
log4j2 config, logs, pid file) lives under `settings.local_dir / "kafka"`.

Library functions never print; they log through `logging` and raise `KafkaLocalError`
with a one-line, actionable message.
"""
from __future__ import annotations

import base64
import contextlib
import errno
import fcntl
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from pipelines.core import kafka_topics
from pipelines.core.settings import Settings, kafka_jars_dir


log = logging.getLogger(__name__)

NODE_ID = 1
MAIN_CLASS = "kafka.Kafka"
# Kafka 4.x ships the storage tool (the class behind kafka-storage.sh) in the core jar.
STORAGE_TOOL_CLASS = "kafka.tools.StorageTool"
DEFAULT_PARTITIONS = 3
# Topic-level override of the broker's retention (a week, 256 MiB per partition): nothing
# is ever deleted. For benchmark topics that hold millions of records until they are read.
RETAIN_EVERYTHING = {"retention.ms": "-1", "retention.bytes": "-1"}
BROKER_JVM_OPTS = ("-Xms128m", "-Xmx512m", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20")
# The storage tool runs for a second: C1-only JIT and serial GC halve its start-up.
TOOL_JVM_OPTS = ("-Xmx256m", "-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC")
LOG_TAIL_LINES = 20
_POLL_S = 0.2


class KafkaLocalError(RuntimeError):
    """The local broker could not be started, reached or stopped; message says what to do."""


@dataclass(frozen=True)
class BrokerStatus:
    running: bool
    pid: int | None
    bootstrap: str
    data_dir: Path
    detail: str


@dataclass(frozen=True)
class BrokerLayout:
    """Where one local broker keeps its files (one per `local_dir`)."""

    root: Path

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def logs_dir(self) -> Path:
        return self.root / "logs"

    @property
    def server_properties(self) -> Path:
        return self.root / "server.properties"

    @property
    def log4j_config(self) -> Path:
        return self.root / "log4j2.properties"

    @property
    def pid_file(self) -> Path:
        return self.root / "broker.pid"

    @property
    def cluster_id_file(self) -> Path:
        return self.root / "cluster.id"

    @property
    def lock_file(self) -> Path:
        return self.root / ".start.lock"

    @property
    def server_log(self) -> Path:
        return self.logs_dir / "server.log"

    @property
    def console_log(self) -> Path:
        # JVM-level failures (bad classpath, OOM at boot) never reach log4j.
        return self.logs_dir / "kafka.out"


def layout(settings: Settings) -> BrokerLayout:
    # Absolute, so the pid-ownership check (path in the java command line) is stable
    # whatever the caller's working directory.
    return BrokerLayout(Path(settings.local_dir).expanduser().resolve() / "kafka")


# --------------------------------------------------------------------------- config


def parse_bootstrap(bootstrap: str) -> tuple[str, int]:
    """`host:port[,host:port...]` -> the first (host, port); the local broker is one node."""
    first = bootstrap.split(",")[0].strip()
    host, sep, port = first.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise KafkaLocalError(
            f"bootstrap servers must look like host:port, got {bootstrap!r}; fix KAFKA_BOOTSTRAP_SERVERS"
        )
    return host.strip("[]"), int(port)


def controller_port(broker_port: int) -> int:
    return broker_port + 1


def render_server_properties(*, host: str, port: int, ctrl_port: int, data_dir: Path) -> str:
    """The broker config: combined KRaft node, dev-sized, append-time timestamps."""
    # Clients must be told a connectable address even if we listen on all interfaces.
    advertised = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    props: dict[str, str | int] = {
        "process.roles": "broker,controller",
        "node.id": NODE_ID,
        # A static voter set: no dynamic-quorum bootstrapping needed for one node.
        "controller.quorum.voters": f"{NODE_ID}@{advertised}:{ctrl_port}",
        "listeners": f"PLAINTEXT://{host}:{port},CONTROLLER://{host}:{ctrl_port}",
        "advertised.listeners": f"PLAINTEXT://{advertised}:{port}",
        "inter.broker.listener.name": "PLAINTEXT",
        "controller.listener.names": "CONTROLLER",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "log.dirs": str(data_dir),
        # The pipeline orders duplicate copies by Kafka timestamp then partition/offset,
        # so the timestamp must be the broker's append time, never the producer's clock.
        "log.message.timestamp.type": "LogAppendTime",
        "num.partitions": DEFAULT_PARTITIONS,
        "auto.create.topics.enable": "true",
        "default.replication.factor": 1,
        "min.insync.replicas": 1,
        # One node: internal topics cannot have more than one replica, and fewer
        # partitions make their first creation (first consumer group / txn) quick.
        "offsets.topic.replication.factor": 1,
        "offsets.topic.num.partitions": 3,
        "transaction.state.log.replication.factor": 1,
        "transaction.state.log.min.isr": 1,
        "transaction.state.log.num.partitions": 3,
        "share.coordinator.state.topic.replication.factor": 1,
        "share.coordinator.state.topic.min.isr": 1,
        # Consumers in tests should not wait 3 s for a rebalance that has no peers.
        "group.initial.rebalance.delay.ms": 0,
        # Dev-machine footprint: a week or 256 MiB per partition, whichever first;
        # small segments so retention can actually free space. A topic that must keep
        # more (a 10M-event benchmark) is created with RETAIN_EVERYTHING.
        "log.retention.hours": 168,
        "log.retention.bytes": 256 * 1024 * 1024,
        "log.segment.bytes": 16 * 1024 * 1024,
        "log.retention.check.interval.ms": 60_000,
        # The cleaner's default 128 MiB buffer is a quarter of our 512 MiB heap.
        "log.cleaner.dedupe.buffer.size": 16 * 1024 * 1024,
        "num.network.threads": 2,
        "num.io.threads": 4,
        "num.recovery.threads.per.data.dir": 1,
    }
    lines = ["# Generated by devtools/kafka_local.py on every start; edits are overwritten."]
    lines += [f"{key}={value}" for key, value in props.items()]
    return "\n".join(lines) + "\n"


def render_log4j2(logs_dir: Path) -> str:
    """Broker logging: INFO to a size-capped rolling file, nothing on the console."""
    log_file = logs_dir / "server.log"
    return "\n".join(
        [
            "# Generated by devtools/kafka_local.py on every start.",
            "status = warn",
            "name = lakehouse-kafka-local",
            "appender.file.type = RollingFile",
            "appender.file.name = FILE",
            f"appender.file.fileName = {log_file}",
            f"appender.file.filePattern = {log_file}.%i",
            "appender.file.layout.type = PatternLayout",
            "appender.file.layout.pattern = [%d] %p %m (%c)%n",
            "appender.file.policies.type = Policies",
            "appender.file.policies.size.type = SizeBasedTriggeringPolicy",
            "appender.file.policies.size.size = 10MB",
            "appender.file.strategy.type = DefaultRolloverStrategy",
            "appender.file.strategy.max = 3",
            "rootLogger.level = INFO",
            "rootLogger.appenderRef.file.ref = FILE",
            # Per-request and per-partition chatter drowns the lines that explain a failure.
            *_quiet_logger("request", "kafka.request.logger"),
            *_quiet_logger("statechange", "state.change.logger"),
            *_quiet_logger("cleaner", "kafka.log.LogCleaner"),
            *_quiet_logger("authorizer", "kafka.authorizer.logger"),
            *_quiet_logger("clientconfig", "org.apache.kafka.clients"),
            *_quiet_logger("logs", "org.apache.kafka.storage.internals.log"),
            "",
        ]
    )


def _quiet_logger(key: str, name: str) -> list[str]:
    return [f"logger.{key}.name = {name}", f"logger.{key}.level = WARN"]


def new_cluster_id() -> str:
    """Kafka's Uuid text form: 16 random bytes, URL-safe base64, no padding. Like Kafka's
    own Uuid.randomUuid, never one starting with '-': kafka-storage would read it as an
    option and fail the format (1 start in 64 did, before this)."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode("ascii").rstrip("=")
        if not cid.startswith("-"):
            return cid


def _cluster_id(lay: BrokerLayout) -> str:
    """Stored once so a re-format (after wiping data) keeps the same id."""
    if lay.cluster_id_file.exists():
        stored = lay.cluster_id_file.read_text().strip()
        # One starting with '-' never formatted anything (see new_cluster_id): replaced.
        if stored and not stored.startswith("-"):
            return stored
    cid = new_cluster_id()
    lay.cluster_id_file.write_text(cid + "\n")
    return cid


# --------------------------------------------------------------------------- toolchain


def _java() -> str:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").is_file():
        return str(Path(java_home) / "bin" / "java")
    found = shutil.which("java")
    if not found:
        raise KafkaLocalError(
            "java not found on PATH; install a JDK 17+ (or set JAVA_HOME) to run the local Kafka"
        )
    return found


def _classpath() -> str:
    jars = kafka_jars_dir()
    if not jars.is_dir() or not any(jars.glob("kafka_2.13-*.jar")):
        raise KafkaLocalError(f"Kafka broker jars missing in {jars}; run `make setup`")
    # Java expands `dir/*` to every jar in it; cheaper than listing ~90 jars.
    return str(jars / "*")


def _java_cmd(
    java: str, lay: BrokerLayout, jvm_opts: tuple[str, ...], main_class: str, *args: str
) -> list[str]:
    return [
        java,
        *jvm_opts,
        "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={lay.log4j_config}",
        f"-Dkafka.logs.dir={lay.logs_dir}",
        "-cp",
        _classpath(),
        main_class,
        *args,
    ]


# --------------------------------------------------------------------------- processes


def _read_pid(lay: BrokerLayout) -> int | None:
    try:
        return int(lay.pid_file.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def _reap_if_child(pid: int) -> None:
    # When this very process started the broker, a dead broker stays a zombie (and
    # still "exists" for kill(0)) until we collect it.
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _alive(pid: int) -> bool:
    """Running (not gone, not a zombie waiting for a parent that never reaps it)."""
    _reap_if_child(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    with contextlib.suppress(OSError):
        # Field 3, after the parenthesised command name, is the state letter.
        return stat.read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    return True


def _cmdline(pid: int) -> str | None:
    """The process's command line, or None when it is not running."""
    if not Path("/proc/self").is_dir():
        # No /proc (macOS): ask ps.
        result = subprocess.run(["ps", "-o", "command=", "-p", str(pid)], capture_output=True, text=True)
        return result.stdout.strip() or None
    # Right after exec (and under memory pressure) /proc/<pid>/cmdline can read empty for
    # a live process; retry briefly rather than declare a booting broker dead.
    for _ in range(20):
        if not _alive(pid):
            return None
        with contextlib.suppress(OSError):
            raw = Path(f"/proc/{pid}/cmdline").read_bytes()
            if raw:
                return raw.replace(b"\0", b" ").decode(errors="replace").strip()
        time.sleep(0.05)
    return None


def _is_our_broker(pid: int, lay: BrokerLayout) -> bool:
    # Pids get reused; only a java running kafka.Kafka on *our* config counts.
    cmd = _cmdline(pid)
    return bool(cmd) and MAIN_CLASS in cmd and str(lay.server_properties) in cmd


def _port_answers(host: str, port: int, timeout_s: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def _check_port_free(host: str, port: int, role: str, lay: BrokerLayout) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        # Same option the broker uses, so TIME_WAIT leftovers are not "taken".
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise KafkaLocalError(
                    f"{role} port {host}:{port} is already in use by a process that is not the broker "
                    f"managed from {lay.root}; stop it or point KAFKA_BOOTSTRAP_SERVERS at a free port "
                    f"(the controller uses port+1)"
                ) from exc
            raise KafkaLocalError(
                f"cannot listen on {host}:{port} ({exc.strerror}); use a local address"
            ) from exc


def _log_tail(lay: BrokerLayout, lines: int = LOG_TAIL_LINES) -> str:
    """The last lines of this run's output, led by the first error and its exception.

    Kafka logs the cause once and then a long orderly shutdown, so the plain tail of a
    failed start is all "Stopped"/"closed" noise.
    """
    text: list[str] = []
    for path in (lay.console_log, lay.server_log):
        with contextlib.suppress(OSError):
            text += path.read_text(errors="replace").splitlines()
    if not text:
        return "(no broker log output)"
    cause = _first_error(text)
    tail = text[-(lines - len(cause) - 1) :] if cause else text[-lines:]
    if cause and cause[0] not in tail:
        return "\n".join([*cause, "...", *tail])
    return "\n".join(tail)


def _first_error(text: list[str]) -> list[str]:
    for i, line in enumerate(text):
        if "] ERROR " in line or "] FATAL " in line:
            # The logged message, then the exception line (stack frames start with a tab).
            following = [
                ln for ln in text[i + 1 : i + 3] if ln.strip() and not ln.startswith(("\t", "[", " "))
            ]
            return [line, *following[:1]]
    return []


@contextlib.contextmanager
def _start_lock(lay: BrokerLayout) -> Iterator[None]:
    """Serialise concurrent `start` calls (e.g. parallel make targets) on one local_dir."""
    with open(lay.lock_file, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# --------------------------------------------------------------------------- public API


def status(settings: Settings) -> BrokerStatus:
    """Whether our broker process is alive *and* answering on its port."""
    lay = layout(settings)
    host, port = parse_bootstrap(settings.bootstrap_servers)
    pid = _read_pid(lay)

    def report(running: bool, pid_: int | None, detail: str) -> BrokerStatus:
        return BrokerStatus(running, pid_, settings.bootstrap_servers, lay.data_dir, detail)

    if pid is None:
        return report(False, None, "not running (no pid file)")
    if not _is_our_broker(pid, lay):
        return report(False, None, f"not running (stale pid file for pid {pid})")
    if not _port_answers(host, port):
        detail = f"process {pid} alive but not answering on {host}:{port} (starting or hung)"
        return report(False, pid, detail)
    return report(True, pid, f"running, pid {pid}, {host}:{port}")


def start(settings: Settings, *, timeout_s: float = 60) -> BrokerStatus:
    """Start the broker if needed, wait until clients can use it, ensure the billing topics."""
    lay = layout(settings)
    host, port = parse_bootstrap(settings.bootstrap_servers)
    for folder in (lay.root, lay.data_dir, lay.logs_dir):
        folder.mkdir(parents=True, exist_ok=True)

    with _start_lock(lay):
        pid = _read_pid(lay)
        if pid is not None and _is_our_broker(pid, lay):
            if _port_answers(host, port):
                log.debug("kafka broker already running (pid %s)", pid)
                return status(settings)
            # Another `start` is still booting it (or it hangs): wait, don't fork a twin.
            _wait_until_ready(settings, lay, pid, timeout_s)
        else:
            if pid is not None:
                log.info("removing stale kafka pid file (pid %s is not our broker)", pid)
            lay.pid_file.unlink(missing_ok=True)
            pid = _launch(lay, host, port)
            _wait_until_ready(settings, lay, pid, timeout_s)

    kafka_topics.ensure_topics(
        settings,
        {settings.events_topic: DEFAULT_PARTITIONS, settings.notifications_topic: DEFAULT_PARTITIONS},
    )
    return status(settings)


def stop(settings: Settings, *, timeout_s: float = 30) -> bool:
    """SIGTERM our broker, SIGKILL it after `timeout_s`; True when something was stopped."""
    lay = layout(settings)
    pid = _read_pid(lay)
    if pid is None:
        return False
    if not _is_our_broker(pid, lay):
        lay.pid_file.unlink(missing_ok=True)
        return False
    log.info("stopping kafka broker (pid %s)", pid)
    _signal(pid, signal.SIGTERM)
    if not _wait_gone(pid, lay, timeout_s):
        log.warning("kafka broker (pid %s) ignored SIGTERM for %ss; killing it", pid, timeout_s)
        _signal(pid, signal.SIGKILL)
        _wait_gone(pid, lay, 10)
    lay.pid_file.unlink(missing_ok=True)
    return True


# --------------------------------------------------------------------------- start helpers


def _launch(lay: BrokerLayout, host: str, port: int) -> int:
    java = _java()
    _classpath()  # fail on missing jars before touching ports or files
    ctrl = controller_port(port)
    _check_port_free(host, port, "broker", lay)
    _check_port_free(host, ctrl, "controller", lay)

    lay.server_properties.write_text(
        render_server_properties(host=host, port=port, ctrl_port=ctrl, data_dir=lay.data_dir)
    )
    lay.log4j_config.write_text(render_log4j2(lay.logs_dir))
    _format_storage_once(java, lay)

    _warn_if_logging_unbound(kafka_jars_dir())
    _set_aside_previous_logs(lay)
    cmd = _java_cmd(java, lay, BROKER_JVM_OPTS, MAIN_CLASS, str(lay.server_properties))
    with open(lay.console_log, "wb") as console:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=console,
            stderr=subprocess.STDOUT,
            cwd=lay.root,
            # Own session: Ctrl-C in the caller's terminal and the caller exiting leave it running.
            start_new_session=True,
        )
    lay.pid_file.write_text(f"{proc.pid}\n")
    log.info(
        "started kafka broker pid %s on %s:%s (controller :%s), logs in %s",
        proc.pid, host, port, ctrl, lay.logs_dir,
    )
    return proc.pid


def _set_aside_previous_logs(lay: BrokerLayout) -> None:
    # So a start failure quotes this run's lines, not the previous run's shutdown.
    if lay.server_log.exists():
        lay.server_log.replace(lay.server_log.with_name("server.log.previous"))


def _warn_if_logging_unbound(jars: Path) -> None:
    """log4j-slf4j2-impl needs slf4j-api 2.x; next to 1.x the broker silently logs nothing."""
    names = [p.name for p in jars.glob("*.jar")]
    has_v2_binding = any(n.startswith("log4j-slf4j2-impl-") for n in names)
    has_v1_api_only = any(n.startswith("slf4j-api-1.") for n in names) and not any(
        n.startswith("slf4j-api-2.") for n in names
    )
    if has_v2_binding and has_v1_api_only:
        log.warning(
            "kafka broker logging is disabled: %s has slf4j-api 1.x with log4j-slf4j2-impl "
            "(SLF4J falls back to NOP); add org.slf4j:slf4j-api 2.x to the kafka profile of jvm/pom.xml",
            jars,
        )


def _format_storage_once(java: str, lay: BrokerLayout) -> None:
    # meta.properties marks a formatted log dir; formatting again would fail (or wipe ids).
    if (lay.data_dir / "meta.properties").exists():
        return
    args = ("format", "-t", _cluster_id(lay), "-c", str(lay.server_properties))
    cmd = _java_cmd(java, lay, TOOL_JVM_OPTS, STORAGE_TOOL_CLASS, *args)
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=lay.root)
    if result.returncode != 0:
        output = (result.stdout + result.stderr).strip().splitlines()[-LOG_TAIL_LINES:]
        raise KafkaLocalError(
            f"formatting Kafka storage in {lay.data_dir} failed (exit {result.returncode}); "
            "delete that folder to reformat (drops local topics):\n" + "\n".join(output)
        )
    log.info("formatted kafka storage in %s", lay.data_dir)


def _wait_until_ready(settings: Settings, lay: BrokerLayout, pid: int, timeout_s: float) -> None:
    host, port = parse_bootstrap(settings.bootstrap_servers)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not _is_our_broker(pid, lay):
            lay.pid_file.unlink(missing_ok=True)
            raise KafkaLocalError(
                f"Kafka broker (pid {pid}) exited during start; last lines of {lay.logs_dir}:\n"
                + _log_tail(lay)
            )
        # A bare TCP probe first: kafka-python logs noisy errors on refused connections.
        if _port_answers(host, port) and _broker_registered(settings):
            return
        time.sleep(_POLL_S)
    raise KafkaLocalError(
        f"Kafka broker (pid {pid}) not ready on {host}:{port} after {timeout_s:.0f}s; it was left running "
        f"(`python -m devtools kafka stop` to kill it); last lines of its log:\n{_log_tail(lay)}"
    )


def _broker_registered(settings: Settings) -> bool:
    """True once the broker answers metadata requests and lists itself (unfenced)."""
    from pipelines.core.kafka_auth import KafkaAuthError

    try:
        with kafka_topics.admin(settings, client_id="lakehouse-kafka-local", timeout_ms=2_000) as admin:
            brokers = admin.describe_cluster().get("brokers") or []
    except KafkaAuthError:
        raise  # the settings are wrong (plaintext refused...): waiting will not fix them
    except Exception as exc:  # any client error just means "not yet"
        log.debug("kafka not ready yet: %s", exc)
        return False
    return any(not b.get("is_fenced", False) for b in brokers)


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _wait_gone(pid: int, lay: BrokerLayout, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not _is_our_broker(pid, lay):
            return True
        time.sleep(_POLL_S)
    return not _is_our_broker(pid, lay)
