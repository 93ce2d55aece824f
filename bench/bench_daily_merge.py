"""What the gold stream's MERGE into gold.daily_usage costs as the table grows: by day or whole.

Run by hand from the repository root (no broker needed):

    .venv/bin/python -m bench.bench_daily_merge                 # 30, 365 and 1,095 stored days
    .venv/bin/python -m bench.bench_daily_merge --days 365 --rounds 5

Each gold micro-batch recomputes the day totals its silver changes touched and MERGEs them
into gold.daily_usage. The MERGE used to name the keys only, so it read every file of the
table, whatever the batch held; the table is now partitioned by usage_date and the MERGE
names the days it writes (`pipelines/ingest/gold.py`).

For each size, this script writes the same day totals (`--rows-per-day` per day, 30 days
per append) to a table in today's layout and to one in the layout
before (no partitions), then MERGEs a micro-batch's worth (50 totals of today, half of them
already stored) into each in turn, `--rounds` times: through `merge_daily_usage`, and through
the MERGE gold ran before (the keys alone in its condition). It reports the median MERGE per
way and their ratio; the first round is warm-up and left out.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

from bench.bench_common import alternating, machine_info, machine_line, positive_int, say
from pipelines.core.session import build_spark

LAST_DAY = date(2026, 12, 1)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--days", type=positive_int, nargs="+", default=[30, 365, 1095],
                   help="stored days before the timed MERGEs (default: 30 365 1095)")
    p.add_argument("--rows-per-day", type=positive_int, default=2000, help="day totals per stored day (default 2000)")
    p.add_argument("--rounds", type=positive_int, default=7, help="timed MERGEs per way and size (default 7)")
    return p.parse_args(argv)


CHUNK_DAYS = 30


def day_totals(spark, day: date, rows: int, *, salt: int = 0, days: int = 1):
    """`rows` totals for each of `days` days from `day`."""
    from pyspark.sql import functions as F

    from pipelines.core.tables import DAILY_USAGE, spec

    return spark.range(rows * days).select(
        F.concat(F.lit("acct-"), (F.col("id") % rows + salt).cast("string")).alias("account_id"),
        F.lit("helpdesk").alias("product"), F.lit("billable_tickets").alias("metric"),
        F.date_add(F.lit(day), (F.col("id") / rows).cast("int")).alias("usage_date"), (F.col("id") % 97 + F.lit(salt)).cast("decimal(38,6)").alias("quantity"),
        (F.col("id") % 13 + 1).alias("event_count"), F.current_timestamp().alias("last_ingested_at"),
    ).select(*spec(DAILY_USAGE).column_names)


def merge_old_way(spark, path: str, recomputed) -> None:
    """gold's MERGE before the day partitions: the same clauses, the keys alone in the condition."""
    from delta.tables import DeltaTable

    from pipelines.ingest.gold import SAME_DAY_TOTAL, upsert_daily_totals

    upsert_daily_totals(DeltaTable.forPath(spark, path), recomputed, SAME_DAY_TOTAL)


def one_size(spark, root: Path, days: int, per_day: int, rounds: int) -> dict:
    from pipelines.core.settings import Settings
    from pipelines.core.tables import DAILY_USAGE, Lake
    from pipelines.ingest.gold import merge_daily_usage

    lake = Lake(Settings().with_overrides(lake_root=str(root / f"by-day-{days}")))
    old_path = str(root / f"whole-{days}")
    lake.ensure_partitioned(spark, DAILY_USAGE)
    say(f"{days:,} stored days of {per_day:,} totals: writing both tables ({CHUNK_DAYS} days per append)")
    for d in range(0, days, CHUNK_DAYS):
        rows = day_totals(spark, LAST_DAY - timedelta(days=days - d), per_day, days=min(CHUNK_DAYS, days - d))
        lake.save(rows.write.format("delta").mode("append"), DAILY_USAGE)
        rows.write.format("delta").mode("append").save(old_path)
    def timed(way: str, r: int) -> float:
        # 25 totals of the newest stored day move, 25 of a new day arrive.
        batch = (day_totals(spark, LAST_DAY - timedelta(days=1), 25, salt=r)
                 .unionByName(day_totals(spark, LAST_DAY + timedelta(days=r), 25, salt=r))).localCheckpoint()
        started = time.perf_counter()
        merge_daily_usage(spark, lake, batch) if way == "by_day" else merge_old_way(spark, old_path, batch)
        return time.perf_counter() - started

    med = alternating(("by_day", "whole"), rounds, timed)
    new_rows = lake.read(spark, DAILY_USAGE).count()
    old_rows = spark.read.format("delta").load(old_path).count()
    if new_rows != old_rows:
        raise SystemExit(f"the two tables differ: {new_rows} rows by day, {old_rows} whole")
    return {"days": days, "rows": new_rows, "median_s": med, "ratio": med["by_day"] / med["whole"]}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    spark = build_spark("bench-daily-merge")
    try:
        machine = machine_info(spark)
        results = []
        with tempfile.TemporaryDirectory(prefix="bench-daily-merge-") as root:
            for days in args.days:
                results.append(one_size(spark, Path(root), days, args.rows_per_day, args.rounds))
        print(f"\n{machine_line(machine)}\n")
        print("| stored days | rows after | MERGE of 50, by day | MERGE of 50, whole table | ratio |")
        print("|---:|---:|---:|---:|---:|")
        for r in results:
            print(f"| {r['days']:,} | {r['rows']:,} | {r['median_s']['by_day']:.2f} s | {r['median_s']['whole']:.2f} s "
                  f"| {r['ratio']:.2f} |")
        return 0
    finally:
        spark.stop()


if __name__ == "__main__":
    sys.exit(main())
