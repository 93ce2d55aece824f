"""What every benchmark records about the machine it ran on (the RESULTS.md "Machine:" line)."""
from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

from pipelines.settings import kafka_jars_dir, spark_jars_dir


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
