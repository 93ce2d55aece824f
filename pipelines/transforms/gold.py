"""Gold aggregations, pure DataFrame -> DataFrame."""
from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

DAILY_KEYS = ["account_id", "product", "metric", "usage_date"]


def aggregate_daily_usage(usage: DataFrame) -> DataFrame:
    """silver.usage_events rows -> one row per account, product, metric and UTC day."""
    return (
        usage.withColumn("usage_date", F.col("event_date"))
        .groupBy(*DAILY_KEYS)
        .agg(
            F.sum("quantity").cast("decimal(38,6)").alias("quantity"),
            F.count(F.lit(1)).alias("event_count"),
            F.max("ingested_at").alias("last_ingested_at"),
        )
    )


def touched_daily_keys(changes: DataFrame) -> DataFrame:
    """Change-feed rows (inserts, deletes, updates) -> the days whose totals may differ."""
    return changes.select(*[F.col(c) for c in DAILY_KEYS[:-1]], F.col("event_date").alias("usage_date")).distinct()


def with_recomputed_totals(current: DataFrame):
    """touched keys -> keys with their fresh totals (null totals: the day has no events left)."""

    def transform(touched: DataFrame) -> DataFrame:
        return touched.join(current, on=DAILY_KEYS, how="left")

    return transform
