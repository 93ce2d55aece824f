"""The `notify` stream: usage alerts and reactive notifications, exactly once.

Reads the change data feeds of silver.usage_events and silver.account_events as one Delta
stream. Each micro-batch (foreachBatch, the batch's own session):

1. new plan events go into gold.plan_timeline (pipelines/rules/timeline.py), the per-account
   plan history every lookup below reads, in the batch's account shards only;
2. usage changes name the (account, metric, period) keys whose totals may have moved, and
   new plan events their account's periods from theirs on (the plan in force may have
   moved); their usage is recomputed from silver's current state, read from the periods'
   days only, so a replay or a late event can only find the same crossings again
   (usage.quota_threshold at each configured share);
3. new lifecycle events (their own columns come with the change feed) get their follow-ups
   (welcome, upgrade/downgrade notice and quota reset, final invoice request, purchase
   receipt);
4. everything is staged in the outbox (insert-if-absent by deterministic id) and the outbox
   is published (pipelines/rules/notifications.py: read back, transactional, then marked).

One small job first counts what the batch holds and names its accounts' shards: steps 1 to 3
each run only when the batch has their kind of change, since each of their lookups is a
Spark job whatever its size.

A crash anywhere replays the batch from the checkpoint: staging finds the ids present and
publishing finds the records on the topic, so nothing is sent twice.

Latency: a crossing reaches the topic one bronze, one silver and one notify micro-batch
after the event; about twenty seconds on the 2-core machine (bench/bench_alert_latency.py).
"""
from __future__ import annotations

from functools import reduce

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.streaming import StreamingQuery

from pipelines.billing.catalog import load_catalog, plans_frame, prices_frame
from pipelines.billing.periods import LIFECYCLE, period_of, plan_changes, plan_segments, with_plan_rank
from pipelines.core import batch_expressions
from pipelines.core.context import JobContext, apply_trigger
from pipelines.core.identity import filter_earliest_copy
from pipelines.core.tables import ACCOUNT_EVENTS, KAFKA_ORDER, USAGE_EVENTS, filter_touched_partitions, spec
from pipelines.rules import alerts as A
from pipelines.rules.config import load_plan_rules
from pipelines.rules.notifications import account_shard_col, publish_pending, stage_notifications
from pipelines.rules.timeline import SHARDS, ensure_plan_timeline, merge_plan_timeline, read_plan_timeline

JOB = "notify"
_NEW = ("insert", "update_postimage")


# Columns only lifecycle events carry: the follow-ups read them from the change feed itself.
_ACCOUNT_ONLY = ("plan_id", "amount_value", "amount_currency", "properties")


