"""What the benchmarks share: progress lines, argument types, the command line and machine
they record, and how a run's outputs are written and printed."""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

from pipelines.core.settings import Settings, kafka_jars_dir, spark_jars_dir

_T0 = time.monotonic()


def elapsed() -> float:
    """Seconds since the bench started (this module is imported at its start)."""
    return time.monotonic() - _T0


def say(msg: str) -> None:
    """Progress on stderr, with the elapsed time since the bench started."""
    seconds = int(elapsed())
    print(f"[bench {seconds // 60:3d}:{seconds % 60:02d}] {msg}", file=sys.stderr, flush=True)


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def command_line() -> str:
    """The command that re-runs this one: `python -m bench.<script> <flags>`."""
    exe = Path(sys.executable)
    try:
        exe_text = str(exe.relative_to(Path.cwd()))
    except ValueError:
        exe_text = str(exe)
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    script = ["-m", spec.name] if spec is not None and spec.name.startswith("bench.") else sys.argv[:1]
    return shlex.join([exe_text, *script, *sys.argv[1:]])


def topic_offsets(settings: Settings, topic: str) -> tuple[dict[int, int], dict[int, int]]:
    """(beginning, end) offset per partition."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=settings.bootstrap_servers, client_id="bench")
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
        if not partitions:
            raise RuntimeError(f"topic {topic} does not exist on {settings.bootstrap_servers}")
        begin = {tp.partition: off for tp, off in consumer.beginning_offsets(partitions).items()}
        end = {tp.partition: off for tp, off in consumer.end_offsets(partitions).items()}
        return begin, end
    finally:
        consumer.close()


def delete_topic(settings: Settings, topic: str) -> None:
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=settings.bootstrap_servers, client_id="bench")
    try:
        admin.delete_topics([topic])
    finally:
        admin.close()


def bronze_frame(spark, records, *, topic: str, first_offset: int, ingested_at):
    """Generator records -> rows shaped like bronze.events, on partition 0 from first_offset,
    with Kafka and ingestion time both `ingested_at` (a naive UTC datetime). For benches that
    feed silver without a broker."""
    import pandas as pd
    from pyspark.sql import functions as F

    from pipelines.core.tables import spec

    rows = [(r.key, r.value, topic, 0, first_offset + i, ingested_at, ingested_at) for i, r in enumerate(records)]
    # Through Arrow: Python rows one by one are the slow way in.
    spark.conf.set("spark.sql.execution.arrow.pyspark.enabled", "true")
    df = spark.createDataFrame(pd.DataFrame(rows, columns=["key", "value", "topic", "partition", "offset",
                                                           "kafka_timestamp", "ingested_at"], dtype=object),
                               "key binary, value binary, topic string, partition int, offset long, "
                               "kafka_timestamp timestamp, ingested_at timestamp")
    return df.withColumns({"kafka_timestamp_type": F.lit(1), "headers": F.lit(None).cast(
        "array<struct<key:string,value:binary>>")}).select(*spec("bronze.events").column_names)


def alternating(ways: tuple[str, str], rounds: int, timed) -> dict[str, float]:
    """Run `timed(way, round)` (returns the seconds it measured) for both ways, rounds + 1
    times, the first way first in even rounds and second in odd ones, so a drifting machine
    and an order effect fall on both alike; round 0 warms up and is left out. Prints each
    round; returns each way's median."""
    import statistics

    times: dict[str, list[float]] = {way: [] for way in ways}
    for r in range(rounds + 1):
        took = {way: timed(way, r) for way in (ways if r % 2 == 0 else ways[::-1])}
        if r:
            for way, seconds in took.items():
                times[way].append(seconds)
        say(f"  round {r}: " + ", ".join(f"{way} {took[way]:.2f} s" for way in ways) + ("  (warm-up)" if not r else ""))
    return {way: statistics.median(t) for way, t in times.items()}


