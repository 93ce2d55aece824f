"""gold.plan_timeline: each account's plan events, laid out for notify's lookups.

For every account a micro-batch touches, notify needs the account's plan events of all time:
the plan in force at a period's last usage event, the plan before a plan change. In
silver.account_events, which is partitioned by event date, that lookup read every date of the
table, so its cost followed the lake's age (design section 8). The timeline keeps the plan
events alone (subscription.started, plan.changed, subscription.cancelled), partitioned into
the 16 account shards of the outbox: a lookup reads the shards of the batch's accounts, and
the table's size follows the accounts' plan changes, not the events.

Notify writes it from silver.account_events' change feed, before its lookups, with a MERGE
keyed by (account_id, event_id) that inserts an event it lacks and replaces a row by an
earlier copy (Kafka order), which is the copy silver keeps. Inserting what is absent and
keeping the earliest copy commute and are idempotent, so a replayed batch, a rerun from a
fresh checkpoint and the one-time seed from silver (a lake made before this table) all
converge on silver's own plan events.
"""
from __future__ import annotations

import logging
import threading

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from pipelines.billing.periods import filter_plan_events
from pipelines.core.identity import filter_earliest_copy, kafka_order
from pipelines.core.tables import ACCOUNT_EVENTS, PLAN_TIMELINE, Lake, spec
from pipelines.rules.notifications import SHARD_COLUMN, account_shard_col

log = logging.getLogger(__name__)

SHARDS = tuple("0123456789abcdef")
# Set once the table holds silver's plan events as of its creation: a process that dies
# between creating the table and seeding it seeds it again on its next start.
SEEDED = "lakehouse.planTimeline.seeded"
# Timelines this process has seen seeded, by table reference.
_SEEDED: set[str] = set()
_SEEDED_LOCK = threading.Lock()


def to_timeline_rows(events: DataFrame) -> DataFrame:
    """Account events (any columns of silver.account_events that the timeline keeps) ->
    gold.plan_timeline rows: the plan events, one per (account_id, event_id), the earliest copy."""
    return (
        events.transform(filter_plan_events).transform(filter_earliest_copy)
        .withColumn(SHARD_COLUMN, account_shard_col("account_id"))
        .select(*spec(PLAN_TIMELINE).column_names)
    )


def merge_plan_timeline(spark: SparkSession, lake: Lake, events: DataFrame, shards: list[str] | tuple[str, ...]) -> None:
    """MERGE the plan events among `events` into the timeline: insert an event it lacks,
    replace a row by an earlier copy. `shards`: the shards of the events' accounts (at
    least), as literals, so the MERGE reads those partitions only (Delta skips a MERGE's
    target files by the part of its condition that names the target alone)."""
    same = (F.col(f"t.{SHARD_COLUMN}").isin(list(shards))
            & (F.col("t.account_id") == F.col("s.account_id")) & (F.col("t.event_id") == F.col("s.event_id")))
    (lake.delta(spark, PLAN_TIMELINE).alias("t").merge(events.transform(to_timeline_rows).alias("s"), same)
     .whenMatchedUpdateAll(condition=kafka_order("s.") < kafka_order("t."))
     .whenNotMatchedInsertAll()
     .execute())


def ensure_plan_timeline(spark: SparkSession, lake: Lake) -> None:
    """Create the timeline, and seed a new one from silver.account_events: one read of that
    table, once per lake (a lake made before the timeline, or a timeline deleted). The check
    reads the table's properties once per process and table."""
    ref = lake.ref(PLAN_TIMELINE)
    with _SEEDED_LOCK:
        existed = lake.exists(spark, PLAN_TIMELINE)
        if existed and ref in _SEEDED:
            return
        lake.ensure(spark, PLAN_TIMELINE)
        if not existed or lake.properties(spark, PLAN_TIMELINE).get(SEEDED) != "true":
            lake.ensure(spark, ACCOUNT_EVENTS)
            log.warning("%s: seeding it from %s (once)", PLAN_TIMELINE, ACCOUNT_EVENTS)
            merge_plan_timeline(spark, lake, lake.read(spark, ACCOUNT_EVENTS), SHARDS)
            lake.set_property(spark, PLAN_TIMELINE, SEEDED, "true")
        _SEEDED.add(ref)


def read_plan_timeline(spark: SparkSession, lake: Lake, accounts: DataFrame,
                       shards: list[str] | tuple[str, ...]) -> DataFrame:
    """The timeline rows of `accounts` (a small frame of account_id), read from `shards` (the
    accounts' shards, at least) only."""
    return (lake.read(spark, PLAN_TIMELINE).filter(F.col(SHARD_COLUMN).isin(list(shards)))
            .join(F.broadcast(accounts), on="account_id", how="left_semi"))
