"""Runs jobs by name, in order, and reports progress while they run."""
from __future__ import annotations

import sys
import time
from collections import defaultdict
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Callable, TextIO

from pyspark.sql import SparkSession
from pyspark.sql.streaming import StreamingQuery

from pipelines.jobs import bronze, gold, silver
from pipelines.jobs import notify as notify_stream
from pipelines.jobs.common import JobContext
from pipelines.monitoring.listener import StreamMonitor

JOBS: dict[str, Callable[[SparkSession, JobContext], StreamingQuery]] = {
    "bronze": bronze.start,
    "silver": silver.start,
    "gold": gold.start,
    "notify": notify_stream.start,
}


def _billing(spark: SparkSession, ctx: JobContext, say: Callable[[str], None]):
    from pipelines.jobs.billing import run_billing

    return run_billing(spark, ctx, period=ctx.run.period, catalog_path=ctx.run.catalog, log=say)


def _export(spark: SparkSession, ctx: JobContext, say: Callable[[str], None]):
    from pipelines.billing.export import run_export

    exports_dir = ctx.run.exports_dir or ctx.settings.lake_root_abs / "exports"
    result = run_export(spark, ctx.lake, exports_dir=exports_dir, period=ctx.run.period)
    say(result.render())
    return result


def _plan_rules(spark: SparkSession, ctx: JobContext, say: Callable[[str], None]):
    from pipelines.jobs.plan_rules import run_plan_rules

    return run_plan_rules(spark, ctx, rules_path=ctx.run.plan_rules, catalog_path=ctx.run.catalog,
                          dry_run=ctx.run.dry_run, log=say)


def _quality(spark: SparkSession, ctx: JobContext, say: Callable[[str], None]):
    from pipelines.quality.run import run_quality_job

    return run_quality_job(spark, ctx.lake, say)


def _fraud(spark: SparkSession, ctx: JobContext, say: Callable[[str], None]):
    from pipelines.fraud.flags import run_fraud_job

    return run_fraud_job(spark, ctx.lake, say)


# Batch jobs run once over the current tables (period close, exports), after any
# streaming job named before them.
BATCH_JOBS: dict[str, Callable[[SparkSession, JobContext, Callable[[str], None]], object]] = {
    "billing": _billing,
    "export": _export,
    "plan-rules": _plan_rules,
    "quality": _quality,
    "fraud": _fraud,
}
POLL_SECONDS = 1.0


class UnknownJobError(ValueError):
    pass


@dataclass
class QueryTotals:
    batches: int = 0
    input_rows: int = 0
    seconds: float = 0.0
    dropped_duplicates: int = 0   # hot-path identity dedup (state operator)
    state_rows: int = 0           # rows in dedup state after the last batch
    max_state_rows: int = 0


@dataclass
class ProgressReporter:
    """Reads each query's progress reports (polled on the driver, no listener callbacks
    into Python) and prints one line per micro-batch; keeps totals for summaries."""

    out: TextIO = field(default_factory=lambda: sys.stderr)
    quiet: bool = False
    totals: dict[str, QueryTotals] = field(default_factory=lambda: defaultdict(QueryTotals))
    history: list[dict] = field(default_factory=list)
    results: dict[str, object] = field(default_factory=dict)   # batch jobs' results by name
    _seen: set = field(default_factory=set)

    def poll(self, query: StreamingQuery) -> None:
        for p in query.recentProgress:
            key = (p["id"], p["runId"], p["batchId"])
            if key in self._seen:
                continue
            self._seen.add(key)
            self._record(p)

    def _record(self, p: dict) -> None:
        name = p.get("name") or p["id"]
        self.history.append(p)
        t = self.totals[name]
        t.batches += 1
        rows = int(p.get("numInputRows") or 0)
        t.input_rows += rows
        duration_ms = (p.get("durationMs") or {}).get("triggerExecution", 0)
        t.seconds += duration_ms / 1000
        for op in p.get("stateOperators") or []:
            t.dropped_duplicates += int((op.get("customMetrics") or {}).get("numDroppedDuplicateRows", 0))
            t.state_rows = int(op.get("numRowsTotal", 0))
            t.max_state_rows = max(t.max_state_rows, t.state_rows)
        if not self.quiet and rows:
            rate = rows / (duration_ms / 1000) if duration_ms else 0.0
            print(f"  [{name}] batch {p['batchId']}: {rows:,} rows in {duration_ms / 1000:.1f} s "
                  f"({rate:,.0f} rows/s)", file=self.out, flush=True)


def resolve_jobs(names: list[str]) -> list[str]:
    unknown = [n for n in names if n not in JOBS and n not in BATCH_JOBS]
    if unknown:
        raise UnknownJobError(f"unknown job(s) {unknown}; known jobs: {', '.join([*JOBS, *BATCH_JOBS])}")
    return names


def _await(queries: list[StreamingQuery], reporter: ProgressReporter, *, until_all: bool,
           monitor: StreamMonitor | None = None) -> None:
    while True:
        for q in queries:
            reporter.poll(q)
            if q.exception():
                raise q.exception()
        if monitor is not None:
            monitor.flush()
        active = [q.isActive for q in queries]
        if (until_all and not any(active)) or (not until_all and not all(active)):
            break
        queries[0].awaitTermination(POLL_SECONDS)
    for q in queries:
        reporter.poll(q)
        if monitor is not None and not q.isActive:
            monitor.settle(q)
        if q.exception():
            raise q.exception()


def run_jobs(spark: SparkSession, ctx: JobContext, names: list[str], *,
             reporter: ProgressReporter | None = None, log: Callable[[str], None] | None = None) -> ProgressReporter:
    """availableNow: each job drains its input then stops, in order. Continuous: all run
    together until one stops or fails, or the process is interrupted."""
    resolve_jobs(names)
    reporter = reporter or ProgressReporter()
    say = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    if ctx.run.continuous:
        if batch := [n for n in names if n in BATCH_JOBS]:
            raise UnknownJobError(f"{', '.join(batch)}: batch job(s), not streams; run them without --continuous "
                                  "(e.g. on a schedule)")
        with StreamMonitor(spark, ctx.lake, continuous=True) as monitor:
            queries = [JOBS[n](spark, ctx) for n in names]
            say(f"streaming continuously: {', '.join(names)} (Ctrl-C to stop)")
            try:
                _await(queries, reporter, until_all=False, monitor=monitor)
            finally:
                for q in queries:
                    q.stop()
        return reporter
    # Every stream's micro-batches go to ops.stream_metrics (pipelines/monitoring).
    streams = StreamMonitor(spark, ctx.lake, continuous=False) if any(n in JOBS for n in names) else nullcontext()
    with streams as monitor:
        for name in names:
            started = time.monotonic()
            if name in BATCH_JOBS:
                reporter.results[name] = BATCH_JOBS[name](spark, ctx, say)
            else:
                say(f"{name}: processing everything available")
                query = JOBS[name](spark, ctx)
                _await([query], reporter, until_all=True, monitor=monitor)
            say(f"{name}: done in {time.monotonic() - started:.1f} s")
    return reporter
