"""One Kafka client configuration (pipelines/core/kafka_clients.py): every client kind gets the
same servers, protocol and credentials; plaintext off this machine is refused; credentials
come from a secret scope through dbutils on Databricks; no module builds a client elsewhere."""
from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import pytest

from pipelines.core import kafka_clients
from pipelines.core import secret_scopes
from pipelines.core.kafka_auth import KafkaAuthError
from pipelines.core.settings import Settings

PACKAGE = Path(kafka_clients.__file__).resolve().parents[1]
DEVTOOLS = PACKAGE.parent / "devtools"
REMOTE = Settings().with_overrides(bootstrap_servers="b-1.kafka.example.com:9096,b-2.kafka.example.com:9096")
LOCAL = Settings().with_overrides(bootstrap_servers="127.0.0.1:9092")
SASL = {"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_MECHANISM": "SCRAM-SHA-256",
        "KAFKA_SASL_USERNAME": "billing", "KAFKA_SASL_PASSWORD": "s3cret-pw",
        "KAFKA_SSL_CA_LOCATION": "/etc/ssl/kafka-ca.pem"}


def every_client(settings: Settings, env: dict, secrets=None) -> dict[str, dict]:
    return {
        "producer": kafka_clients.producer_config(settings, env=env, secrets=secrets, client_id="p"),
        "consumer": kafka_clients.consumer_config(settings, env=env, secrets=secrets, isolation_level="read_committed"),
        "admin": kafka_clients.admin_config(settings, env=env, secrets=secrets, request_timeout_ms=1000),
    }


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_every_client_kind_gets_the_same_servers_protocol_and_credentials(mechanism):
    env = {**SASL, "KAFKA_SASL_MECHANISM": mechanism}
    for kind, config in every_client(REMOTE, env).items():
        assert config["bootstrap_servers"] == REMOTE.bootstrap_servers, kind
        assert (config["security_protocol"], config["sasl_mechanism"]) == ("SASL_SSL", mechanism), kind
        assert (config["sasl_plain_username"], config["sasl_plain_password"]) == ("billing", "s3cret-pw"), kind
        assert config["ssl_cafile"] == "/etc/ssl/kafka-ca.pem", kind
    spark = kafka_clients.spark_options(REMOTE, env=env)
    module = "plain.PlainLoginModule" if mechanism == "PLAIN" else "scram.ScramLoginModule"
    assert spark == {
        "kafka.bootstrap.servers": REMOTE.bootstrap_servers,
        "kafka.security.protocol": "SASL_SSL",
        "kafka.sasl.mechanism": mechanism,
        "kafka.sasl.jaas.config": f'org.apache.kafka.common.security.{module} required '
                                  'username="billing" password="s3cret-pw";',
        "kafka.ssl.truststore.type": "PEM",
        "kafka.ssl.truststore.location": "/etc/ssl/kafka-ca.pem",
    }


def test_a_callers_override_cannot_downgrade_the_security():
    config = kafka_clients.producer_config(REMOTE, env=SASL, security_protocol="PLAINTEXT",
                                           bootstrap_servers="elsewhere:9092")
    assert config["security_protocol"] == "SASL_SSL"
    assert config["bootstrap_servers"] == REMOTE.bootstrap_servers


def test_only_keys_the_client_knows_are_passed():
    from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer

    for config, cls in zip(every_client(REMOTE, SASL).values(), (KafkaProducer, KafkaConsumer, KafkaAdminClient)):
        assert set(config) <= set(cls.DEFAULT_CONFIG)
    consumer = kafka_clients.consumer_config(REMOTE, env=SASL)
    # The project's consumers read ranges they seek to; never a group that commits.
    assert consumer["group_id"] is None and consumer["enable_auto_commit"] is False


@pytest.mark.parametrize("protocol", ["PLAINTEXT", "SASL_PLAINTEXT"])
def test_plaintext_to_a_remote_broker_is_refused_for_every_client(protocol):
    env = {"KAFKA_SECURITY_PROTOCOL": protocol}
    if protocol == "SASL_PLAINTEXT":
        env.update(KAFKA_SASL_USERNAME="u", KAFKA_SASL_PASSWORD="p")
    builders = [kafka_clients.producer_config, kafka_clients.consumer_config, kafka_clients.admin_config,
                kafka_clients.spark_options]
    for build in builders:
        with pytest.raises(KafkaAuthError, match=f"refusing {protocol} to b-1.kafka.example.com.*"
                                                 "LAKEHOUSE_KAFKA_ALLOW_PLAINTEXT=1"):
            build(REMOTE, env=env)
    # Nothing set at all is PLAINTEXT too: a forgotten setting is not a silent downgrade.
    with pytest.raises(KafkaAuthError, match="refusing PLAINTEXT"):
        kafka_clients.spark_options(REMOTE, env={})


@pytest.mark.parametrize("servers", ["127.0.0.1:9092", "localhost:9092", "127.0.0.1:9092,localhost:19092",
                                     "[::1]:9092", "127.0.1.1:9092"])
def test_plaintext_to_a_loopback_broker_is_a_local_run(servers):
    settings = Settings().with_overrides(bootstrap_servers=servers)
    assert kafka_clients.is_loopback_bootstrap(servers)
    assert kafka_clients.spark_options(settings, env={})["kafka.security.protocol"] == "PLAINTEXT"
    assert kafka_clients.admin_config(settings, env={})["security_protocol"] == "PLAINTEXT"


@pytest.mark.parametrize("servers", ["10.0.0.5:9092", "kafka:9092", "0.0.0.0:9092", "127.0.0.1:9092,10.0.0.5:9092",
                                     "localhost.example.com:9092", ""])
def test_anything_else_is_not_local(servers):
    assert not kafka_clients.is_loopback_bootstrap(servers)


