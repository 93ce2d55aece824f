"""The checks on billing's output, each a pure function returning a DataFrame of failures
(empty = pass):

- `reconcile_period_usage`: per account, period and metric, the quantity gold.period_usage
  bills must equal the quantity of the silver.usage_events whose occurred_at falls in the
  period (nothing billed twice, nothing left out);
- `critical_line_failures`: the critical checks on invoice lines, listed as data in
  `CRITICAL_CHECKS` (name, description, the SQL predicate a failing line matches).

The quality suites run them as the derived datasets `period_usage_mismatches` and
`invoice_line_failures` (datasets.py); the export gate (pipelines/billing/gate.py) runs
the same suites cut to the periods it exports.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from functools import reduce

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from pipelines.core.money import by_minor_digits


@dataclass(frozen=True)
class LineCheck:
    """One critical check on invoice lines. `fails_when` is a SQL predicate over one line
    (columns of gold.invoice_lines plus `checked_at`, the gate's clock) that a failing line
    matches; a null result passes, so predicates say what they mean about nulls.
    `unique_by` instead names columns whose values no two lines may share."""

    name: str
    description: str
    fails_when: str | None = None
    unique_by: tuple[str, ...] = field(default=())


CRITICAL_CHECKS: tuple[LineCheck, ...] = (
    LineCheck("idempotency_key_not_null", "Every invoice line has an idempotency key",
              "idempotency_key IS NULL"),
    LineCheck("idempotency_key_unique", "No two invoice lines share an idempotency key",
              unique_by=("idempotency_key",)),
    LineCheck("amount_not_null", "Every invoice line has an amount", "amount IS NULL"),
    LineCheck("currency_not_null", "Every invoice line has a currency", "currency IS NULL"),
    LineCheck("no_negative_charge", "Base and usage amounts are never negative (only adjustments may be)",
              "coalesce(line_type, '') <> 'adjustment' AND amount < 0"),
    LineCheck("amount_in_minor_units", "Amounts are whole minor units of their currency (rounded once, upstream)",
              "amount <> " + by_minor_digits("currency", lambda d: f"round(amount, {d})")),
    LineCheck("final_only_when_period_over", "A line is final only once its period is over",
              "status = 'final' AND (period_end IS NULL OR period_end > checked_at)"),
)

CRITICAL_FAILURE_COLUMNS = ["check", "description", "idempotency_key", "account_id", "period", "detail"]


def critical_line_failures(lines: DataFrame, *, now: datetime | None = None,
                           checks: tuple[LineCheck, ...] = CRITICAL_CHECKS) -> DataFrame:
    """gold.invoice_lines rows -> one row per failing (check, line); a duplicated key fails
    on each of its lines. One pass over the lines (plus one shuffle per unique_by check)."""
    checked = lines.withColumn(
        "checked_at", F.lit(now).cast("timestamp") if now is not None else F.current_timestamp())
    failing = []
    for i, check in enumerate(checks):
        if check.unique_by:
            key = [F.col(c) for c in check.unique_by]
            checked = checked.withColumn(f"_n{i}", F.count(F.lit(1)).over(Window.partitionBy(*key)))
            fails = reduce(lambda a, b: a & b, [c.isNotNull() for c in key]) & (F.col(f"_n{i}") > 1)
            detail = F.concat(F.col(f"_n{i}").cast("string"), F.lit(" lines share this key"))
        else:
            fails = F.expr(check.fails_when)
            detail = F.concat_ws(" ", *[F.concat(F.lit(f"{c}="), F.coalesce(F.col(c).cast("string"), F.lit("null")))
                                        for c in ("line_type", "charge", "amount", "currency", "status")])
        failing.append(F.when(fails, F.struct(F.lit(check.name).alias("check"),
                                              F.lit(check.description).alias("description"),
                                              detail.alias("detail"))))
    return (
        checked.select("idempotency_key", "account_id", "period",
                       F.explode(F.filter(F.array(*failing), lambda f: f.isNotNull())).alias("f"))
        .select("f.check", "f.description", "idempotency_key", "account_id", "period", "f.detail")
    )


RECONCILE_KEYS = ["account_id", "period", "metric"]


def reconcile_period_usage(period_usage: DataFrame, usage_events: DataFrame,
                           periods: DataFrame | None = None) -> DataFrame:
    """Mismatches between gold and silver per account, period and metric.

    `periods` (period, period_start, period_end) names the periods to compare; by default
    those of `period_usage`. Silver events count in the period whose [start, end) holds
    their occurred_at. Missing on either side counts as zero. Out: account_id, period,
    metric, gold_quantity, silver_quantity, difference (gold - silver), only where they differ."""
    bounds = (periods if periods is not None
              else period_usage.select("period", "period_start", "period_end")).distinct()
    zero = F.lit(Decimal(0)).cast("decimal(38,6)")
    gold = (period_usage.join(bounds.select("period"), on="period", how="left_semi")
            .select(*RECONCILE_KEYS, F.col("quantity").alias("gold"), zero.alias("silver")))
    silver = (
        usage_events.alias("e")
        .join(F.broadcast(bounds.alias("b")),
              (F.col("e.occurred_at") >= F.col("b.period_start")) & (F.col("e.occurred_at") < F.col("b.period_end")),
              how="inner")
        .select("e.account_id", "b.period", "e.metric", zero.alias("gold"), F.col("e.quantity").alias("silver"))
    )
    # One shuffle: both sides in one frame, summed per key (groupBy treats null keys as equal).
    return (
        gold.unionByName(silver)
        .groupBy(*RECONCILE_KEYS)
        .agg(F.sum("gold").cast("decimal(38,6)").alias("gold_quantity"),
             F.sum("silver").cast("decimal(38,6)").alias("silver_quantity"))
        .withColumn("difference", (F.col("gold_quantity") - F.col("silver_quantity")).cast("decimal(38,6)"))
        .filter(F.col("gold_quantity") != F.col("silver_quantity"))
    )


def mismatch_details(mismatches: DataFrame) -> DataFrame:
    """reconcile_period_usage rows -> (check, detail) text rows for reports."""
    return mismatches.select(
        F.lit("reconcile_period_usage").alias("check"),
        F.concat(F.lit("account "), F.coalesce("account_id", F.lit("null")), F.lit(", period "), F.col("period"),
                 F.lit(", metric "), F.coalesce("metric", F.lit("null")),
                 F.lit(": gold.period_usage "), F.col("gold_quantity").cast("string"),
                 F.lit(", silver.usage_events "), F.col("silver_quantity").cast("string"),
                 F.lit(" (difference "), F.col("difference").cast("string"), F.lit(")")).alias("detail"))


def line_failure_details(failures: DataFrame) -> DataFrame:
    """critical_line_failures rows -> (check, detail) text rows for reports."""
    return failures.select(
        "check",
        F.concat(F.col("description"), F.lit(": line "), F.coalesce("idempotency_key", F.lit("null")),
                 F.lit(" (account "), F.coalesce("account_id", F.lit("null")), F.lit(", period "),
                 F.coalesce("period", F.lit("null")), F.lit(") "), F.col("detail")).alias("detail"))
