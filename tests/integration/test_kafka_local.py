"""The local broker against a REAL Kafka (java + the jars from `make setup`).

`make test` starts the shared broker (default settings, 127.0.0.1:9092) before pytest;
these tests use it but never stop it. Stop/failure scenarios run a second, throwaway
broker on free ports with its own temporary local_dir.
"""
from __future__ import annotations

import socket
import time
import uuid
from pathlib import Path
from typing import Iterator

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition

from pipelines.core import kafka_topics
from devtools import kafka_local
from devtools.kafka_local import KafkaLocalError
from pipelines.core.settings import Settings

pytestmark = pytest.mark.kafka

SHARED = Settings()
LOG_APPEND_TIME = 1  # ConsumerRecord.timestamp_type: 0 = CreateTime, 1 = LogAppendTime


@pytest.fixture(scope="module")
def shared() -> kafka_local.BrokerStatus:
    # Normally a no-op (make test started it); starts it when pytest runs on its own.
    return kafka_local.start(SHARED)


@pytest.fixture
def admin(shared: kafka_local.BrokerStatus) -> Iterator[KafkaAdminClient]:
    client = KafkaAdminClient(bootstrap_servers=shared.bootstrap, client_id="test-kafka-local")
    yield client
    client.close()


def _free_port_pair() -> int:
    """A port p with p and p+1 both free (broker + controller)."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        if port >= 65535:
            continue
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 1))
        except OSError:
            continue
        return port
    raise RuntimeError("no two consecutive free ports")


def _private_settings(tmp_path: Path) -> Settings:
    return SHARED.with_overrides(bootstrap_servers=f"127.0.0.1:{_free_port_pair()}", local_dir=tmp_path)


def test_start_is_idempotent(shared: kafka_local.BrokerStatus) -> None:
    began = time.monotonic()
    again = kafka_local.start(SHARED)
    assert again.running and again.pid == shared.pid
    assert time.monotonic() - began < 5  # returned at once, no second JVM


def test_status_reports_running(shared: kafka_local.BrokerStatus) -> None:
    state = kafka_local.status(SHARED)
    assert state.running, state.detail
    assert state.pid == shared.pid
    assert state.bootstrap == SHARED.bootstrap_servers
    assert (state.data_dir / "meta.properties").exists()


def test_billing_topics_exist_with_three_partitions(admin: KafkaAdminClient) -> None:
    wanted = [SHARED.events_topic, SHARED.notifications_topic]
    described = {t["name"]: t for t in admin.describe_topics(wanted)}
    for name in wanted:
        assert described[name]["error_code"] == 0, name
        assert len(described[name]["partitions"]) == 3, name


def test_ensure_topics_is_idempotent(admin: KafkaAdminClient) -> None:
    topic = f"test.kafka_local.{uuid.uuid4().hex[:8]}"
    try:
        assert kafka_topics.ensure_topics(SHARED, {topic: 2}) == [topic]
        assert kafka_topics.ensure_topics(SHARED, {topic: 2}) == []
        (described,) = admin.describe_topics([topic])
        assert len(described["partitions"]) == 2
    finally:
        admin.delete_topics([topic])


def test_topics_created_with_retain_everything_keep_what_the_broker_would_delete(admin: KafkaAdminClient) -> None:
    from kafka.admin import ConfigResource, ConfigResourceType

    kept, plain = (f"test.kafka_local.{uuid.uuid4().hex[:8]}" for _ in range(2))
    try:
        kafka_topics.ensure_topics(SHARED, {kept: 1}, configs=kafka_local.RETAIN_EVERYTHING)
        kafka_topics.ensure_topics(SHARED, {plain: 1})
        # Already there: the configs apply to topics the call creates, never to existing ones.
        assert kafka_topics.ensure_topics(SHARED, {plain: 1}, configs=kafka_local.RETAIN_EVERYTHING) == []

        def overrides(topic: str) -> dict[str, str]:
            """The topic's own retention settings (none: it inherits the broker's)."""
            keys = ["retention.ms", "retention.bytes"]
            described = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic, configs=keys)])
            return {k: v["value"] for k, v in described["topic"][topic].items()}

        assert overrides(kept) == {"retention.ms": "-1", "retention.bytes": "-1"}
        assert overrides(plain) == {}
    finally:
        admin.delete_topics([kept, plain])


def test_produce_then_consume_with_append_time(admin: KafkaAdminClient) -> None:
    topic = f"test.kafka_local.{uuid.uuid4().hex[:8]}"
    kafka_topics.ensure_topics(SHARED, {topic: 1})
    try:
        producer = KafkaProducer(bootstrap_servers=SHARED.bootstrap_servers)
        before_ms = int(time.time() * 1000)
        # A producer clock an hour behind: the broker must overwrite it (LogAppendTime).
        producer.send(topic, key=b"k", value=b"hello", timestamp_ms=before_ms - 3_600_000).get(timeout=15)
        producer.close()

        consumer = KafkaConsumer(
            bootstrap_servers=SHARED.bootstrap_servers,
            group_id=None,
            enable_auto_commit=False,
            consumer_timeout_ms=15_000,
        )
        partition = TopicPartition(topic, 0)
        consumer.assign([partition])
        consumer.seek_to_beginning(partition)
        record = next(iter(consumer))
        consumer.close()
    finally:
        admin.delete_topics([topic])

    assert (record.key, record.value) == (b"k", b"hello")
    assert record.timestamp_type == LOG_APPEND_TIME
    assert record.timestamp >= before_ms - 5_000


def test_port_taken_by_a_stranger_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        settings = SHARED.with_overrides(bootstrap_servers=f"127.0.0.1:{port}", local_dir=tmp_path)
        with pytest.raises(KafkaLocalError) as caught:
            kafka_local.start(settings, timeout_s=10)
    message = str(caught.value)
    assert f"127.0.0.1:{port} is already in use" in message
    assert "\n" not in message
    assert not kafka_local.layout(settings).pid_file.exists()


def test_second_broker_starts_and_stops(tmp_path: Path, shared: kafka_local.BrokerStatus) -> None:
    settings = _private_settings(tmp_path)
    try:
        began = time.monotonic()
        state = kafka_local.start(settings, timeout_s=60)
        elapsed = time.monotonic() - began
        assert state.running, state.detail
        assert state.pid != shared.pid
        assert elapsed < 60
    finally:
        stopped = kafka_local.stop(settings)
    assert stopped is True
    after = kafka_local.status(settings)
    assert not after.running and after.pid is None
    assert not kafka_local.layout(settings).pid_file.exists()
    assert not kafka_local._alive(state.pid)
    assert kafka_local.stop(settings) is False
    # The shared broker is untouched.
    assert kafka_local.status(SHARED).running


def test_broker_dying_during_start_reports_its_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _private_settings(tmp_path)
    host, port = kafka_local.parse_bootstrap(settings.bootstrap_servers)
    # Let the pre-flight pass so the JVM itself hits a taken port (a real race); the
    # controller port is bound first, so the broker dies early.
    monkeypatch.setattr(kafka_local, "_check_port_free", lambda *args: None)
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind((host, kafka_local.controller_port(port)))
        squatter.listen()
        try:
            with pytest.raises(KafkaLocalError, match="exited during start") as caught:
                kafka_local.start(settings, timeout_s=60)
        finally:
            kafka_local.stop(settings)
    assert str(kafka_local.layout(settings).logs_dir) in str(caught.value)
    assert not kafka_local.layout(settings).pid_file.exists()