def test_plaintext_off_this_machine_only_when_explicitly_allowed():
    env = {"LAKEHOUSE_KAFKA_ALLOW_PLAINTEXT": "1"}
    assert kafka_clients.spark_options(REMOTE, env=env)["kafka.security.protocol"] == "PLAINTEXT"
    with pytest.raises(KafkaAuthError):
        kafka_clients.spark_options(REMOTE, env={"LAKEHOUSE_KAFKA_ALLOW_PLAINTEXT": "0"})


def test_ssl_without_sasl_is_not_plaintext():
    config = kafka_clients.consumer_config(REMOTE, env={"KAFKA_SECURITY_PROTOCOL": "SSL",
                                                        "KAFKA_SSL_CA_LOCATION": "/ca.pem"})
    assert (config["security_protocol"], config["ssl_cafile"]) == ("SSL", "/ca.pem")


class FakeDbutils:
    """dbutils.secrets as a Databricks Runtime has it: get(scope=, key=)."""

    def __init__(self, values: dict[tuple[str, str], str]):
        self.calls: list[tuple[str, str]] = []
        values_ = values
        calls = self.calls

        class Secrets:
            @staticmethod
            def get(scope: str, key: str) -> str:
                calls.append((scope, key))
                return values_[(scope, key)]

        self.secrets = Secrets()


BUNDLE_ENV = {"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
              "KAFKA_SASL_SECRET_SCOPE": "billing-lakehouse", "KAFKA_SASL_USERNAME_KEY": "kafka-username",
              "KAFKA_SASL_SECRET_KEY": "kafka-password", "DATABRICKS_RUNTIME_VERSION": "18.0"}
SCOPE = {("billing-lakehouse", "kafka-username"): "svc-billing", ("billing-lakehouse", "kafka-password"): "scope-pw"}


def test_on_databricks_the_bundles_secret_scope_is_read_through_dbutils(monkeypatch):
    """No dbutils handed in: on a Databricks Runtime, pyspark.dbutils.DBUtils over the
    active session is the reader (faked here; it only exists on the runtime)."""
    fake = FakeDbutils(SCOPE)
    made_with = []

    def dbutils_class(spark):
        made_with.append(spark)
        return fake

    monkeypatch.setitem(sys.modules, "pyspark.dbutils", types.SimpleNamespace(DBUtils=dbutils_class))
    import pyspark.sql

    monkeypatch.setattr(pyspark.sql.SparkSession, "getActiveSession", staticmethod(lambda: "active-session"))
    clients = every_client(REMOTE, BUNDLE_ENV)
    for kind, config in clients.items():
        assert (config["sasl_plain_username"], config["sasl_plain_password"]) == ("svc-billing", "scope-pw"), kind
        assert config["sasl_mechanism"] == "SCRAM-SHA-512", kind
    jaas = kafka_clients.spark_options(REMOTE, env=BUNDLE_ENV)["kafka.sasl.jaas.config"]
    assert jaas == ('kafkashaded.org.apache.kafka.common.security.scram.ScramLoginModule required '
                    'username="svc-billing" password="scope-pw";')
    assert set(fake.calls) == set(SCOPE) and set(made_with) == {"active-session"}


def test_a_notebook_hands_its_dbutils_in(monkeypatch):
    fake = FakeDbutils(SCOPE)
    monkeypatch.setattr(secret_scopes, "_secret_reader", None)
    kafka_clients.use_dbutils(fake)
    try:
        env = {k: v for k, v in BUNDLE_ENV.items() if k != "DATABRICKS_RUNTIME_VERSION"}
        assert kafka_clients.admin_config(REMOTE, env=env)["sasl_plain_password"] == "scope-pw"
    finally:
        kafka_clients.use_dbutils(None)


def test_off_databricks_a_scope_without_a_reader_is_named():
    env = {k: v for k, v in BUNDLE_ENV.items() if k != "DATABRICKS_RUNTIME_VERSION"}
    with pytest.raises(KafkaAuthError, match="secret scope 'billing-lakehouse'.*no secret reader"):
        kafka_clients.producer_config(REMOTE, env=env)


def test_no_module_builds_a_kafka_client_anywhere_else():
    """The promise holds only if nothing bypasses kafka_clients: no direct construction of a
    kafka-python client, no Spark Kafka source or sink without its options, neither in the
    package nor in the development tools (the producer, the broker runner, the demo)."""
    client = re.compile(r"\b(KafkaProducer|KafkaConsumer|KafkaAdminClient)\s*\(")
    spark_kafka = re.compile(r"""\.format\(\s*["']kafka["']\s*\)""")
    offenders = []
    for path in sorted([*PACKAGE.rglob("*.py"), *DEVTOOLS.rglob("*.py")]):
        if path.name == "kafka_clients.py":
            continue
        text = path.read_text(encoding="utf-8")
        rel = path.relative_to(PACKAGE.parent)
        offenders += [f"{rel}: {m.group(0)}" for m in client.finditer(text)]
        for m in spark_kafka.finditer(text):
            window = text[m.end():m.end() + 600]
            if "kafka_clients.spark_options(" not in window:
                offenders.append(f"{rel}: Spark Kafka {m.group(0)} without kafka_clients.spark_options")
    assert offenders == []


def test_the_cli_turns_a_refusal_into_one_line_and_exit_2(monkeypatch, capsys):
    from devtools import cli

    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "kafka.example.com:9092")
    monkeypatch.delenv("KAFKA_SECURITY_PROTOCOL", raising=False)
    monkeypatch.delenv("LAKEHOUSE_KAFKA_ALLOW_PLAINTEXT", raising=False)
    assert cli.main(["produce", "--count", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("devtools: refusing PLAINTEXT to kafka.example.com:9092")
