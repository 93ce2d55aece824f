"""Audit: reconcile silver usage, invoice lines and the export ledger per account and period.

Two reconciliations, each row carrying a plain-language explanation of any difference:

- usage: what silver holds (billable usage events) against the units the usage invoice
  lines bill, per account, period, product and metric;
- amounts: what the invoice lines now say (final base and usage lines) against what the
  export ledger delivered (original lines plus adjustments), per account, period, currency.

A third check, `record_homes`, accounts for every Kafka record in bronze: the silver tables
holding it (exactly one, for a record nothing lost or doubled).

Pure transforms (DataFrame -> DataFrame) in the middle; `run_audit` reads the tables and
`timeline` returns small, bounded pandas frames for the notebook's plots.
"""
from __future__ import annotations

import io
import operator
from dataclasses import dataclass
from functools import reduce

from matplotlib.figure import Figure
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from pipelines.billing.periods import parse_period
from pipelines.core.tables import (ACCOUNT_EVENTS, BILLING_EXPORTS, BRONZE_EVENTS, COORDINATES, DAILY_USAGE,
                                   DUPLICATES, INVOICE_LINES, QUARANTINE, USAGE_EVENTS, Lake)
from pipelines.ingest.parse import with_kafka_coordinates

OK = "ok"
USAGE_KEYS = ["account_id", "period", "product", "metric"]
AMOUNT_KEYS = ["account_id", "period", "currency"]


# Where a bronze record can end up, by silver table; each holds the record's Kafka coordinates.
SILVER_HOMES = {USAGE_EVENTS: "usage", ACCOUNT_EVENTS: "account", DUPLICATES: "duplicate", QUARANTINE: "quarantine"}


class AuditError(ValueError):
    pass


def _zero() -> Column:
    return F.lit(0).cast("decimal(38,6)")


def _dec(col: Column) -> Column:
    return col.cast("decimal(38,6)")


def _text(col: Column) -> Column:
    """A decimal as plain text without trailing zeros, for explanations."""
    return F.regexp_replace(F.regexp_replace(col.cast("string"), r"(\.\d*?)0+$", "$1"), r"\.$", "")


def used_per_period(usage: DataFrame) -> DataFrame:
    """silver.usage_events -> used quantity and events per account, period, product, metric."""
    return (
        usage.withColumn("period", F.date_format("occurred_at", "yyyy-MM"))
        .groupBy(*USAGE_KEYS)
        .agg(_dec(F.sum("quantity")).alias("used"), F.count(F.lit(1)).alias("events"))
    )


def billed_per_period(lines: DataFrame) -> DataFrame:
    """gold.invoice_lines -> billed units per account, period, product, metric (usage lines)."""
    return (
        lines.filter(F.col("line_type") == "usage")
        .groupBy("account_id", "period", "product", F.col("charge").alias("metric"))
        .agg(_dec(F.sum("units")).alias("billed_units"), F.max("status").alias("status"))
    )


def reconcile_usage(billed: DataFrame):
    """used_per_period rows -> one row per key of either side, difference and explanation."""

    def transform(used: DataFrame) -> DataFrame:
        cond = [F.col(f"u.{k}").eqNullSafe(F.col(f"b.{k}")) for k in USAGE_KEYS]
        joined = used.alias("u").join(billed.alias("b"), on=cond, how="full")
        keys = {k: F.coalesce(F.col(f"u.{k}"), F.col(f"b.{k}")) for k in USAGE_KEYS}
        df = joined.select(
            *[v.alias(k) for k, v in keys.items()],
            F.coalesce(F.col("u.used"), _zero()).alias("used"),
            F.coalesce(F.col("u.events"), F.lit(0).cast("bigint")).alias("events"),
            F.coalesce(F.col("b.billed_units"), _zero()).alias("billed_units"),
            F.col("b.status").alias("status"),
        ).withColumn("difference", _dec(F.col("used") - F.col("billed_units")))
        diff = _text(F.abs(F.col("difference")))
        explanation = (
            F.when(F.col("status").isNull(),
                   F.concat(F.lit("not billed: no usage line for this metric in the period "
                                  "(billing not run for it yet, or no plan in force priced it); "),
                            diff, F.lit(" units unbilled")))
            .when(F.col("difference") == 0, F.lit(OK))
            .when(F.col("status") == "estimate",
                  F.concat(F.lit("open period: the lines are an estimate from the last billing run; "),
                           diff, F.lit(" units arrived since")))
            .when(F.col("difference") > 0,
                  F.concat(diff, F.lit(" units in silver not on the final lines: events outside a plan segment, "
                                       "or late events since the last billing run (rerun billing; "
                                       "the export then adds an adjustment)")))
            .otherwise(F.concat(diff, F.lit(" units billed that silver no longer holds: events removed after "
                                            "billing (a custom rule re-anchored, or silver lost a range: "
                                            "backfill it) ")))
        )
        return df.withColumn("explanation", explanation)

    return transform


