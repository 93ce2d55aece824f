"""Hostile input at full size: a seeded corpus through the real broker, bronze and silver.

    .venv/bin/python -m bench.bench_hostile                  # 100,000 records (broker running)
    .venv/bin/python -m bench.bench_hostile --count 5000

1. `devtools.hostile` generates the seeded corpus (truncated and deeply nested JSON, huge
   strings and numbers, NaN/Infinity, wrong types, invalid UTF-8, lone surrogates, empty and
   null keys and values, bad and future timestamps, duplicated keys, random bytes, and good
   events), sent to a fresh topic.
2. `lakehouse run bronze silver` (availableNow, in this process) into a fresh lake under the
   run folder.
3. Every Kafka record is accounted for: bronze holds each once, and each bronze record is in
   exactly one silver table (`pipelines.billing.audit.record_homes`), and, record by record, it is
   quarantined exactly when the unit tests' independent reading of the contract calls it
   bad (`tests/unit/test_hostile_input.judge`: Python's json, the JSON Schema, the decimal,
   timestamp and future rules); no raw personal data from properties is in any silver table.

Exit status 0 only when all of that holds. The CI-size version is
tests/integration/test_hostile_kafka.py (300 records).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

from bench.bench_common import (
    command_block, command_line, elapsed, machine_info, machine_line, positive_int, say, write_outputs,
)
from devtools import hostile
from pipelines.core.settings import Settings

ROOT = Path(__file__).resolve().parent.parent

def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--count", type=positive_int, default=100_000)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--max-offsets-per-trigger", type=positive_int, default=20_000,
                   help="Kafka records per bronze micro-batch (default 20000)")
    p.add_argument("--max-files-per-trigger", type=positive_int, default=4,
                   help="bronze files per silver micro-batch (default 4)")
    p.add_argument("--out", type=Path, default=None, help="run folder (default bench/out/hostile-<time>)")
    return p.parse_args(argv)


def send_corpus(settings: Settings, count: int, seed: int) -> tuple[int, Counter]:
    """Send the corpus; return (sent, records per corpus category)."""
    categories = Counter()

    def counted():
        for i, record in enumerate(hostile.Corpus(seed).records(count), 1):
            categories[record.category] += 1
            if i % 20_000 == 0:
                say(f"sent {i:,}/{count:,}")
            yield record

    return hostile.send(counted(), settings), categories


def judge_placements(spark, lake, chunk: int = 5_000) -> tuple[Counter, Counter, list]:
    """Every bronze record's silver placement against the judge, record by record:
    (verdicts, what was wrong -> count, a few samples). Read in offset ranges of `chunk`
    records per Kafka partition: the corpus holds values of hundreds of KB, and a whole
    partition of them does not fit the driver."""
    from pyspark.sql import functions as F

    from pipelines.billing.audit import record_homes
    from pipelines.core.tables import COORDINATES
    from pipelines.ingest.parse import with_kafka_coordinates
    from tests.unit.test_hostile_input import judge, misplaced

    homes = record_homes(spark, lake).localCheckpoint()
    bronze = (lake.read(spark, "bronze.events").transform(with_kafka_coordinates)
              .select(*COORDINATES, "value", "ingested_at"))
    ranges = bronze.groupBy("kafka_partition").agg(F.min("kafka_offset").alias("lo"), F.max("kafka_offset").alias("hi"))
    verdicts, wrong, samples = Counter(), Counter(), []
    for part in ranges.collect():  # one row per Kafka partition
        for start in range(part.lo, part.hi + 1, chunk):
            rows = (bronze.filter((F.col("kafka_partition") == part.kafka_partition)
                                  & F.col("kafka_offset").between(start, start + chunk - 1))
                    .join(F.broadcast(homes), on=COORDINATES, how="left"))
            for r in rows.collect():  # at most `chunk` records
                value = bytes(r.value) if r.value is not None else None
                verdict = judge(value, r.ingested_at.replace(tzinfo=UTC))
                verdicts[verdict] += 1
                if problem := misplaced(verdict, r.homes or []):
                    wrong[problem.split(" (")[0].split(":")[0]] += 1
                    if len(samples) < 5:
                        samples.append({"problem": problem, "value": (value or b"")[:300].decode("utf-8", "replace")})
        say(f"judged partition {part.kafka_partition}: {sum(verdicts.values()):,} records so far")
    homes.unpersist()
    return verdicts, wrong, samples


def main(argv=None) -> int:
    from pipelines.billing.audit import count_homes, properties_containing, record_homes
    from pipelines.core.context import JobContext, RunOptions
    from pipelines.runner import ProgressReporter, run_jobs
    from pipelines.core.session import build_spark
    from pipelines.core.tables import Lake

    args = parse_args(argv)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    run_dir = (args.out or ROOT / "bench" / "out" / f"hostile-{stamp}").resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    settings = Settings().with_overrides(lake_root=run_dir / "lake", events_topic=f"bench.hostile.{stamp}")

    say(f"sending {args.count:,} hostile records (seed {args.seed}) to {settings.events_topic}")
    started = time.monotonic()
    sent, categories = send_corpus(settings, args.count, args.seed)
    send_s = time.monotonic() - started
    say(f"sent {sent:,} in {send_s:.0f} s")

    spark = build_spark("bench-hostile")
    machine = machine_info(spark, kafka=True)
    ctx = JobContext.from_settings(settings, RunOptions(max_offsets_per_trigger=args.max_offsets_per_trigger,
                                                        max_files_per_trigger=args.max_files_per_trigger))
    reporter = ProgressReporter()
    started = time.monotonic()
    run_jobs(spark, ctx, ["bronze", "silver"], reporter=reporter, log=say)
    pipeline_s = time.monotonic() - started

    lake = Lake(settings)
    bronze_rows = lake.read(spark, "bronze.events").count()
    places = Counter({r.home: r["count"] for r in count_homes(record_homes(spark, lake)).collect()})
    reasons = {r.reason: r["count"] for r in lake.read(spark, "silver.quarantine").groupBy("reason").count().collect()}
    leaks = properties_containing(spark, lake, hostile.RAW_PII).count()
    say("judging every record against its silver placement")
    verdicts, wrong, samples = judge_placements(spark, lake)
    load_at_end = list(os.getloadavg())
    spark.stop()

    checks = {
        "bronze holds every record once": bronze_rows == sent,
        "no record lost": places[""] == 0,
        "no record in two tables": not any("+" in home for home in places),
        "every record placed": sum(places.values()) == sent,
        "each record placed as the judge reads the contract": not wrong,
        "no raw personal data in silver": leaks == 0,
    }
    ok = all(checks.values())
    result = {"command": command_line(), "machine": machine, "sent": sent, "bronze_rows": bronze_rows,
              "placements": dict(places), "judge": {str(k): v for k, v in verdicts.items()},
              "misplaced": dict(wrong), "misplaced_samples": samples,
              "categories": dict(categories), "quarantine_reasons": reasons, "pii_leaks": leaks,
              "send_s": round(send_s, 1), "pipeline_s": round(pipeline_s, 1),
              "silver_batches": reporter.totals["silver"].batches, "checks": checks, "ok": ok}
    table = "\n".join([
        "| records sent | bronze | usage | account | duplicates | quarantine | lost | in two tables "
        "| judge: bad / unreadable | misplaced by the judge | PII leaks | result |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        f"| {sent:,} | {bronze_rows:,} | {places['usage']:,} | {places['account']:,} | {places['duplicate']:,} "
        f"| {places['quarantine']:,} | {places['']:,} | {sum(v for k, v in places.items() if '+' in k):,} "
        f"| {verdicts[False]:,} / {verdicts[None]:,} | {sum(wrong.values()):,} | {leaks} | {'PASS' if ok else 'FAIL'} |",
    ])
    markdown = "\n".join([
        f"### {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {sent:,} hostile records", "",
        *command_block(command_line(), where="broker running"),
        machine_line(machine, load_at_end=load_at_end), "",
        table, "",
        f"Send {send_s:.0f} s; bronze + silver {pipeline_s:.0f} s "
        f"({reporter.totals['silver'].batches} silver micro-batches). Corpus categories: "
        + ", ".join(f"{k} {v:,}" for k, v in sorted(categories.items())) + ".", "",
        "Quarantine reasons: " + ", ".join(f"{k} {v:,}" for k, v in sorted(reasons.items())) + ".", "",
        "Checks: " + ", ".join(f"{k} {'yes' if v else '**NO**'}" for k, v in checks.items()) + ".",
        *([""] + [f"- misplaced: {x['problem']}: `{x['value'][:160]}`" for x in samples] if samples else []),
    ])
    write_outputs(run_dir, result, markdown, table)
    say(f"{'PASS' if ok else 'FAIL'} in {elapsed():.0f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
