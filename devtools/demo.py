"""`python -m devtools demo` (`make demo`): the whole local story, with a readable summary.

Starts the local broker, sends a seeded synthetic stream (duplicates, gateway retries,
reopened tickets, late events, bad records), runs bronze -> silver -> gold with progress,
then prints what each layer holds and where every record went.
"""
from __future__ import annotations

import shutil
import sys
import time
from collections import Counter
from dataclasses import dataclass
from datetime import timedelta

from pipelines.core.settings import Settings


@dataclass(frozen=True)
class DemoOptions:
    events: int = 10_000
    accounts: int = 40
    seed: int = 7
    fresh: bool = True


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _reset_topic(settings: Settings) -> None:
    """A fresh demo starts from an empty topic, or old runs' records would be re-read."""
    from pipelines.core import kafka_clients, kafka_topics

    admin = kafka_clients.new_admin(settings, client_id="lakehouse-demo", request_timeout_ms=30_000)
    try:
        if settings.events_topic in admin.list_topics():
            admin.delete_topics([settings.events_topic], timeout_ms=30_000)
            deadline = time.monotonic() + 30
            while settings.events_topic in admin.list_topics() and time.monotonic() < deadline:
                time.sleep(0.5)
    finally:
        admin.close()
    for _ in range(20):  # topic deletion finishes asynchronously on the broker
        try:
            kafka_topics.ensure_topics(settings, {settings.events_topic: 3})
            return
        except Exception:  # noqa: BLE001 - retried, then re-raised below
            time.sleep(0.5)
    kafka_topics.ensure_topics(settings, {settings.events_topic: 3})


def run_demo(settings: Settings, options: DemoOptions) -> int:
    from devtools import generator, kafka_local, sender

    started = time.monotonic()
    _say(f"1/4 kafka: starting the local broker on {settings.bootstrap_servers}")
    kafka_local.start(settings)
    if options.fresh:
        _say(f"    fresh run: emptying {settings.lake_root_abs} and topic {settings.events_topic}")
        shutil.rmtree(settings.lake_root_abs, ignore_errors=True)
        _reset_topic(settings)

    _say(f"2/4 produce: {options.events:,} synthetic records for {options.accounts} accounts (seed {options.seed})")
    # Forty days of event time: the previous month closes, so billing has final lines to
    # export as well as this month's running estimate. Twice the quarantine SLO's 1 % of bad
    # records, so the status table shows the monitor firing.
    gen = generator.GeneratorOptions(count=options.events, accounts=options.accounts, seed=options.seed,
                                     span=timedelta(days=40), bad=0.02)
    kinds: Counter[str] = Counter()

    def tagged():
        for record in generator.generate(gen):
            kinds[generator.kind_family(record.kind)] += 1
            yield record

    def progress(n: int) -> None:
        if n % 5000 == 0:
            _say(f"    sent {n:,}/{options.events:,}")

    sent = sender.send(tagged(), settings, progress=progress)
    _say(f"    sent {sent:,} records: " + ", ".join(f"{k} {v:,}" for k, v in sorted(kinds.items())))

    _say("3/4 jobs: bronze -> silver -> gold (availableNow: process everything, then stop), billing, export")
    from pipelines.core.context import JobContext
    from pipelines.runner import run_jobs
    from pipelines.core.session import build_spark

    spark = build_spark("lakehouse-demo")
    ctx = JobContext.from_settings(settings)
    reporter = run_jobs(spark, ctx, ["bronze", "silver", "gold", "billing", "export"])

    _say("4/4 summary")
    from devtools.summary import render_summary

    print(render_summary(spark, ctx.lake, reporter, sent_kinds=kinds))
    print("(The demo sends forty days of event time at once, so most events count as late: their\n"
          " occurred_at lies more than the late threshold behind ingestion.)")
    from pipelines.monitoring.status import plot_metrics, read_metrics, render_status, stream_statuses
    from pipelines.monitoring.slo import load_slos

    metrics = read_metrics(spark, ctx.lake)
    print("\nstream status (ops.stream_metrics against pipelines/conf/slo.yaml):")
    print(render_status(stream_statuses(metrics, load_slos())))
    print(f"status plot (throughput, Kafka lag, freshness): {plot_metrics(metrics, settings.lake_root_abs / 'status.png')}")
    print(f"done in {time.monotonic() - started:.0f} s. Query the tables with e.g.\n"
          f"  .venv/bin/lakehouse sql \"SELECT * FROM gold.daily_usage ORDER BY quantity DESC\"")
    return 0
