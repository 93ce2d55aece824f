"""Every Kafka client the project creates gets its settings here, and only here.

The kafka-python producers (the notification publisher; the development producer and
hostile corpus), with batching and retries from `producer_tuning`, the consumers (the
publisher's read-back, `read_topic`), the admin client (topic creation in
pipelines/core/kafka_topics.py, the demo) and the Spark Kafka source all take bootstrap
servers, security protocol, SASL mechanism, credentials and CA file from `client_auth`, so
one client can no longer speak PLAINTEXT to a broker that the others reach over SASL_SSL
(the publisher's read-back and the topic admin once did, and nothing was published).
tests/unit/test_kafka_clients.py checks that no module (of the package or of the
development tools) builds a Kafka client anywhere else.

Credentials come from the environment, or on Databricks from a secret scope read through
`dbutils.secrets.get` (pipelines/core/secret_scopes.py, shared with the PII key; see pipelines/core/kafka_auth.py
for the variables).

Plaintext (PLAINTEXT or SASL_PLAINTEXT: records, and SASL/PLAIN passwords, in clear) is
refused unless every bootstrap server is a loopback address, where the bytes never leave
the machine, or LAKEHOUSE_KAFKA_ALLOW_PLAINTEXT=1 says it is meant.
"""
from __future__ import annotations

import ipaddress
import os
from typing import Any, Mapping

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer

from pipelines.core import secret_scopes
from pipelines.core.kafka_auth import KafkaAuth, KafkaAuthError, SecretGetter
from pipelines.core.settings import Settings

ALLOW_PLAINTEXT_ENV = "LAKEHOUSE_KAFKA_ALLOW_PLAINTEXT"
# Producer timeouts; module-level so tests against a closed port need not wait long.
BOOTSTRAP_TIMEOUT_MS = 10_000
MAX_BLOCK_MS = 30_000
PLAINTEXT_PROTOCOLS = ("PLAINTEXT", "SASL_PLAINTEXT")
_TRUE = ("1", "true", "yes")


def use_dbutils(dbutils: Any) -> None:
    """Read Kafka credentials (and every other secret) from secret scopes through this
    `dbutils` (notebooks); the reader is shared with the PII key (pipelines/core/secret_scopes.py)."""
    secret_scopes.use_dbutils(dbutils)


def secret_reader(env: Mapping[str, str] | None = None) -> SecretGetter | None:
    """The process's secret-scope reader (pipelines/core/secret_scopes.py), failing as KafkaAuthError."""
    return secret_scopes.secret_reader(env, error=KafkaAuthError)


def is_loopback_bootstrap(bootstrap_servers: str) -> bool:
    """True when every `host:port` is localhost or a loopback address (a local run)."""
    hosts = []
    for server in bootstrap_servers.split(","):
        server = server.strip()
        if not server:
            continue
        host = server.rpartition(":")[0] if ":" in server else server
        hosts.append(host.strip("[]").lower())
    if not hosts:
        return False
    for host in hosts:
        if host == "localhost":
            continue
        try:
            if not ipaddress.ip_address(host).is_loopback:
                return False
        except ValueError:  # a DNS name: it may resolve anywhere
            return False
    return True


def client_auth(settings: Settings, *, env: Mapping[str, str] | None = None,
                secrets: SecretGetter | None = None) -> KafkaAuth:
    """The security settings for a client of `settings.bootstrap_servers`, read now (a
    rotated secret is picked up by the next client), refusing plaintext off this machine."""
    env = os.environ if env is None else env
    auth = KafkaAuth.from_env(env, secrets=secrets if secrets is not None else secret_reader(env))
    if auth.security_protocol in PLAINTEXT_PROTOCOLS and not is_loopback_bootstrap(settings.bootstrap_servers):
        if (env.get(ALLOW_PLAINTEXT_ENV) or "").strip().lower() not in _TRUE:
            raise KafkaAuthError(
                f"refusing {auth.security_protocol} to {settings.bootstrap_servers}: records"
                f"{' and passwords' if auth.uses_sasl else ''} would cross the network in clear. Set "
                f"KAFKA_SECURITY_PROTOCOL=SASL_SSL (or SSL), or {ALLOW_PLAINTEXT_ENV}=1 if plaintext is meant")
    return auth


