"""Ingestion benchmark: raw Kafka-to-Delta copy vs the bronze -> silver path, plus dedup state.

Run by hand (it is long), from the repository root, with the local broker up:

    .venv/bin/python -m bench.bench_ingest                       # 1,000,000 events
    .venv/bin/python -m bench.bench_ingest --events 50000 --watermark-delay-seconds 2
    .venv/bin/python -m bench.bench_ingest --events 10000000 --produce-only   # then, later:
    .venv/bin/python -m bench.bench_ingest --events 10000000 --topic bench.events.<stamp>

One run, one set of events:

1. produce  N synthetic events (the project's generator, its default duplicate / retry /
            late / bad shares) once into a fresh topic `bench.events.<stamp>`; the produce
            rate is reported but is not part of the ratio. The topic keeps every record
            (the local broker deletes beyond 256 MiB a partition, which 10M events pass).
            --produce-only stops here and keeps the topic; --topic runs the rest on such
            a topic, with the labels its producing run recorded, so a 10M run can be split
            in two (producing takes about 30 minutes);
2. raw      Spark readStream Kafka -> writeStream Delta, key/value/coordinates only, no
            parsing, trigger availableNow: the baseline events/s;
3. bronze   the project's bronze job over the same topic, capped per trigger
            (--bronze-batch) so bronze is written as many versions whose ingested_at grows;
4. silver   the project's silver job over that bronze, with a short watermark delay
            (--watermark-delay-seconds) and a per-trigger cap (--silver-files-per-trigger)
            so it runs many micro-batches; silver-path events/s = bronze rows / silver wall
            time; ratio = silver-path events/s / raw events/s;
5. state    per silver micro-batch: the dedup state's row count (numRowsTotal), the
            watermark and the batch's ingested_at range; the run must span >= 10 watermark
            delays of ingested_at; bounded = the last third's peak <= 1.5 x the first third's.

Outputs go to --out (default bench/out, git-ignored): a CSV of per-batch state rows, a PNG
plot, the raw progress reports of the three queries (JSON), a summary JSON and results.md, the markdown
block also printed at the end, ready to paste into bench/RESULTS.md (nothing is appended
automatically). The lake is a temporary folder under --out and the topic is deleted at the
end, unless --keep.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shutil
import socket
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bench.bench_common import (
    command_block, command_line, delete_topic, machine_info, machine_line, positive_int, say, topic_offsets,
    write_outputs,
)
from devtools import kafka_local
from devtools.generator import GeneratorOptions, generate, kind_family
from devtools.sender import send
from pipelines.core import kafka_topics
from pipelines.core.context import JobContext, RunOptions
from pipelines.runner import ProgressReporter, run_jobs
from pipelines.core.settings import Settings

REPO_ROOT = Path(__file__).resolve().parent.parent

# Issue 19's aim at 1M events (0.25 at 10M): silver at least 0.30 of a raw copy cut into the same batches.
TARGET_RATIO = 0.30
MIN_DELAY_MULTIPLES = 10
BOUNDED_GROWTH = 1.5  # last third's peak state vs the first third's


# --------------------------------------------------------------------------- small helpers


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Raw Kafka->Delta copy vs bronze->silver events/s on the same events, and the "
                    "silver dedup state's size across a run spanning >= 10 watermark delays.",
    )
    p.add_argument("--events", type=positive_int, default=1_000_000, help="events to produce (default: %(default)s)")
    p.add_argument("--accounts", type=positive_int, default=500, help="merchant accounts in the generator (default: %(default)s)")
    p.add_argument("--seed", type=int, default=42, help="generator seed (default: %(default)s)")
    p.add_argument("--partitions", type=positive_int, default=3, help="partitions of the bench topic (default: %(default)s)")
    p.add_argument("--watermark-delay-seconds", type=positive_int, default=5,
                   help="silver watermark delay; the run must span >= 10x this in ingested_at (default: %(default)s)")
    p.add_argument("--bronze-batch", type=positive_int, default=None,
                   help="maxOffsetsPerTrigger of the bronze job (default: events/50 + 1%%, i.e. ~50 bronze versions)")
    p.add_argument("--silver-files-per-trigger", type=positive_int, default=None,
                   help="maxFilesPerTrigger of the silver job (default: 5 x --partitions: a bronze version "
                        "is one file per Kafka partition, so ~5 bronze versions per silver micro-batch)")
    p.add_argument("--raw-batch", type=positive_int, default=None,
                   help="maxOffsetsPerTrigger of the raw copy (default: the silver micro-batch size, "
                        "--bronze-batch x files per silver trigger / partitions, so both run the same cuts)")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "out", help="output folder (default: bench/out)")
    p.add_argument("--keep", action="store_true", help="keep the bench lake and the bench topic (default: delete both)")
    p.add_argument("--produce-only", action="store_true",
                   help="produce into a new topic, record its labels under OUT/topics/ and stop, keeping the topic")
    p.add_argument("--topic", default=None,
                   help="skip producing: run on this topic, made earlier by --produce-only with the same "
                        "--events/--accounts/--seed/--partitions (it is kept)")
    args = p.parse_args(argv)
    if args.produce_only and args.topic:
        p.error("--produce-only makes a new topic; --topic reuses one: pick one")
    if args.bronze_batch is None:
        # 1% headroom: the Kafka source splits the cap across partitions rounding down, and
        # an exact events/50 would leave a tail batch of a few dozen rows.
        args.bronze_batch = max(1, math.ceil(args.events / 50 * 1.01))
    if args.silver_files_per_trigger is None:
        args.silver_files_per_trigger = 5 * args.partitions
    if args.raw_batch is None:
        args.raw_batch = args.bronze_batch * max(1, args.silver_files_per_trigger // args.partitions)
    return args


def parse_ts(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


def rate(rows: float, seconds: float) -> float:
    return rows / seconds if seconds > 0 else float("nan")


# --------------------------------------------------------------------------- machine


# --------------------------------------------------------------------------- kafka


def produce(settings: Settings, topic: str, args: argparse.Namespace) -> dict:
    kafka_topics.ensure_topics(settings, {topic: args.partitions}, configs=kafka_local.RETAIN_EVERYTHING)
    options = GeneratorOptions(count=args.events, accounts=args.accounts, seed=args.seed, now=datetime.now(UTC))
    kinds: Counter = Counter()
    every = max(10_000, args.events // 10)
    started = time.monotonic()

    def tallied():
        for record in generate(options):
            kinds[record.kind] += 1
            yield record

    def progress(n: int) -> None:
        if n % every == 0:
            say(f"produce: {n:,}/{args.events:,} ({rate(n, time.monotonic() - started):,.0f}/s)")

    sent = send(tallied(), settings, topic=topic, progress=progress)
    seconds = time.monotonic() - started
    families = Counter()
    for kind, n in kinds.items():
        families[kind_family(kind)] += n
    return {"records": sent, "seconds": seconds, "events_per_s": rate(sent, seconds),
            "kinds": dict(sorted(kinds.items())), "families": dict(sorted(families.items())),
            "generator": {"accounts": options.accounts, "seed": options.seed, **options.shares()}}


def check_topic_holds(settings: Settings, topic: str, events: int) -> dict[int, int]:
    """End offsets, once the topic is known to hold exactly `events` records from offset 0:
    a record deleted by retention would otherwise surface an hour later as a Spark error."""
    begin, end = topic_offsets(settings, topic)
    if any(begin.values()):
        raise RuntimeError(f"topic {topic} lost its first records to retention (beginning offsets {begin}); "
                           "produce it again (bench topics are created with retention disabled)")
    if sum(end.values()) != events:
        raise RuntimeError(f"topic {topic} holds {sum(end.values()):,} records, expected {events:,}")
    return end


def disk_line(lake: Path) -> str:
    """The lake's size and the free disk: a 10M run once filled the disk in silver."""
    try:
        size = sum(f.stat().st_size for f in lake.rglob("*") if f.is_file())
        return f"disk: lake {size / 2**30:.2f} GiB, {shutil.disk_usage(lake).free / 2**30:.1f} GiB free"
    except OSError as exc:  # informative only: never hide the error being reported
        return f"disk: unknown ({exc})"


