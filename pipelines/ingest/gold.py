"""silver.usage_events -> gold.daily_usage, incrementally, from silver's change feed.

Silver is not append-only (a late event can make a custom rule drop an event it kept),
so gold follows silver's change data feed: every insert, update or delete names a day
whose totals may have moved, and only those days are recomputed from silver's current
state and merged in. Recomputing from state, not adding deltas, makes replays harmless.
"""
from __future__ import annotations

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.streaming import StreamingQuery

from pipelines.core.context import JobContext, apply_trigger
from pipelines.core.tables import DAILY_USAGE, USAGE_EVENTS, filter_touched_partitions, spec

# The pure part: silver rows and change-feed rows -> day totals.

DAILY_KEYS = ["account_id", "product", "metric", "usage_date"]
# A target row t and a source row s (of a MERGE) are the same account, product, metric and day.
SAME_DAY_TOTAL = " AND ".join(f"t.{k} <=> s.{k}" for k in DAILY_KEYS)


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


JOB = "gold"


def merge_daily_usage(spark: SparkSession, lake, recomputed: DataFrame) -> None:
    """Recomputed day totals (with_recomputed_totals) -> gold.daily_usage: a day whose
    events are all gone (event_count null) is deleted, the others upserted. The stream and
    the backfill both write through here.

    The table is partitioned by day and the MERGE reads only the days it writes: they go
    into its condition as literals, because Delta skips a MERGE's target files by the part
    of the condition that names the target alone, never by values from the source. So
    `recomputed` is read twice (its days, then the MERGE): callers pass it materialised."""
    lake.ensure_partitioned(spark, DAILY_USAGE)
    days = recomputed.agg(F.array_sort(F.collect_set("usage_date")).alias("days"),
                          F.count(F.when(F.col("usage_date").isNull(), 1)).alias("undated")).first()
    in_days = F.col("t.usage_date").isin(list(days["days"]))
    if days["undated"]:
        in_days = in_days | F.col("t.usage_date").isNull()
    upsert_daily_totals(lake.delta(spark, DAILY_USAGE), recomputed, in_days & F.expr(SAME_DAY_TOTAL))


def upsert_daily_totals(target, recomputed: DataFrame, on: Column | str) -> None:
    """The MERGE of merge_daily_usage into a daily-usage Delta table, matching on `on`
    (t: the table, s: the totals): a day whose events are all gone is deleted, the others
    upserted."""
    cols = spec(DAILY_USAGE).column_names
    (target.alias("t").merge(recomputed.alias("s"), on)
     .whenMatchedDelete(condition="s.event_count IS NULL")
     .whenMatchedUpdate(set={c: f"s.{c}" for c in cols})
     .whenNotMatchedInsert(condition="s.event_count IS NOT NULL", values={c: f"s.{c}" for c in cols})
     .execute())


class DailyUsageWriter:
    def __init__(self, ctx: JobContext):
        self.ctx = ctx

    def __call__(self, changes: DataFrame, batch_id: int) -> None:
        spark = changes.sparkSession
        lake = self.ctx.lake
        touched = changes.transform(touched_daily_keys).localCheckpoint()
        try:
            # Only the touched days' partitions of silver are read.
            current = (
                lake.read(spark, USAGE_EVENTS)
                .transform(filter_touched_partitions(touched.withColumnRenamed("usage_date", "event_date"),
                                                     ["account_id", "product", "metric", "event_date"]))
                .transform(aggregate_daily_usage)
            )
            source = touched.transform(with_recomputed_totals(current)).localCheckpoint()
            merge_daily_usage(spark, lake, source)
        finally:
            touched.unpersist()


def start(spark: SparkSession, ctx: JobContext) -> StreamingQuery:
    ctx.lake.ensure(spark, USAGE_EVENTS)
    ctx.lake.ensure(spark, DAILY_USAGE)
    reader = spark.readStream.format("delta").option("readChangeFeed", "true").option("startingVersion", "0")
    writer = (
        ctx.lake.read_stream(reader, USAGE_EVENTS).writeStream.queryName(JOB)
        .foreachBatch(DailyUsageWriter(ctx))
        .option("checkpointLocation", ctx.lake.checkpoint(JOB, "daily_usage"))
    )
    return apply_trigger(writer, ctx.run).start()
