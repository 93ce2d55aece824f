"""Named derived datasets the suites can check, for what no single table shows: one row
per problem, each with a `detail` text (and a `check` column when one dataset serves
several named checks). A suite expects them to be empty.

Each is a pure function of the input tables, so the quality job checks whole tables and
the export gate checks the same things cut to the periods it exports.
"""
from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Protocol

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from pipelines.core.tables import (ACCOUNT_EVENTS, COORDINATES, DAILY_USAGE, INVOICE_LINES, PERIOD_USAGE, QUARANTINE,
                                   USAGE_EVENTS)
from pipelines.ingest.gold import DAILY_KEYS, aggregate_daily_usage
from pipelines.quality.checks import (critical_line_failures, line_failure_details, mismatch_details,
                                      reconcile_period_usage)


class Tables(Protocol):
    periods: DataFrame | None
    now: object

    def table(self, name: str) -> DataFrame: ...


def quarantine_leaks(t: Tables) -> DataFrame:
    """Silver rows whose Kafka record is in silver.quarantine: a bad record that leaked."""
    kept = (t.table(USAGE_EVENTS).select("account_id", "event_id", *COORDINATES, F.lit("usage").alias("kind"))
            .unionByName(t.table(ACCOUNT_EVENTS)
                         .select("account_id", "event_id", *COORDINATES, F.lit("account").alias("kind"))))
    bad = t.table(QUARANTINE).select(*COORDINATES, "reason")
    return kept.join(bad, on=COORDINATES, how="inner").select(
        F.concat(F.lit("silver "), F.col("kind"), F.lit(" event "), F.coalesce("event_id", F.lit("null")),
                 F.lit(" (account "), F.coalesce("account_id", F.lit("null")), F.lit(") is quarantined record "),
                 F.concat_ws(":", *COORDINATES), F.lit(" ("), F.col("reason"), F.lit(")")).alias("detail"))


def daily_usage_mismatches(t: Tables) -> DataFrame:
    """Days where gold.daily_usage and silver.usage_events disagree on quantity or count,
    either side missing counting as zero."""
    zero = F.lit(Decimal(0)).cast("decimal(38,6)")
    silver = t.table(USAGE_EVENTS).transform(aggregate_daily_usage).select(
        *DAILY_KEYS, F.col("quantity").alias("silver_quantity"), F.col("event_count").alias("silver_count"))
    gold = t.table(DAILY_USAGE).select(
        *DAILY_KEYS, F.col("quantity").alias("gold_quantity"), F.col("event_count").alias("gold_count"))
    on = [gold[k].eqNullSafe(silver[k]) for k in DAILY_KEYS]
    joined = gold.join(silver, on=on, how="full_outer").select(
        *[F.coalesce(gold[k], silver[k]).alias(k) for k in DAILY_KEYS],
        F.coalesce("gold_quantity", zero).alias("gold_quantity"), F.coalesce("silver_quantity", zero).alias("silver_quantity"),
        F.coalesce("gold_count", F.lit(0)).alias("gold_count"), F.coalesce("silver_count", F.lit(0)).alias("silver_count"))
    return joined.filter((F.col("gold_quantity") != F.col("silver_quantity"))
                         | (F.col("gold_count") != F.col("silver_count"))).select(
        F.concat(F.lit("account "), F.coalesce("account_id", F.lit("null")), F.lit(", "),
                 F.coalesce("product", F.lit("null")), F.lit("/"), F.coalesce("metric", F.lit("null")), F.lit(", "),
                 F.coalesce(F.col("usage_date").cast("string"), F.lit("null")),
                 F.lit(": gold.daily_usage "), F.col("gold_quantity").cast("string"), F.lit(" in "),
                 F.col("gold_count").cast("string"), F.lit(" event(s), silver.usage_events "),
                 F.col("silver_quantity").cast("string"), F.lit(" in "), F.col("silver_count").cast("string"),
                 F.lit(" event(s)")).alias("detail"))


def period_usage_mismatches(t: Tables) -> DataFrame:
    """Account/period/metric where gold.period_usage does not bill exactly silver's quantity."""
    mismatches = reconcile_period_usage(t.table(PERIOD_USAGE), t.table(USAGE_EVENTS), t.periods)
    return mismatch_details(mismatches)


def invoice_line_failures(t: Tables) -> DataFrame:
    """One row per (critical line check, failing invoice line), `check` naming the check."""
    return line_failure_details(critical_line_failures(t.table(INVOICE_LINES), now=t.now))


DATASETS: dict[str, Callable[[Tables], DataFrame]] = {
    "quarantine_leaks": quarantine_leaks,
    "daily_usage_mismatches": daily_usage_mismatches,
    "period_usage_mismatches": period_usage_mismatches,
    "invoice_line_failures": invoice_line_failures,
}
