"""Period usage and invoice lines, pure DataFrame -> DataFrame.

Lines per account and period:
- base: one per plan segment, the plan's monthly fee prorated by the second;
- usage: one per plan segment and metric the plan prices, charged on the usage above the
  segment's included quota (the quota prorated like the fee).
Each amount is rounded once, to the currency's minor unit, half-up.

Prorating divides by the period's length. Spark gives a decimal quotient a fixed scale, so
the numerator is widened first: with 25 decimals the quotient is far closer to the true
value than any fee/length fraction can be to a half-cent boundary (those fractions are
at least 1/(10^6 x 200 x 2,678,400) ~ 2e-15 apart from one), so the single rounding that
follows is the rounding of the exact value.
"""
from __future__ import annotations

from datetime import datetime

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from pipelines.billing.pricing import with_charge_amount, with_rounded_amount

BASE = "base"
USAGE = "usage"
ADJUSTMENT = "adjustment"
BASE_CHARGE = "base_fee"
FINAL = "final"
ESTIMATE = "estimate"

PERIOD_USAGE_KEYS = ["account_id", "period", "segment_start", "plan_id", "product", "metric"]


def _seconds(start: str, end: str) -> Column:
    # Whole seconds on both ends, so the segments of a period add up to its length exactly.
    return (F.unix_seconds(F.col(end)) - F.unix_seconds(F.col(start))).cast("decimal(10,0)")


def _prorated(amount: Column, part: Column, whole: Column) -> Column:
    """amount x part / whole, 25 decimals (see the module docstring)."""
    return (amount.cast("decimal(33,20)") * part) / whole


def aggregate_period_usage(now: datetime):
    """Usage events with their segment (periods.with_segment) -> gold.period_usage rows."""

    def transform(usage: DataFrame) -> DataFrame:
        return (
            usage.groupBy("account_id", "period", "period_start", "period_end", "segment_start", "segment_end",
                          "plan_id", "product", "metric")
            .agg(F.sum("quantity").cast("decimal(38,6)").alias("quantity"), F.count(F.lit(1)).alias("event_count"))
            .withColumn("computed_at", F.lit(now).cast("timestamp"))
        )

    return transform


def with_status(now: datetime):
    def transform(df: DataFrame) -> DataFrame:
        return df.withColumn("status", F.when(F.col("period_end") <= F.lit(now).cast("timestamp"), F.lit(FINAL))
                             .otherwise(F.lit(ESTIMATE)))

    return transform


def with_idempotency_key(df: DataFrame) -> DataFrame:
    """Deterministic per line: recomputing a line (late usage, a rerun) keeps its key."""
    parts = [F.col("account_id"), F.col("period"), F.col("line_type"), F.coalesce(F.col("plan_id"), F.lit("")),
             F.date_format("segment_start", "yyyy-MM-dd'T'HH:mm:ss.SSSSSS"), F.col("charge")]
    return df.withColumn("idempotency_key", F.sha2(F.concat_ws("|", *parts), 256))


def base_lines(plans: DataFrame):
    """Period segments -> one prorated base-fee line each (segments of plans missing from
    the catalog get none: see unpriced_segments)."""

    def transform(segments: DataFrame) -> DataFrame:
        part = _seconds("segment_start", "segment_end")
        whole = _seconds("period_start", "period_end")
        return (
            segments.join(F.broadcast(plans), on="plan_id", how="inner")
            .withColumns({
                "line_type": F.lit(BASE), "charge": F.lit(BASE_CHARGE), "product": F.lit(None).cast("string"),
                "units": (part.cast("decimal(33,20)") / whole).cast("decimal(38,6)"),
                "included": F.lit(None).cast("decimal(38,6)"),
                "billable_units": F.lit(None).cast("decimal(38,6)"),
                "amount_exact": _prorated(F.col("base_fee"), part, whole),
            })
            .transform(with_rounded_amount("amount_exact", "amount"))
        )

    return transform


def usage_lines(prices: DataFrame):
    """gold.period_usage rows -> one usage line per segment and metric the plan prices."""

    def transform(period_usage: DataFrame) -> DataFrame:
        part = _seconds("segment_start", "segment_end")
        whole = _seconds("period_start", "period_end")
        return (
            period_usage.join(F.broadcast(prices.drop("product")), on=["plan_id", "metric"], how="inner")
            .withColumns({
                "line_type": F.lit(USAGE), "charge": F.col("metric"), "units": F.col("quantity"),
                "included": _prorated(F.col("included"), part, whole).cast("decimal(38,6)"),
            })
            .withColumn("billable_units", F.greatest(F.col("units") - F.col("included"), F.lit(0)).cast("decimal(38,6)"))
            .transform(with_charge_amount("billable_units", "amount_exact"))
            .transform(with_rounded_amount("amount_exact", "amount"))
        )

    return transform


def unpriced_usage(prices: DataFrame):
    """gold.period_usage rows no line can price: no plan in force, or the plan does not
    price the metric. Reported by the billing job, and a reason to refuse an export."""

    def transform(period_usage: DataFrame) -> DataFrame:
        return period_usage.join(F.broadcast(prices.select("plan_id", "metric")), on=["plan_id", "metric"],
                                 how="left_anti")

    return transform


def line_totals(lines: DataFrame) -> DataFrame:
    """Invoice lines -> lines and amount per period, status and currency (what a run reports)."""
    return (
        lines.groupBy("period", "status", "currency")
        .agg(F.count(F.lit(1)).alias("lines"), F.sum("amount").cast("decimal(38,2)").alias("amount"))
        .orderBy("period", "status", "currency")
    )


def finish_lines(columns: list[str], now: datetime):
    """Any line rows -> the gold.invoice_lines columns, with status, key and computed_at."""

    def transform(lines: DataFrame) -> DataFrame:
        return (
            lines.transform(with_status(now)).transform(with_idempotency_key)
            .withColumns({"adjusts_key": F.lit(None).cast("string"), "reason": F.lit(None).cast("string"),
                          "computed_at": F.lit(now).cast("timestamp")})
            .select(*columns)
        )

    return transform