def read_changes(spark: SparkSession, ctx: JobContext) -> DataFrame:
    """Both silver change feeds as one stream of (kind, identity, metric, the lifecycle
    events' own columns, Kafka order, change type)."""

    def feed(table: str) -> DataFrame:
        reader = spark.readStream.format("delta").option("readChangeFeed", "true").option("startingVersion", "0")
        if ctx.run.max_files_per_trigger:
            reader = reader.option("maxFilesPerTrigger", str(ctx.run.max_files_per_trigger))
        return ctx.lake.load(reader, table)

    types = {c.name: c.type for c in spec(ACCOUNT_EVENTS).columns}
    common = ["account_id", "event_id", "event_type", "occurred_at", "source", *KAFKA_ORDER, "_change_type"]
    usage = feed(USAGE_EVENTS).select(F.lit("usage").alias("_kind"), *common, "metric",
                                      *[F.lit(None).cast(types[c]).alias(c) for c in _ACCOUNT_ONLY])
    account = feed(ACCOUNT_EVENTS).select(F.lit("account").alias("_kind"), *common,
                                          F.lit(None).cast("string").alias("metric"), *_ACCOUNT_ONLY)
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
            held = batch.transform(count_changes).first()  # one row
            batch_expressions.set_for_batch(spark, held["rows"])
            if held["rows"]:
                if held["plan"]:
                    # Before the lookups, which read the batch's own plan events from it.
                    merge_plan_timeline(spark, self.ctx.lake, batch.filter(_is_plan_change()), held["shards"])
                notes = self.notifications(spark, batch, usage=held["usage"] > 0, lifecycle=held["lifecycle"] > 0,
                                           plan=held["plan"] > 0, shards=held["shards"])
                if notes is not None:
                    stage_notifications(spark, self.ctx.lake, notes)
                # Always: a replay after a crash between staging and publishing stages
                # nothing new but still owes the staged rows.
                publish_pending(spark, self.ctx.lake, self.ctx.settings)
        finally:
            batch.unpersist()

    def notifications(self, spark: SparkSession, batch: DataFrame, *, usage: bool = True, lifecycle: bool = True,
                      plan: bool = True, shards: list[str] | tuple[str, ...] = SHARDS) -> DataFrame | None:
        """The batch's alerts and follow-ups; None when it holds neither kind of change.

        usage: the batch holds usage changes; lifecycle: new lifecycle events with follow-ups;
        plan: new plan events, which can move the plan in force for the account's periods
        from theirs on, so those periods' usage is looked at again (an alert owed since a
        late subscription.started arrived is found then, whatever the batches' cuts). shards:
        the account shards of the batch's accounts, the only partitions of the plan timeline
        read. Each lookup below is a broadcast, and each broadcast is a Spark job of its own
        however few its rows; a batch without usage changes or without new lifecycle events
        leaves that half's lookups out of the plan instead of running them over nothing."""
        usage = usage or plan
        if not (usage or lifecycle):
            return None
        lake = self.ctx.lake
        plans = plans_frame(spark, self.catalog)
        prices = prices_frame(spark, self.catalog).select("plan_id", "metric", "included")
        keys = batch.filter(_is_usage()).transform(A.touched_usage_keys)
        if plan:
            keys = keys.unionByName(batch.filter(_is_plan_change()).transform(A.touched_plan_periods)).distinct()
        new_events = batch.filter(_is_new_lifecycle()).transform(filter_earliest_copy)
        touched = ([keys] if usage else []) + ([new_events] if lifecycle else [])
        accounts = reduce(DataFrame.unionByName, [t.select("account_id") for t in touched]).distinct()
        history = read_plan_timeline(spark, lake, accounts, shards).localCheckpoint()
        parts = []
        if usage:
            segments = (history.transform(with_plan_rank(plans)).transform(plan_changes).transform(plan_segments))
            # The touched periods' days, so the read below prunes silver's event_date partitions.
            days = keys.select(F.explode(F.sequence(
                F.to_date(F.concat(F.col("period"), F.lit("-01"))),
                F.date_sub(F.add_months(F.to_date(F.concat(F.col("period"), F.lit("-01"))), 1), 1))).alias("event_date")
            ).distinct()
            period_usage = (
                lake.read(spark, USAGE_EVENTS)
                .transform(filter_touched_partitions(days, ["event_date"]))
                .withColumn("period", period_of(F.col("occurred_at")))
                .transform(A.filter_touched_keys(keys))
                .select("account_id", "event_id", "product", "metric", "occurred_at", "quantity")
            )
            parts.append(period_usage.transform(A.quota_threshold_alerts(self.thresholds, segments, prices)))
        if lifecycle:
            parts.append(new_events.transform(A.with_previous_plan(history))
                         .transform(A.reactive_notifications(plans, prices)))
        return reduce(DataFrame.unionByName, parts)


def _is_usage() -> Column:
    return F.col("_kind") == "usage"


def _is_new_lifecycle() -> Column:
    """A lifecycle event new to silver whose type has follow-ups."""
    return ((F.col("_kind") == "account") & F.col("_change_type").isin(*_NEW)
            & F.col("event_type").isin(*A.REACTIVE_EVENTS))


def _is_plan_change() -> Column:
    """A plan event new to silver (or replaced by an earlier copy): the plan timeline's input."""
    return ((F.col("_kind") == "account") & F.col("_change_type").isin(*_NEW)
            & F.col("event_type").isin(*LIFECYCLE))


def count_changes(batch: DataFrame) -> DataFrame:
    """read_changes rows -> one row: rows, usage (usage changes), lifecycle (new lifecycle
    events with follow-ups), plan (new plan events) and shards (the account shards of its
    accounts), so the writer knows which lookups a batch needs, and where, in one job."""
    return batch.agg(F.count(F.lit(1)).alias("rows"), F.count(F.when(_is_usage(), 1)).alias("usage"),
                     F.count(F.when(_is_new_lifecycle(), 1)).alias("lifecycle"),
                     F.count(F.when(_is_plan_change(), 1)).alias("plan"),
                     F.array_sort(F.collect_set(account_shard_col("account_id"))).alias("shards"))


def start(spark: SparkSession, ctx: JobContext) -> StreamingQuery:
    for table in (USAGE_EVENTS, ACCOUNT_EVENTS):
        ctx.lake.ensure(spark, table)
    ensure_plan_timeline(spark, ctx.lake)
    writer = (
        read_changes(spark, ctx).writeStream.queryName(JOB)
        .foreachBatch(NotifyWriter(ctx))
        .option("checkpointLocation", ctx.lake.checkpoint(JOB, "notifications"))
    )
    return apply_trigger(writer, ctx.run).start()
