"""Where a silver micro-batch spends its time, line by line.

Run by hand from the repository root, with the local broker up:

    .venv/bin/python -m bench.profile_silver                  # 3,000 events, 6 micro-batches
    .venv/bin/python -m bench.profile_silver --events 60000 --batches 6

The silver writer (`pipelines/ingest/silver.py`) builds lazy plans and runs them at a few
actions: local checkpoints, emptiness checks, Delta MERGEs and appends, table reads. This
script produces events with the project generator into a fresh one-partition topic, runs
bronze in `--batches` micro-batches, then runs silver over them one bronze version per
micro-batch with every such action timed and keyed by the silver.py line that called it.
Everything a batch does happens inside one of those calls or in the Python between them,
so the table adds up to the batch's wall time ("between actions" is the rest).

The first micro-batch pays JIT and cache warm-up, so figures are for the later ones
(--skip-first, default 1). Nothing is timed twice: an action called inside another timed
action is part of the outer one.

`--lean` then runs, in the same session and over the same bronze versions, the lean path
the issue measured: the same silver input and hot dedup state, and a foreachBatch that only
appends the good rows and the quarantine rows (side by side, as silver's steady state
does). It also times the floor of any micro-batch here: a trivial Spark job and a 500-row
Delta append. Silver's batch against the lean batch, both from one run, is the ratio to
read; the floor times silver's job count says what a batch of that shape cannot go under.
"""
from __future__ import annotations

import argparse
import inspect
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bench.bench_common import delete_topic, positive_int, say
from devtools import kafka_local
from devtools.generator import GeneratorOptions, generate
from devtools.sender import send
from pipelines.core import kafka_topics
from pipelines.ingest import silver as silver_job
from pipelines.core.context import JobContext, RunOptions
from pipelines.runner import ProgressReporter, run_jobs
from pipelines.core.session import build_spark
from pipelines.core.settings import Settings
from pipelines.ingest import silver_plan

_PACKAGE_PARENT = Path(kafka_local.__file__).resolve().parent.parent