def invoiced_per_period(lines: DataFrame) -> DataFrame:
    """gold.invoice_lines -> what the lines now say per account, period, currency (base and
    usage lines; adjustments only restate differences already in those)."""
    return (
        lines.filter(F.col("line_type") != "adjustment")
        .groupBy(*AMOUNT_KEYS)
        .agg(_dec(F.sum(F.when(F.col("status") == "final", F.col("amount")))).alias("invoiced_final"),
             _dec(F.sum(F.when(F.col("status") == "estimate", F.col("amount")))).alias("estimate"),
             F.count(F.lit(1)).alias("lines"))
    )


def exported_per_period(ledger: DataFrame) -> DataFrame:
    """gold.billing_exports -> delivered and still-staged amounts per account, period, currency."""
    return (
        ledger.groupBy(*AMOUNT_KEYS)
        .agg(_dec(F.sum(F.when(F.col("state") == "delivered", F.col("amount")))).alias("exported"),
             _dec(F.sum(F.when(F.col("state") == "staged", F.col("amount")))).alias("staged"),
             F.count(F.when(F.col("line_type") == "adjustment", 1)).alias("adjustments_exported"))
    )


def reconcile_amounts(exported: DataFrame):
    """invoiced_per_period rows -> invoiced against exported, difference and explanation."""

    def transform(invoiced: DataFrame) -> DataFrame:
        joined = invoiced.join(exported, on=AMOUNT_KEYS, how="full")
        df = joined.select(
            *AMOUNT_KEYS,
            F.coalesce("invoiced_final", _zero()).alias("invoiced_final"),
            F.coalesce("estimate", _zero()).alias("estimate"),
            F.coalesce("exported", _zero()).alias("exported"),
            F.coalesce("staged", _zero()).alias("staged"),
            F.coalesce("adjustments_exported", F.lit(0).cast("bigint")).alias("adjustments_exported"),
        ).withColumn("difference", _dec(F.col("invoiced_final") - F.col("exported")))
        diff = F.concat(_text(F.abs(F.col("difference"))), F.lit(" "), F.col("currency"))
        explanation = (
            F.when(F.col("staged") != 0,
                   F.lit("an export is staged but not delivered (crashed before its files were complete): "
                         "rerun the export to finish it"))
            .when((F.col("difference") == 0) & (F.col("estimate") != 0) & (F.col("invoiced_final") == 0),
                  F.lit("open period: an estimate, exported once the period closes"))
            .when(F.col("difference") == 0, F.lit(OK))
            .when(F.col("exported") == 0,
                  F.concat(F.lit("final lines not exported yet: "), diff, F.lit(" waits for the next export")))
            .when(F.col("invoiced_final") == 0,
                  F.concat(diff, F.lit(" exported but no final line now says so (lines recomputed away?): "
                                       "investigate before the next export")))
            .otherwise(F.concat(F.lit("the final lines moved by "), diff,
                                F.lit(" after export (late usage or plan change): the next export adds an "
                                      "adjustment line")))
        )
        return df.withColumn("explanation", explanation)

    return transform


def filter_scope(period: str | None, account_id: str | None):
    def transform(df: DataFrame) -> DataFrame:
        if period:
            df = df.filter(F.col("period") == period)
        if account_id:
            df = df.filter(F.col("account_id") == account_id)
        return df

    return transform


@dataclass
class AuditReport:
    usage: DataFrame
    amounts: DataFrame

    def problems(self) -> tuple[DataFrame, DataFrame]:
        return (self.usage.filter(F.col("explanation") != OK), self.amounts.filter(F.col("explanation") != OK))


def run_audit(spark: SparkSession, lake: Lake, *, period: str | None = None,
              account_id: str | None = None) -> AuditReport:
    period = parse_period(period) if period else None
    for name in (USAGE_EVENTS, INVOICE_LINES, BILLING_EXPORTS):
        lake.ensure(spark, name)
    scope = filter_scope(period, account_id or None)
    lines = lake.read(spark, INVOICE_LINES)
    usage = (lake.read(spark, USAGE_EVENTS).transform(used_per_period).transform(scope)
             .transform(reconcile_usage(billed_per_period(lines).transform(scope))))
    amounts = (invoiced_per_period(lines).transform(scope)
               .transform(reconcile_amounts(exported_per_period(lake.read(spark, BILLING_EXPORTS)).transform(scope))))
    return AuditReport(usage.orderBy(*USAGE_KEYS), amounts.orderBy(*AMOUNT_KEYS))


