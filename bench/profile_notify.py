"""Where a notify micro-batch spends its time, line by line.

Run by hand from the repository root, with the local broker up:

    .venv/bin/python -m bench.profile_notify                  # 3,000 events
    .venv/bin/python -m bench.profile_notify --events 30000 --batches 6

The notify stream (`pipelines/rules/notify.py`) reads silver's change feeds and, per
micro-batch, computes the usage alerts and reactive notifications, stages them in the outbox
(gold.notifications) and publishes what is pending (`pipelines/rules/notifications.py`). This script
produces events with the project generator into a fresh one-partition topic, runs bronze in
`--batches` micro-batches and silver one bronze version per micro-batch, then runs notify
one change-feed file per micro-batch with every Spark action of those two files timed and
keyed by the line that called it (the same instrumentation as `profile_silver.py`).

Batches where only the foreachBatch entry ran (nothing to compute) are left out, and the
first --skip-first batches with work pay JIT and cache warm-up.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from bench.bench_common import delete_topic, say
from bench.profile_silver import Timings, bronze_in_batches, profile_parser, report, timed_actions, timed_batches
from pipelines.core import kafka_topics
from pipelines.rules import notifications as outbox
from pipelines.rules import notify as notify_job
from pipelines.core.context import JobContext, RunOptions
from pipelines.runner import ProgressReporter, run_jobs
from pipelines.core.session import build_spark
from pipelines.core.settings import Settings


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return profile_parser(__doc__.split("\n\n")[0], top=20).parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    topics = (f"profile.events.{stamp}", f"profile.notifications.{stamp}")
    with tempfile.TemporaryDirectory(prefix="profile-notify-") as lake:
        settings = Settings(lake_root=Path(lake), events_topic=topics[0], notifications_topic=topics[1])
        kafka_topics.ensure_topics(settings, {topics[1]: outbox.TOPIC_PARTITIONS})
        spark = build_spark("profile-notify")
        try:
            bronze_in_batches(spark, settings, args)
            one_file = JobContext.from_settings(settings, RunOptions(max_files_per_trigger=1))
            run_jobs(spark, one_file, ["silver"], reporter=ProgressReporter(quiet=True), log=say)
            timings = Timings()
            with (timed_batches(timings, notify_job.NotifyWriter, "__call__"),
                  timed_actions(timings, (notify_job.__file__, outbox.__file__))):
                run_jobs(spark, one_file, ["notify"], reporter=ProgressReporter(quiet=True), log=say)
            print(report(timings, args.skip_first, args.top, job="notify", entry="__call__:"))
        finally:
            spark.stop()
            outbox.close_publishers()
            for topic in topics:
                delete_topic(settings, topic)
    return 0


if __name__ == "__main__":
    sys.exit(main())