def manifest_path(args: argparse.Namespace, topic: str) -> Path:
    return args.out.resolve() / "topics" / f"{topic}.json"


def write_manifest(args: argparse.Namespace, topic: str, produced: dict) -> Path:
    path = manifest_path(args, topic)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"topic": topic, **_generator_args(args), "produce": produced}, indent=1))
    return path


def read_manifest(args: argparse.Namespace, topic: str) -> dict:
    """What the producing run recorded: its labels (kinds), timing and generator arguments,
    which must be this run's, or silver would be checked against another event set."""
    path = manifest_path(args, topic)
    if not path.exists():
        raise RuntimeError(f"no record of how {topic} was produced ({path}); make it with --produce-only")
    manifest, wanted = json.loads(path.read_text()), _generator_args(args)
    recorded = {k: manifest.get(k) for k in wanted}
    if recorded != wanted:
        raise RuntimeError(f"{topic} was produced with {recorded}, this run asks for {wanted}")
    return manifest["produce"]


def _generator_args(args: argparse.Namespace) -> dict:
    return {"events": args.events, "accounts": args.accounts, "seed": args.seed, "partitions": args.partitions}


# --------------------------------------------------------------------------- spark stages


def progress_dicts(reporter: ProgressReporter, name: str) -> list[dict]:
    return [json.loads(p.json) if hasattr(p, "json") else dict(p)
            for p in reporter.history if (p.get("name") or "") == name]


def await_query(query, reporter: ProgressReporter) -> None:
    while query.isActive:
        reporter.poll(query)
        if query.exception():
            raise query.exception()
        query.awaitTermination(1.0)
    reporter.poll(query)
    if query.exception():
        raise query.exception()


