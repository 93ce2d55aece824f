"""The export gate: what must hold before invoice lines leave the lakehouse.

The checks themselves are the quality package's (pipelines/quality/checks.py:
`reconcile_period_usage`, and `critical_line_failures` over `CRITICAL_CHECKS`).

`check_export_gate` runs, through the quality suites' GX adapter, every critical check of
the quality suites gated on `export` (these two among them, as the derived datasets
`period_usage_mismatches` and `invoice_line_failures`, plus silver's checks on the periods'
events) over the periods an export would carry, and raises `ExportRefused` (listing the
first failures of each check) before anything is written.
"""
from __future__ import annotations

from datetime import UTC, datetime

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from pipelines.core.tables import INVOICE_LINES, PERIOD_USAGE, USAGE_EVENTS, Lake
from pipelines.quality.checks import (critical_line_failures, line_failure_details, mismatch_details,
                                      reconcile_period_usage)
from pipelines.quality.run import Inputs, gate_refusals


def period_bounds(periods: list[str]) -> list[tuple[str, datetime, datetime]]:
    """'2024-05' -> ('2024-05', 2024-05-01T00:00Z, 2024-06-01T00:00Z): periods are UTC calendar months."""
    out = []
    for period in sorted(set(periods)):
        year, month = (int(p) for p in period.split("-"))
        start = datetime(year, month, 1, tzinfo=UTC)
        end = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=UTC)
        out.append((period, start, end))
    return out


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
    inputs = Inputs.of(spark, lake, tables=gate_inputs(spark, lake, periods, extra_lines=extra_lines),
                       periods=bounds_frame(spark, periods), now=now)
    failures = gate_refusals(inputs, gate="export", max_shown=max_shown)
    if failures:
        raise ExportRefused(sorted(set(periods)), failures)
