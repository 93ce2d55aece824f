"""The export gate: what must hold before invoice lines leave the lakehouse.

Two kinds of checks, each a pure function returning a DataFrame of failures (empty = pass):

- `reconcile_period_usage`: per account, period and metric, the quantity gold.period_usage
  bills must equal the quantity of the silver.usage_events whose occurred_at falls in the
  period (nothing billed twice, nothing left out);
- `critical_line_failures`: the critical checks on invoice lines, listed as data in
  `CRITICAL_CHECKS` (name, description, the SQL predicate a failing line matches), so the
  quality suite can take them over without rewriting them.

`check_export_gate` runs, through the quality suites' GX adapter, every critical check of
the quality suites gated on `export` (these two among them, as the derived datasets
`period_usage_mismatches` and `invoice_line_failures`, plus silver's checks on the periods'
events) over the periods an export would carry, and raises `ExportRefused` (listing the
first failures of each check) before anything is written.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from functools import reduce

from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from pipelines.core.tables import Lake

INVOICE_LINES = "gold.invoice_lines"
PERIOD_USAGE = "gold.period_usage"
USAGE_EVENTS = "silver.usage_events"

# Digits of each currency's minor unit (ISO 4217); every other currency has 2.
MINOR_UNIT_DIGITS: dict[str, int] = {
    **dict.fromkeys(("BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG", "RWF", "UGX", "VND", "VUV",
                     "XAF", "XOF", "XPF"), 0),
    **dict.fromkeys(("BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"), 3),
}
DEFAULT_MINOR_UNIT_DIGITS = 2


def minor_unit_digits(currency: str | None) -> int:
    return MINOR_UNIT_DIGITS.get((currency or "").upper(), DEFAULT_MINOR_UNIT_DIGITS)


def _by_minor_digits(currency: str, at: Callable[[int], str]) -> str:
    """SQL CASE picking `at(digits)` by the currency's minor-unit digits (Spark's round and
    casts need a literal scale, so each scale gets its own branch)."""
    branches = []
    for digits in sorted(set(MINOR_UNIT_DIGITS.values())):
        codes = ", ".join(f"'{c}'" for c, d in sorted(MINOR_UNIT_DIGITS.items()) if d == digits)
        branches.append(f"WHEN upper({currency}) IN ({codes}) THEN {at(digits)}")
    return f"CASE {' '.join(branches)} ELSE {at(DEFAULT_MINOR_UNIT_DIGITS)} END"


def money_string(amount: str, currency: str) -> Column:
    """A decimal amount as text with exactly the currency's minor digits: 41.5 USD -> '41.50'."""
    return F.expr(_by_minor_digits(currency, lambda d: f"CAST(CAST({amount} AS decimal(38,{d})) AS string)"))


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
              "amount <> " + _by_minor_digits("currency", lambda d: f"round(amount, {d})")),
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


def period_bounds(periods: list[str]) -> list[tuple[str, datetime, datetime]]:
    """'2024-05' -> ('2024-05', 2024-05-01T00:00Z, 2024-06-01T00:00Z): periods are UTC calendar months."""
    out = []
    for period in sorted(set(periods)):
        year, month = (int(p) for p in period.split("-"))
        start = datetime(year, month, 1, tzinfo=UTC)
        end = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=UTC)
        out.append((period, start, end))
    return out


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


def bounds_frame(spark: SparkSession, periods: list[str]) -> DataFrame:
    """(period, period_start, period_end) rows for `periods`, as literals (no Python-RDD scan)."""
    structs = [F.struct(F.lit(p).alias("period"), F.lit(s).cast("timestamp").alias("period_start"),
                        F.lit(e).cast("timestamp").alias("period_end")) for p, s, e in period_bounds(periods)]
    return spark.range(1).select(F.inline(F.array(*structs)))


class ExportRefused(RuntimeError):
    """The gate failed: nothing was exported. `failures` maps each failed check to the
    first few failures it found, as text."""

    def __init__(self, periods: list[str], failures: dict[str, list[str]]):
        self.periods = list(periods)
        self.failures = failures
        lines = [f"export refused for period(s) {', '.join(self.periods)}: "
                 f"{len(failures)} check(s) failed, nothing was written"]
        for check, shown in failures.items():
            lines.append(f"- {check}:")
            lines += [f"    {item}" for item in shown]
        super().__init__("\n".join(lines))


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


def gate_inputs(spark: SparkSession, lake: Lake, periods: list[str], *,
                extra_lines: DataFrame | None = None) -> dict[str, DataFrame]:
    """The tables the gate looks at, cut to `periods`: silver events by occurred_at, gold by
    period, and the invoice lines plus `extra_lines` (adjustments about to be written)."""
    for name in (INVOICE_LINES, PERIOD_USAGE, USAGE_EVENTS):
        lake.ensure(spark, name)
    bounds = period_bounds(periods)
    lo, hi = bounds[0][1], bounds[-1][2]
    lines = lake.read(spark, INVOICE_LINES).filter(F.col("period").isin(*periods))
    if extra_lines is not None:
        lines = lines.unionByName(extra_lines.select(*lines.columns))
    return {
        USAGE_EVENTS: lake.read(spark, USAGE_EVENTS)
        .filter((F.col("occurred_at") >= F.lit(lo)) & (F.col("occurred_at") < F.lit(hi))),
        PERIOD_USAGE: lake.read(spark, PERIOD_USAGE).filter(F.col("period").isin(*periods)),
        INVOICE_LINES: lines,
    }


def gate_failures(spark: SparkSession, lake: Lake, periods: list[str], *, now: datetime | None = None,
                  extra_lines: DataFrame | None = None) -> DataFrame:
    """Every failure of the reconciliation and the critical line checks for `periods`, as
    (check, detail) text rows."""
    inputs = gate_inputs(spark, lake, periods, extra_lines=extra_lines)
    mismatches = reconcile_period_usage(inputs[PERIOD_USAGE], inputs[USAGE_EVENTS], bounds_frame(spark, periods))
    critical = critical_line_failures(inputs[INVOICE_LINES], now=now)
    return mismatch_details(mismatches).unionByName(line_failure_details(critical))


def check_export_gate(spark: SparkSession, lake: Lake, periods: list[str], *, now: datetime | None = None,
                      extra_lines: DataFrame | None = None, max_shown: int = 5) -> None:
    """Raise ExportRefused when a critical check of the quality suites gated on `export`
    fails for `periods`: gold reconciles with silver, the critical line checks, and the
    silver checks over the periods' events (the quality suites, run through the GX adapter).
    `extra_lines` are lines about to be written (adjustments)."""
    if not periods:
        return
    from pipelines.quality.run import Inputs, gate_refusals

    inputs = Inputs.of(spark, lake, tables=gate_inputs(spark, lake, periods, extra_lines=extra_lines),
                       periods=bounds_frame(spark, periods), now=now)
    failures = gate_refusals(inputs, gate="export", max_shown=max_shown)
    if failures:
        raise ExportRefused(sorted(set(periods)), failures)
