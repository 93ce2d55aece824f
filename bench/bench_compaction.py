"""Does a long silver run slow down as small files pile up, and does auto compaction hold it?

Run by hand from the repository root, with the local broker up:

    .venv/bin/python -m bench.bench_compaction                       # 6,000 events, 80 batches
    .venv/bin/python -m bench.bench_compaction --events 3000 --batches 40

Every silver micro-batch MERGEs a few small files into each silver table, and each batch
reads those tables back (the history its dedup depends on). Without compaction the files a
read must open grow with the stream's age. This script produces the events once into a
fresh one-partition topic, then runs the same bronze -> silver history twice in one process,
each on its own lake: with Delta's auto compaction off, then on (for silver's writes only;
bronze keeps one file per version either way, so silver gets the same micro-batches). It
reports, per run, the mean micro-batch time and history-read time in the first and the last
quarter of the batches, and the live files of each silver table at the end.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from bench.bench_common import delete_topic, machine_info, machine_line, positive_int, say
from bench.profile_silver import Timings, batches_with_rows, bronze_in_batches, timed_actions, timed_batches
from pipelines.ingest import silver as silver_job
from pipelines.core.context import JobContext, RunOptions
from pipelines.runner import ProgressReporter, run_jobs
from pipelines.core.session import build_spark
from pipelines.core.settings import Settings
from pipelines.core.tables import Lake
from pipelines.ingest import silver_plan

AUTO_COMPACT = "spark.databricks.delta.autoCompact.enabled"
SILVER_TABLES = ("silver.usage_events", "silver.duplicates", "silver.account_events")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--events", type=positive_int, default=6000)
    p.add_argument("--batches", type=positive_int, default=80, help="bronze versions = silver micro-batches")
    p.add_argument("--accounts", type=positive_int, default=50)
    p.add_argument("--seed", type=int, default=7)
    return p.parse_args(argv)


def quarters(values: list[float]) -> tuple[float, float]:
    """Mean of the first and of the last quarter (the very first batch, JIT warm-up, left out)."""
    k = max(1, (len(values) - 1) // 4)
    return statistics.mean(values[1:k + 1]), statistics.mean(values[-k:])


def run_silver(spark, settings: Settings, args: argparse.Namespace, compact: bool) -> dict:
    # Bronze never compacts here: a silver stream started after bronze is written reads its
    # snapshot file by file, so compacted bronze would mean fewer, larger silver batches.
    spark.conf.set(AUTO_COMPACT, "false")
    bronze_in_batches(spark, settings, args)
    spark.conf.set(AUTO_COMPACT, str(compact).lower())
    timings = Timings()
    with timed_batches(timings), timed_actions(timings, (silver_job.__file__, silver_plan.__file__)):
        run_jobs(spark, JobContext.from_settings(settings, RunOptions(max_files_per_trigger=1)), ["silver"],
                 reporter=ProgressReporter(quiet=True), log=say)
    spark.conf.unset(AUTO_COMPACT)
    batches = batches_with_rows(timings)
    history = [sum(sum(v) for (b, where), v in timings.by_line.items() if b == batch and "self._history(" in where)
               for batch in batches]
    lake = Lake(settings)
    live = {t: lake.delta(spark, t).detail().first()["numFiles"] for t in SILVER_TABLES}
    return {"batches": len(batches), "batch": quarters([timings.batch_total[b] for b in batches]),
            "history": quarters(history), "live_files": live}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    results = {}
    # Both lakes go only after the session stops: the state store's maintenance thread can
    # still write a stopped query's snapshot into its checkpoint.
    with tempfile.TemporaryDirectory(prefix="bench-compaction-") as root:
        spark = build_spark("bench-compaction")
        machine = machine_line(machine_info(spark, kafka=True))
        try:
            for compact in (False, True):
                name = "on" if compact else "off"
                settings = Settings(lake_root=Path(root) / name, events_topic=f"compaction.events.{stamp}.{name}")
                say(f"auto compaction {name}: {args.events:,} events, {args.batches} batches")
                try:
                    results[compact] = run_silver(spark, settings, args, compact)
                finally:
                    delete_topic(settings, settings.events_topic)
        finally:
            spark.stop()
    print(f"\n{machine}\n")
    print("| auto compaction | micro-batches | batch, first quarter (s) | batch, last quarter (s) "
          "| history read, first (s) | history read, last (s) | live files at the end |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for compact, r in results.items():
        files = ", ".join(f"{t.split('.')[1]} {n}" for t, n in r["live_files"].items())
        print(f"| {'on' if compact else 'off'} | {r['batches']} | {r['batch'][0]:.2f} | {r['batch'][1]:.2f} "
              f"| {r['history'][0]:.2f} | {r['history'][1]:.2f} | {files} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