def profile_parser(description: str, top: int = 25) -> argparse.ArgumentParser:
    """The arguments of the micro-batch profiles (this script and profile_notify.py)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--events", type=positive_int, default=3000)
    p.add_argument("--batches", type=positive_int, default=6, help="bronze versions = silver micro-batches")
    p.add_argument("--accounts", type=positive_int, default=50)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--span-hours", type=float, default=48.0,
                   help="event-time span of the generated stream, ending now (a live stream: a few hours; "
                        "older events are the ones silver looks up)")
    p.add_argument("--skip-first", type=int, default=1, help="warm-up micro-batches left out of the figures")
    p.add_argument("--top", type=positive_int, default=top, help="lines shown")
    p.add_argument("--lean", action="store_true",
                   help="also time the lean path (input, dedup state, two appends) and the per-job floor")
    p.add_argument("--conf", action="append", default=[], metavar="KEY=VALUE",
                   help="a Spark setting for the profiled session (repeatable), to try one out")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return profile_parser(__doc__.split("\n\n")[0]).parse_args(argv)


def bronze_in_batches(spark, settings: Settings, args: argparse.Namespace) -> int:
    """--events generator events into settings.events_topic (a fresh one-partition topic), then
    bronze over them in --batches micro-batches, so bronze has that many versions; returns
    the events sent."""
    kafka_topics.ensure_topics(settings, {settings.events_topic: 1})
    options = GeneratorOptions(count=args.events, accounts=args.accounts, seed=args.seed, now=datetime.now(UTC),
                               span=timedelta(hours=args.span_hours))
    sent = send(generate(options), settings, topic=settings.events_topic)
    say(f"produced {sent:,} events into {settings.events_topic}")
    per_trigger = -(-sent // args.batches)
    run_jobs(spark, JobContext.from_settings(settings, RunOptions(max_offsets_per_trigger=per_trigger)),
             ["bronze"], reporter=ProgressReporter(quiet=True), log=say)
    return sent


@dataclass
class Timings:
    """Wall seconds per (batch, calling line), and per batch in total."""
    by_line: dict[tuple[int, str], list[float]] = field(default_factory=lambda: defaultdict(list))
    batch_total: dict[int, float] = field(default_factory=dict)
    batch_jobs: dict[int, tuple[int, int]] = field(default_factory=dict)   # (jobs, stages)
    current_batch: int | None = None
    depth: int = 0


def _caller(source_files: tuple[str, ...]) -> str:
    """`function:line  code` of the innermost frame in one of `source_files` on the stack (with
    the file named after it when there are several)."""
    for frame in inspect.stack(context=1)[2:]:
        if frame.filename in source_files:
            code = (frame.code_context or [""])[0].strip()
            where = f"{frame.function}:{frame.lineno}  {code[:70]}"
            if len(source_files) > 1:
                # Named from the package's parent, wherever the package was imported from.
                where += f"  [{Path(frame.filename).resolve().relative_to(_PACKAGE_PARENT)}]"
            return where
    return "(outside the profiled files)"


@contextmanager
def timed_actions(timings: Timings, source_files: tuple[str, ...]):
    """Wrap the Spark actions the profiled files call so each records its wall time under its caller."""
    from delta.tables import DeltaMergeBuilder, DeltaTable
    from pyspark.sql.classic.dataframe import DataFrame
    from pyspark.sql.readwriter import DataFrameReader, DataFrameWriter

    targets = [(DataFrame, "localCheckpoint"), (DataFrame, "isEmpty"), (DataFrame, "count"),
               (DataFrame, "first"), (DataFrame, "collect"), (DataFrame, "unpersist"),
               (DeltaMergeBuilder, "execute"), (DataFrameWriter, "save"), (DataFrameReader, "load"),
               (DeltaTable, "forPath")]
    originals = [(cls, name, cls.__dict__[name]) for cls, name in targets]

    def wrap(fn):
        def wrapper(*args, **kwargs):
            if timings.current_batch is None or timings.depth:
                return fn(*args, **kwargs)
            where = _caller(source_files)
            timings.depth += 1
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                timings.depth -= 1
                timings.by_line[(timings.current_batch, where)].append(time.perf_counter() - started)
        return wrapper

    for cls, name, fn in originals:
        setattr(cls, name, classmethod(wrap(fn.__func__)) if isinstance(fn, classmethod) else wrap(fn))
    try:
        yield
    finally:
        for cls, name, fn in originals:
            setattr(cls, name, fn)


@contextmanager
def timed_batches(timings: Timings, cls=silver_job.SilverBatchWriter, method: str = "write_batch"):
    """A foreachBatch body's method `(self, batch_df, batch_id, ...)` with the batch id
    recorded and the whole call timed."""
    original = getattr(cls, method)

    def timed(self, batch_df, batch_id, *rest):
        sc = batch_df.sparkSession.sparkContext
        before = _last_job_id(sc)
        timings.current_batch = batch_id
        started = time.perf_counter()
        try:
            return original(self, batch_df, batch_id, *rest)
        finally:
            timings.batch_total[batch_id] = time.perf_counter() - started
            timings.current_batch = None
            after = _last_job_id(sc)
            jobs = range(before + 1, after)
            timings.batch_jobs[batch_id] = (len(jobs), sum(len(info.stageIds) for j in jobs
                                                           if (info := sc.statusTracker().getJobInfo(j))))
            if os.environ.get("PROFILE_STAGES") and batch_id == 3:
                for j in jobs:
                    info = sc.statusTracker().getJobInfo(j)
                    names = [(st.name if (st := sc.statusTracker().getStageInfo(i)) else "?") for i in info.stageIds]
                    print("JOB", j, names, flush=True)

    setattr(cls, method, timed)
    try:
        yield
    finally:
        setattr(cls, method, original)


def _last_job_id(sc) -> int:
    """The id of a marker job run now (job ids are sequential, whichever thread runs them):
    the jobs between two markers are the batch's, its parallel writes included. Not timed."""
    group = "profile-marker"
    saved = {k: sc.getLocalProperty(k) for k in ("spark.jobGroup.id", "spark.job.description")}
    sc.setLocalProperty("spark.jobGroup.id", group)
    try:
        sc.parallelize([0], 1).count()
        return max(sc.statusTracker().getJobIdsForGroup(group))
    finally:
        for k, v in saved.items():
            sc.setLocalProperty(k, v)


