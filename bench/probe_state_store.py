"""Probe: a keyed lookup held in the streaming state store, per micro-batch, as its keys grow.

The question (issue 19): silver's custom rules look up each touched key's anchor in a copy of
`silver.rule_state` that every batch scans whole, so a batch's cost grows with the state. Would
the state held by key in the streaming query's own state store (`transformWithState`, RocksDB)
keep a batch's cost flat, and which form of the API can carry it?

A file stream of `--files` files of `--rows` rows (about two thirds of each file's keys new,
one third seen before), one anchor per key in a ValueState, a no-op sink, `availableNow`, one
file per micro-batch, for each API named in `--apis`:

- `jvm`: the processor in Java (bench/java/ProbeAnchors.java, compiled here with javac);
- `python`: PySpark's `transformWithState` (a Python processor, rows);
- `pandas`: PySpark's `transformWithStateInPandas`.

    .venv/bin/python -m bench.probe_state_store --files 20 --rows 100000 --apis jvm
    .venv/bin/python -m bench.probe_state_store --files 3 --rows 20000 --apis jvm python pandas

It prints each batch's time (Spark's addBatch) and state rows. No broker is needed.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.sql.streaming.stateful_processor import StatefulProcessor, StatefulProcessorHandle

from pipelines.core.session import _local_jars, build_spark, local_fs_conf

HERE = Path(__file__).resolve().parent
OUT_DIR = HERE / "out" / "probe_state_store"
JAVA = HERE / "java" / "ProbeAnchors.java"
SCHEMA = "key string, ts long"
OUT = T.StructType([T.StructField("key", T.StringType()), T.StructField("ts", T.LongType()),
                    T.StructField("anchor", T.LongType())])
NEW_SHARE = 0.65


def probe_jar() -> Path:
    """bench/java/ProbeAnchors.java compiled against pyspark's jars (again only when changed)."""
    import pyspark

    jar = OUT_DIR / "probe.jar"
    if jar.exists() and jar.stat().st_mtime >= JAVA.stat().st_mtime:
        return jar
    classes = OUT_DIR / "classes"
    shutil.rmtree(classes, ignore_errors=True)
    classes.mkdir(parents=True)
    jars = Path(pyspark.__file__).parent / "jars"
    subprocess.run(["javac", "-nowarn", "-cp", f"{jars}/*", "-d", str(classes), str(JAVA)], check=True)
    subprocess.run(["jar", "cf", str(jar), "-C", str(classes), "."], check=True)
    return jar


class PyAnchors(StatefulProcessor):
    """The Java probe's logic as a Python processor (rows or pandas frames)."""

    def __init__(self, pandas: bool):
        self.pandas = pandas

    def init(self, handle: StatefulProcessorHandle) -> None:
        self.anchor = handle.getValueState("anchor", T.StructType([T.StructField("at", T.LongType())]))

    def handleInputRows(self, key, rows, timerValues):
        if self.pandas:
            import pandas as pd

            frame = pd.concat(list(rows))
            at = self._advance(int(frame["ts"].min()))
            yield pd.DataFrame({"key": key[0], "ts": frame["ts"], "anchor": at})
            return
        rows = list(rows)
        at = self._advance(min(r["ts"] for r in rows))
        for r in rows:
            yield T.Row(key=key[0], ts=r["ts"], anchor=at)

    def _advance(self, first: int) -> int:
        at = min(first, self.anchor.get()[0]) if self.anchor.exists() else first
        self.anchor.update((at,))
        return at

    def close(self) -> None:
        pass


def write_input(spark, folder: Path, files: int, rows: int) -> None:
    fresh = int(rows * NEW_SHARE)
    for i in range(files):
        base = i * fresh
        seen = (F.col("id") * 7919) % F.lit(max(base, 1))      # a key of an earlier file
        key = F.when((F.col("id") % 3 == 0) & F.lit(base > 0), seen).otherwise(F.lit(base) + F.col("id") % F.lit(fresh))
        (spark.range(rows).select(F.concat(F.lit("acct|"), key.cast("string")).alias("key"),
                                  (F.lit(1767225600) + F.col("id")).alias("ts"))
         .coalesce(1).write.mode("append").parquet(str(folder)))


def run(spark, api: str, source: Path, checkpoint: Path) -> list[dict]:
    stream = spark.readStream.schema(SCHEMA).option("maxFilesPerTrigger", 1).parquet(str(source))
    if api == "jvm":
        out = DataFrame(spark._jvm.bench.probe.ProbeAnchors.apply(stream._jdf), spark)
    elif api == "python":
        out = stream.groupBy("key").transformWithState(PyAnchors(False), OUT, "Append", "None")
    else:
        out = stream.groupBy("key").transformWithStateInPandas(PyAnchors(True), OUT, "Append", "None")
    query = (out.writeStream.format("noop").option("checkpointLocation", str(checkpoint))
             .trigger(availableNow=True).start())
    query.awaitTermination()
    return [{"batch": p["batchId"], "rows": p["numInputRows"], "add_batch_s": p["durationMs"].get("addBatch", 0) / 1000,
             "state_rows": sum(o.get("numRowsTotal", 0) for o in p.get("stateOperators", []))}
            for p in query.recentProgress if p["numInputRows"]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=10, help="files, one micro-batch each (default 10)")
    parser.add_argument("--rows", type=int, default=50_000, help="rows per file (default 50,000)")
    parser.add_argument("--apis", nargs="+", choices=("jvm", "python", "pandas"), default=["jvm"])
    args = parser.parse_args(argv)
    jar = probe_jar()
    classpath = local_fs_conf(_local_jars()).get("spark.driver.extraClassPath", "")
    spark = build_spark("probe-state-store", shuffle_partitions=2,
                        extra_conf={"spark.driver.extraClassPath": ":".join(p for p in (classpath, str(jar)) if p)})
    work = OUT_DIR / "run"
    shutil.rmtree(work, ignore_errors=True)
    write_input(spark, work / "in", args.files, args.rows)
    print(f"{args.files} files of {args.rows:,} rows written", flush=True)
    for api in args.apis:
        batches = run(spark, api, work / "in", work / f"checkpoint-{api}")
        print(f"\n{api}: {len(batches)} micro-batches")
        print("| batch | rows | addBatch (s) | state rows |\n|---:|---:|---:|---:|")
        for b in batches:
            print(f"| {b['batch']} | {b['rows']:,} | {b['add_batch_s']:.2f} | {b['state_rows']:,} |", flush=True)
    spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
