"""Backfill against a lakehouse the stream built from real Kafka records.

- over a range silver already holds, it changes nothing: same rows, no new table version;
- over a range that was lost (its silver rows deleted, gold recomputed without them), it
  re-creates exactly what the stream had made;
- into an empty silver and gold (bronze only), replaying everything gives the stream's
  tables, however the stream had cut its micro-batches.
"""
from __future__ import annotations

import shutil
import uuid
from datetime import datetime, timedelta, timezone

import pytest
from pyspark.sql import functions as F

from pipelines.core import kafka_topics
from devtools import generator, sender
from pipelines.ingest.backfill import BronzeRange, run_backfill
from pipelines.core.tables import Lake
from tests.integration.helpers import context, run

pytestmark = pytest.mark.kafka

SILVER_GOLD = ["silver.usage_events", "silver.account_events", "silver.duplicates", "silver.quarantine",
               "gold.daily_usage"]
# Which of several byte-identical copies is kept is the hot path's choice inside one
# micro-batch (docs/contracts.md, "Limitations"); the backfill keeps the first in Kafka order. So the
# kept (or rule-dropped) copy's coordinates and ingestion time may differ from the
# stream's, nothing else.
COPY_CHOICE = {"kafka_partition", "kafka_offset", "kafka_timestamp", "ingested_at"}
EXACT = {t: set() for t in SILVER_GOLD}
SAME_EVENTS = {**EXACT, "silver.usage_events": COPY_CHOICE, "silver.account_events": COPY_CHOICE,
               "silver.duplicates": COPY_CHOICE, "gold.daily_usage": {"last_ingested_at"}}


def snapshot(spark, settings, compared=None) -> dict[str, list[tuple]]:
    lake = Lake(settings)
    out = {}
    for table, skip in (compared or EXACT).items():
        df = lake.read(spark, table)
        cols = [c for c in df.columns if c not in skip]
        out[table] = sorted((tuple(r) for r in df.select(*cols).collect()), key=repr)
    return out


def versions(spark, settings) -> dict[str, int]:
    lake = Lake(settings)
    return {t: lake.delta(spark, t).history(1).first()["version"] for t in SILVER_GOLD}


@pytest.fixture(scope="module")
def built(spark, kafka_settings, tmp_path_factory):
    """A lake built by bronze -> silver -> gold in several micro-batches."""
    topic = f"test.backfill.{uuid.uuid4().hex[:10]}"
    kafka_topics.ensure_topics(kafka_settings, {topic: 2})
    clock = datetime(2026, 10, 15, tzinfo=timezone.utc)
    records = list(generator.generate(generator.GeneratorOptions(
        count=500, accounts=5, seed=23, start=clock - timedelta(days=20), span=timedelta(days=20), now=clock,
        duplicates=0.1, gateway_retries=0.08, reopened_tickets=0.08, late=0.05, bad=0.04)))
    settings = kafka_settings.with_overrides(lake_root=str(tmp_path_factory.mktemp("backfill") / "lake"),
                                             events_topic=topic)
    sender.send(records, settings)
    # Three bronze and about three silver micro-batches: enough cuts for "however the stream
    # had cut its micro-batches", few enough to keep the fixture under a minute.
    ctx = context(settings, watermark_seconds=1, max_offsets_per_trigger=250, max_files_per_trigger=2)
    run(spark, ctx, "bronze", "silver", "gold")
    return settings, context(settings, watermark_seconds=1)


def test_a_range_silver_already_holds_changes_nothing(spark, built):
    settings, ctx = built
    made = snapshot(spark, settings)
    before = versions(spark, settings)
    everything = BronzeRange(topic=settings.events_topic, from_offset=0)
    for _ in range(2):
        result = run_backfill(spark, ctx, everything)
        assert result.records_in_range == 500
        assert result.replayed == 0 and result.already_in_silver == 500
        assert result.changed_tables == [] and result.daily_rows_changed == 0
    assert versions(spark, settings) == before
    assert snapshot(spark, settings) == made


def test_a_lost_range_is_re_created_exactly(spark, built):
    settings, ctx = built
    lake = Lake(settings)
    made = snapshot(spark, settings, SAME_EVENTS)
    # The middle half of the fuller partition (records are keyed by account, so partitions differ).
    sizes = lake.read(spark, "bronze.events").groupBy("partition").count().orderBy(F.desc("count")).first()
    partition, size = sizes["partition"], sizes["count"]
    start, end = size // 4, size * 3 // 4
    lost = BronzeRange(topic=settings.events_topic, partitions=(partition,), from_offset=start, to_offset=end)
    in_range = (F.col("kafka_topic") == settings.events_topic) & (F.col("kafka_partition") == partition) \
        & (F.col("kafka_offset") >= start) & (F.col("kafka_offset") < end)
    for table in SILVER_GOLD[:4]:
        lake.delta(spark, table).delete(in_range)
    run(spark, ctx, "gold")   # gold follows silver's deletes, as it would in production
    damaged = snapshot(spark, settings, SAME_EVENTS)
    assert damaged["silver.usage_events"] != made["silver.usage_events"]
    assert damaged["gold.daily_usage"] != made["gold.daily_usage"]

    result = run_backfill(spark, ctx, lost)
    assert result.records_in_range == end - start and result.replayed > 0
    assert snapshot(spark, settings, SAME_EVENTS) == made

    # ...and a second run is a no-op.
    before = versions(spark, settings)
    again = run_backfill(spark, ctx, lost)
    assert again.replayed == 0 and versions(spark, settings) == before


def test_replaying_bronze_into_an_empty_silver_gives_the_streams_tables(spark, built, tmp_path):
    settings, _ctx = built
    made = snapshot(spark, settings, SAME_EVENTS)
    fresh = settings.with_overrides(lake_root=str(tmp_path / "fresh"))
    shutil.copytree(Lake(settings).path("bronze.events"), Lake(fresh).path("bronze.events"))
    # A time range covering everything the producer sent.
    result = run_backfill(spark, context(fresh, watermark_seconds=1),
                          BronzeRange(from_time=datetime(2000, 1, 1, tzinfo=timezone.utc)))
    assert result.records_in_range == 500 and result.replayed == 500
    assert snapshot(spark, fresh, SAME_EVENTS) == made