def _python_config(settings: Settings, defaults: dict, overrides: dict, allowed: Mapping[str, Any],
                   env: Mapping[str, str] | None, secrets: SecretGetter | None) -> dict:
    config = {**defaults, **overrides}
    # Servers and security last: a caller's override can neither downgrade the protocol,
    # drop the CA, nor point at brokers the plaintext check did not look at.
    config["bootstrap_servers"] = settings.bootstrap_servers
    config.update(client_auth(settings, env=env, secrets=secrets).python_client_config())
    # kafka-python 2.x rejects keys only 3.x knows (bootstrap_timeout_ms) and vice versa.
    return {k: v for k, v in config.items() if k in allowed}


def producer_tuning(**overrides) -> dict:
    """How the project's producers batch and retry (the notification publisher, the
    development event producer and hostile corpus); `producer_config` adds servers and
    security. Keyword arguments override a setting, e.g. a client_id or a transactional_id."""
    config: dict = {
        "client_id": "lakehouse",
        "acks": "all",
        # The client is Python-bound; bigger batches after a short linger are its best lever.
        "linger_ms": 10,
        "batch_size": 256 * 1024,
        "retries": 10,
        "max_block_ms": MAX_BLOCK_MS,
        "bootstrap_timeout_ms": BOOTSTRAP_TIMEOUT_MS,
    }
    # Idempotence stops the producer's own retries from duplicating records; older
    # kafka-python releases do not know the option.
    if "enable_idempotence" in KafkaProducer.DEFAULT_CONFIG:
        config["enable_idempotence"] = True
        config["max_in_flight_requests_per_connection"] = 5
    return {**config, **overrides}


def producer_config(settings: Settings, *, env: Mapping[str, str] | None = None,
                    secrets: SecretGetter | None = None, **overrides) -> dict:
    """kafka-python KafkaProducer keyword arguments."""
    return _python_config(settings, {}, overrides, KafkaProducer.DEFAULT_CONFIG, env, secrets)


def consumer_config(settings: Settings, *, env: Mapping[str, str] | None = None,
                    secrets: SecretGetter | None = None, **overrides) -> dict:
    """kafka-python KafkaConsumer keyword arguments (no group, no auto commit by default:
    the project's consumers read ranges they seek to themselves)."""
    defaults = {"group_id": None, "enable_auto_commit": False}
    return _python_config(settings, defaults, overrides, KafkaConsumer.DEFAULT_CONFIG, env, secrets)


def admin_config(settings: Settings, *, env: Mapping[str, str] | None = None,
                 secrets: SecretGetter | None = None, **overrides) -> dict:
    """kafka-python KafkaAdminClient keyword arguments."""
    return _python_config(settings, {}, overrides, KafkaAdminClient.DEFAULT_CONFIG, env, secrets)


def spark_options(settings: Settings, *, env: Mapping[str, str] | None = None,
                  secrets: SecretGetter | None = None) -> dict[str, str]:
    """Options for the Spark Kafka source and sink: bootstrap servers and the `kafka.`-prefixed
    security settings (Spark redacts `kafka.sasl.jaas.config` in logs and plans)."""
    return {"kafka.bootstrap.servers": settings.bootstrap_servers,
            **client_auth(settings, env=env, secrets=secrets).spark_options()}


def new_producer(settings: Settings, **overrides) -> KafkaProducer:
    return KafkaProducer(**producer_config(settings, **overrides))


def new_consumer(settings: Settings, **overrides) -> KafkaConsumer:
    return KafkaConsumer(**consumer_config(settings, **overrides))


def new_admin(settings: Settings, **overrides) -> KafkaAdminClient:
    return KafkaAdminClient(**admin_config(settings, **overrides))

