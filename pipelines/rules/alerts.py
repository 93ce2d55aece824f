"""Usage alerts and reactive notifications, pure DataFrame -> DataFrame.

Each function returns rows for notify.stage_notifications (notification_id, type,
account_id, occurred_at, trigger_event_ids, payload). Ids are deterministic, so computing
a notification again (a replayed micro-batch, a restart, a late event that moves which
event crossed a threshold) stages nothing new:

- usage.quota_threshold: key `period|metric|threshold`, once per account, metric, period and
  threshold; the trigger is the first event (by occurred_at, then event_id) at which the
  period's running usage reaches the threshold share of the included quota.
- account.welcome (subscription.started), plan.upgraded / plan.downgraded / plan.changed
  plus quota.reset (plan.changed), invoice.final_requested (subscription.cancelled),
  purchase.receipt (purchase.completed): key = the triggering event_id.
"""
from __future__ import annotations

from decimal import Decimal

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from pipelines.billing.periods import next_period_start, period_of
from pipelines.rules.notifications import STAGE_COLUMNS, notification_id_col

THRESHOLD = "usage.quota_threshold"
WELCOME = "account.welcome"
UPGRADED = "plan.upgraded"
DOWNGRADED = "plan.downgraded"
CHANGED = "plan.changed"
QUOTA_RESET = "quota.reset"
FINAL_INVOICE = "invoice.final_requested"
RECEIPT = "purchase.receipt"
PLAN_EVENTS = ("subscription.started", "plan.changed")
REACTIVE_EVENTS = ("subscription.started", "plan.changed", "subscription.cancelled", "purchase.completed")
DEC = "decimal(38,6)"
_RFC3339 = "yyyy-MM-dd'T'HH:mm:ss'Z'"
_ORDER = ["occurred_at", "kafka_timestamp", "kafka_partition", "kafka_offset"]


def _text(col: Column) -> Column:
    """A decimal as plain text (exact; trailing zeros trimmed)."""
    return F.regexp_replace(F.regexp_replace(col.cast(DEC).cast("string"), r"(\.\d*?)0+$", "$1"), r"\.$", "")


def _stage(type_: Column, key: Column, occurred_at: Column, triggers: Column, payload: Column) -> list[Column]:
    return [notification_id_col(type_, F.col("account_id"), key).alias("notification_id"), type_.alias("type"),
            F.col("account_id"), occurred_at.alias("occurred_at"), triggers.alias("trigger_event_ids"),
            F.to_json(payload).alias("payload")]


# --------------------------------------------------------------------------- usage alerts


def touched_usage_keys(changes: DataFrame) -> DataFrame:
    """silver.usage_events changes -> account_id, metric, period whose totals may have moved."""
    return changes.select("account_id", "metric", period_of(F.col("occurred_at")).alias("period")).distinct()


def touched_plan_periods(plan_events: DataFrame) -> DataFrame:
    """New plan events -> account_id, metric (null: every metric), period: each period from
    the event's up to the current one, whose plan in force the event may have moved."""
    month = F.date_trunc("month", F.col("occurred_at")).cast("date")
    # A usage event may lie ahead of the clock by the contract's future tolerance: one more period.
    until = F.add_months(F.trunc(F.current_date(), "month"), 1)
    return plan_events.filter(F.col("occurred_at").isNotNull()).select(
        "account_id", F.lit(None).cast("string").alias("metric"),
        F.explode(F.sequence(F.least(month, until), until, F.expr("INTERVAL 1 MONTH"))).alias("_month"),
    ).select("account_id", "metric", F.date_format("_month", "yyyy-MM").alias("period")).distinct()


def filter_touched_keys(keys: DataFrame):
    """Usage rows with period -> those of the touched keys (account_id, metric, period; a null
    metric stands for every metric of the account's period)."""

    def transform(usage: DataFrame) -> DataFrame:
        k = keys.select(*[F.col(c).alias(f"_k_{c}") for c in ("account_id", "metric", "period")])
        on = ((F.col("account_id") == F.col("_k_account_id")) & (F.col("period") == F.col("_k_period"))
              & (F.col("_k_metric").isNull() | (F.col("metric") == F.col("_k_metric"))))
        return usage.join(F.broadcast(k), on, how="left_semi")

    return transform


