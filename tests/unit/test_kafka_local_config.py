"""Pure checks of the local broker's generated config and pre-flight errors (no broker, no JVM)."""
from __future__ import annotations

import base64
import uuid
import os
from pathlib import Path

import pytest

from devtools import kafka_local
from devtools.kafka_local import KafkaLocalError
from pipelines.core.settings import Settings


def _props(text: str) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))
    return {key: value for key, value in pairs}


@pytest.fixture
def props(tmp_path: Path) -> dict[str, str]:
    text = kafka_local.render_server_properties(
        host="127.0.0.1", port=9092, ctrl_port=9093, data_dir=tmp_path / "data"
    )
    return _props(text)


def test_kraft_combined_node_with_static_voter(props: dict[str, str]) -> None:
    assert props["process.roles"] == "broker,controller"
    assert props["controller.quorum.voters"] == f"{props['node.id']}@127.0.0.1:9093"
    assert props["controller.listener.names"] == "CONTROLLER"


def test_listens_on_bootstrap_and_controller_ports(props: dict[str, str]) -> None:
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:9092,CONTROLLER://127.0.0.1:9093"
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:9092"


def test_append_time_timestamps_broker_wide(props: dict[str, str]) -> None:
    # The pipeline orders duplicates by Kafka timestamp; producer clocks must not leak in.
    assert props["log.message.timestamp.type"] == "LogAppendTime"


def test_single_node_replication_and_defaults(props: dict[str, str]) -> None:
    assert props["num.partitions"] == "3"
    assert props["auto.create.topics.enable"] == "true"
    for key in (
        "default.replication.factor",
        "offsets.topic.replication.factor",
        "transaction.state.log.replication.factor",
        "transaction.state.log.min.isr",
    ):
        assert props[key] == "1", key


def test_dev_sized_retention(props: dict[str, str]) -> None:
    assert int(props["log.segment.bytes"]) <= 64 * 1024 * 1024
    assert int(props["log.retention.bytes"]) > int(props["log.segment.bytes"])
    assert int(props["log.retention.hours"]) <= 24 * 7


def test_data_dir_is_the_given_folder(tmp_path: Path, props: dict[str, str]) -> None:
    assert props["log.dirs"] == str(tmp_path / "data")


def test_wildcard_host_advertises_loopback(tmp_path: Path) -> None:
    props = _props(
        kafka_local.render_server_properties(host="0.0.0.0", port=19092, ctrl_port=19093, data_dir=tmp_path)
    )
    assert props["listeners"].startswith("PLAINTEXT://0.0.0.0:19092,")
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:19092"


def test_log4j2_writes_to_file_not_console(tmp_path: Path) -> None:
    text = kafka_local.render_log4j2(tmp_path / "logs")
    assert f"fileName = {tmp_path / 'logs' / 'server.log'}" in text
    assert "Console" not in text
    assert "rootLogger.appenderRef.file.ref = FILE" in text


@pytest.mark.parametrize(
    ("bootstrap", "expected"),
    [
        ("127.0.0.1:9092", ("127.0.0.1", 9092)),
        ("localhost:19092,other:9092", ("localhost", 19092)),
        ("[::1]:9092", ("::1", 9092)),
    ],
)
def test_parse_bootstrap(bootstrap: str, expected: tuple[str, int]) -> None:
    assert kafka_local.parse_bootstrap(bootstrap) == expected


@pytest.mark.parametrize("bad", ["127.0.0.1", "host:port", ":9092"])
def test_parse_bootstrap_rejects_garbage(bad: str) -> None:
    with pytest.raises(KafkaLocalError, match="host:port"):
        kafka_local.parse_bootstrap(bad)


def test_controller_port_is_next_port() -> None:
    assert kafka_local.controller_port(9092) == 9093


def test_cluster_id_is_kafka_uuid_text() -> None:
    cid = kafka_local.new_cluster_id()
    assert len(cid) == 22
    assert len(base64.urlsafe_b64decode(cid + "==")) == 16


def test_cluster_id_never_starts_with_a_dash(monkeypatch, tmp_path: Path) -> None:
    # kafka-storage's argument parser reads "-xyz" as an option: the format fails.
    dashed, plain = uuid.UUID(bytes=b"\xfb" + bytes(15)), uuid.UUID(bytes=bytes(16))
    draws = iter([dashed, plain])
    monkeypatch.setattr(kafka_local.uuid, "uuid4", lambda: next(draws))
    assert base64.urlsafe_b64encode(dashed.bytes).decode().startswith("-")
    assert kafka_local.new_cluster_id() == "AAAAAAAAAAAAAAAAAAAAAA"
    # A stored id from before the fix is replaced, not reused.
    lay = kafka_local.layout(Settings().with_overrides(local_dir=tmp_path))
    lay.root.mkdir(parents=True)
    lay.cluster_id_file.write_text("-bad\n")
    monkeypatch.setattr(kafka_local, "new_cluster_id", lambda: "fresh")
    assert kafka_local._cluster_id(lay) == "fresh" and lay.cluster_id_file.read_text() == "fresh\n"


def test_layout_lives_under_local_dir(tmp_path: Path) -> None:
    lay = kafka_local.layout(Settings().with_overrides(local_dir=tmp_path))
    assert lay.root == tmp_path.resolve() / "kafka"
    assert lay.data_dir.parent == lay.server_properties.parent == lay.pid_file.parent == lay.root


def test_log_tail_leads_with_the_first_error(tmp_path: Path) -> None:
    lay = kafka_local.layout(Settings().with_overrides(local_dir=tmp_path))
    lay.logs_dir.mkdir(parents=True)
    noise = [f"[t] INFO shutting down part {i} (x)" for i in range(50)]
    cause = ["[t] ERROR Unable to start acceptor (y)", "KafkaException: failed to bind", "\tat frame"]
    lay.server_log.write_text("\n".join(["[t] INFO booting (x)", *cause, *noise]) + "\n")
    tail = kafka_local._log_tail(lay).splitlines()
    assert tail[:2] == cause[:2]
    assert tail[-1] == noise[-1]
    assert len(tail) <= kafka_local.LOG_TAIL_LINES


# ---------------------------------------------------------------- pre-flight errors


def _isolated(tmp_path: Path) -> Settings:
    # A port nobody listens on: these tests must fail before any bind or connect.
    return Settings().with_overrides(bootstrap_servers="127.0.0.1:1", local_dir=tmp_path)


def test_missing_jars_says_run_make_setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "jars").mkdir()
    monkeypatch.setenv("LAKEHOUSE_KAFKA_JARS", str(tmp_path / "jars"))
    with pytest.raises(KafkaLocalError, match="run `make setup`"):
        kafka_local.start(_isolated(tmp_path), timeout_s=5)


def test_missing_java_is_explicit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(KafkaLocalError, match="java not found on PATH"):
        kafka_local.start(_isolated(tmp_path), timeout_s=5)


def test_stale_pid_file_is_not_running(tmp_path: Path) -> None:
    settings = _isolated(tmp_path)
    lay = kafka_local.layout(settings)
    lay.root.mkdir(parents=True)
    # Our own pid: alive, but certainly not a Kafka broker on this config.
    lay.pid_file.write_text(f"{os.getpid()}\n")
    state = kafka_local.status(settings)
    assert not state.running and state.pid is None
    assert "stale" in state.detail
    assert kafka_local.stop(settings) is False
    assert not lay.pid_file.exists()
