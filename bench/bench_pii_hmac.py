"""What the keyed PII hashing costs on silver's input path, against the salted sha256 it replaced.

Run by hand from the repository root (no broker needed):

    .venv/bin/python -m bench.bench_pii_hmac                     # 50,000 records, best of 3
    .venv/bin/python -m bench.bench_pii_hmac --records 20000 --reps 2

Two ways of hashing, on the same rows, in one process, rounds interleaved (the machine's
load moves; a before/after pair run minutes apart measured the neighbours as much as us):

- `salted sha256 (before)`: h(v) = sha256("<salt>|v"), the salt a literal in the plan, no
  join: what silver ran before the keyed hashing (the same transform with `hmac_hex` and
  `with_key_columns` swapped for that formula).
- `keyed HMAC (after)`: h(v) = "hmac:v1:" + HMAC-SHA256, the padded key joined in as a
  one-row broadcast relation (pipelines/ingest/pii.py).

Each on three inputs: `silver_input` over generator records (parse, checks, PII, hot-path
keys: what every silver micro-batch runs per row), the PII step alone on the generator's
properties (rarely personal), and the PII step alone with every record personal (the
hostile corpus's PII cases), which prices the hashing itself.
"""
from __future__ import annotations

import argparse
import json
import secrets
import time
from contextlib import contextmanager

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from bench.bench_common import command_line, machine_info, machine_line, positive_int, say
from bench.profile_parse import bronze_rows
from devtools import hostile
from pipelines.ingest import pii
from pipelines.ingest import silver as silver_job
from pipelines.core.context import JobContext
from pipelines.ingest.pii_key import parse_key_value
from pipelines.core.session import build_spark
from pipelines.core.settings import Settings


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--records", type=positive_int, default=50_000)
    p.add_argument("--reps", type=positive_int, default=3, help="timed rounds; each case keeps its best")
    p.add_argument("--seed", type=int, default=7)
    return p.parse_args(argv)


@contextmanager
def salted_sha256():
    """While open, frames built with the PII transform hash as before the keyed HMAC."""
    saved = pii.hmac_hex, pii.with_key_columns
    pii.hmac_hex = lambda v, key: F.sha2(F.concat(F.lit("bench-salt|"), v), 256)
    pii.with_key_columns = lambda df, key: df
    try:
        yield
    finally:
        pii.hmac_hex, pii.with_key_columns = saved


def cases(bronze: DataFrame, ctx: JobContext) -> list[tuple[str, str, DataFrame]]:
    config = pii.load_pii_config()
    key = parse_key_value("v1:" + secrets.token_hex(32), "bench")
    properties = F.get_json_object(F.col("value").cast("string"), "$.properties")
    personal_cases = F.array(*[F.lit(json.dumps(c)) for c in hostile.PII])
    personal = F.element_at(personal_cases, (F.col("offset") % len(hostile.PII) + 1).cast("int"))
    inputs = {
        "silver_input (generator records)": lambda: silver_job.silver_input(bronze, ctx),
        "PII step alone, generator properties": lambda: bronze.withColumn("properties", properties)
        .transform(pii.with_protected_properties(config, key)),
        "PII step alone, every record personal": lambda: bronze.withColumn("properties", personal)
        .transform(pii.with_protected_properties(config, key)),
    }
    out = []
    for name, build in inputs.items():
        with salted_sha256():
            out.append((name, "salted sha256 (before)", build()))
        out.append((name, "keyed HMAC (after)", build()))
    return out


def run_seconds(df: DataFrame) -> float:
    started = time.monotonic()
    df.write.format("noop").mode("overwrite").save()
    return time.monotonic() - started


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    spark = build_spark("bench-pii-hmac", shuffle_partitions=2)
    try:
        say(f"generating {args.records:,} records (seed {args.seed})")
        bronze = bronze_rows(spark, args.records, args.seed)
        machine = machine_info(spark)
        named = cases(bronze, JobContext.from_settings(Settings()))
        for name, variant, df in named:
            say(f"warm-up: {name}, {variant}")
            run_seconds(df)
        best: dict[tuple[str, str], float] = {}
        for round_no in range(1, args.reps + 1):
            say(f"round {round_no}/{args.reps}")
            for name, variant, df in named:
                best[(name, variant)] = min(best.get((name, variant), float("inf")), run_seconds(df))
        lines = ["| input | salted sha256, before (s) | keyed HMAC, after (s) | after / before | "
                 "after rows/s |", "|---|---:|---:|---:|---:|"]
        for name in dict.fromkeys(n for n, _, _ in named):
            before, after = best[(name, "salted sha256 (before)")], best[(name, "keyed HMAC (after)")]
            lines.append(f"| {name} | {before:.2f} | {after:.2f} | {after / before:.2f} | "
                         f"{args.records / after:,.0f} |")
        print(f"\nCommand: `{command_line()}`\n")
        print(f"{machine_line(machine)}\n")
        print(f"{args.records:,} records, best of {args.reps} interleaved rounds after a warm-up round:\n")
        print("\n".join(lines))
    finally:
        spark.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