def warm_up(spark, settings: Settings, topic: str, offsets: dict[int, int], lake: Path) -> None:
    """Load the Kafka and Delta code paths once (JIT, class loading) outside any timing."""
    ending = json.dumps({topic: {str(p): min(off, 2_000) for p, off in offsets.items()}})
    (spark.read.format("kafka")
     .option("kafka.bootstrap.servers", settings.bootstrap_servers)
     .option("subscribe", topic).option("startingOffsets", "earliest").option("endingOffsets", ending)
     .load().select("key", "value", "topic", "partition", "offset")
     .write.format("delta").mode("overwrite").save(str(lake / "_bench" / "warmup")))


def raw_copy(spark, settings: Settings, topic: str, lake: Path, args: argparse.Namespace) -> dict:
    reader = (spark.readStream.format("kafka")
              .option("kafka.bootstrap.servers", settings.bootstrap_servers)
              .option("subscribe", topic).option("startingOffsets", "earliest")
              .option("failOnDataLoss", "true"))
    if args.raw_batch:
        reader = reader.option("maxOffsetsPerTrigger", str(args.raw_batch))
    path = str(lake / "_bench" / "raw_copy")
    reporter = ProgressReporter()
    started = time.monotonic()
    query = (reader.load().select("key", "value", "topic", "partition", "offset")
             .writeStream.format("delta").outputMode("append").queryName("raw_copy")
             .option("checkpointLocation", str(lake / "_bench" / "_checkpoints" / "raw_copy"))
             .trigger(availableNow=True).start(path))
    await_query(query, reporter)
    seconds = time.monotonic() - started
    rows = spark.read.format("delta").load(path).count()
    return {"rows": rows, "seconds": seconds, "events_per_s": rate(rows, seconds),
            "batches": reporter.totals["raw_copy"].batches, "progress": progress_dicts(reporter, "raw_copy")}


def run_bronze(spark, settings: Settings, args: argparse.Namespace) -> dict:
    from pyspark.sql import functions as F

    ctx = JobContext.from_settings(settings, RunOptions(max_offsets_per_trigger=args.bronze_batch))
    reporter = ProgressReporter()
    started = time.monotonic()
    run_jobs(spark, ctx, ["bronze"], reporter=reporter, log=say)
    seconds = time.monotonic() - started
    row = (ctx.lake.read(spark, "bronze.events")
           .agg(F.count(F.lit(1)).alias("rows"), F.min("ingested_at").alias("first"),
                F.max("ingested_at").alias("last"), F.countDistinct("ingested_at").alias("versions"))
           .first())
    span = (row["last"] - row["first"]).total_seconds() if row["rows"] else 0.0
    files = spark.sql(f"DESCRIBE DETAIL delta.`{ctx.lake.path('bronze.events')}`").first()["numFiles"]
    return {"rows": row["rows"], "seconds": seconds, "events_per_s": rate(row["rows"], seconds),
            "batches": reporter.totals["bronze"].batches, "ingested_at_versions": row["versions"],
            "files": files, "progress": progress_dicts(reporter, "bronze"),
            "ingested_at_first": row["first"].isoformat() if row["first"] else None,
            "ingested_at_last": row["last"].isoformat() if row["last"] else None,
            "ingested_at_span_s": span}


