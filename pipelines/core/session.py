"""Local SparkSession builder. Entry points call this; library code never does.

On Databricks the platform hands the job its session (with Delta and Kafka built in),
so nothing here runs there.
"""
from __future__ import annotations

import os
from pathlib import Path

from pyspark.sql import SparkSession

from pipelines.core import jvm_lookups
from pipelines.core.settings import spark_jars_dir


class SparkSetupError(RuntimeError):
    pass


def _local_jars() -> list[str]:
    jars_dir = spark_jars_dir()
    jars = sorted(str(p) for p in Path(jars_dir).glob("*.jar"))
    if not jars:
        raise SparkSetupError(
            f"no Spark jars in {jars_dir}: run `make setup` (it resolves Delta and the "
            "Spark Kafka connector from Maven Central)"
        )
    return jars


# jvm/localfs, built by `make setup` into the jars folder: Hadoop's local file system without
# a child process per file operation. Without Hadoop's native library (not on Maven Central)
# every file created with a permission forks `chmod` and every rename forks `readlink`
# twice, 16 ms each; a local stream's Delta commits and checkpoints forked about 18 a second
# (bench/RESULTS.md, "One process per file operation").
LOCALFS_JAR = "lakehouse-localfs.jar"


def local_fs_conf(jars: list[str]) -> dict[str, str]:
    """The settings that put jvm/localfs in place of Hadoop's local file system, or none
    when the jar is not there (Hadoop's own, slower, is used then)."""
    jar = next((j for j in jars if Path(j).name == LOCALFS_JAR), None)
    if jar is None:
        return {}
    return {
        "spark.hadoop.fs.file.impl": "io.billing.localfs.NioLocalFileSystem",          # FileSystem API
        "spark.hadoop.fs.AbstractFileSystem.file.impl": "io.billing.localfs.NioLocalFs",  # FileContext API
        # Hadoop loads a file system class with its own class loader, which does not see
        # spark.jars: the jar goes on the JVMs' class path (a cluster's workers share this disk).
        "spark.driver.extraClassPath": jar,
        "spark.executor.extraClassPath": jar,
    }


def build_spark(app_name: str = "lakehouse", *, shuffle_partitions: int | None = None,
                extra_conf: dict[str, str] | None = None) -> SparkSession:
    """A local[*] session with Delta Lake, the Kafka source and UTC everywhere.

    Shuffle partitions default to one per core: a micro-batch here is small, and each extra
    task is scheduling overhead paid in every stage of the 30-odd jobs of a silver batch
    (on 2 cores, 2 partitions ran silver over 1,000 events in 6 micro-batches in 104 s
    against 137 s with 4). A stream keeps the count its checkpoint was created with.
    """
    shuffle_partitions = shuffle_partitions or max(2, os.cpu_count() or 2)
    # Before any plan is built: PySpark reaches the JVM by name for every functions call.
    jvm_lookups.install()
    if os.environ.get("DATABRICKS_RUNTIME_VERSION"):
        # A Databricks job or notebook: the platform's session already has Delta, Kafka and
        # Unity Catalog; local jars and memory settings would only get in its way.
        spark = SparkSession.builder.getOrCreate()
        spark.conf.set("spark.sql.session.timeZone", "UTC")
        return spark
    os.environ.setdefault("PYSPARK_PYTHON", os.sys.executable)
    jars = _local_jars()
    builder = (
        SparkSession.builder.appName(app_name)
        .master(os.environ.get("LAKEHOUSE_SPARK_MASTER", "local[*]"))
        .config("spark.jars", ",".join(jars))
        .config("spark.sql.extensions", "io.delta.sql.DeltaSparkSessionExtension")
        .config("spark.sql.catalog.spark_catalog", "org.apache.spark.sql.delta.catalog.DeltaCatalog")
        # Billing periods and days are UTC; never let the machine's zone leak in.
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.driver.extraJavaOptions", "-Duser.timezone=UTC")
        .config("spark.executor.extraJavaOptions", "-Duser.timezone=UTC")
        .config("spark.sql.shuffle.partitions", str(shuffle_partitions))
        .config("spark.default.parallelism", str(shuffle_partitions))
        .config("spark.sql.streaming.stateStore.providerClass",
                "org.apache.spark.sql.execution.streaming.state.RocksDBStateStoreProvider")
        .config("spark.sql.streaming.stateStore.rocksdb.changelogCheckpointing.enabled", "true")
        # Spark keeps 100 compiled classes by default, fewer than the streams of one
        # session generate per round of micro-batches, so every batch compiled its plans
        # again (Janino: 41 % of the silver stream thread's samples in a flight recording).
        # With 2,000 a 500-record silver batch went from 6.7 s to 5.1 s (bench/RESULTS.md,
        # "Compiled-code cache"). A static setting: it takes effect only at start.
        .config("spark.sql.codegen.cache.maxEntries", "2000")
        # PySpark 4 records the Python call site of every Column and functions call, for
        # error messages: a stack walk and four JVM round trips per call (a quarter of the
        # Python process's time in a silver run). Errors still name the failing expression;
        # they lose only the Python file and line that built it.
        .config("spark.python.sql.dataFrameDebugging.enabled", "false")
        .config("spark.ui.enabled", os.environ.get("LAKEHOUSE_SPARK_UI", "false"))
        # Progress is reported per micro-batch by the runner; Spark's console bars only garble it.
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.driver.memory", os.environ.get("LAKEHOUSE_DRIVER_MEMORY", "3g"))
        .config("spark.sql.adaptive.enabled", "true")
        # Delta rebuilds table state with this many tasks; the default 50 is for clusters.
        .config("spark.databricks.delta.snapshotPartitions", str(shuffle_partitions))
        # Every MERGE source in this project is already materialised (local checkpoints),
        # so Delta's own copy of it would be pure overhead.
        .config("spark.databricks.delta.merge.materializeSource", "none")
        # Each micro-batch adds small files to every table it writes, and silver and notify
        # read their tables back every batch: without compaction those reads slow down as a
        # continuous stream ages (bench/bench_compaction.py). Databricks compacts on its own.
        .config("spark.databricks.delta.autoCompact.enabled", "true")
        .config("spark.databricks.delta.schema.autoMerge.enabled", "false")
        .config("spark.databricks.delta.properties.defaults.enableChangeDataFeed", "false")
        .config("spark.sql.warehouse.dir", str(Path(os.environ.get("LAKEHOUSE_ROOT", "./lakehouse")).resolve() / "_warehouse"))
        .config("spark.log.level", "WARN")
    )
    for key, value in {**local_fs_conf(jars), **(extra_conf or {})}.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    return spark
