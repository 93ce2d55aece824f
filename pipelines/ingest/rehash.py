"""Rehash a lake's personal data with the current PII key (after a key rotation).

Silver holds only hashes; the values behind them stay in bronze. Rehashing therefore
re-derives each stale silver row's `properties` from its own bronze record (found by Kafka
coordinates) through silver's own input path (`silver_input`: parse, then the PII transform
with the key in force), and MERGEs the result in. A row is stale when its properties hold a
hash of another key version (`"hmac:v<n>:` with n not the current one); rows without hashes,
and rows already rehashed, are not touched, so the run is idempotent and can be resumed.

    from pipelines.ingest.rehash import rehash_lake
    rehash_lake(spark, JobContext.from_settings(Settings()))   # {table: rows rehashed}

Stop the silver stream first (it would keep writing new-version rows anyway, but a MERGE
racing its appends on the same table can conflict). A row whose bronze record is gone
(bronze retention) cannot be rehashed; it is counted in `<table>:unrecoverable` and keeps
its old hashes.
"""
from __future__ import annotations

import logging

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from pipelines.core.context import JobContext
from pipelines.core.tables import ACCOUNT_EVENTS, BRONZE_EVENTS, COORDINATES, DUPLICATES, USAGE_EVENTS
from pipelines.ingest import silver as S
from pipelines.ingest.pii import load_pii_config
from pipelines.ingest.pii_key import load_pii_key, spark_master

log = logging.getLogger(__name__)

TABLES = (USAGE_EVENTS, ACCOUNT_EVENTS, DUPLICATES)


def filter_stale(version: int):
    """Rows whose properties hold a hash made with another key version."""

    def transform(df: DataFrame) -> DataFrame:
        return df.filter(F.col("properties").rlike(f'"hmac:v(?!{version}:)[0-9]+:'))

    return transform


def rehash_lake(spark: SparkSession, ctx: JobContext) -> dict[str, int]:
    key = load_pii_key(load_pii_config(), ctx.settings, spark_master(spark))
    fresh = (S.silver_input(ctx.lake.read(spark, BRONZE_EVENTS), ctx)
             .select(*COORDINATES, F.col("properties").alias("_rehashed")))
    counts: dict[str, int] = {}
    for table in TABLES:
        if not ctx.lake.exists(spark, table):
            continue
        # Materialised: the MERGE rewrites the table the stale rows are read from.
        stale = (ctx.lake.read(spark, table).transform(filter_stale(key.version)).select(*COORDINATES)
                 .join(fresh, on=COORDINATES, how="left").localCheckpoint())
        rehashed = stale.filter(F.col("_rehashed").isNotNull())
        counts[table] = rehashed.count()
        counts[f"{table}:unrecoverable"] = stale.count() - counts[table]
        if counts[table]:
            (ctx.lake.delta(spark, table).alias("t")
             .merge(rehashed.alias("s"), S.SAME_COPY)
             .whenMatchedUpdate(set={"properties": "s._rehashed"})
             .execute())
        log.info("%s: %d rows rehashed to PII key version %d, %d without a bronze record", table,
                 counts[table], key.version, counts[f"{table}:unrecoverable"])
    return counts
