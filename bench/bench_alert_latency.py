"""Usage-alert latency in continuous mode: from producing a usage event that crosses a quota
threshold to the notification being readable on the notifications topic.

Run by hand, from the repository root, with the broker running:

    .venv/bin/python -m bench.bench_alert_latency                     # 200 crossings
    .venv/bin/python -m bench.bench_alert_latency --crossings 20      # quick check

One process, one SparkSession:

1. setup    fresh topics and a lake under --out; the bronze, silver and notify streams start
            in continuous mode (processingTime --processing-time) exactly as
            `lakehouse run bronze silver notify --continuous` starts them (with --monitor,
            also with that command's stream monitor: its listener on every stream and its
            write to ops.stream_metrics every few seconds); each of the
            --crossings accounts gets a subscription.started (basic: 300 tickets included);
            the bench waits for every welcome notification, so the pipeline is warm and
            every account's plan is in silver before anything is timed;
2. measure  one usage event per account, --interval seconds apart: billable_tickets, 240,
            which reaches exactly the 80 % threshold; the send time is taken when the broker
            acknowledged the record. A read_committed consumer in a background thread
            stamps each usage.quota_threshold notification on arrival; latency = arrival -
            acknowledgement of its trigger event (notification trigger_event_ids);
3. report   median, p95, max, and a count check: every crossing alerted exactly once.

Outputs: --out/alerts-<stamp>/summary.json, results.md (also printed, ready to paste into
bench/RESULTS.md; nothing is appended automatically), crossings.csv (each crossing's send
time and latency) and timeline.png: each crossing's latency against its send time, over
the micro-batches of the three streams, which shows where the time goes. The lake is
deleted unless --keep.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from bench.bench_common import (
    command_block, command_line, elapsed, machine_info, machine_line, positive_int, say, write_outputs,
)
from pipelines.core.settings import Settings

REPO_ROOT = Path(__file__).resolve().parent.parent

QUOTA_SHARE_USAGE = 240   # 80 % of basic's 300 included tickets: exactly at the threshold


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--crossings", type=positive_int, default=200, help="threshold crossings to time (default 200)")
    p.add_argument("--interval", type=float, default=0.5, help="seconds between crossing events (default 0.5)")
    p.add_argument("--processing-time", default="1 second", help="micro-batch interval of the streams (default 1 second)")
    p.add_argument("--timeout", type=float, default=600.0, help="give up waiting for notifications after this (s)")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "out", help="output folder")
    p.add_argument("--keep", action="store_true", help="keep the lake")
    p.add_argument("--monitor", action="store_true",
                   help="run the stream monitor beside the streams, as `lakehouse run --continuous` does")
    return p.parse_args(argv)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))
    return ordered[int(rank) - 1]


class Arrivals(threading.Thread):
    """Stamps every notification on arrival (read_committed: what consumers see)."""

    def __init__(self, settings: Settings, topic: str):
        super().__init__(daemon=True)
        from kafka import KafkaConsumer

        self.consumer = KafkaConsumer(topic, bootstrap_servers=settings.bootstrap_servers, group_id=None,
                                      auto_offset_reset="earliest", enable_auto_commit=False,
                                      isolation_level="read_committed", fetch_max_wait_ms=50)
        self.seen: list[tuple[float, dict]] = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            for records in self.consumer.poll(timeout_ms=100).values():
                now = time.time()
                with self.lock:
                    self.seen.extend((now, json.loads(r.value)) for r in records)
        self.consumer.close()

    def of_type(self, type_: str) -> list[tuple[float, dict]]:
        with self.lock:
            return [(t, v) for t, v in self.seen if v["type"] == type_]


def wait_for(arrivals: Arrivals, type_: str, count: int, timeout: float, queries, tick=lambda: None) -> None:
    """Until `count` notifications of `type_` arrived; `tick` runs on every poll (the
    monitor's flush, as the runner's loop calls it)."""
    deadline = time.monotonic() + timeout
    while len(arrivals.of_type(type_)) < count:
        tick()
        for q in queries:
            if q.exception():
                raise RuntimeError(f"stream {q.name} failed: {q.exception()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {len(arrivals.of_type(type_))} of {count} {type_} notifications "
                               f"after {timeout:.0f} s")
        time.sleep(0.2)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from kafka import KafkaProducer

    from devtools import kafka_local
    from devtools.generator import format_ts, to_ms
    from pipelines.core import kafka_topics
    from pipelines.core.exact_json import dumps
    from pipelines.core.context import JobContext, RunOptions
    from pipelines.monitoring.listener import StreamMonitor
    from pipelines.runner import JOBS
    from pipelines.core.session import build_spark

    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    run_dir = args.out / f"alerts-{stamp}"
    run_dir.mkdir(parents=True, exist_ok=True)
    lake_root = run_dir / "lake"
    settings = Settings().with_overrides(lake_root=str(lake_root), events_topic=f"bench.events.{stamp}",
                                         notifications_topic=f"bench.notifications.{stamp}")
    kafka_local.start(settings)
    kafka_topics.ensure_topics(settings, {settings.events_topic: 3, settings.notifications_topic: 3})
    spark = build_spark("bench-alert-latency")
    machine = machine_info(spark, kafka=True)
    ctx = JobContext.from_settings(settings, RunOptions(continuous=True, processing_time=args.processing_time))
    arrivals = Arrivals(settings, settings.notifications_topic)
    arrivals.start()
    producer = KafkaProducer(bootstrap_servers=settings.bootstrap_servers, acks="all", linger_ms=0)
    queries = []
    run_tag = uuid.uuid4().hex[:6]
    accounts = [f"bench-{run_tag}-{i:04d}" for i in range(args.crossings)]
    now = datetime.now(UTC)
    month_start = datetime(now.year, now.month, 1, tzinfo=UTC)

    def send(event: dict) -> float:
        producer.send(settings.events_topic, key=event["account_id"].encode(), value=dumps(event).encode()).get(30)
        return time.time()

    monitor = StreamMonitor(spark, ctx.lake, continuous=True) if args.monitor else None
    tick = monitor.flush if monitor else (lambda: None)
    if monitor:
        monitor.__enter__()
    try:
        queries = [JOBS[name](spark, ctx) for name in ("bronze", "silver", "notify")]
        say(f"streams started (processingTime {args.processing_time}); subscribing {len(accounts)} accounts")
        for account in accounts:
            send({"event_id": f"start-{account}", "event_type": "subscription.started", "account_id": account,
                  "occurred_at": format_ts(to_ms(month_start)), "schema_version": 1, "plan_id": "basic"})
        producer.flush()
        warm_started = time.monotonic()
        wait_for(arrivals, "account.welcome", len(accounts), args.timeout, queries, tick)
        say(f"all {len(accounts)} welcome notifications arrived in {time.monotonic() - warm_started:.1f} s; timing")

        sent_at: dict[str, float] = {}
        for account in accounts:
            event_id = f"cross-{account}"
            sent_at[event_id] = send({
                "event_id": event_id, "event_type": "usage", "account_id": account,
                "occurred_at": format_ts(to_ms(datetime.now(UTC))), "schema_version": 1,
                "product": "helpdesk", "metric": "billable_tickets", "quantity": QUOTA_SHARE_USAGE})
            time.sleep(args.interval)
        wait_for(arrivals, "usage.quota_threshold", len(accounts), args.timeout, queries, tick)
        time.sleep(max(3.0, 2 * args.interval))   # let any duplicate show up before counting
        alerts = arrivals.of_type("usage.quota_threshold")
        # Where the time goes: each stream's micro-batches with input (Spark keeps the last 100).
        spans = {q.name: batch_spans(q.recentProgress) for q in queries}
    finally:
        for q in queries:
            q.stop()
        if monitor:
            monitor.__exit__(None, None, None)
        arrivals.stopping.set()
        producer.close()

    timed: list[tuple[str, float, float]] = []   # (event id, sent at, latency)
    per_trigger: dict[str, int] = {}
    for arrived, value in alerts:
        trigger = value["trigger_event_ids"][0]
        per_trigger[trigger] = per_trigger.get(trigger, 0) + 1
        if per_trigger[trigger] == 1 and trigger in sent_at:
            timed.append((trigger, sent_at[trigger], arrived - sent_at[trigger]))
    duplicates = sum(n - 1 for n in per_trigger.values())
    latencies = [latency for *_, latency in timed]
    batches = {name: sorted(end - start for start, end in s) for name, s in spans.items()}
    result = {
        "command": command_line(), "machine": machine, "started_utc": stamp,
        "crossings": len(accounts), "interval_s": args.interval, "processing_time": args.processing_time,
        "monitor": args.monitor,
        "alerts": len(alerts), "duplicates": duplicates, "missing": len(set(sent_at) - set(per_trigger)),
        "latency_s": {"median": statistics.median(latencies), "p95": percentile(latencies, 95),
                      "min": min(latencies), "max": max(latencies), "mean": statistics.fmean(latencies)},
        "batch_seconds": {name: {"batches": len(d), "median": statistics.median(d) if d else None,
                                 "max": max(d) if d else None} for name, d in batches.items()},
        "load_average_at_end": list(__import__("os").getloadavg()), "wall_s": elapsed(),
        "topics": [settings.events_topic, settings.notifications_topic],
    }
    lat = result["latency_s"]
    table = (f"crossings {len(accounts)}, alerts {len(alerts)}, duplicates {duplicates}, missing {result['missing']}\n"
             f"latency s: median {lat['median']:.2f}, p95 {lat['p95']:.2f}, min {lat['min']:.2f}, max {lat['max']:.2f}")
    write_crossings(run_dir / "crossings.csv", timed)
    plot_timeline(timed, spans, run_dir / "timeline.png", lat)
    write_outputs(run_dir, result, results_markdown(result), table)
    if not args.keep:
        shutil.rmtree(lake_root, ignore_errors=True)
    spark.stop()
    return 0 if duplicates == 0 and result["missing"] == 0 else 1


def batch_spans(progress: list[dict]) -> list[tuple[float, float]]:
    """(start, end) in epoch seconds of each micro-batch that had input."""
    out = []
    for p in progress:
        if p.get("numInputRows"):
            start = datetime.fromisoformat(p["timestamp"].replace("Z", "+00:00")).timestamp()
            out.append((start, start + p["durationMs"]["triggerExecution"] / 1000))
    return out


def write_crossings(path: Path, timed: list[tuple[str, float, float]]) -> None:
    first = min((t for _, t, _ in timed), default=0.0)
    rows = sorted(timed, key=lambda row: row[1])
    lines = ["event_id,sent_s,latency_s"] + [f"{e},{t - first:.3f},{lat:.3f}" for e, t, lat in rows]
    path.write_text("\n".join(lines) + "\n")


def plot_timeline(timed: list[tuple[str, float, float]], spans: dict[str, list[tuple[float, float]]],
                  path: Path, lat: dict) -> None:
    """Top: each crossing's latency at its send time. Bottom: each stream's micro-batches with
    input over the same clock, so a crossing's wait can be read against the batches it needed."""
    if not timed:
        return
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first = min(t for _, t, _ in timed)
    last = max(t + latency for _, t, latency in timed)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(11, 6.5), sharex=True, height_ratios=[3, 1.3])
    top.scatter([t - first for _, t, _ in timed], [latency for *_, latency in timed], s=12, label="one crossing")
    for name, value, style in (("median", lat["median"], "--"), ("p95", lat["p95"], ":")):
        top.axhline(value, color="grey", linestyle=style, linewidth=1, label=f"{name} {value:.1f} s")
    top.set_ylabel("alert latency (s)")
    top.set_ylim(bottom=0)
    top.grid(alpha=0.3)
    top.legend(loc="lower right", fontsize=8)
    top.set_title(f"usage-alert latency, {len(timed)} crossings: each event waits for a bronze, "
                  "a silver and a notify micro-batch")
    names = list(spans)
    for row, name in enumerate(names):
        bars = [(s - first, e - s) for s, e in spans[name] if e >= first and s <= last]
        bottom.broken_barh(bars, (row - 0.35, 0.7), facecolors=f"C{row + 1}", edgecolors="white", linewidth=0.5)
    bottom.set_yticks(range(len(names)), names)
    bottom.set_ylim(-0.6, len(names) - 0.4)
    bottom.invert_yaxis()
    bottom.set_xlabel("seconds since the first crossing event was sent")
    bottom.set_title("micro-batches with input (start to end)", fontsize=9)
    bottom.set_xlim(-2, last - first + 2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def results_markdown(r: dict) -> str:
    m, lat = r["machine"], r["latency_s"]
    return "\n".join([
        f"### {r['started_utc'][:4]}-{r['started_utc'][4:6]}-{r['started_utc'][6:8]} "
        f"{r['started_utc'][9:11]}:{r['started_utc'][11:13]} UTC, {r['crossings']} crossings",
        "",
        *command_block(r["command"], where="broker running"),
        machine_line(m, load_at_end=r["load_average_at_end"]) + " Shared machine: other work may have run meanwhile.",
        "",
        f"Streams bronze -> silver -> notify in continuous mode, processingTime {r['processing_time']}"
        f"{', with the stream monitor' if r.get('monitor') else ', without the stream monitor'}; one "
        f"usage event every {r['interval_s']} s, each reaching 80 % of an included quota.",
        "",
        "| crossings | alerts on the topic | duplicates | missing | median (s) | p95 (s) | min (s) | max (s) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| {r['crossings']} | {r['alerts']} | {r['duplicates']} | {r['missing']} | **{lat['median']:.2f}** | "
        f"**{lat['p95']:.2f}** | {lat['min']:.2f} | {lat['max']:.2f} |",
        "",
        "Micro-batches with input, last 100 per stream (median / max seconds): " + ", ".join(
            f"{name} {b['batches']} ({b['median']:.1f} / {b['max']:.1f})" if b["batches"] else f"{name} 0"
            for name, b in r["batch_seconds"].items()) + ".",
    ])


if __name__ == "__main__":
    sys.exit(main())
