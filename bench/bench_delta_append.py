"""What one small Delta append costs, with and without a transaction id.

Run by hand from the repository root (no broker needed):

    .venv/bin/python -m bench.bench_delta_append               # 500 rows, 14 appends per way
    .venv/bin/python -m bench.bench_delta_append --rows 10000

Silver's steady state is a handful of small appends per micro-batch, so a fixed cost per
commit is paid several times a batch. This script appends the same small frame repeatedly
to fresh tables in one session, each way in turn, and reports the median and the fastest
append (the first two of each way are warm-up): plain, and with `txnAppId`/`txnVersion`
(Delta's idempotent append, which looks up the table's transactions on every commit).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time

from bench.bench_common import machine_info, machine_line, positive_int, say
from pipelines.core.session import build_spark

WARM_UP = 2


def timed_appends(df, path: str, appends: int, *, txn: bool) -> list[float]:
    seconds = []
    for version in range(appends):
        writer = df.write.format("delta").mode("append")
        if txn:
            writer = writer.option("txnAppId", "bench").option("txnVersion", version)
        started = time.perf_counter()
        writer.save(path)
        seconds.append(time.perf_counter() - started)
    return seconds[WARM_UP:]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=positive_int, default=500)
    p.add_argument("--appends", type=positive_int, default=14, help=f"per way, the first {WARM_UP} not counted")
    args = p.parse_args(argv)
    if args.appends <= WARM_UP:
        p.error(f"--appends must be more than {WARM_UP}")
    from pyspark.sql import functions as F

    spark = build_spark("bench-delta-append")
    machine = machine_line(machine_info(spark))
    try:
        df = (spark.range(args.rows).withColumns({"quantity": F.col("id").cast("decimal(18,6)"), "s": F.lit("x")})
              .coalesce(1).localCheckpoint())
        rows = []
        with tempfile.TemporaryDirectory(prefix="bench-delta-append-") as root:
            timed_appends(df, f"{root}/warm", WARM_UP + 1, txn=False)   # session and JIT warm-up
            for name, txn in (("plain append", False), ("txnAppId/txnVersion", True)):
                say(f"{name}: {args.appends} appends of {args.rows:,} rows")
                seconds = timed_appends(df, f"{root}/{'txn' if txn else 'plain'}", args.appends, txn=txn)
                rows.append((name, statistics.median(seconds), min(seconds)))
        print(f"\n{machine}\n")
        print(f"| append of {args.rows:,} rows | median (s) | fastest (s) |\n|---|---:|---:|")
        for name, median, fastest in rows:
            print(f"| {name} | {median:.3f} | {fastest:.3f} |")
    finally:
        spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