def batches_with_rows(timings: Timings, entry: str = "write_batch:") -> list[int]:
    """The timed batch ids in which some line beyond the foreachBatch body's entry method ran.
    Stateful streams also run empty micro-batches (to move the watermark), and a change feed
    can bring a batch with nothing to do: only the entry's own lines ran in those."""
    with_rows = {batch for batch, where in timings.by_line if not where.startswith(entry)}
    return sorted(b for b in timings.batch_total if b in with_rows)


def report(timings: Timings, skip_first: int, top: int, job: str = "silver", entry: str = "write_batch:") -> str:
    batches = batches_with_rows(timings, entry)[skip_first:]
    if not batches:
        return "no micro-batch with rows left after --skip-first"
    lines: dict[str, list[float]] = defaultdict(list)
    calls: dict[str, int] = defaultdict(int)
    for (batch, where), seconds in timings.by_line.items():
        if batch in batches:
            lines[where].append(sum(seconds))
            calls[where] += len(seconds)
    per_batch = {where: sum(v) / len(batches) for where, v in lines.items()}
    total = statistics.mean(timings.batch_total[b] for b in batches)
    covered = sum(per_batch.values())
    out = [f"{job} micro-batches with rows profiled: {len(batches)} (batch ids {batches[0]}..{batches[-1]}), "
           f"wall per batch: mean {total:.2f} s, median {statistics.median(timings.batch_total[b] for b in batches):.2f} s",
           f"Spark jobs per batch: median {statistics.median(timings.batch_jobs[b][0] for b in batches):.0f} "
           f"({statistics.median(timings.batch_jobs[b][1] for b in batches):.0f} stages, skipped ones included)"
           if all(b in timings.batch_jobs for b in batches) else "",
           "", "| s per batch | share | calls per batch | line |", "|---:|---:|---:|---|"]
    for where, seconds in sorted(per_batch.items(), key=lambda kv: -kv[1])[:top]:
        out.append(f"| {seconds:.2f} | {seconds / total:.0%} | {calls[where] / len(batches):.1f} | `{where}` |")
    out.append(f"| {total - covered:.2f} | {(total - covered) / total:.0%} | | between actions (Python, plan building) |")
    return "\n".join(out)


class LeanWriter:
    """The lean path's foreachBatch: good rows to one table, quarantine rows to another, both
    appended side by side from one materialised batch; no history, no rules, no record."""

    def __init__(self, root: Path):
        self.root = root
        self.with_rows: set[int] = set()

    def __call__(self, batch_df, batch_id: int) -> None:
        from pipelines.ingest import dedup as D
        from pipelines.ingest.parse import filter_bad, filter_good

        batch = batch_df.localCheckpoint(eager=True)
        if batch.isEmpty():   # a batch that only moves the watermark
            return
        self.with_rows.add(batch_id)
        copies = batch.transform(D.filter_copy_claims)
        good = silver_plan.select_for(copies.transform(filter_good), silver_plan.USAGE)
        bad = copies.transform(filter_bad).transform(silver_plan.to_quarantine_rows)

        def append(rows, name):
            return lambda: rows.write.format("delta").mode("append").save(str(self.root / name))

        silver_job._run_together([append(good, "good"), append(bad, "quarantine")])
        batch.unpersist()


