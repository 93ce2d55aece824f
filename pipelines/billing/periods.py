"""Billing periods and the plan in force, pure DataFrame -> DataFrame.

A billing period is a UTC calendar month. The plan in force comes from the lifecycle
events in silver.account_events:

- subscription.started: the plan applies from the event's time (a restart replaces the plan);
- plan.changed to a higher-ranked plan (an upgrade): applies from the event's time, so the
  period splits there and base fees are prorated by the second;
- plan.changed to a lower-ranked plan (a downgrade): applies from the next period start;
  a later change before then replaces it (an upgrade, or a change back to the plan in force,
  cancels it);
- subscription.cancelled: nothing is billed from the event's time on, and a downgrade
  still pending is dropped (a new subscription.started brings its own plan);
- plan.changed with no subscription active (before the first subscription.started, or
  after a cancellation): ignored, since the account holds no plan to change.

Whether a change is an upgrade depends on the plan in force when it happens, which depends
on every earlier event, so the timeline is a fold over each account's events in event-time
order (the built-in `aggregate` over a sorted array, like the SMS anchor chain), not a
window frame. A plan missing from the catalog has no rank: a change to or from it applies
at once, and its lines come out unpriced.
"""
from __future__ import annotations

import re
from datetime import datetime

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from pipelines.core.tables import KAFKA_ORDER

STARTED = "subscription.started"
CHANGED = "plan.changed"
CANCELLED = "subscription.cancelled"
LIFECYCLE = (STARTED, CHANGED, CANCELLED)

_CHANGE = "struct<at:timestamp,plan_id:string>"
_PERIOD = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")


class BillingError(ValueError):
    pass


def parse_period(text: str | None) -> str | None:
    """A billing period as given on the command line (YYYY-MM), or None for every period."""
    if text is not None and not _PERIOD.match(text):
        raise BillingError(f"--period must look like YYYY-MM (a UTC calendar month), got {text!r}")
    return text


def period_of(ts: Column) -> Column:
    return F.date_format(ts, "yyyy-MM")


def next_period_start(ts: Column) -> Column:
    return F.add_months(F.date_trunc("month", ts).cast("date"), 1).cast("timestamp")


def filter_plan_events(account_events: DataFrame) -> DataFrame:
    return account_events.filter(F.col("event_type").isin(*LIFECYCLE))


def with_plan_rank(plans: DataFrame):
    """plan_rank of each event's plan (null when the catalog does not know the plan)."""

    def transform(events: DataFrame) -> DataFrame:
        return events.join(F.broadcast(plans.select("plan_id", "plan_rank")), on="plan_id", how="left")

    return transform


def _fold_step(acc: Column, e: Column) -> Column:
    # A pending downgrade falls due before the event is looked at.
    due = acc["pend"].isNotNull() & (e["t"] >= acc["pend_at"])
    cur = F.when(due, acc["pend"]).otherwise(acc["cur"])
    rank = F.when(due, acc["pend_rank"]).otherwise(acc["rank"])
    out = F.when(due, F.concat(acc["out"], F.array(F.struct(acc["pend_at"].alias("at"), acc["pend"].alias("plan_id")))
                               )).otherwise(acc["out"])
    pend = F.when(due, F.lit(None)).otherwise(acc["pend"])
    pend_rank = F.when(due, F.lit(None)).otherwise(acc["pend_rank"])
    pend_at = F.when(due, F.lit(None)).otherwise(acc["pend_at"])
    active = acc["active"]

    kind = e["kind"]
    # A plan change needs a subscription to change: with none active (never started, or
    # cancelled) the account holds no plan, so the event changes nothing and bills nothing.
    is_change = (kind == CHANGED) & active
    unranked = rank.isNull() | e["rank"].isNull()
    at_once = (kind == STARTED) | (is_change & (unranked | (e["rank"] > rank)))
    downgrade = is_change & ~unranked & (e["rank"] < rank)
    cancel = (kind == CANCELLED) & active
    clears_pending = at_once | (kind == CANCELLED) | (is_change & ~downgrade)

    def change(plan: Column) -> Column:
        return F.concat(out, F.array(F.struct(e["t"].alias("at"), plan.alias("plan_id"))))

    return F.struct(
        F.when(at_once, e["plan"]).when(cancel, F.lit(None)).otherwise(cur).cast("string").alias("cur"),
        F.when(at_once, e["rank"]).when(cancel, F.lit(None)).otherwise(rank).cast("int").alias("rank"),
        F.when(at_once, F.lit(True)).when(kind == CANCELLED, F.lit(False)).otherwise(active).alias("active"),
        F.when(downgrade, e["plan"]).when(clears_pending, F.lit(None)).otherwise(pend).cast("string").alias("pend"),
        F.when(downgrade, e["rank"]).when(clears_pending, F.lit(None)).otherwise(pend_rank).cast("int").alias("pend_rank"),
        F.when(downgrade, next_period_start(e["t"])).when(clears_pending, F.lit(None))
        .otherwise(pend_at).cast("timestamp").alias("pend_at"),
        F.when(at_once, change(e["plan"])).when(cancel, change(F.lit(None).cast("string")))
        .otherwise(out).cast(f"array<{_CHANGE}>").alias("out"),
    )


