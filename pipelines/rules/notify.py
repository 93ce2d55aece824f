"""The `notify` stream: usage alerts and reactive notifications, exactly once.

Reads the change data feeds of silver.usage_events and silver.account_events as one Delta
stream. Each micro-batch (foreachBatch, the batch's own session):

1. usage changes name the (account, metric, period) keys whose totals may have moved; their
   usage is recomputed from silver's current state, so a replay or a late event can only
   find the same crossings again (usage.quota_threshold at each configured share);
2. new lifecycle events get their follow-ups (welcome, upgrade/downgrade notice and quota
   reset, final invoice request, purchase receipt);
3. everything is staged in the outbox (insert-if-absent by deterministic id) and the outbox
   is published (pipelines/rules/notifications.py: read back, transactional, then marked).

A crash anywhere replays the batch from the checkpoint: staging finds the ids present and
publishing finds the records on the topic, so nothing is sent twice.

Latency: a crossing reaches the topic one bronze, one silver and one notify micro-batch
after the event; about half a minute on the 2-core machine (bench/bench_alert_latency.py).
"""
from __future__ import annotations

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.streaming import StreamingQuery

from pipelines.billing.catalog import load_catalog, plans_frame, prices_frame
from pipelines.billing.periods import filter_plan_events, period_of, plan_changes, plan_segments, with_plan_rank
from pipelines.core.context import JobContext, apply_trigger
from pipelines.core.tables import ACCOUNT_EVENTS, USAGE_EVENTS, filter_touched_partitions
from pipelines.rules import alerts as A
from pipelines.rules.config import load_plan_rules
from pipelines.rules.notifications import publish_pending, stage_notifications

JOB = "notify"
_NEW = ("insert", "update_postimage")


def read_changes(spark: SparkSession, ctx: JobContext) -> DataFrame:
    """Both silver change feeds as one stream of (kind, identity, metric, change type)."""

    def feed(table: str) -> DataFrame:
        reader = spark.readStream.format("delta").option("readChangeFeed", "true").option("startingVersion", "0")
        if ctx.run.max_files_per_trigger:
            reader = reader.option("maxFilesPerTrigger", str(ctx.run.max_files_per_trigger))
        return ctx.lake.load(reader, table)

    usage = feed(USAGE_EVENTS).select(F.lit("usage").alias("_kind"), "account_id", "event_id", "event_type", "metric",
                               "occurred_at", "_change_type")
    account = feed(ACCOUNT_EVENTS).select(F.lit("account").alias("_kind"), "account_id", "event_id", "event_type",
                                   F.lit(None).cast("string").alias("metric"), "occurred_at", "_change_type")
    return usage.unionByName(account)


class NotifyWriter:
    """foreachBatch body; holds config, no Spark state."""

    def __init__(self, ctx: JobContext):
        self.ctx = ctx
        self.thresholds = load_plan_rules(ctx.run.plan_rules).alert_thresholds
        self.catalog = load_catalog(ctx.run.catalog)

    def __call__(self, batch_df: DataFrame, batch_id: int) -> None:
        spark = batch_df.sparkSession
        batch = batch_df.localCheckpoint(eager=True)
        try:
            if not batch.isEmpty():
                stage_notifications(spark, self.ctx.lake, self.notifications(spark, batch))
                # Always: a replay after a crash between staging and publishing stages
                # nothing new but still owes the staged rows.
                publish_pending(spark, self.ctx.lake, self.ctx.settings)
        finally:
            batch.unpersist()

    def notifications(self, spark: SparkSession, batch: DataFrame) -> DataFrame:
        lake = self.ctx.lake
        plans = plans_frame(spark, self.catalog)
        prices = prices_frame(spark, self.catalog).select("plan_id", "metric", "included")
        keys = batch.filter(F.col("_kind") == "usage").transform(A.touched_usage_keys)
        new_events = batch.filter((F.col("_kind") == "account") & F.col("_change_type").isin(*_NEW)
                                  & F.col("event_type").isin(*A.REACTIVE_EVENTS)).select("account_id", "event_id")
        accounts = keys.select("account_id").unionByName(new_events.select("account_id")).distinct()
        lifecycle = lake.read(spark, ACCOUNT_EVENTS).join(F.broadcast(accounts), on="account_id", how="left_semi").localCheckpoint()
        segments = (lifecycle.transform(filter_plan_events).transform(with_plan_rank(plans))
                    .transform(plan_changes).transform(plan_segments))
        # The touched periods' days, so the read below prunes silver's event_date partitions.
        days = keys.select(F.explode(F.sequence(
            F.to_date(F.concat(F.col("period"), F.lit("-01"))),
            F.date_sub(F.add_months(F.to_date(F.concat(F.col("period"), F.lit("-01"))), 1), 1))).alias("event_date")
        ).distinct()
        usage = (
            lake.read(spark, USAGE_EVENTS)
            .transform(filter_touched_partitions(days, ["event_date"]))
            .withColumn("period", period_of(F.col("occurred_at")))
            .join(F.broadcast(keys), on=["account_id", "metric", "period"], how="left_semi")
            .select("account_id", "event_id", "product", "metric", "occurred_at", "quantity")
        )
        alerts = usage.transform(A.quota_threshold_alerts(self.thresholds, segments, prices))
        reactive = (
            lifecycle.join(F.broadcast(new_events), on=["account_id", "event_id"], how="left_semi")
            .transform(A.with_previous_plan(lifecycle))
            .transform(A.reactive_notifications(plans, prices))
        )
        return alerts.unionByName(reactive)


def start(spark: SparkSession, ctx: JobContext) -> StreamingQuery:
    for table in (USAGE_EVENTS, ACCOUNT_EVENTS):
        ctx.lake.ensure(spark, table)
    writer = (
        read_changes(spark, ctx).writeStream.queryName(JOB)
        .foreachBatch(NotifyWriter(ctx))
        .option("checkpointLocation", ctx.lake.checkpoint(JOB, "notifications"))
    )
    return apply_trigger(writer, ctx.run).start()
