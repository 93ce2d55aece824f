"""What one small Delta append costs: with and without a transaction id, and by table properties.

Run by hand from the repository root (no broker needed):

    .venv/bin/python -m bench.bench_delta_append               # 500 rows, 14 appends per way
    .venv/bin/python -m bench.bench_delta_append --rows 10000
    .venv/bin/python -m bench.bench_delta_append --properties  # 45 appends per layout, 2 rounds

Silver's steady state is a handful of small appends per micro-batch, so a fixed cost per
commit is paid several times a batch. This script appends the same small frame repeatedly
to fresh tables in one session, each way in turn, and reports the median and the fastest
append (the first two of each way are warm-up): plain, and with `txnAppId`/`txnVersion`
(Delta's idempotent append, which looks up the table's transactions on every commit).

`--properties` instead appends rows of silver.usage_events's shape (event_date partitions)
to tables created three ways, in turn, twice: with Delta's defaults (statistics on the first
32 columns, a checkpoint every 10 commits), with the spec's `stats_columns` only, and with
every property the spec sets (`pipelines/conf/schemas/tables.yaml`: also a checkpoint every
100 commits). It reports the median append, the mean (which carries the checkpoints and
auto compactions a long-running stream pays), and the median read right after an append
(a reader replays the commits since the last checkpoint).
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


def usage_rows(spark, rows: int, batch: int):
    """`rows` rows of silver.usage_events's shape, one date, distinct coordinates per batch."""
    from pyspark.sql import functions as F

    from pipelines.core.tables import USAGE_EVENTS, spec

    given = {
        "event_id": F.concat(F.lit(f"e{batch}-"), F.col("id").cast("string")),
        "account_id": F.concat(F.lit("acct-"), (F.col("id") % 50).cast("string")),
        "event_type": F.lit("usage.recorded"), "occurred_at": F.lit("2026-12-01 10:00:00").cast("timestamp"),
        "event_date": F.lit("2026-12-01").cast("date"), "product": F.lit("helpdesk"),
        "metric": F.lit("billable_tickets"), "quantity": F.lit("1.5").cast("decimal(38,6)"),
        "properties": F.lit('{"channel": "email", "ticket_id": "t-000123"}'),
        "kafka_topic": F.lit("billing.events"), "kafka_partition": F.lit(0),
        "kafka_offset": F.col("id") + batch * rows, "kafka_timestamp": F.current_timestamp(),
        "ingested_at": F.current_timestamp(), "payload_sha256": F.sha2(F.col("id").cast("string"), 256),
    }
    return spark.range(rows).select(*[given.get(c.name, F.lit(None)).cast(c.type).alias(c.name)
                                      for c in spec(USAGE_EVENTS).columns]).coalesce(1).localCheckpoint()


def property_layouts(spark, root: str, rows: int, appends: int, rounds: int) -> dict[str, tuple[list, list]]:
    """{layout: (append seconds, read-after-append seconds)} over `rounds` alternating rounds."""
    from pyspark.sql import functions as F

    from pipelines.core.tables import USAGE_EVENTS, spec

    table = spec(USAGE_EVENTS)
    layouts = {
        "Delta's defaults": {},
        "stats_columns only": {"delta.dataSkippingStatsColumns": ",".join(table.stats_columns)},
        "the spec's properties": table.table_properties(),
    }
    frames = [usage_rows(spark, rows, b) for b in range(appends)]
    out: dict[str, tuple[list, list]] = {name: ([], []) for name in layouts}
    for round_ in range(rounds):
        for i, (name, props) in enumerate(layouts.items()):
            say(f"round {round_ + 1}/{rounds}, {name}: {appends} appends of {rows:,} rows")
            path = f"{root}/r{round_}-{i}"
            tblproperties = ", ".join(f"'{k}' = '{v}'" for k, v in props.items())
            spark.sql(f"CREATE TABLE delta.`{path}` ({table.ddl()}) USING DELTA PARTITIONED BY (event_date)"
                      + (f" TBLPROPERTIES ({tblproperties})" if props else ""))
            writes, reads = out[name]
            for n, df in enumerate(frames):
                started = time.perf_counter()
                df.write.format("delta").mode("append").save(path)
                middle = time.perf_counter()
                spark.read.format("delta").load(path).filter(F.col("event_id") == "none").count()
                if n >= WARM_UP:
                    writes.append(middle - started)
                    reads.append(time.perf_counter() - middle)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=positive_int, default=500)
    p.add_argument("--appends", type=positive_int, default=None,
                   help=f"per way (default 14; 45 with --properties), the first {WARM_UP} not counted")
    p.add_argument("--properties", action="store_true", help="compare table properties instead of transaction ids")
    p.add_argument("--rounds", type=positive_int, default=2, help="with --properties: alternating rounds")
    args = p.parse_args(argv)
    args.appends = args.appends or (45 if args.properties else 14)
    if args.appends <= WARM_UP:
        p.error(f"--appends must be more than {WARM_UP}")
    from pyspark.sql import functions as F

    spark = build_spark("bench-delta-append")
    machine = machine_line(machine_info(spark))
    try:
        if args.properties:
            with tempfile.TemporaryDirectory(prefix="bench-delta-append-") as root:
                timed_appends(usage_rows(spark, args.rows, 0), f"{root}/warm", WARM_UP + 1, txn=False)
                results = property_layouts(spark, root, args.rows, args.appends, args.rounds)
            print(f"\n{machine}\n")
            print(f"| table of silver.usage_events's shape, {args.rows:,}-row appends | median append (s) "
                  "| mean append (s) | slowest (s) | median read after an append (s) |\n|---|---:|---:|---:|---:|")
            for name, (writes, reads) in results.items():
                print(f"| {name} | {statistics.median(writes):.3f} | {statistics.mean(writes):.3f} | "
                      f"{max(writes):.2f} | {statistics.median(reads):.3f} |")
            return 0
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