def plan_changes(events: DataFrame) -> DataFrame:
    """Lifecycle events with plan_rank -> account_id, effective_at, plan_id: from
    effective_at on, plan_id is in force (null: no subscription)."""
    # Kafka order breaks ties between lifecycle events stamped with the same instant.
    ordered = F.array_sort(F.collect_list(F.struct(
        F.col("occurred_at").alias("t"), F.struct(*KAFKA_ORDER).alias("o"), F.col("event_type").alias("kind"),
        F.col("plan_id").alias("plan"), F.col("plan_rank").alias("rank"))))
    init = F.struct(
        F.lit(None).cast("string").alias("cur"), F.lit(None).cast("int").alias("rank"),
        F.lit(False).alias("active"), F.lit(None).cast("string").alias("pend"),
        F.lit(None).cast("int").alias("pend_rank"), F.lit(None).cast("timestamp").alias("pend_at"),
        F.array().cast(f"array<{_CHANGE}>").alias("out"),
    )

    def finish(acc: Column) -> Column:
        # A downgrade still pending after the last event takes effect on its date all the same.
        pending = F.array(F.struct(acc["pend_at"].alias("at"), acc["pend"].alias("plan_id")))
        return F.when(acc["pend"].isNotNull(), F.concat(acc["out"], pending)).otherwise(acc["out"])

    changes = (
        events.groupBy("account_id").agg(F.aggregate(ordered, init, _fold_step, finish).alias("_changes"))
        .select("account_id", F.posexplode("_changes").alias("_pos", "_c"))
        .select("account_id", "_pos", F.col("_c.at").alias("effective_at"), F.col("_c.plan_id").alias("plan_id"))
    )
    # Several changes at one instant: the last one in the fold stands.
    last = Window.partitionBy("account_id", "effective_at").orderBy(F.desc("_pos"))
    return changes.withColumn("_n", F.row_number().over(last)).filter("_n = 1").drop("_n", "_pos")


def plan_segments(changes: DataFrame) -> DataFrame:
    """-> account_id, plan_id, start, end (exclusive; null while still in force)."""
    w = Window.partitionBy("account_id").orderBy("effective_at")
    return (
        changes.withColumn("end", F.lead("effective_at").over(w))
        .filter(F.col("plan_id").isNotNull())
        .select("account_id", "plan_id", F.col("effective_at").alias("start"), "end")
    )


def period_segments(horizon: datetime, period: str | None = None):
    """Plan segments cut at period boundaries, for every period up to the one holding
    `horizon` (or only `period`): account_id, plan_id, period, period_start, period_end,
    segment_start, segment_end."""

    def transform(segments: DataFrame) -> DataFrame:
        last_period = F.date_trunc("month", F.lit(horizon).cast("timestamp"))
        # The last instant a segment covers: just before its end, or the horizon's period.
        last = F.when(F.col("end").isNotNull(), F.col("end") - F.expr("INTERVAL 1 MICROSECOND")).otherwise(last_period)
        months = F.sequence(F.date_trunc("month", "start"), F.date_trunc("month", F.least(last, last_period)),
                            F.expr("INTERVAL 1 MONTH"))
        cut = (
            # A segment starting after the horizon's period (a plan booked ahead) has no period yet.
            segments.filter(F.col("start") < next_period_start(last_period))
            .withColumn("period_start", F.explode(months))
            .withColumn("period_end", next_period_start(F.col("period_start")))
            .withColumns({
                "period": period_of(F.col("period_start")),
                "segment_start": F.greatest("start", "period_start"),
                "segment_end": F.least(F.coalesce("end", "period_end"), "period_end"),
            })
            .filter(F.col("segment_end") > F.col("segment_start"))
        )
        if period is not None:
            cut = cut.filter(F.col("period") == period)
        return cut.select("account_id", "plan_id", "period", "period_start", "period_end",
                          "segment_start", "segment_end")

    return transform


def with_segment(segments: DataFrame):
    """Usage events -> the same rows with the plan segment their occurred_at falls in
    (plan_id and segment columns null when no plan was in force: unpriced usage)."""

    def transform(usage: DataFrame) -> DataFrame:
        s = segments.alias("s")
        u = usage.alias("u")
        joined = u.join(
            s,
            (F.col("u.account_id") == F.col("s.account_id"))
            & (F.col("u.occurred_at") >= F.col("s.segment_start")) & (F.col("u.occurred_at") < F.col("s.segment_end")),
            how="left",
        )
        start = F.date_trunc("month", F.col("u.occurred_at"))
        return joined.select(
            "u.*", "s.plan_id", "s.segment_start", "s.segment_end",
            F.coalesce(F.col("s.period"), period_of(F.col("u.occurred_at"))).alias("period"),
            F.coalesce(F.col("s.period_start"), start).alias("period_start"),
            F.coalesce(F.col("s.period_end"), next_period_start(F.col("u.occurred_at"))).alias("period_end"),
        )

    return transform
