"""Fraud rules: pure DataFrame -> DataFrame functions over silver, each returning candidate
flags (account_id, flag_id, rule, evidence, first_seen, last_seen), plus their config.

- signup_burst: account.created events sharing a signal value (hashed email domain, hashed
  IP, card fingerprint) from at least `min_accounts` accounts within `window`;
- usage_spike: one day's usage of a metric far above the account's own baseline, by a
  robust z-score (median and MAD of the previous `baseline` days, missing days as 0);
- trial_lookalike: a trial account whose usage over `window` reaches what a typical paying
  account uses (a percentile of paying accounts, per metric).

flag_id hashes the rule, the account and what the evidence is about (signal and value;
metric and day; metric), so a rerun finds the same flag instead of making a new one.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from pipelines.core.config import CONF_DIR, ConfigError, check_document, parse_duration, read_yaml

DEFAULT_FRAUD_RULES = CONF_DIR / "fraud_rules.yaml"
FLAG_COLUMNS = ["account_id", "flag_id", "rule", "evidence", "first_seen", "last_seen"]
SIGNUP_BURST, USAGE_SPIKE, TRIAL_LOOKALIKE = "signup_burst", "usage_spike", "trial_lookalike"
PLAN_EVENTS = ("subscription.started", "plan.changed", "subscription.cancelled")


@dataclass(frozen=True)
class Signal:
    name: str
    keys: tuple[str, ...]


@dataclass(frozen=True)
class BurstRule:
    enabled: bool
    window: timedelta
    min_accounts: int
    signals: tuple[Signal, ...]


@dataclass(frozen=True)
class SpikeRule:
    enabled: bool
    baseline: timedelta
    min_baseline_days: int
    threshold: float
    min_quantity: float
    evaluate: timedelta


@dataclass(frozen=True)
class TrialRule:
    enabled: bool
    trial_plans: tuple[str, ...]
    no_plan_is_trial: bool
    window: timedelta
    paying_percentile: float
    min_paying_accounts: int
    min_quantity: float


@dataclass(frozen=True)
class FraudRules:
    signup_burst: BurstRule
    usage_spike: SpikeRule
    trial_lookalike: TrialRule


def parse_fraud_rules(doc: object, where: str = "fraud rules") -> FraudRules:
    """The structure is conf/schemas/config/fraud_rules.schema.json; what it cannot say
    (a baseline's days against its own duration) is checked here."""
    check_document(doc, "fraud_rules", where)
    b, s, t = doc[SIGNUP_BURST], doc[USAGE_SPIKE], doc[TRIAL_LOOKALIKE]
    at = f"{where}: {SIGNUP_BURST}"
    burst = BurstRule(b["enabled"], parse_duration(b["window"], f"{at}.window"), b["min_accounts"],
                      tuple(Signal(raw["name"], tuple(raw["keys"])) for raw in b["signals"]))
    at = f"{where}: {USAGE_SPIKE}"
    spike = SpikeRule(s["enabled"], parse_duration(s["baseline"], f"{at}.baseline"), s["min_baseline_days"],
                      float(s["threshold"]), float(s["min_quantity"]), parse_duration(s["evaluate"], f"{at}.evaluate"))
    if spike.min_baseline_days > spike.baseline.days:
        raise ConfigError(f"{at}.min_baseline_days: cannot exceed the baseline's {spike.baseline.days} days")
    at = f"{where}: {TRIAL_LOOKALIKE}"
    trial = TrialRule(t["enabled"], tuple(t["trial_plans"]), t["no_plan_is_trial"],
                      parse_duration(t["window"], f"{at}.window"), float(t["paying_percentile"]),
                      t["min_paying_accounts"], float(t["min_quantity"]))
    return FraudRules(burst, spike, trial)


def load_fraud_rules(path: Path | str | None = None) -> FraudRules:
    path = Path(path or DEFAULT_FRAUD_RULES)
    return parse_fraud_rules(read_yaml(path), str(path))


# ---------------------------------------------------------------- pure transforms


def _flag_id(rule: str, *parts: Column) -> Column:
    return F.sha2(F.concat_ws("|", F.lit(rule), *parts), 256)


def _seconds(delta: timedelta) -> Column:
    return F.expr(f"INTERVAL {int(delta.total_seconds())} SECONDS")


def with_signals(signals: tuple[Signal, ...]):
    """account.created rows -> one row per (account, signal) with its value, where present."""

    def transform(created: DataFrame) -> DataFrame:
        parts = [
            created.select("account_id", "occurred_at", F.lit(s.name).alias("signal"),
                           F.coalesce(*[F.get_json_object("properties", f"$.{k}") for k in s.keys]).alias("value"))
            for s in signals
        ]
        out = parts[0]
        for p in parts[1:]:
            out = out.unionByName(p)
        return (out.filter(F.col("value").isNotNull() & (F.trim("value") != ""))
                .groupBy("account_id", "signal", "value").agg(F.min("occurred_at").alias("occurred_at")))

    return transform


def signup_burst_flags(account_events: DataFrame, rule: BurstRule) -> DataFrame:
    """Every account in a window of `rule.window` (starting at one of the signups) in which
    at least `min_accounts` distinct accounts signed up with the same signal value."""
    signups = (account_events.filter(F.col("event_type") == "account.created")
               .transform(with_signals(rule.signals)))
    a, b = signups.alias("a"), signups.alias("b")
    bursts = (
        a.join(b, (F.col("a.signal") == F.col("b.signal")) & (F.col("a.value") == F.col("b.value"))
               & (F.col("b.occurred_at") >= F.col("a.occurred_at"))
               & (F.col("b.occurred_at") < F.col("a.occurred_at") + _seconds(rule.window)), how="inner")
        .groupBy(F.col("a.signal").alias("signal"), F.col("a.value").alias("value"),
                 F.col("a.occurred_at").alias("window_start"))
        .agg(F.array_sort(F.collect_set("b.account_id")).alias("accounts"), F.max("b.occurred_at").alias("window_end"))
        .filter(F.size("accounts") >= rule.min_accounts)
    )
    per_account = (
        bursts.select(F.explode("accounts").alias("account_id"), "signal", "value", "window_start", "window_end",
                      "accounts")
        .groupBy("account_id", "signal", "value")
        .agg(F.min("window_start").alias("first_seen"), F.max("window_end").alias("last_seen"),
             F.array_sort(F.array_distinct(F.flatten(F.collect_list("accounts")))).alias("accounts"))
    )
    evidence = F.to_json(F.struct(
        "signal", "value", F.size("accounts").alias("accounts_in_window"), "accounts",
        F.lit(int(rule.window.total_seconds())).alias("window_seconds"),
        F.date_format("first_seen", "yyyy-MM-dd'T'HH:mm:ss'Z'").alias("first_signup"),
        F.date_format("last_seen", "yyyy-MM-dd'T'HH:mm:ss'Z'").alias("last_signup")))
    return per_account.select(
        "account_id", _flag_id(SIGNUP_BURST, F.col("account_id"), F.col("signal"), F.col("value")).alias("flag_id"),
        F.lit(SIGNUP_BURST).alias("rule"), evidence.alias("evidence"), "first_seen", "last_seen")


def daily_usage_series(usage_events: DataFrame, until: datetime) -> DataFrame:
    """Usage per account, metric and UTC day from its first day to `until`'s day, days
    without usage as 0 (a quiet day is part of the baseline)."""
    daily = (usage_events.filter(F.col("occurred_at") < F.lit(until))
             .groupBy("account_id", "metric", F.col("event_date").alias("day"))
             .agg(F.sum("quantity").cast("decimal(38,6)").alias("quantity"),
                  F.min("occurred_at").alias("first_at"), F.max("occurred_at").alias("last_at")))
    last_day = F.to_date(F.lit(until))
    days = (daily.groupBy("account_id", "metric").agg(F.min("day").alias("first_day"))
            .select("account_id", "metric", F.explode(F.sequence("first_day", last_day)).alias("day")))
    return (days.join(daily, on=["account_id", "metric", "day"], how="left")
            .withColumn("quantity", F.coalesce("quantity", F.lit(0).cast("decimal(38,6)"))))


def usage_spike_flags(usage_events: DataFrame, rule: SpikeRule, as_of: datetime) -> DataFrame:
    """Days in the evaluated range whose usage has a robust z-score >= threshold against the
    previous `baseline` days. z = 0.6745 (x - median) / MAD; when MAD is 0 (a flat baseline),
    the mean absolute deviation times 1.2533 stands in; when that is 0 too, any usage of at
    least min_quantity above the flat baseline counts as a spike."""
    series = daily_usage_series(usage_events, as_of)
    first_day = F.date_sub(F.to_date(F.lit(as_of)), rule.evaluate.days - 1)
    # The z-score is a statistic, not an amount: doubles are fine here; evidence keeps decimals.
    days = series.filter((F.col("day") >= first_day) & F.col("first_at").isNotNull()).alias("d")
    history = series.select("account_id", "metric", F.col("day").alias("h_day"),
                            F.col("quantity").cast("double").alias("h")).alias("h")
    keys = ["account_id", "metric", "day"]
    pairs = days.join(history, (F.col("d.account_id") == F.col("h.account_id")) & (F.col("d.metric") == F.col("h.metric"))
                      & (F.col("h.h_day") < F.col("d.day")) & (F.col("h.h_day") >= F.date_sub("d.day", rule.baseline.days)),
                      how="inner").select("d.*", "h.h")
    median = pairs.groupBy(*keys).agg(F.median("h").alias("median"), F.count(F.lit(1)).alias("baseline_days"))
    spread = (pairs.join(median, on=keys, how="inner").withColumn("dev", F.abs(F.col("h") - F.col("median")))
              .groupBy(*keys).agg(F.median("dev").alias("mad"), F.avg("dev").alias("mean_dev")))
    x = F.col("quantity").cast("double")
    scale = F.when(F.col("mad") > 0, F.col("mad") / 0.6745).when(F.col("mean_dev") > 0, F.col("mean_dev") * 1.2533)
    z = (x - F.col("median")) / scale
    spiked = F.when(F.col("robust_z").isNotNull(), F.col("robust_z") >= rule.threshold).otherwise(x > F.col("median"))
    scored = (days.join(median, on=keys, how="inner").join(spread, on=keys, how="inner")
              .withColumn("robust_z", z)
              .filter((F.col("baseline_days") >= rule.min_baseline_days) & (x >= rule.min_quantity) & spiked))
    evidence = F.to_json(F.struct(
        "metric", F.col("day").cast("string").alias("day"), F.col("quantity").cast("string").alias("quantity"),
        F.round("median", 6).alias("baseline_median"), F.round("mad", 6).alias("baseline_mad"),
        F.round("robust_z", 2).alias("robust_z"), "baseline_days", F.lit(rule.threshold).alias("threshold")))
    return scored.select(
        "account_id", _flag_id(USAGE_SPIKE, F.col("account_id"), F.col("metric"), F.col("day").cast("string")).alias("flag_id"),
        F.lit(USAGE_SPIKE).alias("rule"), evidence.alias("evidence"),
        F.col("first_at").alias("first_seen"), F.col("last_at").alias("last_seen"))


def plans_in_force(account_events: DataFrame, as_of: datetime) -> DataFrame:
    """account_id -> plan_id in force at `as_of` (null after a cancellation), per the
    latest plan event by event time then Kafka order."""
    latest = Window.partitionBy("account_id").orderBy(F.col("occurred_at").desc(), F.col("kafka_partition").desc(),
                                                      F.col("kafka_offset").desc())
    return (account_events.filter(F.col("event_type").isin(*PLAN_EVENTS) & (F.col("occurred_at") <= F.lit(as_of)))
            .withColumn("_n", F.row_number().over(latest)).filter(F.col("_n") == 1)
            .select("account_id", F.when(F.col("event_type") == "subscription.cancelled", F.lit(None))
                    .otherwise(F.col("plan_id")).alias("plan_id"), F.lit(True).alias("has_plan_event")))


def trial_lookalike_flags(usage_events: DataFrame, account_events: DataFrame, rule: TrialRule,
                          as_of: datetime) -> DataFrame:
    """Trial accounts whose usage of a metric over the window reaches the paying accounts'
    `paying_percentile` for that metric."""
    window_start = F.lit(as_of) - _seconds(rule.window)
    used = (usage_events.filter((F.col("occurred_at") >= window_start) & (F.col("occurred_at") < F.lit(as_of)))
            .groupBy("account_id", "metric")
            .agg(F.sum("quantity").cast("decimal(38,6)").alias("quantity"),
                 F.min("occurred_at").alias("first_seen"), F.max("occurred_at").alias("last_seen")))
    plans = plans_in_force(account_events, as_of)
    with_plan = used.join(plans, on="account_id", how="left")
    trial_plans = list(rule.trial_plans)
    is_trial = F.col("plan_id").isin(*trial_plans) | (F.col("has_plan_event").isNull() & F.lit(rule.no_plan_is_trial))
    is_paying = F.col("plan_id").isNotNull() & ~F.col("plan_id").isin(*trial_plans)
    paying = (with_plan.filter(is_paying).groupBy("metric")
              .agg(F.percentile_approx("quantity", rule.paying_percentile, 10000).alias("paying_level"),
                   F.count(F.lit(1)).alias("paying_accounts"))
              .filter(F.col("paying_accounts") >= rule.min_paying_accounts))
    flagged = (with_plan.filter(is_trial).join(paying, on="metric", how="inner")
               .filter((F.col("quantity") >= F.col("paying_level"))
                       & (F.col("quantity") >= F.lit(rule.min_quantity).cast("decimal(38,6)"))))
    evidence = F.to_json(F.struct(
        "metric", F.coalesce("plan_id", F.lit("none")).alias("plan"), F.col("quantity").cast("string").alias("usage"),
        F.col("paying_level").cast("string").alias("paying_level"), F.lit(rule.paying_percentile).alias("percentile"),
        "paying_accounts", F.lit(rule.window.days).alias("window_days")))
    return flagged.select(
        "account_id", _flag_id(TRIAL_LOOKALIKE, F.col("account_id"), F.col("metric")).alias("flag_id"),
        F.lit(TRIAL_LOOKALIKE).alias("rule"), evidence.alias("evidence"), "first_seen", "last_seen")


def fraud_candidates(usage_events: DataFrame, account_events: DataFrame, rules: FraudRules,
                     as_of: datetime) -> DataFrame:
    """Every enabled rule's candidate flags, one schema (FLAG_COLUMNS)."""
    parts = []
    if rules.signup_burst.enabled:
        parts.append(signup_burst_flags(account_events.filter(F.col("occurred_at") <= F.lit(as_of)), rules.signup_burst))
    if rules.usage_spike.enabled:
        parts.append(usage_spike_flags(usage_events, rules.usage_spike, as_of))
    if rules.trial_lookalike.enabled:
        parts.append(trial_lookalike_flags(usage_events, account_events, rules.trial_lookalike, as_of))
    if not parts:
        return usage_events.sparkSession.createDataFrame(
            [], "account_id string, flag_id string, rule string, evidence string, first_seen timestamp, last_seen timestamp")
    out = parts[0].select(*FLAG_COLUMNS)
    for p in parts[1:]:
        out = out.unionByName(p.select(*FLAG_COLUMNS))
    return out
