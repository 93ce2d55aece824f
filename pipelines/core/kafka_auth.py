"""Kafka connection security: credentials from the environment or a secret scope.

pipelines/core/kafka_clients.py turns these into every client's settings (and refuses plaintext
off this machine); this module only reads and checks them. Credentials never live in
committed files. Locally nothing is set and the clients speak PLAINTEXT to the local
broker. On a secured cluster the job's environment carries:

    KAFKA_SECURITY_PROTOCOL   PLAINTEXT | SSL | SASL_PLAINTEXT | SASL_SSL
    KAFKA_SASL_MECHANISM      PLAIN | SCRAM-SHA-256 | SCRAM-SHA-512   (SASL_* only)
    KAFKA_SASL_USERNAME       and KAFKA_SASL_PASSWORD, or
    KAFKA_SASL_SECRET_SCOPE   a secret scope holding them, read through a secret getter
                              (Databricks: dbutils.secrets.get) under the keys
                              KAFKA_SASL_USERNAME_KEY (default kafka-username) and
                              KAFKA_SASL_SECRET_KEY (default kafka-password)
    KAFKA_SSL_CA_LOCATION     PEM file with the CA that signed the brokers' certificates

The bundle (databricks.yml) names the scope and the keys, so the values are read by the
driver when a client is made and never sit in the cluster's environment. A variable set
explicitly wins over the scope (a job environment variable that references a secret,
`{{secrets/scope/key}}`, still works).

The password is held in a `Secret`, whose repr and str are masked, so logging the
settings, an exception or the auth object never prints it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Mapping

PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
_LOGIN_MODULES = {
    "PLAIN": "org.apache.kafka.common.security.plain.PlainLoginModule",
    "SCRAM-SHA-256": "org.apache.kafka.common.security.scram.ScramLoginModule",
    "SCRAM-SHA-512": "org.apache.kafka.common.security.scram.ScramLoginModule",
}
# The Databricks Runtime ships its Kafka client relocated under this package, so there the
# unshaded login module class does not exist and the Kafka source cannot log in; Databricks'
# own Kafka examples name kafkashaded.org.apache.kafka.common.security.plain.PlainLoginModule.
DATABRICKS_SHADED_PREFIX = "kafkashaded."
MASK = "***"
# The keys the bundle's secret scope holds (databricks.yml, var.kafka_secret_scope).
DEFAULT_USERNAME_KEY = "kafka-username"
DEFAULT_PASSWORD_KEY = "kafka-password"

SecretGetter = Callable[[str, str], str]


class KafkaAuthError(ValueError):
    """Kafka security settings in the environment are incomplete or contradictory."""


class Secret:
    """A string that does not print itself."""

    __slots__ = ("_value",)

    def __init__(self, value: str):
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret({MASK})"

    __str__ = __repr__

    def __eq__(self, other) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class KafkaAuth:
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    username: str | None = None
    password: Secret | None = None
    ssl_ca_location: str | None = None
    shaded_client: bool = False  # on a Databricks Runtime (DATABRICKS_RUNTIME_VERSION set)

    @property
    def uses_sasl(self) -> bool:
        return self.security_protocol.startswith("SASL_")

    @property
    def uses_ssl(self) -> bool:
        return self.security_protocol in ("SSL", "SASL_SSL")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, *, secrets: SecretGetter | None = None) -> "KafkaAuth":
        env = os.environ if env is None else env

        def get(name: str) -> str | None:
            value = env.get(name)
            return value.strip() if value and value.strip() else None

        protocol = (get("KAFKA_SECURITY_PROTOCOL") or "PLAINTEXT").upper()
        if protocol not in PROTOCOLS:
            raise KafkaAuthError(f"KAFKA_SECURITY_PROTOCOL={protocol!r} is not one of {', '.join(PROTOCOLS)}")
        auth = cls(security_protocol=protocol, ssl_ca_location=get("KAFKA_SSL_CA_LOCATION"),
                   shaded_client=get("DATABRICKS_RUNTIME_VERSION") is not None)
        if not auth.uses_sasl:
            stray = [n for n in ("KAFKA_SASL_MECHANISM", "KAFKA_SASL_USERNAME", "KAFKA_SASL_PASSWORD") if get(n)]
            if stray:
                raise KafkaAuthError(f"{', '.join(stray)} set but KAFKA_SECURITY_PROTOCOL={protocol} does not use "
                                     "SASL; set KAFKA_SECURITY_PROTOCOL=SASL_SSL")
            return auth
        mechanism = (get("KAFKA_SASL_MECHANISM") or "PLAIN").upper()
        if mechanism not in MECHANISMS:
            raise KafkaAuthError(f"KAFKA_SASL_MECHANISM={mechanism!r} is not one of {', '.join(MECHANISMS)}")
        username = get("KAFKA_SASL_USERNAME")
        password = env.get("KAFKA_SASL_PASSWORD") or None
        scope = get("KAFKA_SASL_SECRET_SCOPE")
        user_key, password_key = get("KAFKA_SASL_USERNAME_KEY"), get("KAFKA_SASL_SECRET_KEY")
        if (user_key or password_key) and not scope:
            raise KafkaAuthError("KAFKA_SASL_USERNAME_KEY / KAFKA_SASL_SECRET_KEY name keys in a secret scope; "
                                 "set KAFKA_SASL_SECRET_SCOPE too")
        if scope and (username is None or password is None):
            if secrets is None:
                raise KafkaAuthError(f"the Kafka credentials are in secret scope {scope!r} but no secret "
                                     "reader is available here (Databricks: pass dbutils.secrets.get)")
            if username is None:
                username = (secrets(scope, user_key or DEFAULT_USERNAME_KEY) or "").strip() or None
            if password is None:
                password = secrets(scope, password_key or DEFAULT_PASSWORD_KEY) or None
        if not username:
            raise KafkaAuthError(f"KAFKA_SECURITY_PROTOCOL={protocol} needs KAFKA_SASL_USERNAME or "
                                 "KAFKA_SASL_SECRET_SCOPE")
        if not password:
            raise KafkaAuthError(f"KAFKA_SECURITY_PROTOCOL={protocol} needs KAFKA_SASL_PASSWORD or "
                                 "KAFKA_SASL_SECRET_SCOPE")
        return cls(security_protocol=protocol, sasl_mechanism=mechanism, username=username,
                   password=Secret(password), ssl_ca_location=auth.ssl_ca_location,
                   shaded_client=auth.shaded_client)

    def jaas_config(self) -> str:
        """The Java clients' login line; quotes and backslashes in the credentials are escaped."""
        def quoted(s: str) -> str:
            return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'

        assert self.username is not None and self.password is not None and self.sasl_mechanism is not None
        module = _LOGIN_MODULES[self.sasl_mechanism]
        if self.shaded_client:
            module = DATABRICKS_SHADED_PREFIX + module
        return (f"{module} required username={quoted(self.username)} "
                f"password={quoted(self.password.reveal())};")

    def spark_options(self) -> dict[str, str]:
        """Options for the Spark Kafka source and sink (`kafka.`-prefixed client settings).

        Spark redacts `sasl.jaas.config` in its logs and plans (KafkaRedactionUtil)."""
        options = {"kafka.security.protocol": self.security_protocol}
        if self.uses_sasl:
            options["kafka.sasl.mechanism"] = self.sasl_mechanism
            options["kafka.sasl.jaas.config"] = self.jaas_config()
        if self.uses_ssl and self.ssl_ca_location:
            options["kafka.ssl.truststore.type"] = "PEM"
            options["kafka.ssl.truststore.location"] = self.ssl_ca_location
        return options

    def python_client_config(self) -> dict:
        """Keyword arguments for kafka-python's KafkaProducer, KafkaConsumer and KafkaAdminClient."""
        config: dict = {"security_protocol": self.security_protocol}
        if self.uses_sasl:
            config.update(sasl_mechanism=self.sasl_mechanism, sasl_plain_username=self.username,
                          sasl_plain_password=self.password.reveal())
        if self.uses_ssl and self.ssl_ca_location:
            config["ssl_cafile"] = self.ssl_ca_location
        return config

    def describe(self) -> str:
        """One loggable line (no password)."""
        parts = [self.security_protocol]
        if self.uses_sasl:
            parts.append(f"{self.sasl_mechanism} as {self.username}")
        if self.ssl_ca_location:
            parts.append(f"CA {self.ssl_ca_location}")
        return ", ".join(parts)

