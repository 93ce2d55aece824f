"""Backfill's pure parts: the range, the slice, what silver already holds, what gold must change."""
from __future__ import annotations

from datetime import date, datetime, timezone
from decimal import Decimal

import pytest
from chispa import assert_df_equality

from pipelines.ingest.backfill import (
    BackfillError, BronzeRange, filter_bronze_range, filter_changed_daily, filter_unaccounted,
)

UTC = timezone.utc


def test_a_range_needs_offsets_or_times():
    with pytest.raises(BackfillError, match="offset range .* or a time range"):
        BronzeRange(topic="billing.events")


@pytest.mark.parametrize("kwargs, message", [
    ({"from_offset": 0}, "name the topic"),
    ({"topic": "t", "from_offset": -1}, "from_offset must be >= 0"),
    ({"topic": "t", "from_offset": 5, "to_offset": 5}, "to_offset 5 must be above from_offset 5"),
    ({"from_time": datetime(2026, 1, 2, tzinfo=UTC), "to_time": datetime(2026, 1, 1, tzinfo=UTC)}, "must be after"),
    ({"topic": "t", "partitions": (-1,), "from_offset": 0}, "partitions must be >= 0"),
])
def test_bad_ranges_are_refused_with_the_reason(kwargs, message):
    with pytest.raises(BackfillError, match=message):
        BronzeRange(**kwargs)


def test_parameters_from_widgets_become_a_range():
    r = BronzeRange.from_params({"topic": " billing.events ", "partition": "0,2", "from_offset": "10",
                                 "to_offset": "", "from_time": "2026-10-01T00:00:00Z", "to_time": None})
    assert r == BronzeRange(topic="billing.events", partitions=(0, 2), from_offset=10,
                            from_time=datetime(2026, 10, 1, tzinfo=UTC))
    assert r.describe() == "topic billing.events, partition 0,2, offsets [10, end), kafka time [2026-10-01T00:00:00+00:00, end)"
    assert r.key() == BronzeRange.from_params({"topic": "billing.events", "partition": "0,2", "from_offset": "10",
                                               "from_time": "2026-10-01T02:00:00+02:00"}).key()


@pytest.mark.parametrize("params, message", [
    ({"topic": "t", "from_offset": "ten"}, "from_offset: expected an integer, got 'ten'"),
    ({"from_time": "yesterday"}, "from_time: expected an ISO 8601 time"),
    ({"from_time": "2026-10-01T00:00:00"}, "give a UTC offset or Z"),
    ({"topic": "t", "partition": "0;1", "from_offset": "0"}, "partition: expected integers"),
    ({"topic": "t", "offset": "3"}, r"unknown \['offset'\]"),
])
def test_bad_parameters_name_the_parameter(params, message):
    with pytest.raises(BackfillError, match=message):
        BronzeRange.from_params(params)


def _bronze(spark):
    rows = [
        ("t", 0, 0, datetime(2026, 10, 1, 0, 0)), ("t", 0, 5, datetime(2026, 10, 1, 1, 0)),
        ("t", 0, 9, datetime(2026, 10, 1, 2, 0)), ("t", 1, 5, datetime(2026, 10, 1, 1, 30)),
        ("u", 0, 5, datetime(2026, 10, 1, 1, 0)), ("t", 1, 7, None),
    ]
    return spark.createDataFrame(rows, "topic string, partition int, offset bigint, kafka_timestamp timestamp")