def with_plan_at_last_event(segments: DataFrame):
    """rows with account_id and last_at (a period's latest usage event) -> + plan_id: the plan
    in force at that time (null: no subscription then)."""

    def transform(keys: DataFrame) -> DataFrame:
        s = segments.alias("s")
        k = keys.alias("k")
        joined = k.join(s, (F.col("k.account_id") == F.col("s.account_id")) & (F.col("s.start") <= F.col("k.last_at"))
                        & (F.col("s.end").isNull() | (F.col("s.end") > F.col("k.last_at"))), how="left")
        return joined.select("k.*", "s.plan_id")

    return transform


def quota_threshold_alerts(thresholds: tuple[Decimal, ...], segments: DataFrame, prices: DataFrame):
    """Usage events of the touched (account, metric, period) keys -> one alert per threshold
    the period's usage has reached (included quota > 0 only)."""

    def transform(usage: DataFrame) -> DataFrame:
        if not thresholds:
            return usage.limit(0).select(*_stage(F.lit(THRESHOLD), F.lit(""), F.col("occurred_at"),
                                                 F.array().cast("array<string>"), F.struct()))
        key = ["account_id", "metric", "period"]
        ordered = Window.partitionBy(*key).orderBy("occurred_at", "event_id")
        # One sort serves the running sum and the period's totals (same partition and order).
        whole = ordered.rowsBetween(Window.unboundedPreceding, Window.unboundedFollowing)
        events = (
            usage.withColumn("period", period_of(F.col("occurred_at")))
            .withColumns({
                "_cum": F.sum("quantity").over(ordered.rowsBetween(Window.unboundedPreceding, Window.currentRow)).cast(DEC),
                "_total": F.sum("quantity").over(whole).cast(DEC),
                "last_at": F.max("occurred_at").over(whole),
                "product": F.first("product").over(whole),
            })
        )
        # Silver rejects negative quantities, so the running sum never falls: the first event
        # to reach a limit is the one row whose running sum reaches it while the sum before
        # it did not, and no second window is needed to find it.
        crossed = (
            events.transform(with_plan_at_last_event(segments))
            .join(prices.select("plan_id", "metric", "included").filter(F.col("included") > 0),
                  on=["plan_id", "metric"], how="inner")
            .withColumn("_share", F.explode(F.array(*[F.lit(str(t)) for t in thresholds])))
            .withColumn("_limit", (F.col("included") * F.col("_share").cast(DEC)).cast(DEC))
            .filter((F.col("_cum") >= F.col("_limit")) & (F.col("_cum") - F.col("quantity") < F.col("_limit")))
        )
        share_text = _text(F.col("_share").cast(DEC))
        payload = F.struct(
            "period", "product", "metric", "plan_id", share_text.alias("threshold"),
            _text(F.col("_share").cast(DEC) * 100).alias("percent"), _text(F.col("included")).alias("included"),
            _text(F.col("_cum")).alias("usage_at_crossing"), _text(F.col("_total")).alias("usage_in_period"))
        return crossed.select(*_stage(
            F.lit(THRESHOLD), F.concat_ws("|", "period", "metric", share_text), F.col("occurred_at"),
            F.array("event_id"), payload))

    return transform


# --------------------------------------------------------------------------- reactive flows


