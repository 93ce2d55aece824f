"""What the stream monitor's freshness look costs on a grown silver table: after its first look, and fresh.

Run by hand from the repository root (no broker needed):

    .venv/bin/python -m bench.bench_monitor_freshness                    # 1M rows in 200 appends
    .venv/bin/python -m bench.bench_monitor_freshness --rows 200000 --appends 50

In continuous mode the stream monitor (`pipelines/monitoring/listener.py`) records every few
seconds how far each stream's output got in event and ingestion time. It used to aggregate
the whole output table each time; after its first look it now reads only rows newer than
what it saw, so Delta skips the files written before by their statistics.

This script writes `--rows` rows of silver.usage_events's shape in `--appends` appends (one
per simulated micro-batch, each a newer ingestion time), then `--rounds` times (after a
warm-up round): appends one more small batch and times the look of a monitor that has looked before ("next") and of a
fresh monitor ("first", what every look cost before), in alternating order. It reports both
medians and their ratio, and checks that both looks agree.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import datetime, timedelta

from bench.bench_common import alternating, machine_info, machine_line, positive_int, say
from pipelines.core.session import build_spark

START = datetime(2026, 11, 1)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=positive_int, default=1_000_000, help="stored rows (default 1M)")
    p.add_argument("--appends", type=positive_int, default=200, help="appends they are written in (default 200)")
    p.add_argument("--rounds", type=positive_int, default=7, help="timed looks per way (default 7)")
    return p.parse_args(argv)


def batch(spark, n: int, k: int):
    """n usage rows of append k: ingested k minutes after START, events up to a day before."""
    from pyspark.sql import functions as F

    from pipelines.core.tables import USAGE_EVENTS, spec

    ingested = START + timedelta(minutes=k)
    types = {c.name: c.type for c in spec(USAGE_EVENTS).columns}
    values = {
        "event_id": F.concat(F.lit(f"e{k}-"), F.col("id").cast("string")),
        "account_id": F.concat(F.lit("acct-"), (F.col("id") % 500).cast("string")),
        "occurred_at": F.lit(ingested) - F.make_interval(secs=(F.col("id") % 86400).cast("int")),
        "ingested_at": F.lit(ingested), "metric": F.lit("api_calls"), "quantity": F.lit(1),
        "kafka_topic": F.lit("t"), "kafka_partition": F.lit(0), "kafka_offset": F.col("id") + k * n,
    }
    df = spark.range(n).withColumns(values).withColumn("event_date", F.to_date("occurred_at"))
    return df.select(*[F.col(c).cast(t) if c in df.columns and c != "id" else F.lit(None).cast(t).alias(c)
                       for c, t in types.items()])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from pipelines.core.settings import Settings
    from pipelines.core.tables import USAGE_EVENTS, Lake
    from pipelines.monitoring.listener import StreamMonitor

    spark = build_spark("bench-monitor-freshness")
    try:
        machine = machine_info(spark)
        with tempfile.TemporaryDirectory(prefix="bench-monitor-") as root:
            lake = Lake(Settings().with_overrides(lake_root=root))
            lake.ensure(spark, USAGE_EVENTS)
            per = args.rows // args.appends
            say(f"writing {args.rows:,} rows in {args.appends} appends")
            for k in range(args.appends):
                lake.save(batch(spark, per, k).coalesce(1).write.format("delta").mode("append"), USAGE_EVENTS)
            files = len(lake.read(spark, USAGE_EVENTS).inputFiles())
            warm = StreamMonitor(spark, lake, continuous=True)
            warm._freshness({"silver"})   # its first look: the whole table
            looks: dict[int, dict] = {}

            def timed(way: str, r: int) -> float:
                if r not in looks:   # the round's first look: one more small batch before it
                    lake.save(batch(spark, 500, args.appends + r).coalesce(1).write.format("delta").mode("append"),
                              USAGE_EVENTS)
                    looks[r] = {}
                monitor = warm if way == "next" else StreamMonitor(spark, lake, continuous=True)
                started = time.perf_counter()
                looks[r][way] = monitor._freshness({"silver"})["silver"]
                return time.perf_counter() - started

            med = alternating(("next", "first"), args.rounds, timed)
            if any(got["next"] != got["first"] for got in looks.values()):
                raise SystemExit(f"the looks disagree: {looks}")
        print(f"\n{machine_line(machine)}\n")
        print("| stored rows | files | look after a first one | first look (the whole table) | ratio |")
        print("|---:|---:|---:|---:|---:|")
        print(f"| {args.rows:,} | {files} | {med['next']:.2f} s | {med['first']:.2f} s | {med['next'] / med['first']:.2f} |")
        return 0
    finally:
        spark.stop()


if __name__ == "__main__":
    sys.exit(main())
