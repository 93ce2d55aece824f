"""Crash drill: SIGKILL the streaming pipeline at random moments and restart the broker
while events flow; the tables must equal those of an uninterrupted run, row for row.

    .venv/bin/python -m bench.drill_crash                      # 200,000 events, 10 kills
    .venv/bin/python -m bench.drill_crash --events 3000 --kills 2 --max-run 15

What happens:

1. A private Kafka broker (own port and data dir under the run folder; the shared broker
   at 9092 is never touched) and a 3-partition topic.
2. A producer thread sends a seeded `python -m devtools produce` stream (duplicates, gateway
   retries, reopened tickets, late and bad records) at a steady rate; when the broker is
   down it waits and re-sends the unacknowledged chunk (extra copies the pipeline must
   absorb).
3. `lakehouse run bronze silver gold --continuous` runs in its own process group and is
   killed with SIGKILL (Python driver and JVM at once, as in a machine crash) a random
   time after its first committed micro-batch, then restarted, `--kills` times. Half way, the broker is stopped and
   started again under the running pipeline.
4. When the producer is done: one availableNow run drains the stream and then runs
   billing and export in the drill lake; a reference lake gets the same jobs, in one
   uninterrupted availableNow process, over the same topic.
5. silver.usage_events, silver.account_events, silver.duplicates, silver.quarantine,
   gold.daily_usage, gold.period_usage, gold.invoice_lines and gold.billing_exports are
   compared as multisets of rows (exceptAll both ways), without the columns that
   legitimately differ between two runs: ingestion and computation times (ingested_at,
   last_ingested_at, computed_at, staged_at, delivered_at), is_late (event time measured
   against ingestion time), the export's run id and file names (export_id,
   provider_file, finance_file), and in silver the Kafka coordinates of an event that
   arrived as byte-identical copies (which copy stands for it depends on batch cuts).
   A table that differs reports a few sample rows each way.

Exit status 0 only when every table matches and bronze holds each Kafka record once.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bench.bench_common import command_line, elapsed, positive_int, say, topic_offsets, write_outputs
from pipelines.core.settings import Settings

ROOT = Path(__file__).resolve().parent.parent

TOPIC = "drill.events"
TABLES = ("silver.usage_events", "silver.account_events", "silver.duplicates", "silver.quarantine",
          "gold.daily_usage", "gold.period_usage", "gold.invoice_lines", "gold.billing_exports")
# Columns that differ between two correct runs (see the module docstring).
VOLATILE = {"ingested_at", "last_ingested_at", "computed_at", "staged_at", "delivered_at", "is_late",
            "export_id", "provider_file", "finance_file", "provider_sha256", "finance_sha256"}
# Among byte-identical copies of one event, silver keeps whichever copy the hot-path dedup
# meets first in its micro-batch, so the Kafka coordinates silver records for it depend on
# how batches were cut (docs/contracts.md, 'What "billed once" means here'); the event and its bytes do not.
# That holds for an event dropped by a custom rule (silver.duplicates) as for a kept one.
COPY_COORDINATES = {"kafka_topic", "kafka_partition", "kafka_offset", "kafka_timestamp"}
PER_TABLE_VOLATILE = {t: COPY_COORDINATES for t in ("silver.usage_events", "silver.account_events", "silver.duplicates")}
# Rows shown per table when a comparison fails, to tell a real defect from a volatile column.
SAMPLE_ROWS = 3


@dataclass
class DrillState:
    produced: int = 0            # records handed to the producer (the generated stream)
    resent_chunks: int = 0       # chunks sent again after a broker outage
    producer_done: bool = False
    producer_error: str | None = None
    kills: int = 0
    broker_restarts: int = 0
    restarts: int = 0
    kill_times: list[float] = field(default_factory=list)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--events", type=positive_int, default=200_000)
    p.add_argument("--accounts", type=positive_int, default=500)
    p.add_argument("--kills", type=positive_int, default=10)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--port", type=int, default=19092, help="port of the drill's own broker (controller: port+1)")
    p.add_argument("--min-run", type=float, default=0.0,
                   help="shortest time from a process's first micro-batch to its kill (s)")
    p.add_argument("--max-run", type=float, default=45.0,
                   help="longest time from a process's first micro-batch to its kill (s)")
    p.add_argument("--startup-timeout", type=float, default=240.0,
                   help="kill a process that has not committed a micro-batch after this long (s)")
    p.add_argument("--rate", type=float, default=None, help="producer events/s (default: spread over the kill schedule)")
    p.add_argument("--max-offsets-per-trigger", type=int, default=5000)
    p.add_argument("--no-broker-restart", action="store_true")
    p.add_argument("--out", type=Path, default=None, help="run folder (default bench/out/drill-<time>)")
    p.add_argument("--compare-only", action="store_true",
                   help="only compare the lakes of an earlier run in --out (its broker is restarted to count)")
    return p.parse_args(argv)


def _lakehouse(*args: str) -> list[str]:
    return [sys.executable, "-m", "pipelines.cli", *args]


def _common(settings: Settings) -> list[str]:
    return ["--lake-root", str(settings.lake_root), "--bootstrap-servers", settings.bootstrap_servers,
            "--topic", settings.events_topic]


def _env() -> dict:
    env = dict(os.environ)
    env.setdefault("LAKEHOUSE_DRIVER_MEMORY", "2g")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def produce(settings: Settings, records: list, rate: float, state: DrillState, chunk: int = 500) -> None:
    """Send records in order at `rate`; a chunk not fully acknowledged is sent again."""
    from kafka import KafkaProducer

    def new_producer():
        return KafkaProducer(bootstrap_servers=settings.bootstrap_servers, acks="all", linger_ms=20,
                             retries=5, max_block_ms=10_000, request_timeout_ms=15_000)

    producer = None
    started = time.monotonic()
    try:
        i = 0
        while i < len(records):
            part = records[i:i + chunk]
            try:
                producer = producer or new_producer()
                futures = [producer.send(settings.events_topic, key=r.key, value=r.value) for r in part]
                producer.flush(timeout=30)
                for f in futures:
                    f.get(timeout=1)
            except Exception as exc:  # broker down: wait, reconnect, send the chunk again
                say(f"producer: chunk at {i:,} not acknowledged ({type(exc).__name__}); re-sending")
                state.resent_chunks += 1
                if producer is not None:
                    try:
                        producer.close(timeout=1)
                    except Exception:
                        pass
                producer = None
                time.sleep(2)
                continue
            i += len(part)
            state.produced = i
            ahead = i / rate - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)
    except Exception as exc:
        state.producer_error = repr(exc)
    finally:
        if producer is not None:
            producer.close(timeout=5)
        state.producer_done = True


def start_pipeline(settings: Settings, log_path: Path, max_offsets: int) -> subprocess.Popen:
    cmd = _lakehouse("run", "bronze", "silver", "gold", "--continuous", "--processing-time", "2 seconds",
                     "--max-offsets-per-trigger", str(max_offsets), *_common(settings))
    log = open(log_path, "ab")
    # Own process group: one SIGKILL takes the driver and its JVM together.
    return subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def commits(settings: Settings) -> int:
    """Micro-batches committed so far by every streaming job of the lake (checkpoint commit files)."""
    return sum(1 for _ in Path(settings.lake_root).glob("_checkpoints/*/*/commits/[0-9]*"))


def wait_for_progress(proc: subprocess.Popen, settings: Settings, timeout_s: float) -> bool:
    """Until this process commits a micro-batch (it is past start-up and recovery)."""
    base, deadline = commits(settings), time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        if commits(settings) > base:
            return True
        time.sleep(0.5)
    return False


def kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def run_to_end(settings: Settings, jobs: list[str], log_path: Path, attempts: int = 3) -> float:
    """availableNow run of `jobs`, restarted on failure as a job scheduler's retries would:
    a bronze batch replayed after a crash can end its query with Spark 4.1.1's
    KafkaMicroBatchStream.metrics NPE (apache/spark#55236) after the replay is committed."""
    started = time.monotonic()
    for attempt in range(1, attempts + 1):
        with open(log_path, "ab") as log:
            done = subprocess.run(_lakehouse("run", *jobs, *_common(settings)), cwd=ROOT, env=_env(), stdout=log,
                                  stderr=subprocess.STDOUT)
        if done.returncode == 0:
            return time.monotonic() - started
        say(f"run {' '.join(jobs)} failed (attempt {attempt}/{attempts}, see {log_path.name}); restarting")
    raise RuntimeError(f"run {' '.join(jobs)} failed {attempts} times; see {log_path}")


def kafka_records(settings: Settings) -> int:
    _, end = topic_offsets(settings, settings.events_topic)
    return sum(end.values())


def compare(drill: Settings, reference: Settings, kafka_count: int) -> dict:
    from pyspark.sql import SparkSession
    from pyspark.sql import functions as F

    from pipelines.core.session import build_spark
    from pipelines.core.tables import Lake

    # Inside pytest the suite's session is already running: use it and leave it running.
    active = SparkSession.getActiveSession()
    spark = active or build_spark("drill-compare", shuffle_partitions=4)
    a_lake, b_lake = Lake(drill), Lake(reference)
    tables = {}
    for table in TABLES:
        a, b = a_lake.read(spark, table), b_lake.read(spark, table)
        cols = [c for c in b.columns if c not in VOLATILE | PER_TABLE_VOLATILE.get(table, set())]
        a, b = a.select(*cols), b.select(*cols)
        extra, missing = a.exceptAll(b), b.exceptAll(a)
        tables[table] = {"rows": a.count(), "reference_rows": b.count(),
                         "extra": extra.count(), "missing": missing.count(), "compared_columns": len(cols)}
        if tables[table]["extra"] or tables[table]["missing"]:
            tables[table]["samples"] = {name: [r.asDict() for r in rows.limit(SAMPLE_ROWS).collect()]
                                        for name, rows in (("extra", extra), ("missing", missing))}
    bronze = a_lake.read(spark, "bronze.events")
    bronze_rows = bronze.count()
    distinct_coords = bronze.select("topic", "partition", "offset").distinct().count()
    silver = a_lake.read(spark, "silver.usage_events").select("account_id", "event_id").unionByName(
        a_lake.read(spark, "silver.account_events").select("account_id", "event_id"))
    identity_dupes = silver.groupBy("account_id", "event_id").count().filter(F.col("count") > 1).count()
    if active is None:
        spark.stop()
    return {"tables": tables, "bronze_rows": bronze_rows, "bronze_distinct": distinct_coords,
            "kafka_records": kafka_count, "silver_identity_duplicates": identity_dupes}


def main(argv: list[str] | None = None) -> int:
    from devtools import kafka_local
    from devtools.generator import GeneratorOptions, generate
    from pipelines.core import kafka_topics

    args = parse_args(argv)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    run_dir = (args.out or ROOT / "bench" / "out" / f"drill-{stamp}").resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    broker = Settings(local_dir=run_dir / "kafka-local", bootstrap_servers=f"127.0.0.1:{args.port}",
                      events_topic=TOPIC, lake_root=run_dir / "lake")
    reference = broker.with_overrides(lake_root=str(run_dir / "reference"))
    rng = random.Random(args.seed)
    state = DrillState()
    uptime_start = Path("/proc/loadavg").read_text().split()[:3]

    if args.compare_only:
        kafka_local.start(broker)
        try:
            count = kafka_records(broker)
        finally:
            kafka_local.stop(broker)
        compared = compare(broker, reference, count)
        print(json.dumps(compared, indent=1, default=str))
        ok = all(t["extra"] == t["missing"] == 0 for t in compared["tables"].values())
        return 0 if ok and compared["bronze_rows"] == compared["bronze_distinct"] == count else 1

    say(f"drill broker on {broker.bootstrap_servers} (data in {run_dir / 'kafka-local'})")
    kafka_local.start(broker)
    kafka_topics.ensure_topics(broker, {TOPIC: 3})
    try:
        now = datetime.now(UTC).replace(microsecond=0)
        # Forty days of event time: the previous calendar month is closed, so billing makes
        # final lines and the export ledger has rows to compare (a 48 h window in one open
        # month leaves only estimates, which are never exported).
        options = GeneratorOptions(count=args.events, accounts=args.accounts, seed=args.seed,
                                   start=now - timedelta(days=40), span=timedelta(days=40), now=now)
        records = list(generate(options))
        # Start-up under load takes ~40 s per process on the 2-core machine.
        mean_run = (args.min_run + args.max_run) / 2 + 40
        rate = args.rate or max(50.0, len(records) / (args.kills * mean_run * 0.8))
        say(f"{len(records):,} records generated; producing at {rate:,.0f}/s while killing the pipeline "
            f"{args.kills} times (each {args.min_run:g}-{args.max_run:g} s after its first micro-batch)")
        producer = threading.Thread(target=produce, args=(broker, records, rate, state), daemon=True)
        producer.start()

        broker_restart_at = None if args.no_broker_restart else max(1, args.kills // 2)
        pipeline_log = run_dir / "pipeline.log"
        while state.kills < args.kills or not state.producer_done:
            proc = start_pipeline(broker, pipeline_log, args.max_offsets_per_trigger)
            state.restarts += 1
            # Kill at a random moment once the process works (a kill during start-up only
            # tests start-up), so kills land mid-batch, between writes, anywhere.
            progressed = wait_for_progress(proc, broker, args.startup_timeout)
            life = rng.uniform(args.min_run, args.max_run)
            deadline = time.monotonic() + life
            if not progressed and proc.poll() is None:
                say(f"no micro-batch within {args.startup_timeout:g} s of a start; killing anyway")
            while time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.5)
            if proc.poll() is not None:
                say(f"pipeline exited by itself (status {proc.returncode}); restarting")
                continue
            if state.kills >= args.kills:
                # Kills done; the producer still runs: let this process live until it ends.
                while not state.producer_done and proc.poll() is None:
                    time.sleep(1)
                kill_group(proc)
                break
            kill_group(proc)
            state.kills += 1
            state.kill_times.append(round(elapsed(), 1))
            say(f"kill {state.kills}/{args.kills} {life:.0f} s after its first micro-batch; "
                f"produced {state.produced:,} so far, {commits(broker)} micro-batches committed")
            if state.kills == broker_restart_at:
                say("stopping the drill broker under load")
                kafka_local.stop(broker)
                restarted_pipeline = start_pipeline(broker, pipeline_log, args.max_offsets_per_trigger)
                time.sleep(rng.uniform(5, 15))
                kafka_local.start(broker)
                state.broker_restarts += 1
                say("drill broker back; the pipeline started while it was down keeps going")
                wait_for_progress(restarted_pipeline, broker, args.startup_timeout)
                time.sleep(rng.uniform(args.min_run, args.max_run))
                kill_group(restarted_pipeline)
                state.restarts += 1
        producer.join()
        if state.producer_error:
            raise RuntimeError(f"producer failed: {state.producer_error}")

        say("producer done; draining the stream, then billing and export (drill lake)")
        drain_s = run_to_end(broker, ["bronze", "silver", "gold", "billing", "export"], run_dir / "drain.log")
        say("reference run: one uninterrupted availableNow process over the same topic")
        ref_s = run_to_end(reference, ["bronze", "silver", "gold", "billing", "export"], run_dir / "reference.log")
        count = kafka_records(broker)
    finally:
        kafka_local.stop(broker)

    say("comparing tables")
    compared = compare(broker, reference, count)
    tables = compared["tables"]
    losses = sum(t["missing"] for t in tables.values())
    extras = sum(t["extra"] for t in tables.values())
    bronze_ok = compared["bronze_rows"] == compared["bronze_distinct"] == count
    ok = losses == 0 and extras == 0 and bronze_ok and compared["silver_identity_duplicates"] == 0
    silver_events = tables["silver.usage_events"]["rows"] + tables["silver.account_events"]["rows"]
    result = {
        "ok": ok, "command": command_line(), "events_generated": len(records), "kafka_records": count,
        "resent_chunks": state.resent_chunks, "kills_survived": state.kills, "broker_restarts": state.broker_restarts,
        "pipeline_starts": state.restarts, "kill_times_s": state.kill_times, "bronze_rows": compared["bronze_rows"],
        "bronze_distinct_records": compared["bronze_distinct"], "silver_events": silver_events,
        "silver_identity_duplicates": compared["silver_identity_duplicates"], "rows_extra": extras,
        "rows_missing": losses, "tables": tables, "drain_s": round(drain_s, 1), "reference_s": round(ref_s, 1),
        "wall_s": round(elapsed(), 1), "load_at_start": uptime_start,
        "load_at_end": Path("/proc/loadavg").read_text().split()[:3], "nproc": os.cpu_count(),
    }
    lines = [f"| {t} | {v['rows']:,} | {v['reference_rows']:,} | {v['extra']} | {v['missing']} |"
             for t, v in tables.items()]
    table = "\n".join(["| table | drill rows | reference rows | extra | missing |", "|---|---|---|---|---|", *lines])
    markdown = "\n".join([
        f"### Crash drill, {stamp} ({'PASS' if ok else 'FAIL'})", "",
        f"Command: `{command_line()}`; {os.cpu_count()} cores, load at start {' '.join(uptime_start)}, "
        f"wall {elapsed() / 60:.1f} min.", "",
        f"- kills survived: {state.kills} (SIGKILL of driver + JVM), broker restarts: {state.broker_restarts}, "
        f"pipeline starts: {state.restarts}",
        f"- events generated: {len(records):,}; records in Kafka: {count:,} "
        f"({state.resent_chunks} chunks re-sent after the broker outage)",
        f"- bronze rows: {compared['bronze_rows']:,} (distinct Kafka records {compared['bronze_distinct']:,})",
        f"- events in silver: {silver_events:,}; identity duplicates in silver: "
        f"{compared['silver_identity_duplicates']}; rows extra vs reference (duplicates): {extras}; "
        f"rows missing (losses): {losses}",
        "", table,
    ])
    write_outputs(run_dir, result, markdown, table)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
