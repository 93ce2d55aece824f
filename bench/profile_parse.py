"""What each step of silver's input costs per row: parse and validate, personal data, keys.

Run by hand from the repository root (no broker needed):

    .venv/bin/python -m bench.profile_parse                   # 100,000 records, best of 3
    .venv/bin/python -m bench.profile_parse --records 20000 --reps 2

`silver_input` (pipelines/ingest/silver.py) is the per-row work every silver micro-batch does
before its dedup state and writes: `parse_events` (VARIANT parse and the contract checks),
`with_protected_properties` (the PII config) and the hot-path keys. This script generates
records with the project generator (its default shares of bad records, re-sends, retries),
holds them in memory as bronze rows, and runs each cumulative prefix of that chain into a
`noop` sink. Each step's cost is the difference to the line above, so the table reads as a
budget; `pii alone` runs the PII transform on properties cut out of the raw JSON, to price it
without the parse.

The JVM compiles the generated code of a plan only after it has run a while, so whichever
step runs first pays for warming code the later ones share (in one trial the last step came
out 3 s cheaper than the one before it). Every step therefore runs once untimed, then the
steps run in `--reps` rounds and each keeps its best round.
"""
from __future__ import annotations

import argparse
import json
import secrets
import time
from datetime import UTC, datetime

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from bench.bench_common import bronze_frame, command_line, machine_info, machine_line, positive_int, say
from devtools import hostile
from devtools.generator import GeneratorOptions, generate
from pipelines.core.config import SilverConfig
from pipelines.core.contract import load_contract
from pipelines.ingest import silver as silver_job
from pipelines.core.context import JobContext
from pipelines.ingest.pii import load_pii_config, with_protected_properties
from pipelines.ingest.pii_key import parse_key_value
from pipelines.core.session import build_spark
from pipelines.core.settings import Settings
from pipelines.ingest.parse import parse_events


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--records", type=positive_int, default=100_000)
    p.add_argument("--reps", type=positive_int, default=3, help="timed rounds; each step keeps its best")
    p.add_argument("--seed", type=int, default=7)
    return p.parse_args(argv)


def bronze_rows(spark, records: int, seed: int) -> DataFrame:
    now = datetime.now(UTC).replace(tzinfo=None)
    generated = list(generate(GeneratorOptions(count=records, seed=seed)))
    return bronze_frame(spark, generated, topic="bench", first_offset=0, ingested_at=now).localCheckpoint(eager=True)


def steps(bronze: DataFrame) -> tuple[list[tuple[str, DataFrame]], list[tuple[str, DataFrame]]]:
    """(cumulative prefixes of silver_input in its order, steps timed on their own). The
    last prefix is silver_input itself, so the whole figure is what silver runs."""
    pii = load_pii_config()
    # A throwaway key of the production shape (the bench's lake has none of its own).
    key = parse_key_value("v1:" + secrets.token_hex(32), "bench")
    parsed = bronze.transform(parse_events(load_contract(1), SilverConfig()))
    protected = parsed.transform(with_protected_properties(pii, key))
    keyed = silver_job.silver_input(bronze, JobContext.from_settings(Settings()))
    properties = F.get_json_object(F.col("value").cast("string"), "$.properties")
    chain = [
        ("read the rows", bronze),
        ("+ parse_events (VARIANT, contract checks)", parsed),
        ("+ with_protected_properties (PII)", protected),
        ("+ hot-path keys (= silver_input)", keyed),
    ]
    # The generator's properties are rarely personal; this line prices the hashing itself:
    # every record carries one of the hostile corpus's PII cases.
    cases = F.array(*[F.lit(json.dumps(c)) for c in hostile.PII])
    personal = F.element_at(cases, (F.col("offset") % len(hostile.PII) + 1).cast("int"))
    alone = [("PII alone, on properties cut from the raw JSON",
              bronze.withColumn("properties", properties).transform(with_protected_properties(pii, key))),
             ("PII alone, every record personal (hostile PII cases)",
              bronze.withColumn("properties", personal).transform(with_protected_properties(pii, key)))]
    return chain, alone


def run_seconds(df: DataFrame) -> float:
    started = time.monotonic()
    df.write.format("noop").mode("overwrite").save()
    return time.monotonic() - started


def best_seconds(named: list[tuple[str, DataFrame]], reps: int) -> dict[str, float]:
    """Best of `reps` rounds per step, after one untimed round that warms the JIT for all."""
    for name, df in named:
        say(f"warm-up: {name}")
        run_seconds(df)
    best = {name: float("inf") for name, _ in named}
    for round_no in range(1, reps + 1):
        say(f"round {round_no}/{reps}")
        for name, df in named:
            best[name] = min(best[name], run_seconds(df))
    return best


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    spark = build_spark("profile-parse", shuffle_partitions=2)
    try:
        say(f"generating {args.records:,} records (seed {args.seed})")
        bronze = bronze_rows(spark, args.records, args.seed)
        machine = machine_info(spark)
        lines = [f"| step | best of {args.reps} (s) | rows/s | step cost (s) |", "|---|---:|---:|---:|"]
        chain, alone = steps(bronze)
        best = best_seconds(chain + alone, args.reps)
        chained = {name for name, _ in chain}
        previous = None
        for name, seconds in best.items():
            step = f"{seconds - previous:.2f}" if name in chained and previous is not None else ""
            lines.append(f"| {name} | {seconds:.2f} | {args.records / seconds:,.0f} | {step} |")
            previous = seconds if name in chained else None
        print(f"\nCommand: `{command_line()}`\n")
        print(f"{machine_line(machine)}\n")
        print("\n".join(lines))
    finally:
        spark.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
