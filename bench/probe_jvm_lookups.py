"""Probe: what building a plan costs in Py4J round trips, with and without remembered lookups.

PySpark reaches the JVM by name: `F.col("x")` looks up `functions`, then `col`, then calls
it, a round trip each. `pipelines/core/jvm_lookups.py` remembers the first two answers. This
probe times a few plan-building calls in one session, alternating Py4J's own lookups and the
remembered ones (`--rounds` of each), and prints the mean per call of each round:

    .venv/bin/python -m bench.probe_jvm_lookups
    .venv/bin/python -m bench.probe_jvm_lookups --calls 5000 --rounds 3

No broker is needed. A silver micro-batch makes thousands of such calls (bench/RESULTS.md,
"Plan building and the JVM's lookups").
"""
from __future__ import annotations

import argparse
import time

from pyspark.sql import functions as F

from bench.bench_common import machine_info, machine_line, positive_int
from pipelines.core import jvm_lookups
from pipelines.core.session import build_spark


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--calls", type=positive_int, default=3000, help="calls of each kind per round")
    p.add_argument("--rounds", type=positive_int, default=2, help="rounds of each mode, alternating")
    return p.parse_args(argv)


def _per_call(make, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        make()
    return (time.perf_counter() - start) / calls


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    spark = build_spark("probe-jvm-lookups", shuffle_partitions=2)
    small = spark.range(10).withColumn("y", F.col("id") * 2).localCheckpoint()
    kinds = {
        "F.col": (lambda: F.col("x"), args.calls),
        "when(...).otherwise(...)": (lambda: F.when(F.col("x") == 1, F.lit(2)).otherwise(F.lit(3)), args.calls // 3),
        "withColumn on a small plan": (lambda: small.withColumn("z", F.col("y") + 1), args.calls // 15),
        "select of two columns": (lambda: small.select("id", "y"), args.calls // 15),
    }
    rows = []
    for round_no in range(args.rounds):
        for mode in ("py4j", "remembered"):
            jvm_lookups.uninstall()
            if mode == "remembered":
                jvm_lookups.install()
            for kind, (make, calls) in kinds.items():
                _per_call(make, max(calls // 10, 1))     # warm the JVM's code for this call first
                rows.append((round_no + 1, mode, kind, _per_call(make, calls)))
    jvm_lookups.install()
    print(f"{machine_line(machine_info(spark))}\n")
    print("| round | lookups | call | ms per call |\n|---:|---|---|---:|")
    for round_no, mode, kind, seconds in rows:
        print(f"| {round_no} | {mode} | {kind} | {seconds * 1000:.3f} |")
    spark.stop()


if __name__ == "__main__":
    main()
