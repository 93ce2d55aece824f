"""Billing benchmark: the billing close and the export over a synthetic silver layer.

Run by hand (it is long), from the repository root; no Kafka broker needed:

    .venv/bin/python -m bench.bench_billing                              # 10,000 accounts, 1,000,000 events
    .venv/bin/python -m bench.bench_billing --accounts 500 --events 50000   # quick check

One run, one SparkSession (`pipelines.core.session.build_spark`):

1. build   a synthetic lake in a temporary folder under --out, written directly with Spark
           (`spark.range` + built-in functions, seeded, deterministic): silver.account_events
           (per account a subscription.started at the start of a month, some mid-period
           upgrades, some downgrades, a few cancellations; the shipped catalog's plans) and
           silver.usage_events (--events usage events over --months calendar months, the five
           metrics, decimal(38,6) quantities, fractional voice minutes), with the exact table
           schemas of schemas/tables.yaml;
2. billing `run_billing` over every period with a fixed `now` (the last month is open: its
           lines are estimates, the earlier ones final), then the same call again (the rerun:
           it must change nothing; the Delta versions of gold.invoice_lines and
           gold.period_usage before and after, and the content fingerprint, tell);
3. export  `pipelines.billing.export.run_export` of the final lines, then again (it must
           export nothing new);
4. memory  every 0.5 s, in a background thread: RSS of this Python driver and of the JVM
           (the Spark gateway's java child process, from /proc), and the JVM heap used
           (Runtime totalMemory - freeMemory); the peak of each per stage.

Outputs go to --out (default bench/out, git-ignored): billing-<stamp>/summary.json and
results.md, the markdown block also printed at the end, ready to paste into
bench/RESULTS.md (nothing is appended automatically). The lake is deleted at the end
unless --keep.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

from bench.bench_common import (
    command_block, command_line, elapsed, machine_info, machine_line, positive_int, say, write_outputs,
)
from pipelines.billing import export as export_module
from pipelines.core.settings import Settings

REPO_ROOT = Path(__file__).resolve().parent.parent

# The shipped catalog's plans (pipelines/conf/pricing.yaml), in rank order.
PLANS = ["starter", "basic", "pro", "advanced", "enterprise"]
# Share of accounts starting on each plan (same order).
PLAN_SHARES = [0.30, 0.30, 0.22, 0.12, 0.06]
# (product, metric, quantity range): quantities are uniform in [lo, hi] with `scale`
# decimals (voice minutes fractional to the microminute).
METRICS = [
    ("helpdesk", "billable_tickets", 1, 20, 0),
    ("automate", "automated_interactions", 1, 60, 0),
    ("voice", "voice_minutes", 1, 45, 6),
    ("sms", "sms_segments", 1, 12, 0),
    ("convert", "campaign_recipients", 50, 3000, 0),
]
# Lifecycle mix per account (mutually exclusive; the rest keep their plan).
UPGRADE_SHARE, DOWNGRADE_SHARE, CANCEL_SHARE = 0.15, 0.08, 0.03
# Accounts starting at the start of the second month instead of the first.
LATE_START_SHARE = 0.15
LAST_MONTH = (2025, 12)   # the last (open) period; the first is --months - 1 months before
NOW_DAY, NOW_HOUR = 15, 12  # `now` of the billing runs: mid last month
SAMPLE_SECONDS = 0.5


# --------------------------------------------------------------------------- small helpers


def months_arg(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 12:
        raise argparse.ArgumentTypeError(f"must be 1-12, got {text}")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Time and peak memory of the billing close (run_billing, its rerun) and of the "
                    "export (run_export, its rerun) over a synthetic silver layer built with Spark.",
    )
    p.add_argument("--accounts", type=positive_int, default=10_000, help="accounts (default: %(default)s)")
    p.add_argument("--events", type=positive_int, default=1_000_000,
                   help="silver usage events (default: %(default)s)")
    p.add_argument("--months", type=months_arg, default=3,
                   help="calendar months of data, the last one open (default: %(default)s)")
    p.add_argument("--seed", type=int, default=42, help="seed of the synthetic data (default: %(default)s)")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "out", help="output folder (default: bench/out)")
    p.add_argument("--keep", action="store_true", help="keep the bench lake (default: delete it)")
    return p.parse_args(argv)


def month_start(year: int, month: int, plus: int = 0) -> datetime:
    index = year * 12 + (month - 1) + plus
    return datetime(index // 12, index % 12 + 1, 1, tzinfo=UTC)


def mib(n_bytes: int | None) -> str:
    return f"{n_bytes / 2**20:,.0f}" if n_bytes else "n/a"


# --------------------------------------------------------------------------- machine


def code_state() -> dict:
    """The commit and the working-tree state of the code under test (other work may be in
    progress in the same checkout), read-only."""
    import hashlib

    out: dict = {}
    try:
        out["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                                       text=True, check=True).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--", "pipelines"], cwd=REPO_ROOT,
                                capture_output=True, text=True, check=True).stdout.splitlines()
        out["pipelines_changes"] = [line.strip() for line in status]
    except (OSError, subprocess.CalledProcessError):
        pass
    for rel in ("pipelines/billing/close.py", "pipelines/billing/export.py", "pipelines/billing/gate.py"):
        path = REPO_ROOT / rel
        if path.exists():
            out.setdefault("sha256", {})[rel] = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    return out


# --------------------------------------------------------------------------- memory sampler


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _rss_bytes(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return None
    return None


def find_jvm_pid() -> int | None:
    """The Spark gateway's java process: a descendant of this process (psutil is not in the
    venv, so /proc/<pid>/task/*/children is walked instead)."""
    try:
        import psutil  # noqa: F401  (optional)
        kids = psutil.Process().children(recursive=True)
        return next((k.pid for k in kids if k.name() == "java"), None)
    except ImportError:
        pass
    todo, seen = [os.getpid()], set()
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        for child in _children(pid):
            if _comm(child) == "java":
                return child
            todo.append(child)
    return None


@dataclass
class Peaks:
    jvm_rss: int = 0
    python_rss: int = 0
    heap_used: int = 0
    samples: int = 0


class MemorySampler:
    """Samples every `interval` s, in a daemon thread, the RSS of this process and of the JVM
    and the JVM heap used; keeps the peak of each per stage (the stage in force when the
    sample was taken). The first sample of a stage is taken when the stage starts."""

    def __init__(self, spark, jvm_pid: int | None, interval: float = SAMPLE_SECONDS):
        self.jvm_pid = jvm_pid
        self.interval = interval
        self.stage = "startup"
        self.peaks: dict[str, Peaks] = defaultdict(Peaks)
        self.errors = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._runtime = spark.sparkContext._jvm.java.lang.Runtime.getRuntime()
        self._thread = threading.Thread(target=self._run, name="bench-memory", daemon=True)

    def start(self) -> "MemorySampler":
        self._thread.start()
        return self

    def sample(self) -> None:
        py = _rss_bytes(os.getpid()) or 0
        jvm = _rss_bytes(self.jvm_pid) if self.jvm_pid else 0
        try:
            heap = int(self._runtime.totalMemory()) - int(self._runtime.freeMemory())
        except Exception:  # noqa: BLE001 - the gateway may be closing at the very end
            heap = 0
            self.errors += 1
        with self._lock:
            p = self.peaks[self.stage]
            p.python_rss = max(p.python_rss, py)
            p.jvm_rss = max(p.jvm_rss, jvm or 0)
            p.heap_used = max(p.heap_used, heap)
            p.samples += 1

    def set_stage(self, name: str) -> None:
        with self._lock:
            self.stage = name
        self.sample()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def overall(self) -> Peaks:
        out = Peaks()
        for p in self.peaks.values():
            out.jvm_rss, out.python_rss = max(out.jvm_rss, p.jvm_rss), max(out.python_rss, p.python_rss)
            out.heap_used = max(out.heap_used, p.heap_used)
            out.samples += p.samples
        return out


# --------------------------------------------------------------------------- phase timer


class PhaseTimer:
    """Wraps module-level functions the jobs call (compute, merges, gate, file writes) so
    each stage's wall time can be split into phases. Only this process is patched; the
    functions run unchanged."""

    def __init__(self):
        self.current: dict[str, float] = {}
        self._patched: list[tuple[object, str, object]] = []

    def wrap(self, module, name: str, label: str | None = None) -> None:
        original = getattr(module, name, None)
        if original is None:
            return
        label = label or name

        def timed(*args, **kwargs):
            started = time.monotonic()
            try:
                return original(*args, **kwargs)
            finally:
                self.current[label] = self.current.get(label, 0.0) + time.monotonic() - started

        setattr(module, name, timed)
        self._patched.append((module, name, original))

    def take(self) -> dict[str, float]:
        out, self.current = self.current, {}
        return {k: round(v, 2) for k, v in out.items()}

    def restore(self) -> None:
        for module, name, original in reversed(self._patched):
            setattr(module, name, original)
        self._patched.clear()


# --------------------------------------------------------------------------- synthetic lake


def _u(seed: int, salt: str, *cols):
    """A deterministic uniform value in [0, 1) from the row's columns, the seed and a salt."""
    from pyspark.sql import functions as F
    return F.pmod(F.xxhash64(F.lit(seed), F.lit(salt), *cols), F.lit(1_000_000_007)) / F.lit(1_000_000_007.0)


def _ts_between(start, end, u):
    """A timestamp (microsecond precision) at fraction u of [start, end)."""
    from pyspark.sql import functions as F
    lo, hi = F.unix_micros(start), F.unix_micros(end)
    return F.timestamp_micros(lo + F.floor((hi - lo).cast("double") * u).cast("long"))


def accounts_frame(spark, args: argparse.Namespace, first: datetime, second: datetime, now: datetime):
    """One row per account: its start, plan, the lifecycle change it has (if any), when,
    and the end of its billing (cancellation or now)."""
    from pyspark.sql import functions as F

    seed = args.seed
    idc = F.col("id")
    plan_ix = F.lit(0)
    cumulative = 0.0
    u_plan = _u(seed, "plan", idc)
    for i, share in enumerate(PLAN_SHARES[:-1]):
        cumulative += share
        plan_ix = F.when(u_plan >= cumulative, F.lit(i + 1)).otherwise(plan_ix)
    u_kind = _u(seed, "kind", idc)
    late_start = (_u(seed, "late", idc) < LATE_START_SHARE) & F.lit(args.months > 1)
    start = F.when(late_start, F.lit(second)).otherwise(F.lit(first)).cast("timestamp")
    kind = (F.when((u_kind < UPGRADE_SHARE) & (F.col("plan_ix") < len(PLANS) - 1), F.lit("upgrade"))
            .when((u_kind >= UPGRADE_SHARE) & (u_kind < UPGRADE_SHARE + DOWNGRADE_SHARE) & (F.col("plan_ix") > 0),
                  F.lit("downgrade"))
            .when((u_kind >= UPGRADE_SHARE + DOWNGRADE_SHARE)
                  & (u_kind < UPGRADE_SHARE + DOWNGRADE_SHARE + CANCEL_SHARE), F.lit("cancel")))
    # Upgrade: one to four ranks up (within the catalog); downgrade: one or more ranks down.
    u_to = _u(seed, "to", idc)
    up_to = F.col("plan_ix") + 1 + F.floor(u_to * (len(PLANS) - 1 - F.col("plan_ix"))).cast("int")
    down_to = F.floor(u_to * F.col("plan_ix")).cast("int")
    # A change between 5% and 95% of the way from the start to now, a cancellation in the
    # second half: always after the start and before now.
    u_at = _u(seed, "at", idc)
    change_at = _ts_between(F.col("start"), F.lit(now).cast("timestamp"), F.lit(0.05) + u_at * 0.9)
    cancel_at = _ts_between(F.col("start"), F.lit(now).cast("timestamp"), F.lit(0.5) + u_at * 0.45)
    plans = F.array(*[F.lit(p) for p in PLANS])
    return (
        spark.range(args.accounts, numPartitions=2)
        .withColumn("account_id", F.format_string("acct-%06d", idc))
        .withColumn("plan_ix", plan_ix)
        .withColumn("start", start)
        .withColumn("kind", kind)
        .withColumn("to_ix", F.when(F.col("kind") == "upgrade", up_to).when(F.col("kind") == "downgrade", down_to))
        .withColumn("plan_id", F.element_at(plans, F.col("plan_ix") + 1))
        .withColumn("to_plan_id", F.element_at(plans, F.col("to_ix") + 1))
        .withColumn("change_at", F.when(F.col("kind").isin("upgrade", "downgrade"), change_at))
        .withColumn("cancel_at", F.when(F.col("kind") == "cancel", cancel_at))
        .withColumn("end", F.coalesce(F.col("cancel_at"), F.lit(now).cast("timestamp")))
    )


def _coordinates(offset_col, occurred_col, payload_col):
    from pyspark.sql import functions as F
    return {
        "is_late": F.lit(False),
        "kafka_topic": F.lit("bench.billing"),
        "kafka_partition": F.pmod(offset_col, F.lit(3)).cast("int"),
        "kafka_offset": offset_col.cast("long"),
        "kafka_timestamp": occurred_col,
        "ingested_at": F.timestamp_micros(F.unix_micros(occurred_col) + F.lit(1_500_000)),
        "payload_sha256": F.sha2(payload_col, 256),
    }


def account_events_frame(accounts):
    """subscription.started per account, plus a plan.changed or a subscription.cancelled."""
    from pyspark.sql import functions as F

    started = accounts.select("id", "account_id", F.lit("subscription.started").alias("event_type"),
                              F.col("start").alias("occurred_at"), "plan_id", F.lit(0).alias("seq"))
    changed = (accounts.filter(F.col("change_at").isNotNull())
               .select("id", "account_id", F.lit("plan.changed").alias("event_type"),
                       F.col("change_at").alias("occurred_at"), F.col("to_plan_id").alias("plan_id"),
                       F.lit(1).alias("seq")))
    cancelled = (accounts.filter(F.col("cancel_at").isNotNull())
                 .select("id", "account_id", F.lit("subscription.cancelled").alias("event_type"),
                         F.col("cancel_at").alias("occurred_at"), F.lit(None).cast("string").alias("plan_id"),
                         F.lit(2).alias("seq")))
    events = started.unionByName(changed).unionByName(cancelled)
    offset = F.col("id") * 3 + F.col("seq")
    event_id = F.concat(F.lit("a-"), F.col("account_id"), F.lit("-"), F.col("seq").cast("string"))
    coords = _coordinates(offset, F.col("occurred_at"), event_id)
    return events.select(
        event_id.alias("event_id"), "account_id", "event_type", "occurred_at",
        F.lit(1).alias("schema_version"), F.lit("bench").alias("source"), "plan_id",
        F.lit(None).cast("decimal(38,6)").alias("amount_value"), F.lit(None).cast("string").alias("amount_currency"),
        F.lit(None).cast("string").alias("properties"),
        *[c.alias(n) for n, c in coords.items()],
    )


def usage_events_frame(spark, accounts, args: argparse.Namespace):
    """--events usage events: a uniform account, one of the five metrics, a time uniform in
    the account's billed span [start, cancellation or now), a quantity in the metric's range."""
    from pyspark.sql import functions as F

    seed = args.seed
    idc = F.col("id")
    n_metrics = len(METRICS)
    products = F.array(*[F.lit(m[0]) for m in METRICS])
    metrics = F.array(*[F.lit(m[1]) for m in METRICS])
    m_ix = F.pmod(F.xxhash64(F.lit(seed), F.lit("metric"), idc), F.lit(n_metrics)).cast("int")
    u_q = _u(seed, "qty", idc)
    quantity = None
    for i, (_, _, lo, hi, scale) in enumerate(METRICS):
        steps = (hi - lo) * 10**scale + 1
        value = ((F.floor(u_q * steps).cast("long") + lo * 10**scale).cast("decimal(38,0)")
                 / F.lit(10**scale)).cast("decimal(38,6)")
        quantity = F.when(F.col("m_ix") == i, value) if quantity is None else quantity.when(F.col("m_ix") == i, value)
    acct = accounts.select(F.col("id").alias("acct_ix"), "account_id", "start", "end")
    base = (
        spark.range(args.events, numPartitions=max(2, min(8, args.events // 250_000 + 2)))
        .withColumn("acct_ix", F.pmod(F.xxhash64(F.lit(seed), F.lit("account"), idc), F.lit(args.accounts)))
        .withColumn("m_ix", m_ix)
        .join(F.broadcast(acct), on="acct_ix", how="inner")
        .withColumn("occurred_at", _ts_between(F.col("start"), F.col("end"), _u(seed, "time", idc)))
    )
    event_id = F.concat(F.lit("u-"), F.col("id").cast("string"))
    coords = _coordinates(F.col("id"), F.col("occurred_at"), event_id)
    return base.select(
        event_id.alias("event_id"), "account_id", F.lit("usage").alias("event_type"), "occurred_at",
        F.lit(1).alias("schema_version"), F.lit("bench").alias("source"),
        F.to_date("occurred_at").alias("event_date"),
        F.element_at(products, F.col("m_ix") + 1).alias("product"),
        F.element_at(metrics, F.col("m_ix") + 1).alias("metric"),
        quantity.alias("quantity"),
        F.concat(F.element_at(metrics, F.col("m_ix") + 1), F.lit("-"), F.col("id").cast("string")).alias("dedup_key"),
        F.lit(None).cast("string").alias("properties"),
        *[c.alias(n) for n, c in coords.items()],
    )


def write_table(spark, lake, name: str, frame) -> None:
    """Append `frame` to the table created from its spec, cast to the exact schema."""
    from pyspark.sql import functions as F

    from pipelines.core.tables import spec

    lake.ensure(spark, name)
    schema = spec(name).struct_type()
    frame.select(*[F.col(f.name).cast(f.dataType).alias(f.name) for f in schema]) \
        .write.format("delta").mode("append").save(lake.path(name))


def build_lake(spark, lake, args: argparse.Namespace, first: datetime, second: datetime, now: datetime) -> dict:
    from pyspark.sql import functions as F

    accounts = accounts_frame(spark, args, first, second, now).localCheckpoint()
    write_table(spark, lake, "silver.account_events", account_events_frame(accounts))
    write_table(spark, lake, "silver.usage_events", usage_events_frame(spark, accounts, args))
    lifecycle = {r["event_type"]: r["count"] for r in
                 lake.read(spark, "silver.account_events").groupBy("event_type").count().collect()}
    kinds = {(r["kind"] or "none"): r["count"] for r in accounts.groupBy("kind").count().collect()}
    starts = {r["plan_id"]: r["count"] for r in accounts.groupBy("plan_id").count().collect()}
    late = accounts.filter(F.col("start") > F.lit(first)).count()
    usage = lake.read(spark, "silver.usage_events")
    by_metric = {r["metric"]: {"events": r["events"], "quantity": str(r["quantity"])} for r in
                 usage.groupBy("metric").agg(F.count(F.lit(1)).alias("events"),
                                              F.sum("quantity").alias("quantity")).collect()}
    by_period = {r["period"]: r["events"] for r in
                 usage.groupBy(F.date_format("occurred_at", "yyyy-MM").alias("period"))
                 .agg(F.count(F.lit(1)).alias("events")).collect()}
    span = usage.agg(F.min("occurred_at").alias("lo"), F.max("occurred_at").alias("hi")).first()
    files = {name: spark.sql(f"DESCRIBE DETAIL delta.`{lake.path(name)}`").first()["numFiles"]
             for name in ("silver.account_events", "silver.usage_events")}
    return {
        "account_events": sum(lifecycle.values()), "usage_events": sum(by_metric[m]["events"] for m in by_metric),
        "lifecycle_events": dict(sorted(lifecycle.items())), "account_kinds": dict(sorted(kinds.items())),
        "starting_plans": {p: starts.get(p, 0) for p in PLANS}, "accounts_starting_month_2": late,
        "usage_by_metric": dict(sorted(by_metric.items())), "usage_by_period": dict(sorted(by_period.items())),
        "usage_first": str(span["lo"]), "usage_last": str(span["hi"]), "files": files,
    }


# --------------------------------------------------------------------------- table state


def table_state(spark, lake, name: str) -> dict:
    """Latest Delta version, row count and a content fingerprint (sum of a hash of every
    column of every row): equal fingerprints = the same rows, computed_at included."""
    from pyspark.sql import functions as F

    if not lake.exists(spark, name):
        return {"version": None, "rows": 0, "fingerprint": None}
    version = spark.sql(f"DESCRIBE HISTORY delta.`{lake.path(name)}` LIMIT 1").first()["version"]
    df = lake.read(spark, name)
    row = df.agg(F.count(F.lit(1)).alias("rows"),
                 F.sum(F.xxhash64(*[F.col(c) for c in df.columns]).cast("decimal(38,0)")).alias("fp")).first()
    return {"version": int(version), "rows": int(row["rows"]), "fingerprint": str(row["fp"])}


def commits_after(spark, lake, name: str, version: int | None) -> list[dict]:
    """The commits made after `version`: operation and its row/file metrics."""
    if not lake.exists(spark, name):
        return []
    history = spark.sql(f"DESCRIBE HISTORY delta.`{lake.path(name)}`").collect()
    keep = ("numTargetRowsInserted", "numTargetRowsUpdated", "numTargetRowsDeleted", "numTargetRowsCopied",
            "numTargetFilesAdded", "numTargetFilesRemoved", "numOutputRows", "numUpdatedRows", "numFiles",
            "numAddedFiles", "numRemovedFiles", "executionTimeMs")
    out = []
    for r in sorted(history, key=lambda r: r["version"]):
        if version is not None and r["version"] <= version:
            continue
        metrics = r["operationMetrics"] or {}
        out.append({"version": int(r["version"]), "operation": r["operation"],
                    "metrics": {k: metrics[k] for k in keep if k in metrics}})
    return out


def state_diff(before: dict, after: dict, commits: list[dict]) -> dict:
    return {"version_before": before["version"], "version_after": after["version"],
            "rows_before": before["rows"], "rows_after": after["rows"],
            "new_versions": (after["version"] or 0) - (before["version"] if before["version"] is not None else -1)
            if after["version"] is not None else 0,
            "content_unchanged": before["fingerprint"] == after["fingerprint"], "commits": commits}


# --------------------------------------------------------------------------- stages


@dataclass
class Stage:
    name: str
    rows: str
    seconds: float | None
    phases: dict = field(default_factory=dict)
    note: str = ""


def run_billing_stage(spark, ctx, now: datetime, timer: PhaseTimer, label: str) -> dict:
    from pipelines.billing import close as billing_job

    tables = ("gold.invoice_lines", "gold.period_usage")
    before = {t: table_state(spark, ctx.lake, t) for t in tables}
    marks: list[tuple[float, str]] = []

    def log(msg: str) -> None:
        marks.append((time.monotonic(), msg))
        for line in msg.splitlines():
            say(f"{label}: {line}")

    timer.take()
    started = time.monotonic()
    result = billing_job.run_billing(spark, ctx, now=now, log=log)
    seconds = time.monotonic() - started
    phases = timer.take()
    # Phases from the job's own log lines: up to each merge, then the summary.
    # (The job may skip a MERGE that would change nothing and say "unchanged" instead.)
    times, verbs = {}, {}
    for t, msg in marks:
        for table in ("period_usage", "invoice_lines"):
            for verb in ("merged", "unchanged"):
                if f"{table} {verb}" in msg:
                    times[table], verbs[table] = t, verb
    if "period_usage" in times and "invoice_lines" in times:
        compute_s = phases.get("compute", 0.0)
        split = {
            "compute (segments, period usage, lines; local checkpoints)": round(compute_s, 2),
            f"gold.period_usage {verbs['period_usage']}": round(times["period_usage"] - started - compute_s, 2),
            f"gold.invoice_lines {verbs['invoice_lines']}": round(times["invoice_lines"] - times["period_usage"], 2),
            "summary (read back, aggregate)": round(started + seconds - times["invoice_lines"], 2),
        }
        for label, value in phases.items():
            if label != "compute":  # other wrapped helpers, inside the phases above
                split[f"of which {label}"] = value
        phases = split
    after = {t: table_state(spark, ctx.lake, t) for t in tables}
    diffs = {t: state_diff(before[t], after[t], commits_after(spark, ctx.lake, t, before[t]["version"]))
             for t in tables}
    return {"seconds": seconds, "phases": phases, "job_seconds": result.seconds,
            "lines": [{k: (str(v) if isinstance(v, Decimal) else v) for k, v in r.items()} for r in result.lines],
            "unpriced": [{k: (str(v) if isinstance(v, Decimal) else v) for k, v in r.items()} for r in result.unpriced],
            "tables": diffs}


def run_export_stage(spark, ctx, exports_dir: Path, now: datetime, timer: PhaseTimer) -> dict:
    from pyspark.sql import functions as F

    tables = ("gold.billing_exports", "gold.invoice_lines")
    before = {t: table_state(spark, ctx.lake, t) for t in tables}
    timer.take()
    started = time.monotonic()
    error = None
    result = None
    try:
        result = export_module.run_export(spark, ctx.lake, exports_dir=exports_dir, now=now)
    except Exception as exc:  # noqa: BLE001 - reported, the bench goes on
        error = f"{exc.__class__.__name__}: {exc}"
        say(f"export FAILED: {error}")
        traceback.print_exc(file=sys.stderr)
    seconds = time.monotonic() - started
    phases = timer.take()
    after = {t: table_state(spark, ctx.lake, t) for t in tables}
    out = {"seconds": seconds, "phases": phases, "error": error,
           "tables": {t: state_diff(before[t], after[t], commits_after(spark, ctx.lake, t, before[t]["version"]))
                      for t in tables}}
    if result is not None:
        out.update({
            "export_id": result.export_id, "lines": result.lines, "adjustments": result.adjustments,
            "amounts": {k: str(v) for k, v in (result.amounts or {}).items()},
            "resumed": list(result.resumed),
            "provider_file": str(result.provider_file) if result.provider_file else None,
            "finance_file": str(result.finance_file) if result.finance_file else None,
        })
        for key in ("provider_file", "finance_file"):
            if out[key] and Path(out[key]).exists():
                out[key + "_bytes"] = Path(out[key]).stat().st_size
        if ctx.lake.exists(spark, "gold.billing_exports"):
            out["ledger_by_state"] = {r["state"]: r["count"] for r in
                                      ctx.lake.read(spark, "gold.billing_exports").groupBy("state").count().collect()}
        final = ctx.lake.read(spark, "gold.invoice_lines").filter(F.col("status") == "final").count()
        out["final_lines_in_table"] = final
    return out


# --------------------------------------------------------------------------- report


def lines_by(result_lines: list[dict], key: str) -> dict:
    out: dict = {}
    for r in result_lines:
        k = r[key] if key != "status_currency" else f"{r['status']} {r['currency']}"
        cur = out.setdefault(k, {"lines": 0, "amount": Decimal(0)})
        cur["lines"] += int(r["lines"])
        cur["amount"] += Decimal(str(r["amount"]))
    return {k: {"lines": v["lines"], "amount": str(v["amount"])} for k, v in sorted(out.items())}


def rerun_verdict(tables: dict) -> str:
    parts = []
    for name, d in tables.items():
        if not d["new_versions"]:
            parts.append(f"{name} v{d['version_before']} -> v{d['version_after']} (no new version)")
            continue
        ops = ", ".join(
            f"v{c['version']} {c['operation']} "
            + " ".join(f"{k.removeprefix('numTarget').removeprefix('num')}={v}" for k, v in c["metrics"].items()
                       if k != "executionTimeMs")
            for c in d["commits"])
        parts.append(f"{name} v{d['version_before']} -> v{d['version_after']} "
                     f"({d['new_versions']} new version(s): {ops}; content "
                     f"{'unchanged' if d['content_unchanged'] else 'CHANGED'})")
    return "; ".join(parts)


def summary_table(r: dict) -> str:
    head = ("stage", "rows", "wall s", "peak RSS JVM MiB", "peak RSS Python MiB", "peak heap MiB")
    rows = []
    for s in r["stages"]:
        p = r["memory"].get(s["name"], {})
        rows.append((s["name"], s["rows"], f"{s['seconds']:.1f}" if s["seconds"] is not None else "-",
                     mib(p.get("jvm_rss")), mib(p.get("python_rss")), mib(p.get("heap_used"))))
    o = r["memory_overall"]
    rows.append(("whole run (incl. startup and checks)", "-", f"{r['total_seconds']:.1f}",
                 mib(o["jvm_rss"]), mib(o["python_rss"]), mib(o["heap_used"])))
    widths = [max(len(str(row[i])) for row in (head, *rows)) for i in range(len(head))]
    out = ["  ".join(str(c).ljust(widths[i]) if i == 0 else str(c).rjust(widths[i]) for i, c in enumerate(row))
           for row in (head, *rows)]
    out.insert(1, "  ".join("-" * w for w in widths))
    out.append("")
    for s in r["stages"]:
        if s["phases"]:
            out.append(f"{s['name']}: " + ", ".join(f"{k} {v:.1f} s" for k, v in s["phases"].items()))
        if s["note"]:
            out.append(f"{s['name']}: {s['note']}")
    b = r["billing"]
    out += [
        "",
        "lines by status: " + ", ".join(f"{k} {v['lines']:,} ({v['amount']})" for k, v in b["by_status_currency"].items()),
        "lines by period: " + ", ".join(f"{k} {v['lines']:,} ({v['amount']})" for k, v in b["by_period"].items()),
        f"unpriced usage rows: {sum(int(u['rows']) for u in b['first']['unpriced']):,}",
        f"rerun: {rerun_verdict(b['rerun']['tables'])}",
    ]
    e = r.get("export")
    out.append(f"export: {e['first'].get('lines', 0):,} lines, export_id {e['first'].get('export_id')}, "
               f"error {e['first'].get('error')}; rerun export_id {e['second'].get('export_id')} "
               f"({e['second'].get('lines', 0)} lines), error {e['second'].get('error')}")
    out.append(f"driver memory {r['machine'].get('driver_memory')}, JVM max heap "
               f"{r['machine'].get('jvm_max_heap_mib')} MiB; memory samples every {SAMPLE_SECONDS} s "
               f"({r['memory_overall']['samples']} samples, JVM pid {r['jvm_pid']})")
    return "\n".join(out)


def results_markdown(r: dict) -> str:
    m, a, b, lake = r["machine"], r["args"], r["billing"], r["lake"]
    e = r.get("export") or {}
    mem = r["memory"]
    rows = []
    for s in r["stages"]:
        p = mem.get(s["name"], {})
        rows.append(f"| {s['name']} | {s['rows']} | {s['seconds']:.1f} | {mib(p.get('jvm_rss'))} | "
                    f"{mib(p.get('python_rss'))} | {mib(p.get('heap_used'))} |"
                    if s["seconds"] is not None else f"| {s['name']} | {s['rows']} | - | - | - | - |")
    o = r["memory_overall"]
    rows.append(f"| whole run (startup, lake build, checks included) | - | {r['total_seconds']:.1f} | "
                f"{mib(o['jvm_rss'])} | {mib(o['python_rss'])} | {mib(o['heap_used'])} |")
    phase_lines = [f"- {s['name']}: " + ", ".join(f"{k} {v:.1f} s" for k, v in s["phases"].items())
                   for s in r["stages"] if s["phases"]]
    lc = lake["lifecycle_events"]
    kinds = lake["account_kinds"]
    first = b["first"]
    periods = ", ".join(f"{k} {v['status']}" for k, v in b["period_status"].items())
    export_text = []
    if e:
        f1, f2 = e["first"], e["second"]
        if f1.get("error"):
            export_text.append(f"- Export: **failed**: `{f1['error'].splitlines()[0][:300]}`.")
        else:
            export_text.append(
                f"- Export: {f1.get('lines', 0):,} final lines ({f1.get('adjustments', 0)} adjustments) in "
                f"`{f1.get('export_id')}`, amounts " + ", ".join(f"{v} {k}" for k, v in f1.get("amounts", {}).items())
                + f"; provider.jsonl {f1.get('provider_file_bytes', 0) / 2**20:.1f} MiB, finance.csv "
                f"{f1.get('finance_file_bytes', 0) / 2**20:.1f} MiB; ledger {f1.get('ledger_by_state')}.")
        if f2.get("error"):
            export_text.append(f"- Export rerun: **failed**: `{f2['error'].splitlines()[0][:300]}`.")
        else:
            new = f2.get("export_id")
            what = ("nothing new (export_id None)" if new is None
                    else f"**exported {f2.get('lines', 0):,} lines again** ({new})")
            export_text.append(f"- Export rerun: {what}; {rerun_verdict(f2['tables'])}.")
    return "\n".join([
        f"### {r['started_at'][:16].replace('T', ' ')} UTC, {a['accounts']:,} accounts, {a['events']:,} usage events",
        "",
        *command_block(r["command"], where="no broker needed"),
        machine_line(m),
        "",
        f"Code: commit {r['code'].get('commit', '?')}"
        + (f", with uncommitted changes in the working tree ({', '.join(r['code']['pipelines_changes'])}; "
           f"sha256 prefixes {', '.join(f'{k} {v}' for k, v in r['code'].get('sha256', {}).items())})"
           if r["code"].get("pipelines_changes") else "") + ".",
        "",
        f"Input (synthetic silver written with Spark, seed {a['seed']}): {a['accounts']:,} accounts "
        f"({lake['accounts_starting_month_2']:,} starting at the second month), "
        f"silver.account_events {lake['account_events']:,} rows (subscription.started {lc.get('subscription.started', 0):,}, "
        f"plan.changed {lc.get('plan.changed', 0):,}: {kinds.get('upgrade', 0):,} upgrades + {kinds.get('downgrade', 0):,} "
        f"downgrades, subscription.cancelled {lc.get('subscription.cancelled', 0):,}), starting plans "
        + ", ".join(f"{p} {n:,}" for p, n in lake["starting_plans"].items())
        + f"; silver.usage_events {lake['usage_events']:,} rows over {a['months']} months ("
        + ", ".join(f"{p} {n:,}" for p, n in lake["usage_by_period"].items())
        + "), five metrics. "
        f"Periods billed with now = {r['now']}: {periods}.",
        "",
        "| stage | rows | wall time (s) | peak RSS JVM (MiB) | peak RSS Python (MiB) | peak JVM heap used (MiB) |",
        "|---|---:|---:|---:|---:|---:|",
        *rows,
        "",
        "- Lines produced: " + ", ".join(f"{k} {v['lines']:,} lines, {v['amount']}"
                                         for k, v in b["by_status_currency"].items())
        + "; per period: " + ", ".join(f"{k} {v['lines']:,} ({v['amount']})" for k, v in b["by_period"].items())
        + f"; gold.period_usage {b['first']['tables']['gold.period_usage']['rows_after']:,} rows; unpriced usage rows "
        f"{sum(int(u['rows']) for u in first['unpriced']):,}.",
        f"- Rerun of the billing close: {rerun_verdict(b['rerun']['tables'])}.",
        *export_text,
        *phase_lines,
        f"- Memory: sampled every {SAMPLE_SECONDS} s ({o['samples']} samples): RSS of the JVM (pid of the Spark "
        f"gateway's java child, /proc VmRSS) and of the Python driver, JVM heap used = totalMemory - freeMemory. "
        f"Lake build (Spark writing the synthetic silver tables) and the table checks between stages are not "
        f"part of the billing figures.",
    ])


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started_at = datetime.now(UTC)
    stamp = started_at.strftime("%Y%m%dT%H%M%SZ")
    out = args.out.resolve()
    run_dir = out / f"billing-{stamp}"
    run_dir.mkdir(parents=True, exist_ok=True)
    lake_dir = Path(tempfile.mkdtemp(prefix=f"billing-lake-{stamp}-", dir=out))
    # build_spark puts the warehouse under LAKEHOUSE_ROOT: keep it inside the bench lake.
    os.environ["LAKEHOUSE_ROOT"] = str(lake_dir)
    settings = Settings().with_overrides(lake_root=lake_dir)
    last = month_start(*LAST_MONTH)
    first = month_start(*LAST_MONTH, plus=-(args.months - 1))
    second = month_start(*LAST_MONTH, plus=-(args.months - 2)) if args.months > 1 else first
    now = last.replace(day=NOW_DAY, hour=NOW_HOUR)
    say(f"bench: {args.accounts:,} accounts, {args.events:,} usage events, {args.months} months "
        f"{first:%Y-%m}..{last:%Y-%m}, now {now:%Y-%m-%d %H:%M} UTC; lake {lake_dir}; outputs {run_dir}")

    spark = None
    sampler = None
    timer = PhaseTimer()
    stages: list[Stage] = []
    try:
        say("starting Spark (one session for every stage)")
        from pipelines.billing import close as billing_job
        from pipelines.core.context import JobContext
        from pipelines.core.session import build_spark

        spark = build_spark("bench-billing")
        machine = machine_info(spark)
        code = code_state()
        say(f"code: {code}")
        jvm_pid = find_jvm_pid()
        say(f"JVM pid {jvm_pid}, driver memory {machine['driver_memory']}, load average {machine.get('load_average_at_start')}")
        sampler = MemorySampler(spark, jvm_pid).start()
        ctx = JobContext.from_settings(settings)
        timer.wrap(billing_job, "compute")
        timer.wrap(billing_job, "_differs", "change checks before the MERGEs (_differs)")

        say(f"1/5 build the synthetic silver lake: {args.accounts:,} accounts, {args.events:,} usage events")
        sampler.set_stage("build silver lake")
        t = time.monotonic()
        lake = build_lake(spark, ctx.lake, args, first, second, now)
        stages.append(Stage("build silver lake", f"{lake['account_events'] + lake['usage_events']:,}",
                            time.monotonic() - t,
                            note="synthetic data written with Spark (includes the counts read back)"))
        say(f"lake: account_events {lake['account_events']:,} {lake['lifecycle_events']}, "
            f"usage_events {lake['usage_events']:,} {lake['usage_by_period']} in {stages[-1].seconds:.1f} s")

        say("2/5 billing close over every period")
        sampler.set_stage("billing close")
        first_run = run_billing_stage(spark, ctx, now, timer, "billing")
        sampler.set_stage("checks")
        n_lines = first_run["tables"]["gold.invoice_lines"]["rows_after"]
        n_usage = first_run["tables"]["gold.period_usage"]["rows_after"]
        stages.append(Stage("billing close (run_billing, all periods)", f"{n_lines:,} lines / {n_usage:,} usage",
                            first_run["seconds"], first_run["phases"]))
        say(f"billing close: {first_run['seconds']:.1f} s, {n_lines:,} invoice lines, {n_usage:,} period_usage rows")

        say("3/5 billing rerun (must change nothing)")
        sampler.set_stage("billing rerun")
        rerun = run_billing_stage(spark, ctx, now, timer, "billing rerun")
        sampler.set_stage("checks")
        stages.append(Stage("billing rerun (same now)", f"{rerun['tables']['gold.invoice_lines']['rows_after']:,} lines",
                            rerun["seconds"], rerun["phases"], note=rerun_verdict(rerun["tables"])))
        say(f"billing rerun: {rerun['seconds']:.1f} s; {rerun_verdict(rerun['tables'])}")

        period_status = {}
        for row in first_run["lines"]:
            period_status.setdefault(row["period"], {"status": row["status"]})
        billing = {
            "first": first_run, "rerun": rerun, "period_status": dict(sorted(period_status.items())),
            "by_status_currency": lines_by(first_run["lines"], "status_currency"),
            "by_period": lines_by(first_run["lines"], "period"),
        }

        say("4/5 export of the final lines")
        timer.wrap(export_module, "check_export_gate", "gate (reconcile + critical checks)")
        timer.wrap(export_module, "_insert_adjustments", "insert adjustments")
        timer.wrap(export_module, "_stage", "stage (MERGE into the ledger)")
        timer.wrap(export_module, "_deliver", "deliver (write files, mark delivered)")
        exports_dir = lake_dir / "exports"
        sampler.set_stage("export")
        e1 = run_export_stage(spark, ctx, exports_dir, now, timer)
        sampler.set_stage("checks")
        stages.append(Stage("export (run_export, final lines)",
                            f"{e1.get('lines', 0):,} lines" if not e1["error"] else "failed",
                            e1["seconds"], e1["phases"]))
        say(f"export: {e1['seconds']:.1f} s, {e1.get('lines', 0):,} lines, export_id {e1.get('export_id')}")
        say("5/5 export rerun (must export nothing new)")
        sampler.set_stage("export rerun")
        e2 = run_export_stage(spark, ctx, exports_dir, now, timer)
        sampler.set_stage("checks")
        stages.append(Stage("export rerun", f"{e2.get('lines', 0):,} lines" if not e2["error"] else "failed",
                            e2["seconds"], e2["phases"],
                            note=("nothing new" if e2.get("export_id") is None and not e2["error"]
                                  else f"export_id {e2.get('export_id')}, error {e2['error']}")))
        say(f"export rerun: {e2['seconds']:.1f} s, export_id {e2.get('export_id')}")
        export = {"first": e1, "second": e2}

        sampler.stop()
        memory = {}
        stage_map = {"build silver lake": "build silver lake", "billing close (run_billing, all periods)": "billing close",
                     "billing rerun (same now)": "billing rerun", "export (run_export, final lines)": "export",
                     "export rerun": "export rerun"}
        for s in stages:
            p = sampler.peaks.get(stage_map.get(s.name, s.name))
            if p:
                memory[s.name] = {"jvm_rss": p.jvm_rss, "python_rss": p.python_rss, "heap_used": p.heap_used,
                                  "samples": p.samples}
        o = sampler.overall()
        result = {
            "started_at": started_at.isoformat(), "command": command_line(),
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "now": now.isoformat(), "first_period": f"{first:%Y-%m}", "machine": machine, "jvm_pid": jvm_pid,
            "code": code,
            "lake": lake, "billing": billing, "export": export,
            "stages": [s.__dict__ for s in stages], "memory": memory,
            "memory_by_sampler_stage": {k: v.__dict__ for k, v in sampler.peaks.items()},
            "memory_overall": o.__dict__, "total_seconds": elapsed(),
        }
        write_outputs(run_dir, result, results_markdown(result), summary_table(result))
        return 0
    finally:
        timer.restore()
        if sampler is not None:
            sampler.stop()
        if spark is not None:
            spark.stop()
        if args.keep:
            say(f"kept the lake {lake_dir}")
        else:
            shutil.rmtree(lake_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
