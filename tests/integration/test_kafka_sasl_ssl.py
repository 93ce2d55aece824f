"""Every Kafka client of the project reaches a broker that only speaks SASL_SSL.

The test makes a self-signed certificate (keytool, from the JDK that runs the broker) and
starts its own KRaft broker from the same jars as the local one, on free ports, listening
SASL_SSL with SASL/PLAIN only. Then, configured by environment variables alone (as a job
is), the topic admin (ensure_topics), the producer (devtools.sender.send), read_topic, the
notification publisher (its transactional producer and read_committed read-back
consumer) and the Spark Kafka source (the bronze job) all reach it. The shared local
broker is not touched.
"""
from __future__ import annotations

import socket
import subprocess
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from pipelines.core import kafka_clients, kafka_topics
from devtools import generator, kafka_local, sender
from pipelines.rules.notifications import (
    _publisher, close_publishers, notification_id, publish_pending, read_topic, stage_notifications, stage_rows,
)
from pipelines.core.settings import Settings
from pipelines.core.tables import Lake
from tests.integration.helpers import context, run

pytestmark = pytest.mark.kafka

USER, PASSWORD = "billing", "billing-s3cret"
BROKER_USER, BROKER_PASSWORD = "broker", "broker-s3cret"
STORE_PASSWORD = "test-store-pw"
EVENTS = 25


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _keytool() -> str:
    # The JDK that runs the broker has one beside its java.
    return str(Path(kafka_local._java()).resolve().parent / "keytool")


def make_certificate(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (keystore for the broker, PEM for clients)."""
    keystore, ca = folder / "broker.p12", folder / "ca.pem"
    subprocess.run([_keytool(), "-genkeypair", "-alias", "broker", "-keyalg", "EC", "-groupname", "secp256r1",
                    "-validity", "2", "-dname", "CN=localhost", "-ext", "SAN=ip:127.0.0.1,dns:localhost",
                    "-keystore", str(keystore), "-storetype", "PKCS12",
                    "-storepass", STORE_PASSWORD, "-keypass", STORE_PASSWORD], check=True, capture_output=True)
    subprocess.run([_keytool(), "-exportcert", "-rfc", "-alias", "broker", "-keystore", str(keystore),
                    "-storepass", STORE_PASSWORD, "-file", str(ca)], check=True, capture_output=True)
    return keystore, ca


def sasl_ssl_properties(lay: kafka_local.BrokerLayout, port: int, ctrl: int, keystore: Path, ca: Path) -> str:
    """The local broker's configuration with its client listener turned into SASL_SSL/PLAIN."""
    base = kafka_local.render_server_properties(host="127.0.0.1", port=port, ctrl_port=ctrl, data_dir=lay.data_dir)
    jaas = ("org.apache.kafka.common.security.plain.PlainLoginModule required "
            f'username="{BROKER_USER}" password="{BROKER_PASSWORD}" '
            f'user_{BROKER_USER}="{BROKER_PASSWORD}" user_{USER}="{PASSWORD}";')
    override = {
        "listeners": f"SASL_SSL://127.0.0.1:{port},CONTROLLER://127.0.0.1:{ctrl}",
        "advertised.listeners": f"SASL_SSL://127.0.0.1:{port}",
        "inter.broker.listener.name": "SASL_SSL",
        "listener.security.protocol.map": "SASL_SSL:SASL_SSL,CONTROLLER:PLAINTEXT",
        "sasl.enabled.mechanisms": "PLAIN",
        "sasl.mechanism.inter.broker.protocol": "PLAIN",
        "listener.name.sasl_ssl.plain.sasl.jaas.config": jaas,
        "ssl.keystore.type": "PKCS12",
        "ssl.keystore.location": str(keystore),
        "ssl.keystore.password": STORE_PASSWORD,
        "ssl.key.password": STORE_PASSWORD,
        # The broker is its own client on the inter-broker listener: it must trust itself.
        "ssl.truststore.type": "PEM",
        "ssl.truststore.location": str(ca),
    }
    lines = [line for line in base.splitlines() if line.split("=", 1)[0] not in override]
    return "\n".join([*lines, *(f"{k}={v}" for k, v in override.items())]) + "\n"


@pytest.fixture(scope="module")
def sasl_broker(tmp_path_factory):
    """(settings, env): a SASL_SSL-only broker of our own and the client environment for it."""
    root = tmp_path_factory.mktemp("sasl-broker")
    keystore, ca = make_certificate(root)
    lay = kafka_local.BrokerLayout(root / "kafka")
    for folder in (lay.root, lay.data_dir, lay.logs_dir):
        folder.mkdir(parents=True, exist_ok=True)
    port, ctrl = _free_port(), _free_port()
    lay.server_properties.write_text(sasl_ssl_properties(lay, port, ctrl, keystore, ca))
    lay.log4j_config.write_text(kafka_local.render_log4j2(lay.logs_dir))
    java = kafka_local._java()
    kafka_local._format_storage_once(java, lay)
    cmd = kafka_local._java_cmd(java, lay, kafka_local.BROKER_JVM_OPTS, kafka_local.MAIN_CLASS,
                                str(lay.server_properties))
    settings = Settings().with_overrides(bootstrap_servers=f"127.0.0.1:{port}", local_dir=root / "local",
                                         lake_root=str(root / "lake"),
                                         events_topic=f"test.sasl.events.{uuid.uuid4().hex[:8]}",
                                         notifications_topic=f"test.sasl.notes.{uuid.uuid4().hex[:8]}")
    env = {"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_MECHANISM": "PLAIN",
           "KAFKA_SASL_USERNAME": USER, "KAFKA_SASL_PASSWORD": PASSWORD, "KAFKA_SSL_CA_LOCATION": str(ca)}
    with open(lay.console_log, "wb") as console:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT,
                                cwd=lay.root, start_new_session=True)
    try:
        with pytest.MonkeyPatch.context() as mp:
            for key in ("KAFKA_SASL_SECRET_SCOPE", "KAFKA_SASL_USERNAME_KEY", "KAFKA_SASL_SECRET_KEY",
                        "LAKEHOUSE_KAFKA_ALLOW_PLAINTEXT"):
                mp.delenv(key, raising=False)
            for key, value in env.items():
                mp.setenv(key, value)
            deadline = time.monotonic() + 60
            while True:
                if proc.poll() is not None:
                    pytest.fail("the SASL_SSL broker exited:\n" + kafka_local._log_tail(lay))
                if kafka_local._port_answers("127.0.0.1", port) and kafka_local._broker_registered(settings):
                    break
                if time.monotonic() > deadline:
                    pytest.fail("the SASL_SSL broker did not come up in 60 s:\n" + kafka_local._log_tail(lay))
                time.sleep(0.3)
            yield settings, env
    finally:
        close_publishers()
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def note(n: int) -> dict:
    return {"notification_id": notification_id("test.sasl", "acct-1", f"k{n}"), "type": "test.sasl",
            "account_id": "acct-1", "occurred_at": datetime(2026, 1, 1, 0, 0, n), "trigger_event_ids": [f"e{n}"],
            "payload": f'{{"n": {n}}}'}


