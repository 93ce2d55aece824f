"""The PII hashing key: one versioned secret, from one place, never printed.

Where the key comes from (pipelines/conf/pii.yaml names the variables), first found wins:

1. the environment variable `key.env` (LAKEHOUSE_PII_KEY), e.g. a job variable that
   references a secret;
2. the secret scope named by `key.scope_env` (LAKEHOUSE_PII_SECRET_SCOPE), key
   `key.scope_key` (pii-hmac-key), read through the same reader as the Kafka credentials
   (pipelines/core/secret_scopes.py: dbutils on Databricks);
3. on a local run only: the lake's own key file, `<lake root>/_secrets/pii-hmac.key`,
   generated at random on the first run (mode 0600, folder 0700) and reused after, so one
   lake's hashes stay stable and no two lakes share a key. No key is ever committed.

Any other run refuses to start (PiiKeyError). A run is local when it is not on a Databricks
Runtime, keeps its tables in folders (no Unity Catalog), and its Spark master is `local[...]`
or a standalone master on a loopback address: the lake, the key file and every executor are
on this machine, which is how pipelines/core/kafka_clients.py tells a local broker (loopback)
from a remote one.

The value is `v<version>:<secret>`: the version travels with the secret, so rotating is one
write of a new value and a new version can never be paired with an old secret by mistake.
The secret is at least 32 characters (its UTF-8 bytes are the HMAC key).
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import secrets as random_source
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Protocol

from pipelines.core import secret_scopes
from pipelines.core.kafka_auth import Secret
from pipelines.core.kafka_clients import is_loopback_bootstrap
from pipelines.core.settings import Settings

log = logging.getLogger(__name__)

KEY_FILE = Path("_secrets") / "pii-hmac.key"
MIN_SECRET_CHARS = 32
_VALUE = re.compile(r"v([1-9][0-9]{0,5}):(.+)", re.DOTALL)
# SHA-256's block size: HMAC pads (or first hashes) the key to this many bytes.
_BLOCK = 64


class PiiKeyError(ValueError):
    """No usable PII key (missing off this machine, malformed, or a key file others can read)."""


@dataclass(frozen=True)
class PiiHmacKey:
    """A key version and its secret. repr and str never show the secret."""

    version: int
    secret: Secret
    source: str            # where it came from, for logs: a variable, scope or file name

    def __repr__(self) -> str:
        return f"PiiHmacKey(version={self.version}, source={self.source!r}, secret=***)"

    __str__ = __repr__

    @property
    def prefix(self) -> str:
        """What every hash made with this key starts with."""
        return f"hmac:v{self.version}:"

    def padded(self) -> tuple[bytes, bytes]:
        """(K' xor ipad, K' xor opad) of RFC 2104: HMAC(K, m) = H(opad' || H(ipad' || m)).
        Secret material: as sensitive as the key itself."""
        k = self.secret.reveal().encode("utf-8")
        if len(k) > _BLOCK:
            k = hashlib.sha256(k).digest()
        k = k.ljust(_BLOCK, b"\0")
        return bytes(b ^ 0x36 for b in k), bytes(b ^ 0x5C for b in k)

    def hash(self, value: str) -> str:
        """The hash silver stores for `value` (already normalised): Python's reference."""
        digest = hmac.new(self.secret.reveal().encode("utf-8"), value.encode("utf-8"), hashlib.sha256).hexdigest()
        return self.prefix + digest


def parse_key_value(value: str, source: str) -> PiiHmacKey:
    """`v<version>:<secret>` -> a key; the error names the source, never the value."""
    m = _VALUE.fullmatch(value.strip())
    if not m:
        raise PiiKeyError(f"{source}: a PII key is 'v<version>:<secret>' (version 1 or more, e.g. "
                          "v1:<64 hex characters>); the value given does not have that shape")
    secret = m.group(2)
    if len(secret) < MIN_SECRET_CHARS:
        raise PiiKeyError(f"{source}: the PII key's secret has {len(secret)} characters, it needs at least "
                          f"{MIN_SECRET_CHARS} (e.g. python -c 'import secrets; print(\"v1:\" + secrets.token_hex(32))')")
    return PiiHmacKey(int(m.group(1)), Secret(secret), source)


