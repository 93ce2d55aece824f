"""Runs jobs by name, in order, and reports progress while they run."""
from __future__ import annotations

import re
import sys
import time
from collections import defaultdict
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Callable, TextIO

from pyspark.errors import StreamingQueryException
from pyspark.sql import SparkSession
from pyspark.sql.streaming import StreamingQuery

from pipelines.core.context import JobContext
from pipelines.monitoring.listener import StreamMonitor
from pipelines.wiring import batches, streams

# The jobs by kind, from the wiring table (pipelines/wiring.py). Batch jobs run once over
# the current tables (period close, exports), after any streaming job named before them.
JOBS: dict[str, Callable[[SparkSession, JobContext], StreamingQuery]] = streams()
BATCH_JOBS: dict[str, Callable[[SparkSession, JobContext, Callable[[str], None]], object]] = batches()
POLL_SECONDS = 1.0
# Continuous mode restarts a failed stream from its checkpoint, as a Databricks continuous
# job does: Spark 4.1.1 ends a bronze query that replays a batch after a crash with an NPE
# in KafkaMicroBatchStream.metrics (apache/spark#55236), and the next start goes on. More
# than RESTART_BUDGET failures of one stream inside RESTART_WINDOW_S is a real fault: raise.
RESTART_BUDGET = 3
RESTART_WINDOW_S = 600.0
RESTART_BACKOFF_S = 5.0


@dataclass
class RestartPolicy:
    """How many times a stream may fail and be restarted (failure times per stream)."""

    budget: int = RESTART_BUDGET
    window_s: float = RESTART_WINDOW_S
    failures: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))

    def allow(self, name: str, now: float) -> bool:
        """Record a failure of `name` at `now`; True while it stays within the budget."""
        recent = [t for t in self.failures[name] if now - t <= self.window_s] + [now]
        self.failures[name] = recent
        return len(recent) <= self.budget


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


def _await(queries: list[StreamingQuery], reporter: ProgressReporter, *,
           monitor: StreamMonitor | None = None) -> None:
    """Until every query has stopped (availableNow), re-raising a failure."""
    while True:
        for q in queries:
            reporter.poll(q)
            if q.exception():
                raise q.exception()
        if monitor is not None:
            monitor.flush()
        if not any(q.isActive for q in queries):
            break
        queries[0].awaitTermination(POLL_SECONDS)
    for q in queries:
        reporter.poll(q)
        if monitor is not None and not q.isActive:
            monitor.settle(q)
        if q.exception():
            raise q.exception()


def _reason(exc: Exception) -> str:
    """One line for a stream failure: the innermost `SomeError: message` line if the text
    carries a traceback (a Python foreachBatch), else its first line."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    raised = [line for line in lines if re.match(r"[\w.]*(Error|Exception)\b", line)]
    return ((raised or lines or [type(exc).__name__])[-1 if raised else 0])[:200]


def _await_continuous(spark: SparkSession, ctx: JobContext, queries: dict[str, StreamingQuery],
                      reporter: ProgressReporter, monitor: StreamMonitor, say: Callable[[str], None],
                      policy: RestartPolicy) -> None:
    """Until a stream stops without error (or one fails past the policy's budget): a failed
    stream is restarted from its checkpoint, in place in `queries`."""
    while True:
        for name, q in list(queries.items()):
            reporter.poll(q)
            exc = q.exception()
            if exc is None:
                if not q.isActive:
                    return
                continue
            if not policy.allow(name, time.monotonic()):
                raise exc
            say(f"{name}: stream failed ({_reason(exc)}); restarting from its checkpoint in "
                f"{RESTART_BACKOFF_S:.0f} s ({len(policy.failures[name])}/{policy.budget} in "
                f"{policy.window_s / 60:.0f} min)")
            time.sleep(RESTART_BACKOFF_S)
            queries[name] = JOBS[name](spark, ctx)
        monitor.flush()
        try:
            next(iter(queries.values())).awaitTermination(POLL_SECONDS)
        except StreamingQueryException:
            pass  # seen through q.exception() on the next pass, like any other stream's


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
            queries = {n: JOBS[n](spark, ctx) for n in names}
            say(f"streaming continuously: {', '.join(names)} (Ctrl-C to stop)")
            try:
                _await_continuous(spark, ctx, queries, reporter, monitor, say, RestartPolicy())
            finally:
                for q in queries.values():
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
                _await([query], reporter, monitor=monitor)
            say(f"{name}: done in {time.monotonic() - started:.1f} s")
    return reporter