def timeline(spark: SparkSession, lake: Lake, *, account_id: str | None = None):
    """(daily usage per day and metric, billed amount per period, status and currency) as
    pandas frames for plotting. Both are bounded by the calendar (days x metrics, periods x
    currencies), not by the number of events, so reading them to the driver is safe."""
    for name in (DAILY_USAGE, INVOICE_LINES):
        lake.ensure(spark, name)
    daily = lake.read(spark, DAILY_USAGE)
    lines = lake.read(spark, INVOICE_LINES)
    if account_id:
        daily = daily.filter(F.col("account_id") == account_id)
        lines = lines.filter(F.col("account_id") == account_id)
    usage = (daily.groupBy("usage_date", "metric").agg(_dec(F.sum("quantity")).alias("quantity"))
             .orderBy("usage_date", "metric").toPandas())
    billed = (lines.filter(F.col("line_type") != "adjustment")
              .groupBy("period", "status", "currency").agg(_dec(F.sum("amount")).alias("amount"))
              .orderBy("period", "status", "currency").toPandas())
    return usage, billed


def plot_timeline(usage, billed):
    """Usage per metric over time (top) and billed amount per period (bottom): a matplotlib
    Figure. Decimals become floats here, for drawing only."""
    # The Figure API, not pyplot: no GUI backend needed headless, notebooks display it inline.
    fig = Figure(figsize=(10, 7))
    top, bottom = fig.subplots(2, 1)
    for metric, rows in usage.groupby("metric"):
        top.plot(rows["usage_date"], rows["quantity"].astype(float), marker=".", label=metric)
    top.set_title("Usage per day (gold.daily_usage)")
    top.set_ylabel("quantity")
    if len(usage):
        top.legend(fontsize="small")
    labels = [f"{p} {s} {c}" for p, s, c in zip(billed["period"], billed["status"], billed["currency"])]
    bottom.bar(range(len(billed)), billed["amount"].astype(float) if len(billed) else [],
               color=["tab:blue" if s == "final" else "tab:orange" for s in billed["status"]])
    bottom.set_xticks(range(len(billed)), labels, rotation=30, ha="right", fontsize="small")
    bottom.set_title("Billed per period (gold.invoice_lines; orange = open-period estimate)")
    bottom.set_ylabel("amount")
    fig.tight_layout()
    return fig


def figure_png(fig) -> bytes:
    """A Figure as PNG bytes: displays the same in Jupyter, Databricks and headless runs,
    whatever matplotlib backend is active."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    return buffer.getvalue()


def with_homes(landed: DataFrame):
    """Bronze records -> one row each with `homes`, the sorted names of the silver tables
    holding it (`landed`: coordinates and `home`). Empty means lost; two or more, doubled."""
    def transform(bronze: DataFrame) -> DataFrame:
        coordinates = bronze.transform(with_kafka_coordinates).select(*COORDINATES)
        return (coordinates.join(landed, on=COORDINATES, how="left")
                .groupBy(*COORDINATES).agg(F.sort_array(F.collect_list("home")).alias("homes")))

    return transform


def count_homes(records: DataFrame) -> DataFrame:
    """Records per placement: `home` is "usage", "quarantine", ... ("" lost, "a+b" doubled)."""
    return records.groupBy(F.array_join("homes", "+").alias("home")).count()


def record_homes(spark: SparkSession, lake: Lake) -> DataFrame:
    """Every bronze record with the silver tables holding it (see `with_homes`)."""
    landed = None
    for table, home in SILVER_HOMES.items():
        part = lake.read(spark, table).select(*COORDINATES, F.lit(home).alias("home"))
        landed = part if landed is None else landed.unionByName(part)
    return lake.read(spark, BRONZE_EVENTS).transform(with_homes(landed))


def properties_containing(spark: SparkSession, lake: Lake, needles) -> DataFrame:
    """Rows of the silver event tables (`table`, event_id, properties) whose properties
    hold any of `needles` as text: raw personal data that should have been hashed."""
    found = None
    for table in (USAGE_EVENTS, ACCOUNT_EVENTS, DUPLICATES):
        props = F.col("properties")
        part = (lake.read(spark, table).filter(props.isNotNull())
                .filter(reduce(operator.or_, [props.contains(n) for n in needles]))
                .select(F.lit(table).alias("table"), "event_id", "properties"))
        found = part if found is None else found.unionByName(part)
    return found
