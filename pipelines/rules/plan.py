"""Plan rules as pure DataFrame -> DataFrame transforms: who qualifies for an automatic
upgrade or downgrade, on what evidence, and what is decided for them.

Inputs are plain frames the job reads (pipelines/rules/plan_rules.py):
- current plans: account_id, plan_id, plan_rank, plan_since (start of the plan segment in
  force at the evaluation time `as_of`), from the billing plan timeline;
- usage: silver.usage_events (account_id, metric, occurred_at, quantity);
- prices: plan_id, metric, included (the pricing catalog); moves: plan_id, up_plan, down_plan.

Figures are decimals all the way; comparisons are cross-multiplied so a projection never
divides (`usage x days_in_period > threshold x days_elapsed`).
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from pipelines.rules.config import DowngradeRule, Exclusions, PlanRules, UpgradeRule

UPGRADE = "auto_upgrade"
DOWNGRADE = "auto_downgrade"
APPLIED = "applied"
PROPOSED = "proposed"
SKIPPED = "skipped"
EVENT_PREFIX = "plan-rules-"
DEC = "decimal(38,6)"
CANDIDATE_COLUMNS = ["account_id", "rule", "metric", "evidence", "from_plan", "to_plan", "effective_at", "hysteresis"]


@dataclass(frozen=True)
class Evaluation:
    """An evaluation time and the billing period (UTC calendar month) it falls in."""

    as_of: datetime
    period: str
    period_start: datetime
    period_end: datetime
    days_in_period: int
    full_days: int   # full UTC days of the open period before as_of

    @classmethod
    def at(cls, as_of: datetime) -> "Evaluation":
        as_of = as_of.astimezone(UTC) if as_of.tzinfo else as_of.replace(tzinfo=UTC)
        start = datetime(as_of.year, as_of.month, 1, tzinfo=UTC)
        end = add_months(start, 1)
        return cls(as_of, f"{start:%Y-%m}", start, end, (end - start).days, (as_of.date() - start.date()).days)

    def closed_period_start(self, back: int) -> datetime:
        return add_months(self.period_start, -back)


def add_months(start: datetime, months: int) -> datetime:
    index = start.year * 12 + start.month - 1 + months
    return datetime(index // 12, index % 12 + 1, 1, tzinfo=UTC)


def _ts(value: datetime) -> Column:
    # Aware datetimes only: PySpark reads a naive one in the Python process's local zone.
    return F.lit(value if value.tzinfo else value.replace(tzinfo=UTC)).cast("timestamp")


def _dec(value) -> Column:
    return F.lit(str(value)).cast(DEC)


def _text(col: Column) -> Column:
    """A decimal as plain text for the evidence JSON (exact, no float)."""
    return F.regexp_replace(F.regexp_replace(col.cast(DEC).cast("string"), r"(\.\d*?)0+$", "$1"), r"\.$", "")


# --------------------------------------------------------------------------- plans


def plan_moves(excluded_plans: tuple[str, ...]):
    """plans (plan_id, plan_rank) -> plan_id, plan_rank, up_plan, down_plan: the next plan
    up and down by rank among the plans rules may move accounts to (null: none).

    An excluded plan is never a target, but it has neighbours like any other plan: the
    rules evaluate its accounts both ways, so that decide() records either move as
    skipped for the excluded plan, not one direction only."""

    def transform(plans: DataFrame) -> DataFrame:
        excluded = F.col("plan_id").isin(*excluded_plans) if excluded_plans else F.lit(False)
        target = F.when(~excluded, F.col("plan_id"))
        # A handful of plans: one partition is the point, not a hazard.
        w = Window.partitionBy(F.lit(0)).orderBy("plan_rank")
        above = w.rowsBetween(1, Window.unboundedFollowing)
        below = w.rowsBetween(Window.unboundedPreceding, -1)
        return plans.select("plan_id", "plan_rank",
                            F.first(target, ignorenulls=True).over(above).alias("up_plan"),
                            F.last(target, ignorenulls=True).over(below).alias("down_plan"))

    return transform


def pending_downgrades(as_of: datetime):
    """plan changes (periods.plan_changes over the lifecycle events up to as_of) ->
    account_id, pending_plan, pending_at: the downgrade each account has booked for a
    later period start. A downgrade is the only change the timeline puts after its
    event, so a change after as_of from events up to as_of is a pending downgrade."""

    def transform(changes: DataFrame) -> DataFrame:
        return (changes.filter((F.col("effective_at") > _ts(as_of)) & F.col("plan_id").isNotNull())
                .select("account_id", F.col("plan_id").alias("pending_plan"), F.col("effective_at").alias("pending_at")))

    return transform


def plan_in_force(as_of: datetime):
    """plan segments (periods.plan_segments: account_id, plan_id, start, end) -> the plan in
    force at as_of: account_id, plan_id, plan_since."""

    def transform(segments: DataFrame) -> DataFrame:
        at = _ts(as_of)
        return (segments.filter((F.col("start") <= at) & (F.col("end").isNull() | (F.col("end") > at)))
                .select("account_id", "plan_id", F.col("start").alias("plan_since")))

    return transform


# --------------------------------------------------------------------------- upgrade


def upgrade_candidates(usage: DataFrame, prices: DataFrame, moves: DataFrame, rule: UpgradeRule, win: Evaluation):
    """current plans -> one auto_upgrade candidate per account whose usage of a metric was
    over `share` x the plan's included quota (actual, or projected to the period end) at
    the end of each of the last `sustained_days` full days of the open period. The metric
    furthest over its threshold on the last day is the one reported."""

    def transform(current: DataFrame) -> DataFrame:
        n = rule.sustained_days
        if win.full_days < n:
            return current.limit(0).select(*_empty_candidates())
        # 0-based indexes of the last n full days; cutoff = the end of that day.
        days = list(range(win.full_days - n, win.full_days))
        cutoffs = [win.period_start + timedelta(days=i + 1) for i in days]
        in_period = usage.filter((F.col("occurred_at") >= _ts(win.period_start)) & (F.col("occurred_at") < _ts(cutoffs[-1])))
        cum = in_period.groupBy("account_id", "metric").agg(*[
            F.coalesce(F.sum(F.when(F.col("occurred_at") < _ts(c), F.col("quantity"))), F.lit(0)).cast(DEC).alias(f"_u{k}")
            for k, c in enumerate(cutoffs)])
        quota = current.join(prices.filter(F.col("included") > 0), on="plan_id", how="inner")
        threshold = (F.col("included") * _dec(rule.share)).cast(DEC)
        projected = rule.basis == "projected"

        def over(k: int) -> Column:
            used = F.col(f"_u{k}")
            if projected:   # used x days_in_period / (days elapsed) > threshold, without dividing
                return used * F.lit(win.days_in_period) > F.col("_threshold") * F.lit(days[k] + 1)
            return used > F.col("_threshold")

        def value(k: int) -> Column:
            used = F.col(f"_u{k}")
            return (used * F.lit(win.days_in_period) / F.lit(days[k] + 1)).cast(DEC) if projected else used

        last = n - 1
        evidence = F.to_json(F.struct(
            F.col("metric"), _text(F.col("included")).alias("included"), F.lit(str(rule.share)).alias("share"),
            F.lit(rule.basis).alias("basis"), _text(F.col("_threshold")).alias("threshold"),
            F.lit(n).alias("sustained_days"),
            F.array(*[F.struct(F.lit(str((win.period_start + timedelta(days=d)).date())).alias("day"),
                               _text(F.col(f"_u{k}")).alias("usage"), _text(value(k)).alias("value"))
                      for k, d in enumerate(days)]).alias("days"),
        ))
        ranked = (
            quota.join(cum, on=["account_id", "metric"], how="inner")
            .withColumn("_threshold", threshold)
            .filter(_all([over(k) for k in range(n)]))
            .withColumn("_ratio", value(last) / F.col("_threshold"))
            .withColumn("_n", F.row_number().over(Window.partitionBy("account_id").orderBy(F.desc("_ratio"), "metric")))
            .filter(F.col("_n") == 1)
        )
        return (
            ranked.join(moves.select("plan_id", "up_plan"), on="plan_id", how="left")
            .select("account_id", F.lit(UPGRADE).alias("rule"), "metric", evidence.alias("evidence"),
                    F.col("plan_id").alias("from_plan"), F.col("up_plan").alias("to_plan"),
                    _ts(win.as_of).alias("effective_at"), F.lit(None).cast("string").alias("hysteresis"))
        )

    return transform


def _all(conditions: list[Column]) -> Column:
    out = conditions[0]
    for c in conditions[1:]:
        out = out & c
    return out


def _empty_candidates() -> list[Column]:
    return [F.lit(None).cast("string").alias(c) if c != "effective_at" else F.lit(None).cast("timestamp").alias(c)
            for c in CANDIDATE_COLUMNS]


# --------------------------------------------------------------------------- downgrade


def downgrade_candidates(usage: DataFrame, prices: DataFrame, moves: DataFrame, rules: PlanRules, win: Evaluation):
    """current plans -> one auto_downgrade candidate per account that spent each of the last
    `full_periods` closed periods wholly on its current plan with every metric's usage zero
    or under `share` x the next lower plan's included quota. Takes effect at the next
    period start. `hysteresis` names a metric whose open-period usage would already qualify
    the lower plan for an upgrade (the job skips such a move)."""
    rule: DowngradeRule = rules.downgrade

    def transform(current: DataFrame) -> DataFrame:
        first_start = win.closed_period_start(rule.full_periods)
        periods = [f"{win.closed_period_start(k):%Y-%m}" for k in range(rule.full_periods, 0, -1)]
        eligible = (
            current.filter(F.col("plan_since") <= _ts(first_start))
            .join(moves.select("plan_id", F.col("down_plan").alias("to_plan")), on="plan_id", how="inner")
            .filter(F.col("to_plan").isNotNull())
        )
        closed = (
            usage.filter((F.col("occurred_at") >= _ts(first_start)) & (F.col("occurred_at") < _ts(win.period_start)))
            .groupBy("account_id", "metric", F.date_format("occurred_at", "yyyy-MM").alias("period"))
            .agg(F.sum("quantity").cast(DEC).alias("_q"))
            .groupBy("account_id", "metric").agg(F.max("_q").alias("max_usage"))
        )
        lower = prices.select(F.col("plan_id").alias("to_plan"), "metric", F.col("included").alias("lower_included"))
        per_metric = (
            eligible.select("account_id", "to_plan").join(closed, on="account_id", how="inner")
            .join(lower, on=["to_plan", "metric"], how="left")
            .withColumn("_fits", (F.col("max_usage") == 0) | (
                F.col("lower_included").isNotNull()
                & (F.col("max_usage") < (F.col("lower_included") * _dec(rule.share)).cast(DEC))))
        )
        summary = per_metric.groupBy("account_id").agg(
            F.min(F.col("_fits").cast("int")).alias("_all_fit"),
            F.array_sort(F.collect_list(F.struct(
                "metric", _text(F.col("max_usage")).alias("max_usage"),
                _text(F.col("lower_included")).alias("lower_included")))).alias("_metrics"))
        open_hot = (
            eligible.select("account_id", "to_plan")
            .transform(_open_period_over_upgrade(usage, prices, rules.upgrade, win))
        )
        evidence = F.to_json(F.struct(
            F.col("to_plan").alias("lower_plan"), F.lit(str(rule.share)).alias("share"),
            F.array(*[F.lit(p) for p in periods]).alias("periods"),
            F.coalesce(F.col("_metrics"), F.array()).alias("metrics")))
        return (
            eligible.join(summary, on="account_id", how="left")
            .filter(F.coalesce(F.col("_all_fit"), F.lit(1)) == 1)
            .join(open_hot, on="account_id", how="left")
            .select("account_id", F.lit(DOWNGRADE).alias("rule"), F.lit(None).cast("string").alias("metric"),
                    evidence.alias("evidence"), F.col("plan_id").alias("from_plan"), "to_plan",
                    _ts(win.period_end).alias("effective_at"), "hysteresis")
        )

    return transform


def _open_period_over_upgrade(usage: DataFrame, prices: DataFrame, rule: UpgradeRule, win: Evaluation):
    """account_id, to_plan -> account_id, hysteresis: the first metric whose open-period
    usage is already over the upgrade threshold of to_plan.

    Measured at run time, not at the end of the last full day as the upgrade rule
    measures: usage from the period start up to as_of, the current partial day included,
    with the upgrade rule's basis (projected over the full days elapsed; actual on the
    period's first day, when none has elapsed). Counting today's usage over the full days
    only leans towards keeping a busy account where it is, the cheap mistake: a downgrade
    held back one run is decided again at the next."""

    def transform(moves_to: DataFrame) -> DataFrame:
        so_far = (
            usage.filter((F.col("occurred_at") >= _ts(win.period_start)) & (F.col("occurred_at") < _ts(win.as_of)))
            .groupBy("account_id", "metric").agg(F.sum("quantity").cast(DEC).alias("_u"))
        )
        threshold = (F.col("included") * _dec(rule.share)).cast(DEC)
        if rule.basis == "projected" and win.full_days > 0:
            over = F.col("_u") * F.lit(win.days_in_period) > threshold * F.lit(win.full_days)
            measured = (F.col("_u") * F.lit(win.days_in_period) / F.lit(win.full_days)).cast(DEC)
        else:
            over, measured = F.col("_u") > threshold, F.col("_u")
        hot = (
            moves_to.join(so_far, on="account_id", how="inner")
            .join(prices.select(F.col("plan_id").alias("to_plan"), "metric", "included")
                  .filter(F.col("included") > 0), on=["to_plan", "metric"], how="inner")
            .filter(over)
            .withColumn("hysteresis", F.concat(
                F.lit("hysteresis: open-period "), F.col("metric"), F.lit(f" at {rule.basis} "), _text(measured),
                F.lit(" is over the upgrade threshold "), _text(threshold), F.lit(" of "), F.col("to_plan")))
        )
        first = Window.partitionBy("account_id").orderBy("metric")
        return hot.withColumn("_n", F.row_number().over(first)).filter("_n = 1").select("account_id", "hysteresis")

    return transform


# --------------------------------------------------------------------------- decisions


def with_decision_id(period: str):
    def transform(candidates: DataFrame) -> DataFrame:
        parts = [F.col("account_id"), F.col("rule"), F.coalesce(F.col("from_plan"), F.lit("")),
                 F.coalesce(F.col("to_plan"), F.lit("")), F.lit(period)]
        return candidates.withColumn("decision_id", F.sha2(F.concat_ws("|", *parts), 256))

    return transform


def decide(rules: PlanRules, win: Evaluation, *, prior: DataFrame, flagged: DataFrame, fraud: DataFrame,
           pending: DataFrame):
    """candidates -> gold.plan_decisions rows (without updated_at/published_at).

    prior: earlier decisions (decision_id, account_id, rule, to_plan, period, state);
    flagged: account_id, flag (lifecycle properties naming an excluded flag);
    fraud: account_id, fraud_rule (accounts with an open fraud flag);
    pending: account_id, pending_plan, pending_at (pending_downgrades).
    The first reason that applies skips a candidate: excluded plan, excluded account,
    account flag, open fraud flag, no plan to move to, hysteresis, cooldown, pending
    downgrade (the reasons that depend on the account and the rule come before the ones
    that depend on history, so a skipped decision keeps its reason from one run to the
    next; cooldown before pending, so that the downgrade a rule itself applied reads as
    the cooldown it is). A pending downgrade is the merchant's (or an earlier run's)
    choice for the next period: an upgrade would cancel it and another downgrade would
    replace it, so no rule overrides it."""
    ex: Exclusions = rules.exclusions
    oldest = f"{win.closed_period_start(rules.cooldown_periods - 1):%Y-%m}"

    def transform(candidates: DataFrame) -> DataFrame:
        c = candidates.transform(with_decision_id(win.period)).alias("c")
        recent = (
            prior.filter((F.col("state") == APPLIED) & (F.col("period") >= F.lit(oldest)))
            .select(F.col("decision_id").alias("_prior_id"), "account_id",
                    F.concat(F.lit("cooldown: "), F.col("rule"), F.lit(" to "), F.col("to_plan"),
                             F.lit(" applied in "), F.col("period")).alias("_cooldown"))
        )
        cooldown = (
            c.select("decision_id", "account_id").join(recent, on="account_id", how="inner")
            .filter(F.col("_prior_id") != F.col("decision_id"))
            .groupBy("decision_id").agg(F.min("_cooldown").alias("_cooldown"))
        )
        # The decision's own earlier application is what left the pending downgrade.
        own = prior.filter(F.col("state") == APPLIED).select("decision_id", F.lit(True).alias("_own"))
        booked = pending.groupBy("account_id").agg(F.min_by(F.concat(
            F.lit("pending downgrade to "), F.col("pending_plan"), F.lit(" from "),
            F.date_format("pending_at", "yyyy-MM-dd")), F.col("pending_at")).alias("_pending"))
        flags = flagged.groupBy("account_id").agg(F.min("flag").alias("_flag"))
        frauds = fraud.groupBy("account_id").agg(F.min("fraud_rule").alias("_fraud"))
        excluded_plan = F.col("from_plan").isin(*ex.plans) if ex.plans else F.lit(False)
        excluded_account = F.col("account_id").isin(*ex.accounts) if ex.accounts else F.lit(False)
        reason = (
            F.when(excluded_plan, F.concat(F.lit("excluded plan "), F.col("from_plan")))
            .when(excluded_account, F.lit("excluded account"))
            .when(F.col("_flag").isNotNull(), F.concat(F.lit("account flag "), F.col("_flag")))
            .when(F.col("_fraud").isNotNull(), F.concat(F.lit("open fraud flag "), F.col("_fraud")))
            .when(F.col("to_plan").isNull(), F.lit("no plan to move to"))
            .when(F.col("hysteresis").isNotNull(), F.col("hysteresis"))
            .when(F.col("_cooldown").isNotNull(), F.col("_cooldown"))
            .when(F.col("_pending").isNotNull() & F.col("_own").isNull(), F.col("_pending"))
        )
        state = F.when(reason.isNotNull(), F.lit(SKIPPED)).when(F.lit(rules.dry_run), F.lit(PROPOSED)).otherwise(F.lit(APPLIED))
        return (
            c.join(cooldown, on="decision_id", how="left")
            .join(own, on="decision_id", how="left")
            .join(booked, on="account_id", how="left")
            .join(flags, on="account_id", how="left")
            .join(frauds, on="account_id", how="left")
            .withColumns({"reason": reason, "period": F.lit(win.period), "decided_at": _ts(win.as_of)})
            .withColumn("state", state)
            .withColumn("event_id", F.when(F.col("state") == APPLIED, F.concat(F.lit(EVENT_PREFIX), F.col("decision_id"))))
            .select("decision_id", "account_id", "rule", "metric", "evidence", "from_plan", "to_plan", "period",
                    "decided_at", "effective_at", "state", "reason", "event_id")
        )

    return transform


def flagged_accounts(flags: tuple[str, ...]):
    """silver.account_events -> account_id, flag: accounts whose lifecycle properties set an
    excluded flag to true (JSON true or "true")."""

    def transform(events: DataFrame) -> DataFrame:
        if not flags:
            return events.limit(0).select("account_id", F.lit(None).cast("string").alias("flag"))
        hits = [F.when(F.lower(F.get_json_object("properties", f"$.{flag}")) == "true", F.lit(flag)) for flag in flags]
        return (events.select("account_id", F.explode(F.array(*hits)).alias("flag"))
                .filter(F.col("flag").isNotNull()).distinct())

    return transform


def open_fraud_flags(flags: DataFrame) -> DataFrame:
    """gold.fraud_flags -> account_id, fraud_rule for flags still open."""
    return flags.filter(F.col("state") == "open").select("account_id", F.col("rule").alias("fraud_rule"))