def run_lean(spark, settings: Settings, timings: Timings) -> set[int]:
    """The lean path over bronze, one bronze version per micro-batch, its batches timed;
    returns the ids of the batches that had rows."""
    ctx = JobContext.from_settings(settings, RunOptions(max_files_per_trigger=1))
    delay = int(ctx.silver.watermark_delay.total_seconds())
    root = settings.lake_root_abs / "_lean"
    stream = (silver_job.read_bronze(spark, ctx).transform(lambda df: silver_job.silver_input(df, ctx))
              .transform(silver_job.drop_hot_duplicates(delay)))
    writer = LeanWriter(root)
    with timed_batches(timings, LeanWriter, "__call__"):
        query = (stream.writeStream.queryName("lean").foreachBatch(writer)
                 .option("checkpointLocation", str(root / "_checkpoint")).trigger(availableNow=True).start())
        query.awaitTermination()
    return writer.with_rows


def floor_seconds(spark, settings: Settings, repeat: int = 12) -> tuple[float, float]:
    """Medians of a trivial Spark job (a one-row local checkpoint) and of a 500-row Delta
    append, each run `repeat` times after two warm-ups: what any job and any commit cost here."""
    path = str(settings.lake_root_abs / "_floor")
    rows = spark.range(500).selectExpr("id", "cast(id as string) as s")

    def median_of(fn) -> float:
        times = []
        for i in range(repeat + 2):
            started = time.perf_counter()
            fn()
            if i >= 2:
                times.append(time.perf_counter() - started)
        return statistics.median(times)

    job = median_of(lambda: spark.range(1).localCheckpoint(eager=True).unpersist())
    append = median_of(lambda: rows.write.format("delta").mode("append").save(path))
    return job, append


def lean_report(silver: Timings, lean: Timings, lean_batches: set[int], skip_first: int,
                floor: tuple[float, float]) -> str:
    s_batches = batches_with_rows(silver)[skip_first:]
    l_batches = sorted(lean_batches)[skip_first:]
    if not s_batches or not l_batches:
        return "lean path: not enough micro-batches to compare"
    s_med = statistics.median(silver.batch_total[b] for b in s_batches)
    l_med = statistics.median(lean.batch_total[b] for b in l_batches)
    s_jobs = statistics.median(silver.batch_jobs[b][0] for b in s_batches)
    l_jobs = statistics.median(lean.batch_jobs[b][0] for b in l_batches)
    job, append = floor
    return "\n".join([
        "", "| path (same bronze versions, same session) | median batch (s) | Spark jobs a batch |",
        "|---|---:|---:|",
        f"| silver (SilverBatchWriter) | {s_med:.2f} | {s_jobs:.0f} |",
        f"| lean: input + dedup state + two appends | {l_med:.2f} | {l_jobs:.0f} |",
        "", f"silver / lean: {s_med / l_med:.2f}x. Floor here: a trivial Spark job {job:.3f} s, "
            f"a 500-row Delta append {append:.3f} s (medians of 12).",
    ])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    topic = f"profile.events.{stamp}"
    with tempfile.TemporaryDirectory(prefix="profile-silver-") as lake:
        settings = Settings(lake_root=Path(lake), events_topic=topic)
        say(f"silver writer from {silver_job.__file__}")
        spark = build_spark("profile-silver", extra_conf=dict(c.split("=", 1) for c in args.conf))
        try:
            bronze_in_batches(spark, settings, args)
            timings = Timings()
            with timed_batches(timings), timed_actions(timings, (silver_job.__file__, silver_plan.__file__)):
                run_jobs(spark, JobContext.from_settings(settings, RunOptions(max_files_per_trigger=1)),
                         ["silver"], reporter=ProgressReporter(quiet=True), log=say)
            print(report(timings, args.skip_first, args.top))
            if args.lean:
                lean = Timings()
                with_rows = run_lean(spark, settings, lean)
                print(lean_report(timings, lean, with_rows, args.skip_first, floor_seconds(spark, settings)))
        finally:
            spark.stop()
            delete_topic(settings, topic)
    return 0


if __name__ == "__main__":
    sys.exit(main())