def local_run_reason(master: str, settings: Settings, env: Mapping[str, str]) -> str | None:
    """None for a local run, else why it is not one (named in the refusal)."""
    if env.get("DATABRICKS_RUNTIME_VERSION"):
        return "a Databricks Runtime"
    if settings.catalog:
        return f"tables in Unity Catalog (LAKEHOUSE_CATALOG={settings.catalog})"
    master = (master or "").strip()
    if master == "local" or master.startswith(("local[", "local-cluster[")):
        return None
    if master.startswith("spark://") and is_loopback_bootstrap(master.removeprefix("spark://")):
        return None
    return f"Spark master {master or '(unknown)'}"


def _local_key(settings: Settings) -> PiiHmacKey:
    """The lake's own key: created once, exclusively, readable by its owner only."""
    path = settings.lake_root_abs / KEY_FILE
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    value = "v1:" + random_source.token_hex(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "w") as f:
            f.write(value + "\n")
            f.flush()
            os.fsync(f.fileno())
        log.info("generated this lake's PII key (version 1) in %s", path)
    st = os.lstat(path)
    if not stat.S_ISREG(st.st_mode):
        raise PiiKeyError(f"{path}: the lake's PII key file is not a regular file")
    if st.st_mode & 0o077:
        raise PiiKeyError(f"{path}: the lake's PII key file is readable by others "
                          f"(mode {stat.S_IMODE(st.st_mode):o}); chmod 600 it")
    return parse_key_value(path.read_text(encoding="utf-8"), str(path))


@dataclass(frozen=True)
class KeySource:
    """Where the HMAC key is read from (pipelines/conf/pii.yaml: key)."""
    env: str = "LAKEHOUSE_PII_KEY"
    scope_env: str = "LAKEHOUSE_PII_SECRET_SCOPE"
    scope_key: str = "pii-hmac-key"


class KeyConfig(Protocol):
    """What load_pii_key reads of the PII config (pipelines/ingest/pii.py: PiiConfig)."""
    key: KeySource


def load_pii_key(config: KeyConfig, settings: Settings, master: str, *, env: Mapping[str, str] | None = None,
                 secrets: secret_scopes.SecretGetter | None = None) -> PiiHmacKey:
    """The key silver hashes with, or PiiKeyError (see the module docstring for the order)."""
    env = os.environ if env is None else env
    spec = config.key
    if value := (env.get(spec.env) or "").strip():
        key = parse_key_value(value, spec.env)
    elif scope := (env.get(spec.scope_env) or "").strip():
        reader = secrets if secrets is not None else secret_scopes.secret_reader(env, error=PiiKeyError)
        if reader is None:
            raise PiiKeyError(f"the PII key is in secret scope {scope!r} ({spec.scope_env}) but no secret reader is "
                              "available here (Databricks: pass dbutils to pipelines.core.secret_scopes.use_dbutils)")
        key = parse_key_value(reader(scope, spec.scope_key) or "", f"secret {scope}/{spec.scope_key}")
    elif (reason := local_run_reason(master, settings, env)) is None:
        key = _local_key(settings)
    else:
        raise PiiKeyError(f"refusing to start: this run ({reason}) is not local and has no PII key. Set "
                          f"{spec.scope_env} to the secret scope holding {spec.scope_key!r}, or {spec.env}, "
                          "to 'v<version>:<secret>' (docs/security.md: rotating the PII key)")
    log.info("hashing personal data with PII key version %d (%s)", key.version, key.source)
    return key


def spark_master(spark) -> str:
    """The session's master URL (works on classic and Connect sessions)."""
    try:
        return spark.conf.get("spark.master", "") or ""
    except Exception:  # noqa: BLE001 - a session that cannot say is treated as not local
        return ""
