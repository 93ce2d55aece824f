"""silver -> gold.period_usage and gold.invoice_lines: the billing close (a batch job).

Every run recomputes the periods in scope from silver's current state and merges the
result in: a line whose numbers did not move is left untouched (rerunning changes
nothing), a line that moved keeps its idempotency key (the export turns the difference
into an adjustment if the period was already exported), and a line that no longer exists
(a late plan change moved a segment) is zeroed rather than deleted, for the same reason.
Closed periods come out `final`; the open period is a running `estimate`.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Callable

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from pipelines.billing.catalog import load_catalog, plans_frame, prices_frame
from pipelines.billing.invoice import (ADJUSTMENT, PERIOD_USAGE_KEYS, aggregate_period_usage, base_lines, finish_lines,
                                       line_totals, unpriced_usage, usage_lines)
from pipelines.billing.periods import (filter_plan_events, next_period_start, parse_period, period_segments,
                                       plan_changes, plan_segments, with_plan_rank, with_segment)
from pipelines.core.context import JobContext
from pipelines.core.tables import ACCOUNT_EVENTS, INVOICE_LINES, PERIOD_USAGE, USAGE_EVENTS, spec

# What makes a recomputed line different from the stored one.
_LINE_VALUES = ["segment_end", "units", "included", "billable_units", "amount", "currency", "status"]


@dataclass
class BillingResult:
    period: str | None
    lines: list[dict] = field(default_factory=list)      # per period, status, currency: lines and amount
    unpriced: list[dict] = field(default_factory=list)   # usage no plan prices, per period and reason
    seconds: float = 0.0

    def render(self) -> str:
        out = [f"billing: {'period ' + self.period if self.period else 'all periods'}"]
        if not self.lines:
            out.append("  no invoice lines")
        for r in self.lines:
            out.append(f"  {r['period']}  {r['status']:<8}  {r['lines']:>6,} lines  {r['amount']:>14} {r['currency']}")
        for r in self.unpriced:
            out.append(f"  WARNING {r['period']}: {r['rows']:,} usage rows ({r['quantity']} units) not priced: {r['reason']}")
        return "\n".join(out)


def _scope(period: str | None, alias: str | None = "t") -> str:
    column = f"{alias}.period" if alias else "period"
    return f"{column} = '{period}'" if period else "true"


def _differs(source: DataFrame, stored: DataFrame, keys: list[str], values: list[str],
             removable: str = "true") -> bool:
    """Whether a MERGE of source into stored would change anything: a source row new or
    different, or a stored row the source no longer has. Checked first because a MERGE
    that changes nothing still commits a table version, and a rerun must leave none.
    `removable`: which stored rows the MERGE acts on when the source lacks them."""
    cols = keys + values
    s, t = source.select(*cols).alias("s"), stored.select(*cols).alias("t")
    same_row = [F.col(f"s.{c}").eqNullSafe(F.col(f"t.{c}")) for c in cols]
    same_key = [F.col(f"s.{c}").eqNullSafe(F.col(f"t.{c}")) for c in keys]
    new_or_changed = s.join(t, on=same_row, how="left_anti")
    gone = t.filter(removable).join(s, on=same_key, how="left_anti")
    return not (new_or_changed.isEmpty() and gone.isEmpty())


def compute(spark: SparkSession, ctx: JobContext, *, now: datetime, period: str | None = None,
            catalog_path: Path | None = None) -> tuple[DataFrame, DataFrame, DataFrame]:
    """(period_usage, invoice lines, unpriced usage) for the periods in scope, unwritten."""
    lake = ctx.lake
    catalog = load_catalog(catalog_path)
    plans = plans_frame(spark, catalog)
    prices = prices_frame(spark, catalog)
    segments = (
        lake.read(spark, ACCOUNT_EVENTS).transform(filter_plan_events).transform(with_plan_rank(plans))
        .transform(plan_changes).transform(plan_segments).transform(period_segments(now, period))
    ).localCheckpoint()
    horizon_end = next_period_start(F.lit(now).cast("timestamp"))
    usage = lake.read(spark, USAGE_EVENTS).filter(F.col("occurred_at") < horizon_end)
    if period:
        usage = usage.filter(F.date_format("occurred_at", "yyyy-MM") == period)
    period_usage = usage.transform(with_segment(segments)).transform(aggregate_period_usage(now)).localCheckpoint()
    columns = spec(INVOICE_LINES).column_names
    lines = (
        segments.transform(base_lines(plans)).transform(finish_lines(columns, now))
        .unionByName(period_usage.filter(F.col("plan_id").isNotNull())
                     .transform(usage_lines(prices)).transform(finish_lines(columns, now)))
    ).localCheckpoint()
    unpriced = period_usage.transform(unpriced_usage(prices)).withColumn(
        "reason", F.when(F.col("plan_id").isNull(), F.lit("no plan in force at occurred_at"))
        .otherwise(F.concat(F.lit("plan "), F.col("plan_id"), F.lit(" does not price "), F.col("metric"))))
    return period_usage.select(*spec(PERIOD_USAGE).column_names), lines, unpriced


def run_billing(spark: SparkSession, ctx: JobContext, *, period: str | None = None, now: datetime | None = None,
                catalog_path: Path | None = None, log: Callable[[str], None] | None = None) -> BillingResult:
    say = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    started = datetime.now(UTC)
    now = now or started
    period = parse_period(period)
    lake = ctx.lake
    for table in (ACCOUNT_EVENTS, USAGE_EVENTS, PERIOD_USAGE, INVOICE_LINES):
        lake.ensure(spark, table)
    say(f"billing: computing {'period ' + period if period else 'every period'} as of {now:%Y-%m-%d %H:%M:%S} UTC")
    period_usage, lines, unpriced = compute(spark, ctx, now=now, period=period, catalog_path=catalog_path)

    usage_cols = spec(PERIOD_USAGE).column_names
    stored_usage = lake.read(spark, PERIOD_USAGE).filter(_scope(period, alias=None))
    if _differs(period_usage, stored_usage, PERIOD_USAGE_KEYS, ["quantity", "event_count", "segment_end"]):
        same_usage = " AND ".join(f"t.{k} <=> s.{k}" for k in PERIOD_USAGE_KEYS)
        (lake.delta(spark, PERIOD_USAGE).alias("t").merge(period_usage.alias("s"), same_usage)
         .whenMatchedUpdate(condition="NOT (t.quantity <=> s.quantity AND t.event_count <=> s.event_count "
                                      "AND t.segment_end <=> s.segment_end)",
                            set={c: f"s.{c}" for c in usage_cols})
         .whenNotMatchedInsertAll()
         .whenNotMatchedBySourceDelete(condition=_scope(period))
         .execute())
        say("billing: gold.period_usage merged")
    else:
        say("billing: gold.period_usage unchanged")

    line_cols = spec(INVOICE_LINES).column_names
    stored_lines = lake.read(spark, INVOICE_LINES).filter(_scope(period, alias=None)).filter(F.col("line_type") != ADJUSTMENT)
    # Lines a recomputation no longer produces are zeroed, once.
    if _differs(lines, stored_lines, ["idempotency_key"], _LINE_VALUES, removable="amount <> 0"):
        changed = "NOT (" + " AND ".join(f"t.{c} <=> s.{c}" for c in _LINE_VALUES) + ")"
        (lake.delta(spark, INVOICE_LINES).alias("t").merge(lines.alias("s"), "t.idempotency_key = s.idempotency_key")
         .whenMatchedUpdate(condition=changed, set={c: f"s.{c}" for c in line_cols})
         .whenNotMatchedInsertAll()
         .whenNotMatchedBySourceUpdate(
             condition=f"{_scope(period)} AND t.line_type <> '{ADJUSTMENT}' AND t.amount <> 0",
             set={"units": "0", "billable_units": "CASE WHEN t.billable_units IS NULL THEN NULL ELSE 0 END",
                  "amount": "0", "computed_at": F.lit(now).cast("timestamp")})
         .execute())
        say("billing: gold.invoice_lines merged")
    else:
        say("billing: gold.invoice_lines unchanged")

    # Reporting at the job's edge: a handful of aggregate rows.
    current = lake.read(spark, INVOICE_LINES)
    if period:
        current = current.filter(F.col("period") == period)
    summary = current.transform(line_totals).collect()
    missing = (unpriced.groupBy("period", "reason")
               .agg(F.count(F.lit(1)).alias("rows"), F.sum("quantity").alias("quantity"))
               .orderBy("period", "reason").collect())
    result = BillingResult(period=period, lines=[r.asDict() for r in summary], unpriced=[r.asDict() for r in missing],
                           seconds=(datetime.now(UTC) - started).total_seconds())
    say(result.render())
    return result
