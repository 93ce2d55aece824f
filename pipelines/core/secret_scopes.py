"""Secret-scope reads shared by every credential the package needs (Kafka, the PII key).

On Databricks a secret is read from a scope through `dbutils.secrets.get`; a notebook hands
its `dbutils` in with `use_dbutils`, a job on a Databricks Runtime gets the runtime's DBUtils
over the active Spark session. Anywhere else there is no reader, and a setting that names a
scope fails with an error that says so.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Mapping

from pyspark.sql import SparkSession

SecretGetter = Callable[[str, str], str]

# A secret reader set by the process (a notebook passes its `dbutils`); else found lazily.
_secret_reader: SecretGetter | None = None


def use_dbutils(dbutils: Any) -> None:
    """Read secrets from secret scopes through this `dbutils` (notebooks)."""
    global _secret_reader
    _secret_reader = None if dbutils is None else dbutils.secrets.get


def secret_reader(env: Mapping[str, str] | None = None, *,
                  error: type[Exception] = ValueError) -> SecretGetter | None:
    """The secret-scope reader of this process: one set by `use_dbutils`, else on a
    Databricks Runtime the runtime's DBUtils over the active Spark session, else None.

    Returned lazily: Spark and DBUtils are touched only when a secret is really in a
    scope, so local runs and plain environment variables never need them. `error` is the
    exception class raised when DBUtils cannot be imported (the caller's own)."""
    env = os.environ if env is None else env
    if _secret_reader is not None:
        return _secret_reader
    if not env.get("DATABRICKS_RUNTIME_VERSION"):
        return None

    def read(scope: str, key: str) -> str:
        try:
            # Only on a Databricks Runtime: imported when a secret is really read there.
            from pyspark.dbutils import DBUtils
        except ImportError as exc:
            raise error(f"a secret is in secret scope {scope!r} but pyspark.dbutils is not importable "
                        "here; pass dbutils to pipelines.core.secret_scopes.use_dbutils") from exc
        spark = SparkSession.getActiveSession() or SparkSession.builder.getOrCreate()
        return DBUtils(spark).secrets.get(scope=scope, key=key)

    return read