def with_previous_plan(history: DataFrame):
    """lifecycle events -> + previous_plan_id: the plan of the account's latest
    subscription.started or plan.changed before the event (event time, then Kafka order)."""

    def transform(events: DataFrame) -> DataFrame:
        plans = history.filter(F.col("event_type").isin(*PLAN_EVENTS)).select(
            F.col("account_id").alias("_h_account"), *[F.col(c).alias(f"_h_{c}") for c in _ORDER],
            F.col("plan_id").alias("_h_plan"))
        before = F.struct(*[F.col(f"_h_{c}") for c in _ORDER]) < F.struct(*[F.col(c) for c in _ORDER])
        joined = events.join(plans, (F.col("account_id") == F.col("_h_account")) & before, how="left")
        latest = Window.partitionBy("account_id", "event_id").orderBy(
            *[F.col(f"_h_{c}").desc_nulls_last() for c in _ORDER])
        return (joined.withColumn("_n", F.row_number().over(latest)).filter(F.col("_n") == 1)
                .withColumnRenamed("_h_plan", "previous_plan_id")
                .drop("_n", "_h_account", *[f"_h_{c}" for c in _ORDER]))

    return transform


def reactive_notifications(plans: DataFrame, prices: DataFrame):
    """New lifecycle events (with previous_plan_id) -> their follow-up notifications.
    plans: plan_id, plan_rank; prices: plan_id, metric, included."""

    def transform(events: DataFrame) -> DataFrame:
        ranks = plans.select("plan_id", "plan_rank")
        quotas = prices.groupBy("plan_id").agg(F.map_from_entries(F.array_sort(F.collect_list(
            F.struct("metric", _text(F.col("included")).alias("included"))))).alias("quotas"))
        e = (
            events.filter(F.col("event_type").isin(*REACTIVE_EVENTS))
            .join(ranks, on="plan_id", how="left")
            .join(ranks.withColumnRenamed("plan_id", "previous_plan_id").withColumnRenamed("plan_rank", "_prev_rank"),
                  on="previous_plan_id", how="left")
            .join(quotas, on="plan_id", how="left")
        )
        at = F.col("occurred_at")
        trig = F.array("event_id")
        kind = F.col("event_type")
        upgrade = F.col("plan_rank") > F.col("_prev_rank")
        downgrade = F.col("plan_rank") < F.col("_prev_rank")
        # Billing's plan timeline: an upgrade applies at once, a downgrade at the next period start.
        effective = F.when(downgrade, next_period_start(at)).otherwise(at)
        change_type = F.when(upgrade, F.lit(UPGRADED)).when(downgrade, F.lit(DOWNGRADED)).otherwise(F.lit(CHANGED))
        quota_map = F.coalesce("quotas", F.create_map().cast("map<string,string>")).alias("quotas")

        def staged(type_: Column, payload: Column) -> Column:
            return F.struct(*_stage(type_, F.col("event_id"), at, trig, payload))

        # One pass over the events: a union of one filtered copy per notification type would
        # repeat the joins above (and the previous-plan lookup before them) once per type.
        follow_ups = F.array(
            F.when(kind == "subscription.started", staged(F.lit(WELCOME), F.struct("plan_id", quota_map))),
            F.when(kind == "plan.changed", staged(change_type, F.struct(
                "plan_id", "previous_plan_id", F.date_format(effective, _RFC3339).alias("effective_at"),
                F.col("source")))),
            F.when(kind == "plan.changed", staged(F.lit(QUOTA_RESET), F.struct(
                "plan_id", F.date_format(effective, _RFC3339).alias("effective_at"), quota_map))),
            F.when(kind == "subscription.cancelled", staged(F.lit(FINAL_INVOICE), F.struct(
                period_of(at).alias("period"), F.col("previous_plan_id").alias("plan_id"),
                F.date_format(at, _RFC3339).alias("cancelled_at")))),
            F.when(kind == "purchase.completed", staged(F.lit(RECEIPT), F.struct(
                F.struct(_text(F.col("amount_value")).alias("value"), F.col("amount_currency").alias("currency")
                         ).alias("amount"),
                F.get_json_object("properties", "$.sku").alias("sku")))),
        )
        return (e.select(F.explode(follow_ups).alias("_n")).filter(F.col("_n").isNotNull())
                .select(*[F.col(f"_n.{c}").alias(c) for c in STAGE_COLUMNS]))

    return transform
