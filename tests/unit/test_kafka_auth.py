"""Kafka security settings: from the environment or a secret scope, never printed."""
from __future__ import annotations

import logging

import pytest

from pipelines.core.kafka_auth import KafkaAuth, KafkaAuthError

PASSWORD = 'pa"ss\\w0rd-s3cret'
SASL = {"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "KAFKA_SASL_USERNAME": "billing", "KAFKA_SASL_PASSWORD": PASSWORD,
        "KAFKA_SSL_CA_LOCATION": "/etc/ssl/kafka-ca.pem"}


def test_nothing_set_means_plaintext_for_the_local_broker():
    auth = KafkaAuth.from_env({})
    assert auth.spark_options() == {"kafka.security.protocol": "PLAINTEXT"}
    assert auth.python_client_config() == {"security_protocol": "PLAINTEXT"}


def test_sasl_ssl_options_for_spark_and_kafka_python():
    auth = KafkaAuth.from_env(SASL)
    assert auth.spark_options() == {
        "kafka.security.protocol": "SASL_SSL",
        "kafka.sasl.mechanism": "SCRAM-SHA-512",
        "kafka.sasl.jaas.config": 'org.apache.kafka.common.security.scram.ScramLoginModule required '
                                  'username="billing" password="pa\\"ss\\\\w0rd-s3cret";',
        "kafka.ssl.truststore.type": "PEM",
        "kafka.ssl.truststore.location": "/etc/ssl/kafka-ca.pem",
    }
    assert auth.python_client_config() == {
        "security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512", "sasl_plain_username": "billing",
        "sasl_plain_password": PASSWORD, "ssl_cafile": "/etc/ssl/kafka-ca.pem",
    }


@pytest.mark.parametrize("mechanism, module", [
    ("PLAIN", "kafkashaded.org.apache.kafka.common.security.plain.PlainLoginModule"),
    ("SCRAM-SHA-512", "kafkashaded.org.apache.kafka.common.security.scram.ScramLoginModule"),
])
def test_on_databricks_the_login_module_is_the_runtimes_shaded_class(mechanism, module):
    env = {**SASL, "KAFKA_SASL_MECHANISM": mechanism, "DATABRICKS_RUNTIME_VERSION": "18.0"}
    jaas = KafkaAuth.from_env(env).spark_options()["kafka.sasl.jaas.config"]
    assert jaas == f'{module} required username="billing" password="pa\\"ss\\\\w0rd-s3cret";'


def test_password_never_in_repr_str_or_logs(caplog):
    auth = KafkaAuth.from_env(SASL)
    with caplog.at_level(logging.DEBUG):
        logging.getLogger("test").info("kafka auth %s / %r / %s", auth, auth, auth.describe())
    for text in (repr(auth), str(auth), auth.describe(), caplog.text, repr(auth.password), f"{auth.password}"):
        assert "s3cret" not in text
    assert "***" in repr(auth)


def test_password_from_a_secret_scope():
    env = {k: v for k, v in SASL.items() if k != "KAFKA_SASL_PASSWORD"}
    env.update(KAFKA_SASL_SECRET_SCOPE="billing", KAFKA_SASL_SECRET_KEY="kafka-password")
    calls = []

    def secrets(scope, key):
        calls.append((scope, key))
        return "from-scope"

    auth = KafkaAuth.from_env(env, secrets=secrets)
    assert calls == [("billing", "kafka-password")]
    assert auth.python_client_config()["sasl_plain_password"] == "from-scope"
    with pytest.raises(KafkaAuthError, match="no secret reader"):
        KafkaAuth.from_env(env)


def test_username_and_password_from_the_bundles_scope_keys():
    """databricks.yml names only the scope (and the keys); both values come from it."""
    env = {"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
           "KAFKA_SASL_SECRET_SCOPE": "billing-lakehouse"}
    scope = {("billing-lakehouse", "kafka-username"): "svc-billing", ("billing-lakehouse", "kafka-password"): "pw"}
    auth = KafkaAuth.from_env(env, secrets=lambda s, k: scope[(s, k)])
    assert (auth.username, auth.password.reveal()) == ("svc-billing", "pw")
    renamed = {**env, "KAFKA_SASL_USERNAME_KEY": "user", "KAFKA_SASL_SECRET_KEY": "pass"}
    auth = KafkaAuth.from_env(renamed, secrets=lambda s, k: {"user": "u2", "pass": "p2"}[k])
    assert (auth.username, auth.password.reveal()) == ("u2", "p2")


@pytest.mark.parametrize("env, message", [
    ({"KAFKA_SECURITY_PROTOCOL": "TLS"}, "KAFKA_SECURITY_PROTOCOL='TLS' is not one of"),
    ({"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_PASSWORD": "x"}, "needs KAFKA_SASL_USERNAME"),
    ({"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_USERNAME": "u"}, "needs KAFKA_SASL_PASSWORD"),
    ({"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_USERNAME": "u", "KAFKA_SASL_PASSWORD": "p",
      "KAFKA_SASL_MECHANISM": "GSSAPI"}, "KAFKA_SASL_MECHANISM='GSSAPI'"),
    ({"KAFKA_SASL_USERNAME": "u", "KAFKA_SASL_PASSWORD": "p"}, "does not use SASL"),
    ({"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_USERNAME": "u", "KAFKA_SASL_SECRET_KEY": "k"},
     "set KAFKA_SASL_SECRET_SCOPE too"),
    ({"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_USERNAME": "u", "KAFKA_SASL_SECRET_SCOPE": "s"},
     "no secret reader"),
])
def test_incomplete_settings_are_named(env, message):
    with pytest.raises(KafkaAuthError, match=message):
        KafkaAuth.from_env(env)


def test_producer_config_takes_the_environment(monkeypatch):
    for k, v in SASL.items():
        monkeypatch.setenv(k, v)
    from pipelines.core import kafka_clients
    from pipelines.core.settings import Settings

    config = kafka_clients.producer_config(Settings().with_overrides(bootstrap_servers="broker:9093"),
                                           **kafka_clients.producer_tuning())
    assert config["security_protocol"] == "SASL_SSL"
    assert config["sasl_plain_password"] == PASSWORD
    assert config["ssl_cafile"] == "/etc/ssl/kafka-ca.pem"