def test_every_client_reaches_a_sasl_ssl_broker(spark, sasl_broker):
    settings, _env = sasl_broker

    # Topic admin (the one notifications and `python -m devtools kafka start` use).
    created = kafka_topics.ensure_topics(settings, {settings.events_topic: 2, settings.notifications_topic: 2})
    assert sorted(created) == sorted([settings.events_topic, settings.notifications_topic])

    # The event producer.
    records = list(generator.generate(generator.GeneratorOptions(count=EVENTS, accounts=3, seed=11,
                                                                 span=timedelta(days=1),
                                                                 now=datetime.now(timezone.utc))))
    assert sender.send(records, settings) == EVENTS

    # read_topic (a read_committed consumer).
    on_topic = read_topic(settings, settings.events_topic, raw=True)
    assert len(on_topic) == EVENTS

    # The notification publisher: its transactional producer, and its read_committed
    # read-back consumer, which reads the topic before every send and finds what was sent.
    lake = Lake(settings)
    ids = {note(n)["notification_id"] for n in (1, 2)}
    assert stage_notifications(spark, lake, stage_rows(spark, [note(1), note(2)])) == 2
    assert publish_pending(spark, lake, settings) == 2
    publisher = _publisher(settings, settings.notifications_topic)
    with publisher.lock:
        assert publisher._ids_on_topic(0, ids | {"not-sent"}) == ids
    assert {r["value"]["notification_id"] for r in read_topic(settings, settings.notifications_topic)} == ids

    # The Spark Kafka source: the bronze job reads every record over SASL_SSL.
    run(spark, context(settings), "bronze")
    assert Lake(settings).read(spark, "bronze.events").count() == EVENTS


def test_the_broker_really_demands_the_credentials(sasl_broker, monkeypatch):
    """So the test above proves the clients sent them: a wrong password and a plaintext
    client are both turned away."""
    from kafka.errors import KafkaError

    settings, _env = sasl_broker
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", "wrong")
    with pytest.raises(KafkaError):
        kafka_clients.new_admin(settings, request_timeout_ms=3000, bootstrap_timeout_ms=3000).list_topics()
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "PLAINTEXT")
    for key in ("KAFKA_SASL_MECHANISM", "KAFKA_SASL_USERNAME", "KAFKA_SASL_PASSWORD"):
        monkeypatch.delenv(key)
    with pytest.raises(KafkaError):
        kafka_clients.new_admin(settings, request_timeout_ms=3000, bootstrap_timeout_ms=3000).list_topics()

