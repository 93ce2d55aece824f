"""What staging a notify batch into the outbox costs as the outbox grows: sharded against whole.

Run by hand from the repository root (no broker needed):

    .venv/bin/python -m bench.bench_outbox                      # 10k, 100k, 1M stored rows
    .venv/bin/python -m bench.bench_outbox --sizes 10000 --rounds 5

Notify's micro-batch stages its notifications into gold.notifications, insert-if-absent by
id. The outbox's MERGE used to name the id only, so every staging read the id column of every
file of the outbox, whatever the batch held; it now names the 16 account shards the batch's
accounts fall in (`pipelines/rules/notifications.py`), and the table is partitioned by them.

For each size, this script writes the same stored notifications (400 accounts, in 20 appends,
as a stream's history leaves them) to two tables: one in today's layout, one in the layout
before the shards (no partitions). Then it stages a notify-sized batch, 5 notifications of
2 accounts (2 already stored, 3 new), into each in turn, `--rounds` times: through
`stage_notifications` into the sharded table, and through the MERGE the outbox ran before
(the same checks, the id alone in the condition) into the old one. It reports the median
staging and the ratio, per size; the first round of each is warm-up and left out.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from bench.bench_common import alternating, machine_info, machine_line, positive_int, say
from pipelines.core.session import build_spark

ACCOUNTS = 400
APPENDS = 20


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=positive_int, nargs="+", default=[10_000, 100_000, 1_000_000],
                   help="stored notifications before the timed stagings (default: 10k 100k 1M)")
    p.add_argument("--rounds", type=positive_int, default=7, help="timed stagings per way and size (default 7)")
    return p.parse_args(argv)


def stored_notes(spark, size: int, part: int):
    """Part `part` of APPENDS of `size` stored notifications, as outbox rows (published)."""
    from pyspark.sql import functions as F

    from pipelines.rules.notifications import notification_id_col, to_outbox_rows

    n = size // APPENDS
    base = spark.range(part * n, (part + 1) * n).select(
        F.concat(F.lit("acct-"), (F.col("id") % ACCOUNTS).cast("string")).alias("account_id"),
        F.concat(F.lit("k"), F.col("id").cast("string")).alias("key"))
    staged = base.select(
        notification_id_col(F.lit("bench.note"), F.col("account_id"), F.col("key")).alias("notification_id"),
        F.lit("bench.note").alias("type"), "account_id",
        F.lit(datetime(2026, 1, 1)).alias("occurred_at"), F.array("key").alias("trigger_event_ids"),
        F.concat(F.lit('{"k":"'), F.col("key"), F.lit('"}')).alias("payload"))
    return staged.transform(to_outbox_rows).withColumn("published_at", F.current_timestamp())


def batch_notes(round_: int) -> list[dict]:
    """5 notifications of acct-1 and acct-2: 2 stored ones (keys k1, k2) and 3 new each round."""
    from pipelines.rules.notifications import notification_id

    keys = [("acct-1", "k1"), ("acct-2", "k2")] + [(f"acct-{1 + i % 2}", f"new-{round_}-{i}") for i in range(3)]
    return [{"notification_id": notification_id("bench.note", a, k), "type": "bench.note", "account_id": a,
             "occurred_at": datetime(2026, 1, 2), "trigger_event_ids": [k], "payload": f'{{"k":"{k}"}}'}
            for a, k in keys]


def stage_old_way(spark, path: str, df) -> int:
    """The outbox's staging before the shards: the same checks and rows, the id alone in the MERGE."""
    from delta.tables import DeltaTable

    from pipelines.rules.notifications import SHARD_COLUMN, STAGE_COLUMNS, summarise_for_staging, to_outbox_rows

    rows = df.select(*STAGE_COLUMNS).localCheckpoint()
    try:
        summary = rows.transform(summarise_for_staging).first()
        assert summary["bad"] is None
        source = rows.transform(to_outbox_rows).drop(SHARD_COLUMN)
        metrics = (DeltaTable.forPath(spark, path).alias("t")
                   .merge(source.alias("s"), "t.notification_id = s.notification_id")
                   .whenNotMatchedInsertAll().execute())
        return int(metrics.first()["num_inserted_rows"])
    finally:
        rows.unpersist()


def one_size(spark, root: Path, size: int, rounds: int) -> dict:
    from pipelines.core.settings import Settings
    from pipelines.core.tables import NOTIFICATIONS, Lake
    from pipelines.rules.notifications import SHARD_COLUMN, ensure_outbox, stage_notifications, stage_rows

    lake = Lake(Settings().with_overrides(lake_root=str(root / f"sharded-{size}")))
    old_path = str(root / f"whole-{size}")
    ensure_outbox(spark, lake)
    say(f"{size:,} stored notifications: writing both tables ({APPENDS} appends each)")
    for part in range(APPENDS):
        rows = stored_notes(spark, size, part)
        lake.save(rows.write.format("delta").mode("append"), NOTIFICATIONS)
        rows.drop(SHARD_COLUMN).write.format("delta").mode("append").save(old_path)
    files = {"sharded": len(lake.read(spark, NOTIFICATIONS).inputFiles()),
             "whole": len(spark.read.format("delta").load(old_path).inputFiles())}
    def timed(way: str, r: int) -> float:
        df = stage_rows(spark, batch_notes(r * 2 + (way == "whole")))
        started = time.perf_counter()
        new = stage_notifications(spark, lake, df) if way == "sharded" else stage_old_way(spark, old_path, df)
        seconds = time.perf_counter() - started
        if new != 3:
            raise SystemExit(f"{way}: staged {new} new notifications, expected 3")
        return seconds

    med = alternating(("sharded", "whole"), rounds, timed)
    return {"size": size, "files": files, "median_s": med, "ratio": med["sharded"] / med["whole"]}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    spark = build_spark("bench-outbox")
    try:
        machine = machine_info(spark)
        results = []
        with tempfile.TemporaryDirectory(prefix="bench-outbox-") as root:
            for size in args.sizes:
                results.append(one_size(spark, Path(root), size, args.rounds))
        print(f"\n{machine_line(machine)}\n")
        print("| stored notifications | files (sharded / whole) | staging 5, sharded | staging 5, whole outbox | ratio |")
        print("|---:|---:|---:|---:|---:|")
        for r in results:
            print(f"| {r['size']:,} | {r['files']['sharded']} / {r['files']['whole']} | {r['median_s']['sharded']:.2f} s "
                  f"| {r['median_s']['whole']:.2f} s | {r['ratio']:.2f} |")
        return 0
    finally:
        spark.stop()


if __name__ == "__main__":
    sys.exit(main())