def test_the_slice_is_half_open_on_offsets_and_times(spark):
    bronze = _bronze(spark)
    offsets = bronze.transform(filter_bronze_range(BronzeRange(topic="t", partitions=(0,), from_offset=5, to_offset=9)))
    assert_df_equality(offsets, bronze.filter("topic = 't' AND partition = 0 AND offset = 5"), ignore_row_order=True)
    every_partition = bronze.transform(filter_bronze_range(BronzeRange(topic="t", from_offset=5)))
    assert sorted((r.partition, r.offset) for r in every_partition.collect()) == [(0, 5), (0, 9), (1, 5), (1, 7)]
    times = bronze.transform(filter_bronze_range(BronzeRange(
        from_time=datetime(2026, 10, 1, 1, 0, tzinfo=UTC), to_time=datetime(2026, 10, 1, 2, 0, tzinfo=UTC))))
    # A null timestamp is in no time range.
    assert sorted((r.topic, r.partition, r.offset) for r in times.collect()) == [("t", 0, 5), ("t", 1, 5), ("u", 0, 5)]


def test_records_silver_already_accounts_for_are_set_aside(spark):
    schema = ("kafka_topic string, kafka_partition int, kafka_offset bigint, account_id string, event_id string, "
              "payload_sha256 string, _problem struct<reason:string>")
    parsed = spark.createDataFrame([
        ("t", 0, 1, "a", "e1", "h1", None),          # its copy is in silver
        ("t", 0, 2, "a", "e1", "h1", None),          # byte-identical re-send of a kept copy: only counted
        ("t", 0, 3, "a", "e1", "h2", None),          # conflicting copy, lost: replay
        ("t", 0, 4, "a", "e2", "h3", None),          # lost event: replay
        ("t", 0, 5, None, None, "h1", ("not_json",)),  # bad record in quarantine
        ("t", 0, 6, None, None, "h9", ("not_json",)),  # bad record lost: replay
        ("t", 1, 1, "b", "e1", None, None),          # same offset, other partition: lost
    ], schema)
    traced = spark.createDataFrame([("t", 0, 1), ("t", 0, 5)], "kafka_topic string, kafka_partition int, kafka_offset bigint")
    kept = spark.createDataFrame([("a", "e1", "h1"), ("b", "e1", "other")],
                                 "account_id string, event_id string, payload_sha256 string")
    out = parsed.transform(filter_unaccounted(traced, kept))
    assert sorted((r.kafka_partition, r.kafka_offset) for r in out.collect()) == [(0, 3), (0, 4), (0, 6), (1, 1)]


def test_only_daily_rows_that_differ_are_written(spark):
    schema = "account_id string, product string, metric string, usage_date date, quantity decimal(38,6), " \
             "event_count bigint, last_ingested_at timestamp"
    d1, d2, d3, d4 = (date(2026, 10, d) for d in (1, 2, 3, 4))
    t = datetime(2026, 10, 5, 12, 0)
    existing = spark.createDataFrame([
        ("a", "sms", "sms_segments", d1, Decimal("3"), 3, t),
        ("a", "sms", "sms_segments", d2, Decimal("5"), 2, t),
        ("a", "sms", "sms_segments", d3, Decimal("1"), 1, t),
        ("a", None, "x", d1, Decimal("1"), 1, None),
    ], schema)
    recomputed = spark.createDataFrame([
        ("a", "sms", "sms_segments", d1, Decimal("3"), 3, t),       # unchanged
        ("a", "sms", "sms_segments", d2, Decimal("6"), 3, t),       # changed
        ("a", "sms", "sms_segments", d3, None, None, None),         # gone from silver
        ("a", "sms", "sms_segments", d4, Decimal("2"), 1, t),       # new
        ("b", "sms", "sms_segments", d1, None, None, None),         # gone and never in gold
        ("a", None, "x", d1, Decimal("1"), 1, None),                # unchanged, with nulls
    ], schema)
    expected = spark.createDataFrame([
        ("a", "sms", "sms_segments", d2, Decimal("6"), 3, t),
        ("a", "sms", "sms_segments", d3, None, None, None),
        ("a", "sms", "sms_segments", d4, Decimal("2"), 1, t),
    ], schema)
    assert_df_equality(recomputed.transform(filter_changed_daily(existing)), expected,
                       ignore_row_order=True, ignore_nullable=True)