def run_silver(spark, settings: Settings, args: argparse.Namespace) -> tuple[dict, list[dict]]:
    base = JobContext.from_settings(settings, RunOptions(max_files_per_trigger=args.silver_files_per_trigger))
    ctx = replace(base, silver=replace(base.silver, watermark_delay=timedelta(seconds=args.watermark_delay_seconds)))
    reporter = ProgressReporter()
    started = time.monotonic()
    run_jobs(spark, ctx, ["silver"], reporter=reporter, log=say)
    seconds = time.monotonic() - started
    totals = reporter.totals["silver"]
    history = progress_dicts(reporter, "silver")
    counts = {name: ctx.lake.read(spark, name).count()
              for name in ("silver.usage_events", "silver.account_events", "silver.duplicates", "silver.quarantine")}
    accounting = silver_accounting(spark, ctx, counts, totals.dropped_duplicates)
    busy = sorted(int((p.get("durationMs") or {}).get("triggerExecution") or 0) / 1000
                  for p in history if p.get("numInputRows"))
    return ({"input_rows": totals.input_rows, "seconds": seconds, "batches": totals.batches,
             "data_batches": len(busy), "batch_seconds_median": busy[len(busy) // 2] if busy else None,
             "batch_seconds_max": busy[-1] if busy else None,
             "hot_path_dropped_duplicates": totals.dropped_duplicates, "tables": counts,
             "accounting": accounting}, history)


def run_floor(spark, settings: Settings, lake: Path, args: argparse.Namespace) -> dict:
    """The silver stream without its foreachBatch: parse, validate and the hot-path dedup
    into a no-op sink, same batches. What is left when every silver write is free; the
    gap to the silver job is the cost of the writes and history checks."""
    from pipelines.ingest import silver as silver_job

    base = JobContext.from_settings(settings, RunOptions(max_files_per_trigger=args.silver_files_per_trigger))
    ctx = replace(base, silver=replace(base.silver, watermark_delay=timedelta(seconds=args.watermark_delay_seconds)))
    reporter = ProgressReporter()
    started = time.monotonic()
    query = (silver_job.read_bronze(spark, ctx)
             .transform(lambda df: silver_job.silver_input(df, ctx))
             .transform(silver_job.drop_hot_duplicates(args.watermark_delay_seconds))
             .writeStream.format("noop").queryName("silver_floor")
             .option("checkpointLocation", str(lake / "_bench" / "_checkpoints" / "silver_floor"))
             .trigger(availableNow=True).start())
    await_query(query, reporter)
    seconds = time.monotonic() - started
    totals = reporter.totals["silver_floor"]
    return {"input_rows": totals.input_rows, "seconds": seconds, "batches": totals.batches}


def silver_accounting(spark, ctx: JobContext, counts: dict, hot_dropped: int) -> dict:
    """Where every bronze row went: kept (usage/account), quarantined, dropped by a custom
    rule (silver.duplicates), dropped by identity after the hot path (counted in
    ops.silver_batches; byte-identical copies get no silver.duplicates row by design), or
    dropped by the hot path (the state operator's metric)."""
    from pyspark.sql import functions as F

    out: dict = {"hot_path_dropped": hot_dropped}
    try:
        by_rule = {r["rule"]: r["count"] for r in ctx.lake.read(spark, "silver.duplicates").groupBy("rule").count().collect()}
        ops = ctx.lake.read(spark, "ops.silver_batches").agg(
            F.sum("rows_in").alias("rows_in"), F.sum("identity_duplicates").alias("identity_duplicates"),
            F.sum("late_events").alias("late_events")).first()
    except Exception as exc:  # noqa: BLE001 - informative only; the tables belong to the pipeline
        say(f"accounting skipped: {exc.__class__.__name__}: {str(exc).splitlines()[0][:200]}")
        return out
    # Each record makes a copy claim and (if good) an event claim in the state, so the
    # operator's dropped-rows metric counts claims; the records it dropped are the bronze
    # rows whose copy claim never reached a batch.
    bronze_rows = ctx.lake.read(spark, "bronze.events").count()
    hot_dropped = bronze_rows - int(ops["rows_in"] or 0)
    out["hot_path_dropped_claims"] = out["hot_path_dropped"]
    out["hot_path_dropped"] = hot_dropped
    out.update({
        "duplicates_by_rule": by_rule,
        "rule_dropped": sum(n for rule, n in by_rule.items() if rule != "identity"),
        "identity_dropped_after_hot_path": int(ops["identity_duplicates"] or 0),
        "silver_rows_in": int(ops["rows_in"] or 0),
        "late_events": int(ops["late_events"] or 0),
    })
    out["accounted"] = (counts["silver.usage_events"] + counts["silver.account_events"] + counts["silver.quarantine"]
                        + out["rule_dropped"] + out["identity_dropped_after_hot_path"] + hot_dropped)
    return out


# --------------------------------------------------------------------------- state analysis


@dataclass
class BatchState:
    batch_id: int
    trigger_time: str
    input_rows: int
    cumulative_input_rows: int
    state_rows: int
    state_rows_updated: int
    state_rows_removed: int
    dropped_duplicates: int
    state_memory_bytes: int
    watermark: str | None
    ingested_at_min: str | None
    ingested_at_max: str | None
    seconds_since_first_ingest: float | None
    delay_multiples: float | None
    trigger_ms: int


def state_rows_per_batch(history: list[dict], first_ingest: datetime, delay_s: int) -> list[BatchState]:
    rows: list[BatchState] = []
    cumulative = 0
    last_max: datetime | None = None
    for p in sorted(history, key=lambda p: p["batchId"]):
        ops = p.get("stateOperators") or []
        event_time = p.get("eventTime") or {}
        n = int(p.get("numInputRows") or 0)
        cumulative += n
        hi = parse_ts(event_time.get("max"))
        last_max = hi or last_max
        since = (last_max - first_ingest).total_seconds() if last_max else None
        rows.append(BatchState(
            batch_id=int(p["batchId"]), trigger_time=p.get("timestamp"), input_rows=n,
            cumulative_input_rows=cumulative,
            state_rows=sum(int(op.get("numRowsTotal") or 0) for op in ops),
            state_rows_updated=sum(int(op.get("numRowsUpdated") or 0) for op in ops),
            state_rows_removed=sum(int(op.get("numRowsRemoved") or 0) for op in ops),
            dropped_duplicates=sum(int((op.get("customMetrics") or {}).get("numDroppedDuplicateRows") or 0) for op in ops),
            state_memory_bytes=sum(int(op.get("memoryUsedBytes") or 0) for op in ops),
            watermark=event_time.get("watermark"), ingested_at_min=event_time.get("min"),
            ingested_at_max=event_time.get("max"), seconds_since_first_ingest=since,
            delay_multiples=since / delay_s if since is not None else None,
            trigger_ms=int((p.get("durationMs") or {}).get("triggerExecution") or 0),
        ))
    return rows


def summarise_state(batches: list[BatchState], bronze: dict, delay_s: int) -> dict:
    states = [b.state_rows for b in batches]
    if not states:
        return {"batches": 0}
    third = max(1, len(states) // 3)
    first, last = max(states[:third]), max(states[-third:])
    span = bronze["ingested_at_span_s"]
    per_delay = bronze["rows"] / span * delay_s if span > 0 else float("nan")
    return {
        "batches": len(states),
        "max_state_rows": max(states),
        "last_state_rows": states[-1],
        "first_third_max": first,
        "last_third_max": last,
        "growth_last_vs_first_third": last / first if first else float("inf"),
        "bounded": bool(first) and last <= BOUNDED_GROWTH * first,
        "ingested_at_span_s": span,
        "delay_multiples": span / delay_s,
        "spans_10x_delay": span >= MIN_DELAY_MULTIPLES * delay_s,
        "bronze_rows_per_delay": per_delay,
        "max_state_vs_rows_per_delay": max(states) / per_delay if per_delay and per_delay == per_delay else None,
        "max_state_vs_total_rows": max(states) / bronze["rows"] if bronze["rows"] else None,
    }


def write_csv(batches: list[BatchState], path: Path) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(BatchState.__dataclass_fields__))
        writer.writeheader()
        for b in batches:
            writer.writerow(asdict(b))


def plot_state(batches: list[BatchState], path: Path, delay_s: int, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [b for b in batches if b.seconds_since_first_ingest is not None]
    x = [b.seconds_since_first_ingest for b in pts]
    fig, ax = plt.subplots(figsize=(10, 5.5))
    ax.plot(x, [b.state_rows for b in pts], "o-", ms=3, color="tab:blue",
            label="dedup state rows after the batch (numRowsTotal)")
    ax.set_xlabel("ingested_at of the batch's newest row, seconds since the first bronze row (s)")
    ax.set_ylabel("dedup state (rows)")
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax2 = ax.twinx()
    ax2.plot(x, [b.cumulative_input_rows for b in pts], "--", color="tab:gray",
             label="bronze rows read by silver so far (cumulative)")
    ax2.set_ylabel("cumulative silver input (rows)")
    ax2.set_ylim(bottom=0)
    top = ax.secondary_xaxis("top", functions=(lambda s: s / delay_s, lambda m: m * delay_s))
    top.set_xlabel(f"watermark delays covered (multiples of {delay_s} s)")
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    fig.legend(lines[0] + lines2[0], lines[1] + lines2[1], loc="lower center", ncol=2, frameon=False)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------------- report


def generator_checks(r: dict) -> dict[str, tuple[int, int]]:
    """Silver's counts against the generator's labels: (silver, expected) per check. Not a
    test, a guard that a fast run did not get fast by getting billing wrong."""
    kinds, t, a = r["produce"]["kinds"], r["silver"]["tables"], r["silver"].get("accounting") or {}
    if "rule_dropped" not in a:
        return {}
    bad = sum(n for k, n in kinds.items() if kind_family(k) == "bad")
    return {
        "quarantined = bad records": (t["silver.quarantine"], bad),
        "identity drops (hot path + after) = exact re-sends": (
            a["hot_path_dropped"] + a["identity_dropped_after_hot_path"], kinds.get("duplicate", 0)),
        "custom-rule drops = gateway retries + reopened tickets in window": (
            a["rule_dropped"], kinds.get("gateway_retry", 0) + kinds.get("reopened_ticket", 0)),
    }


def fmt_rate(value: float) -> str:
    return f"{value:,.0f} ev/s" if value == value else "n/a"


def summary_table(r: dict) -> str:
    p, raw, b, s, st = r["produce"], r["raw_copy"], r["bronze"], r["silver"], r["state"]
    rows = [
        ("produce (generate + send, not in ratio)", f"{p['records']:,}", f"{p['seconds']:.1f}", fmt_rate(p["events_per_s"]), "-"),
        (f"raw copy Kafka->Delta ({raw['batches']} batch(es))", f"{raw['rows']:,}", f"{raw['seconds']:.1f}", fmt_rate(raw["events_per_s"]), "-"),
        (f"bronze job ({b['batches']} batches of <= {r['args']['bronze_batch']:,})", f"{b['rows']:,}", f"{b['seconds']:.1f}", fmt_rate(b["events_per_s"]), "-"),
        (f"silver job, bronze->silver ({s['batches']} batches)", f"{b['rows']:,}", f"{s['seconds']:.1f}", fmt_rate(r["silver_path_events_per_s"]), "-"),
        (f"silver floor: parse + hot path -> noop ({r['floor']['batches']} batches)", f"{b['rows']:,}", f"{r['floor']['seconds']:.1f}", fmt_rate(r["floor_events_per_s"]), "-"),
        ("Kafka->silver end to end (bronze + silver)", f"{b['rows']:,}", f"{b['seconds'] + s['seconds']:.1f}", fmt_rate(r["end_to_end_events_per_s"]), "-"),
    ]
    head = ("stage", "events", "wall s", "rate", "")
    widths = [max(len(str(row[i])) for row in (head, *rows)) for i in range(4)]
    out = ["  ".join(str(c).ljust(widths[i]) if i == 0 else str(c).rjust(widths[i]) for i, c in enumerate(row[:4]))
           for row in (head, *rows)]
    out.insert(1, "  ".join("-" * w for w in widths))
    verdict = "meets" if r["ratio"] >= TARGET_RATIO else "BELOW"
    out += [
        "",
        f"ratio silver-path / raw copy : {r['ratio']:.3f}  ({verdict} the {TARGET_RATIO} target)",
        f"ratio end-to-end / raw copy  : {r['end_to_end_ratio']:.3f}",
        f"ratio silver floor / raw copy: {r['floor_ratio']:.3f}  (parse + hot path only, no silver writes)",
        f"silver micro-batch time      : median {s.get('batch_seconds_median') or 0:.1f} s, "
        f"max {s.get('batch_seconds_max') or 0:.1f} s over {s.get('data_batches', 0)} batches with data",
        "",
        f"dedup state (watermark delay {r['args']['watermark_delay_seconds']} s on ingested_at):",
        f"  silver batches with progress   : {st.get('batches', 0)}",
        f"  ingested_at span               : {st.get('ingested_at_span_s', 0):.1f} s = "
        f"{st.get('delay_multiples', 0):.1f} x the delay "
        f"({'>=' if st.get('spans_10x_delay') else 'LESS than'} {MIN_DELAY_MULTIPLES}x)",
        f"  state rows max / last          : {st.get('max_state_rows', 0):,} / {st.get('last_state_rows', 0):,}",
        f"  peak first third / last third  : {st.get('first_third_max', 0):,} / {st.get('last_third_max', 0):,}"
        f"  (x{st.get('growth_last_vs_first_third', float('nan')):.2f})",
        f"  bronze rows per delay          : {st.get('bronze_rows_per_delay', float('nan')):,.0f}"
        f"  (peak state = {st.get('max_state_vs_rows_per_delay') or float('nan'):.2f} x that,"
        f" {100 * (st.get('max_state_vs_total_rows') or 0):.1f}% of all rows)",
        f"  bounded                        : {'yes' if st.get('bounded') else 'NO'}"
        f" (last-third peak <= {BOUNDED_GROWTH} x first-third peak)",
        f"  hot-path duplicates dropped    : {s['hot_path_dropped_duplicates']:,}",
        "",
        f"bronze rows accounted for in silver: {(s.get('accounting') or {}).get('accounted', 0):,} of {b['rows']:,}",
        *(f"  {'ok      ' if got == want else 'MISMATCH'} {name}: {got:,} (generator: {want:,})"
          for name, (got, want) in generator_checks(r).items()),
    ]
    return "\n".join(out)


def results_markdown(r: dict) -> str:
    m, p, raw, b, s, st = r["machine"], r["produce"], r["raw_copy"], r["bronze"], r["silver"], r["state"]
    t, a = s["tables"], s.get("accounting") or {}
    accounted = f"{a['accounted']:,}" if "accounted" in a else "?"
    fam = p["families"]
    return "\n".join([
        f"## {r['started_at'][:16].replace('T', ' ')} UTC, {r['args']['events']:,} events",
        "",
        *command_block(r["command"], where="broker running"),
        machine_line(m),
        "",
        f"Events: {p['records']:,} from the project generator (seed {r['args']['seed']}, {r['args']['accounts']} accounts; "
        + ", ".join(f"{k} {v:,}" for k, v in sorted(fam.items(), key=lambda kv: -kv[1]))
        + f") in topic `{r['topic']}` ({r['args']['partitions']} partitions).",
        "",
        "| stage | events | wall time (s) | events/s |",
        "|---|---:|---:|---:|",
        f"| produce (generate + send; not in the ratio{'; an earlier run' if r.get('produced_earlier') else ''}) "
        f"| {p['records']:,} | {p['seconds']:.1f} | {p['events_per_s']:,.0f} |",
        f"| raw copy Kafka -> Delta ({raw['batches']} micro-batch(es), availableNow) | {raw['rows']:,} | {raw['seconds']:.1f} | {raw['events_per_s']:,.0f} |",
        f"| bronze job ({b['batches']} micro-batches, maxOffsetsPerTrigger {r['args']['bronze_batch']:,}) | {b['rows']:,} | {b['seconds']:.1f} | {b['events_per_s']:,.0f} |",
        f"| **silver job, bronze -> silver** ({s['batches']} micro-batches, maxFilesPerTrigger {r['args']['silver_files_per_trigger']}) | {b['rows']:,} | {s['seconds']:.1f} | **{r['silver_path_events_per_s']:,.0f}** |",
        f"| Kafka -> silver end to end (bronze + silver) | {b['rows']:,} | {b['seconds'] + s['seconds']:.1f} | {r['end_to_end_events_per_s']:,.0f} |",
        f"| silver floor: parse + validate + hot-path dedup -> noop sink, same batches ({r['floor']['batches']} micro-batches) | {b['rows']:,} | {r['floor']['seconds']:.1f} | {r['floor_events_per_s']:,.0f} |",
        "",
        f"- **Ratio silver path / raw copy: {r['ratio']:.3f}** (target >= {TARGET_RATIO}: "
        f"{'met' if r['ratio'] >= TARGET_RATIO else 'not met'}); end-to-end / raw copy: {r['end_to_end_ratio']:.3f}; "
        f"silver floor (no writes) / raw copy: {r['floor_ratio']:.3f}. "
        f"Silver micro-batch time: median {s.get('batch_seconds_median') or 0:.1f} s, max {s.get('batch_seconds_max') or 0:.1f} s.",
        f"- Dedup state (`dropDuplicatesWithinWatermark`, watermark {r['args']['watermark_delay_seconds']} s on ingested_at): "
        f"ingested_at spans {st.get('ingested_at_span_s', 0):.1f} s = **{st.get('delay_multiples', 0):.1f} x the delay**; "
        f"state rows max {st.get('max_state_rows', 0):,}, last {st.get('last_state_rows', 0):,}; peak in the first third of "
        f"the batches {st.get('first_third_max', 0):,}, in the last third {st.get('last_third_max', 0):,} "
        f"(x{st.get('growth_last_vs_first_third', float('nan')):.2f}) -> **{'bounded' if st.get('bounded') else 'NOT bounded'}**; "
        f"peak = {100 * (st.get('max_state_vs_total_rows') or 0):.1f}% of all rows, "
        f"{st.get('max_state_vs_rows_per_delay') or float('nan'):.2f} x the rows ingested per delay.",
        f"- Silver output: usage_events {t['silver.usage_events']:,}, account_events {t['silver.account_events']:,}, "
        f"quarantine {t['silver.quarantine']:,}, duplicates {t['silver.duplicates']:,} "
        f"({', '.join(f'{k} {v:,}' for k, v in sorted(a.get('duplicates_by_rule', {}).items()))}); "
        f"identity copies dropped after the hot path {a.get('identity_dropped_after_hot_path', 0):,} "
        f"(ops.silver_batches), by the hot path {a.get('hot_path_dropped', s['hot_path_dropped_duplicates']):,} (state claims dropped: {s['hot_path_dropped_duplicates']:,}): "
        f"{accounted} of {b['rows']:,} bronze rows accounted for. Against the generator's labels: "
        + ("; ".join(f"{name} {got:,}/{want:,}" + ("" if got == want else " MISMATCH")
                     for name, (got, want) in generator_checks(r).items()) or "n/a") + ".",
        f"- Per-batch state rows: `{r['files']['csv']}`, plot: `{r['files']['png']}`.",
    ])


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started_at = datetime.now(UTC)
    stamp = started_at.strftime("%Y%m%dT%H%M%SZ")
    topic = args.topic or f"bench.events.{stamp}"
    settings = Settings().with_overrides(events_topic=topic)
    host, port = kafka_local.parse_bootstrap(settings.bootstrap_servers)
    try:
        socket.create_connection((host, port), timeout=2).close()
    except OSError as exc:
        say(f"no Kafka broker answering at {settings.bootstrap_servers} ({exc}); "
            "start it with `make kafka-start`")
        return 2
    out = args.out.resolve()
    run_dir = out / f"run-{stamp}"
    run_dir.mkdir(parents=True, exist_ok=True)
    lake = Path(tempfile.mkdtemp(prefix=f"lake-{stamp}-", dir=out))
    # build_spark puts the warehouse under LAKEHOUSE_ROOT: keep it inside the bench lake.
    os.environ["LAKEHOUSE_ROOT"] = str(lake)
    settings = settings.with_overrides(lake_root=lake)
    say(f"bench: {args.events:,} events, topic {topic}, lake {lake}, outputs {run_dir}")

    spark = None
    topic_created = False
    try:
        if args.topic:
            produced = read_manifest(args, topic)
            offsets = check_topic_holds(settings, topic, args.events)
            say(f"1/6 produce: skipped, {topic} holds the {args.events:,} events of an earlier run ({offsets})")
        else:
            say(f"1/6 produce {args.events:,} events into {topic} ({args.partitions} partitions)")
            topic_created = True
            produced = produce(settings, topic, args)
            offsets = check_topic_holds(settings, topic, args.events)
            say(f"produce: {produced['records']:,} records in {produced['seconds']:.1f} s "
                f"({produced['events_per_s']:,.0f}/s); topic holds them all ({offsets})")
            say(f"labels recorded in {write_manifest(args, topic, produced)}")
            if args.produce_only:
                say(f"--produce-only: kept {topic}; run the rest with --topic {topic}")
                return 0

        say("starting Spark (one session for every stage)")
        from pipelines.core.session import build_spark
        # Auto compaction (on in local sessions) would merge bronze's per-version files before
        # silver's first read, and silver would take 80 % of the run in one micro-batch: the
        # dedup state could no longer be watched across batches, and the figures would not
        # compare with earlier runs. Compaction's own effect is bench/bench_compaction.py's.
        spark = build_spark("bench-ingest", extra_conf={"spark.databricks.delta.autoCompact.enabled": "false"})
        machine = machine_info(spark, kafka=True)
        say("warm-up: a 2,000-record-per-partition Kafka batch read written to Delta (not timed)")
        warm_up(spark, settings, topic, offsets, lake)

        say("2/6 raw copy: Kafka -> Delta, key/value/coordinates, availableNow")
        raw = raw_copy(spark, settings, topic, lake, args)
        say(f"raw copy: {raw['rows']:,} rows in {raw['seconds']:.1f} s ({raw['events_per_s']:,.0f}/s); {disk_line(lake)}")

        say(f"3/6 bronze job, maxOffsetsPerTrigger {args.bronze_batch:,}")
        bronze = run_bronze(spark, settings, args)
        say(f"bronze: {bronze['rows']:,} rows in {bronze['seconds']:.1f} s ({bronze['events_per_s']:,.0f}/s), "
            f"{bronze['ingested_at_versions']} ingested_at values over {bronze['ingested_at_span_s']:.1f} s; "
            f"{disk_line(lake)}")
        multiples = bronze["ingested_at_span_s"] / args.watermark_delay_seconds
        if multiples < MIN_DELAY_MULTIPLES:
            say(f"WARNING: ingested_at spans only {multiples:.1f} x the {args.watermark_delay_seconds} s watermark delay "
                f"(< {MIN_DELAY_MULTIPLES}x); use a smaller --watermark-delay-seconds or --bronze-batch")

        say(f"4/6 silver job, watermark delay {args.watermark_delay_seconds} s, "
            f"maxFilesPerTrigger {args.silver_files_per_trigger} "
            f"(~{math.ceil(bronze['files'] / args.silver_files_per_trigger)} micro-batches over {bronze['files']} bronze files)")
        silver, history = run_silver(spark, settings, args)
        silver_eps = rate(bronze["rows"], silver["seconds"])
        say(f"silver: {bronze['rows']:,} bronze rows in {silver['seconds']:.1f} s ({silver_eps:,.0f}/s), "
            f"{silver['batches']} batches; {disk_line(lake)}")

        say("5/6 silver floor: the same stream into a no-op sink (parse, validate, hot-path dedup; no writes)")
        floor = run_floor(spark, settings, lake, args)
        say(f"silver floor: {floor['input_rows']:,} rows in {floor['seconds']:.1f} s, {floor['batches']} batches")

        say("6/6 dedup state analysis")
        first_ingest = datetime.fromisoformat(bronze["ingested_at_first"])
        if first_ingest.tzinfo is None:  # Spark hands back naive datetimes in the session zone (UTC)
            first_ingest = first_ingest.replace(tzinfo=UTC)
        batches = state_rows_per_batch(history, first_ingest, args.watermark_delay_seconds)
        state = summarise_state(batches, bronze, args.watermark_delay_seconds)
        csv_path, png_path = run_dir / "state_rows.csv", run_dir / "state_rows.png"
        write_csv(batches, csv_path)
        plot_state(batches, png_path, args.watermark_delay_seconds,
                   f"silver dedup state, {args.events:,} events, watermark delay {args.watermark_delay_seconds} s")
        (run_dir / "progress.json").write_text(json.dumps(
            {"raw_copy": raw.pop("progress"), "bronze": bronze.pop("progress"), "silver": history}, indent=1))

        def rel(path: Path) -> str:
            try:
                return str(path.relative_to(REPO_ROOT))
            except ValueError:
                return str(path)

        result = {
            "started_at": started_at.isoformat(), "command": command_line(), "topic": topic,
            "produced_earlier": bool(args.topic),
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "machine": machine, "produce": produced, "raw_copy": raw, "bronze": bronze, "silver": silver,
            "silver_path_events_per_s": silver_eps, "floor": floor,
            "floor_events_per_s": rate(bronze["rows"], floor["seconds"]),
            "end_to_end_events_per_s": rate(bronze["rows"], bronze["seconds"] + silver["seconds"]),
            "state": state, "files": {"csv": rel(csv_path), "png": rel(png_path)},
        }
        result["ratio"] = silver_eps / raw["events_per_s"]
        result["floor_ratio"] = result["floor_events_per_s"] / raw["events_per_s"]
        result["end_to_end_ratio"] = result["end_to_end_events_per_s"] / raw["events_per_s"]
        write_outputs(run_dir, result, results_markdown(result), summary_table(result))
        return 0
    except BaseException:
        say(f"failed; {disk_line(lake)} (the lake is deleted next unless --keep)")
        raise
    finally:
        if spark is not None:
            for q in spark.streams.active:
                q.stop()
            spark.stop()
        if args.keep:
            say(f"kept the lake {lake} and the topic {topic}")
        else:
            shutil.rmtree(lake, ignore_errors=True)
            if topic_created and not args.produce_only:
                try:
                    delete_topic(settings, topic)
                except Exception as exc:  # noqa: BLE001 - cleanup must not hide the real error
                    say(f"could not delete topic {topic}: {exc}")


if __name__ == "__main__":
    sys.exit(main())
