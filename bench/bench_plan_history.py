"""What notify's plan-history lookup costs as the lake ages: the plan timeline's shards
against every date of silver.account_events.

Run by hand from the repository root (no broker needed):

    .venv/bin/python -m bench.bench_plan_history                       # 30, 365, 1,095 days
    .venv/bin/python -m bench.bench_plan_history --days 30 --rounds 5

For every account a micro-batch touches, notify needs its plan events of all time. It read
them from silver.account_events, which is partitioned by event date, so the lookup opened
every date's files however few accounts the batch held. It now reads gold.plan_timeline
(`pipelines/rules/timeline.py`): the plan events alone, partitioned into 16 account shards.

For each history length, this script writes --rows-per-day lifecycle events a day for 2,000
accounts (a tenth of them plan events, the rest purchases), one file a day in appends of 30
days as a stream's history leaves them, to silver.account_events, and seeds the timeline
from them as a lake made before it would be. Then it times, alternating, a notify-sized
lookup of 2 accounts each way, materialised as notify materialises it: the old one (every
date of silver, semi-joined to the accounts) and the new one (the accounts' shards of the
timeline). It also times what the timeline adds to a batch holding plan events: the MERGE
of 2 new ones. The first round is warm-up and left out.
"""
from __future__ import annotations

import argparse
import hashlib
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

from bench.bench_common import alternating, machine_info, machine_line, positive_int, say
from pipelines.core.session import build_spark

ACCOUNTS = 2_000
DAYS_PER_APPEND = 30
START = date(2023, 1, 1)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--days", type=positive_int, nargs="+", default=[30, 365, 1_095],
                   help="days of stored history (default: 30 365 1095)")
    p.add_argument("--rows-per-day", type=positive_int, default=500, help="lifecycle events a day (default 500)")
    p.add_argument("--rounds", type=positive_int, default=7, help="timed lookups per way and size (default 7)")
    return p.parse_args(argv)


def stored_events(spark, first_day: int, days: int, per_day: int):
    """silver.account_events rows for days [first_day, first_day + days)."""
    from pyspark.sql import functions as F

    from pipelines.core.tables import ACCOUNT_EVENTS, spec

    types = {c.name: c.type for c in spec(ACCOUNT_EVENTS).columns}
    n = F.col("id")
    plan = (n % 10) == 0
    df = spark.range(first_day * per_day, (first_day + days) * per_day).select(
        F.concat(F.lit("e"), n.cast("string")).alias("event_id"),
        F.concat(F.lit("acct-"), (n % ACCOUNTS).cast("string")).alias("account_id"),
        F.when(plan & ((n % 20) == 0), "subscription.started").when(plan, "plan.changed")
        .otherwise("purchase.completed").alias("event_type"),
        F.when(plan, F.when((n % 3) == 0, "basic").when((n % 3) == 1, "pro").otherwise("starter")).alias("plan_id"),
        (F.lit(START).cast("timestamp") + F.make_dt_interval(F.floor(n / per_day).cast("int"), F.lit(0), F.lit(0),
                                                             (n % per_day).cast("decimal(18,6)"))).alias("occurred_at"),
        F.lit("events").alias("kafka_topic"), F.lit(0).alias("kafka_partition"), n.alias("kafka_offset"),
    ).withColumns({"event_date": F.to_date("occurred_at"), "kafka_timestamp": F.col("occurred_at")})
    return df.withColumns({c: F.lit(None).cast(t) for c, t in types.items() if c not in df.columns}).select(*types)


def _shard(account: str) -> str:
    return hashlib.sha256(account.encode("utf-8")).hexdigest()[0]


def one_size(spark, root: Path, days: int, per_day: int, rounds: int) -> dict:
    from pyspark.sql import functions as F

    from pipelines.core.settings import Settings
    from pipelines.core.tables import ACCOUNT_EVENTS, PLAN_TIMELINE, Lake
    from pipelines.rules import timeline as T

    lake = Lake(Settings().with_overrides(lake_root=str(root / f"lake-{days}")))
    lake.ensure(spark, ACCOUNT_EVENTS)
    say(f"{days:,} days of history, {days * per_day:,} lifecycle events: writing silver.account_events")
    for first in range(0, days, DAYS_PER_APPEND):
        rows = stored_events(spark, first, min(DAYS_PER_APPEND, days - first), per_day)
        lake.save(rows.repartition("event_date").write.format("delta").mode("append"), ACCOUNT_EVENTS)
    T.ensure_plan_timeline(spark, lake)
    files = {"timeline": len(lake.read(spark, PLAN_TIMELINE).inputFiles()),
             "silver": len(lake.read(spark, ACCOUNT_EVENTS).inputFiles())}
    rows = {"timeline": lake.read(spark, PLAN_TIMELINE).count(), "silver": days * per_day}

    def lookup(way: str, r: int) -> float:
        # Accounts whose id is a multiple of 10 hold plan events.
        accounts = [f"acct-{(70 * r) % ACCOUNTS}", f"acct-{(70 * r + 30) % ACCOUNTS}"]
        wanted = spark.createDataFrame([(a,) for a in accounts], "account_id string")
        started = time.perf_counter()
        if way == "timeline":
            # Notify has the shards from the counts job it runs anyway.
            got = T.read_plan_timeline(spark, lake, wanted, [_shard(a) for a in accounts]).localCheckpoint()
        else:
            got = lake.read(spark, ACCOUNT_EVENTS).join(F.broadcast(wanted), on="account_id",
                                                         how="left_semi").localCheckpoint()
        seconds = time.perf_counter() - started
        if not got.filter(F.col("event_type") != "purchase.completed").count():
            raise SystemExit(f"{way}: no plan events found for {accounts}")
        got.unpersist()
        return seconds

    med = alternating(("timeline", "silver"), rounds, lookup)

    merges = []
    for r in range(rounds + 1):
        account = f"acct-{(11 * r) % ACCOUNTS}"
        new = stored_events(spark, days + r, 1, per_day).filter(F.col("event_type") != "purchase.completed").limit(2)
        new = new.withColumn("account_id", F.lit(account))
        started = time.perf_counter()
        T.merge_plan_timeline(spark, lake, new, [_shard(account)])
        if r:
            merges.append(time.perf_counter() - started)
    return {"days": days, "rows": rows, "files": files, "median_s": med, "ratio": med["timeline"] / med["silver"],
            "merge_s": statistics.median(merges)}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    spark = build_spark("bench-plan-history")
    try:
        machine = machine_info(spark)
        results = []
        with tempfile.TemporaryDirectory(prefix="bench-plan-history-") as root:
            for days in args.days:
                results.append(one_size(spark, Path(root), days, args.rows_per_day, args.rounds))
        print(f"\n{machine_line(machine)}\n")
        print("| history | rows (timeline / silver) | files (timeline / silver) | lookup, timeline | "
              "lookup, every date of silver | ratio | timeline MERGE of 2 plan events |")
        print("|---:|---:|---:|---:|---:|---:|---:|")
        for r in results:
            print(f"| {r['days']:,} days | {r['rows']['timeline']:,} / {r['rows']['silver']:,} "
                  f"| {r['files']['timeline']} / {r['files']['silver']} | {r['median_s']['timeline']:.2f} s "
                  f"| {r['median_s']['silver']:.2f} s | {r['ratio']:.2f} | {r['merge_s']:.2f} s |")
        return 0
    finally:
        spark.stop()


if __name__ == "__main__":
    sys.exit(main())