def write_outputs(run_dir: Path, result: dict, markdown: str, table: str) -> None:
    """summary.json and results.md in run_dir, then the table and the block for RESULTS.md on stdout."""
    (run_dir / "summary.json").write_text(json.dumps(result, indent=1, default=str))
    (run_dir / "results.md").write_text(markdown + "\n")
    say(f"done in {elapsed():.0f} s; outputs in {run_dir}")
    print()
    print(table)
    print()
    print("---- paste into bench/RESULTS.md " + "-" * 40)
    print(markdown)
    print("-" * 73)


def machine_info(spark, *, kafka: bool = False) -> dict:
    """CPU, memory, load at start, Java/Spark/Delta versions; the Kafka broker version with kafka=True."""
    info: dict = {"nproc": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}
    try:
        info["nproc"] = int(subprocess.run(["nproc"], capture_output=True, text=True, check=True).stdout)
    except (OSError, subprocess.CalledProcessError, ValueError):
        pass
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        info["cpu_model"] = platform.processor() or "unknown"
    try:
        mem = {ln.split(":")[0]: ln.split(":")[1].strip() for ln in Path("/proc/meminfo").read_text().splitlines()}
        info["mem_total_gib"] = round(int(mem["MemTotal"].split()[0]) / 2**20, 1)
        info["mem_available_gib_at_start"] = round(int(mem["MemAvailable"].split()[0]) / 2**20, 1)
    except (OSError, KeyError, ValueError):
        pass
    try:
        info["load_average_at_start"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    jvm = spark.sparkContext._jvm
    info["java"] = f"{jvm.System.getProperty('java.vendor')} {jvm.System.getProperty('java.version')}"
    info["spark"] = spark.version
    info["spark_master"] = spark.sparkContext.master
    info["driver_memory"] = spark.conf.get("spark.driver.memory", "default")
    info["jvm_max_heap_mib"] = round(jvm.java.lang.Runtime.getRuntime().maxMemory() / 2**20)
    info["shuffle_partitions"] = spark.conf.get("spark.sql.shuffle.partitions", "?")
    jars = [p.name for p in Path(spark_jars_dir()).glob("*.jar")]
    info["delta"] = next((j.removesuffix(".jar").split("-")[-1] for j in jars if j.startswith("delta-spark_")), "?")
    try:
        from importlib.metadata import version
        info["delta_spark_python"] = version("delta-spark")
    except Exception:  # noqa: BLE001 - informative only
        pass
    if kafka:
        kjars = [p.name for p in Path(kafka_jars_dir()).glob("kafka-server-*.jar")]
        info["kafka_broker"] = kjars[0].removesuffix(".jar").split("-")[-1] if kjars else "?"
    return info


def command_block(command: str, *, where: str) -> list[str]:
    """The markdown lines that show how a result was produced (`where`: what must be running)."""
    return [f"Command (from the repository root, {where}):", "", "```", command, "```", ""]


def machine_line(m: dict, *, load_at_end: list[float] | None = None) -> str:
    """One markdown line naming the machine and software a result was measured on (machine_info)."""
    load = " / ".join(str(x) for x in m.get("load_average_at_start", []))
    end = f", {' / '.join(f'{x:.2f}' for x in load_at_end)} at end" if load_at_end else ""
    kafka = f", Kafka {m['kafka_broker']} single broker" if "kafka_broker" in m else ""
    return (
        f"Machine: {m.get('nproc')} CPUs ({m.get('cpu_model', '?')}), {m.get('mem_total_gib', '?')} GiB RAM "
        f"({m.get('mem_available_gib_at_start', '?')} GiB available at start, load average {load} at start{end}), "
        f"{m.get('platform')}; Java {m.get('java')}, Spark {m.get('spark')} ({m.get('spark_master')}, driver memory "
        f"{m.get('driver_memory')}, JVM max heap {m.get('jvm_max_heap_mib')} MiB, shuffle partitions "
        f"{m.get('shuffle_partitions')}), Delta {m.get('delta')} (delta-spark {m.get('delta_spark_python', '?')})"
        f"{kafka}, Python {m.get('python')}."
    )
