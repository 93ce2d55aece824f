"""Gold transforms: daily usage totals (exact decimals) and the change-feed recompute."""
from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

from chispa import assert_df_equality
from pyspark.sql import functions as F
from pyspark.sql import types as T

from pipelines.core.tables import spec
from pipelines.ingest.gold import DAILY_KEYS, aggregate_daily_usage, touched_daily_keys, with_recomputed_totals
from tests.unit.frames import local_frame

D1, D2, D3, D4 = date(2024, 5, 1), date(2024, 5, 2), date(2024, 5, 3), date(2024, 5, 4)
DAILY_SCHEMA = T.StructType([
    T.StructField("account_id", T.StringType()),
    T.StructField("product", T.StringType()),
    T.StructField("metric", T.StringType()),
    T.StructField("usage_date", T.DateType()),
    T.StructField("quantity", T.DecimalType(38, 6)),
    T.StructField("event_count", T.LongType()),
    T.StructField("last_ingested_at", T.TimestampType()),
])




def at(hour: int, minute: int = 0) -> datetime:
    return datetime(2024, 5, 5, hour, minute, tzinfo=UTC)


def usage_rows(spark, rows: list[dict]):
    """Rows shaped like silver.usage_events (its spec's schema); unspecified columns are null."""
    schema = spec("silver.usage_events").struct_type()
    return local_frame(spark, [tuple(r.get(c) for c in schema.fieldNames()) for r in rows], schema)


def usage(event_id, account, day, quantity, ingested, product="helpdesk", metric="billable_tickets"):
    return {"event_id": event_id, "account_id": account, "product": product, "metric": metric, "event_date": day,
            "quantity": Decimal(quantity), "ingested_at": ingested, "event_type": "usage"}


SILVER = [
    # 0.1 + 0.2 + 0.000001 is 0.300001 exactly (as a double sum it would not be)
    usage("e1", "a1", D1, "0.1", at(1)),
    usage("e2", "a1", D1, "0.2", at(3)),
    usage("e3", "a1", D1, "0.000001", at(2)),
    # big values keep every digit
    usage("e4", "a1", D1, "12345678901234567890.123456", at(1), metric="automated_interactions",
          product="automate"),
    usage("e5", "a1", D1, "0.000001", None, metric="automated_interactions", product="automate"),
    usage("e6", "a1", D2, "5", at(4)),
    usage("e7", "a2", D1, "1.5", at(5)),
    usage("e8", "a2", D1, "0", at(6)),
]


def test_aggregate_daily_usage(spark):
    actual = usage_rows(spark, SILVER).transform(aggregate_daily_usage)
    expected = local_frame(spark, [
        ("a1", "helpdesk", "billable_tickets", D1, Decimal("0.300001"), 3, at(3)),
        ("a1", "automate", "automated_interactions", D1, Decimal("12345678901234567890.123457"), 2, at(1)),
        ("a1", "helpdesk", "billable_tickets", D2, Decimal("5.000000"), 1, at(4)),
        ("a2", "helpdesk", "billable_tickets", D1, Decimal("1.500000"), 2, at(6)),
    ], DAILY_SCHEMA)
    assert_df_equality(actual.select(*DAILY_SCHEMA.fieldNames()), expected, ignore_row_order=True,
                       ignore_nullable=True, ignore_metadata=True)


def test_aggregate_daily_usage_matches_the_gold_table_spec(spark):
    actual = usage_rows(spark, SILVER[:1]).transform(aggregate_daily_usage)
    gold = {c.name: c.type for c in spec("gold.daily_usage").columns}
    assert dict(actual.dtypes) == {k: gold[k] for k in dict(actual.dtypes)}
    assert set(DAILY_SCHEMA.fieldNames()) <= set(gold)


def test_aggregate_of_nothing_is_nothing(spark):
    assert usage_rows(spark, SILVER).filter(F.lit(False)).transform(aggregate_daily_usage).count() == 0


CHANGES_SCHEMA = ("account_id string, product string, metric string, event_date date, event_id string, "
                  "_change_type string, _commit_version bigint")


def test_touched_daily_keys(spark):
    changes = local_frame(spark, [
        ("a1", "helpdesk", "billable_tickets", D1, "e1", "insert", 1),
        ("a1", "helpdesk", "billable_tickets", D1, "e2", "insert", 1),
        # an update that moved an event to another day touches both days
        ("a1", "helpdesk", "billable_tickets", D1, "e3", "update_preimage", 2),
        ("a1", "helpdesk", "billable_tickets", D2, "e3", "update_postimage", 2),
        ("a2", "voice", "voice_minutes", D3, "e4", "delete", 3),
    ], CHANGES_SCHEMA)
    actual = changes.transform(touched_daily_keys)
    expected = local_frame(spark, [
        ("a1", "helpdesk", "billable_tickets", D1),
        ("a1", "helpdesk", "billable_tickets", D2),
        ("a2", "voice", "voice_minutes", D3),
    ], "account_id string, product string, metric string, usage_date date")
    assert actual.columns == DAILY_KEYS
    assert_df_equality(actual, expected, ignore_row_order=True, ignore_nullable=True, ignore_metadata=True)


def test_with_recomputed_totals(spark):
    touched = local_frame(spark, [
        ("a1", "helpdesk", "billable_tickets", D1),
        ("a1", "helpdesk", "billable_tickets", D3),  # its events were all deleted
        ("a2", "helpdesk", "billable_tickets", D1),
    ], "account_id string, product string, metric string, usage_date date")
    current = local_frame(spark, [
        ("a1", "helpdesk", "billable_tickets", D1, Decimal("0.300001"), 3, at(3)),
        ("a2", "helpdesk", "billable_tickets", D1, Decimal("1.500000"), 2, at(6)),
        ("a1", "helpdesk", "billable_tickets", D4, Decimal("9.000000"), 1, at(7)),  # not touched
    ], DAILY_SCHEMA)
    actual = touched.transform(with_recomputed_totals(current))
    expected = local_frame(spark, [
        ("a1", "helpdesk", "billable_tickets", D1, Decimal("0.300001"), 3, at(3)),
        ("a1", "helpdesk", "billable_tickets", D3, None, None, None),
        ("a2", "helpdesk", "billable_tickets", D1, Decimal("1.500000"), 2, at(6)),
    ], DAILY_SCHEMA)
    assert_df_equality(actual.select(*DAILY_SCHEMA.fieldNames()), expected, ignore_row_order=True,
                       ignore_nullable=True, ignore_metadata=True)


def test_recompute_after_a_change_end_to_end(spark):
    """The gold job's shape: change feed -> touched days -> totals from silver's current state."""
    silver_after = usage_rows(spark, [
        usage("e1", "a1", D1, "0.1", at(1)),
        usage("e6", "a1", D2, "5", at(4)),
        usage("e9", "a1", D2, "2.25", at(8)),
    ])
    changes = local_frame(spark, [
        ("a1", "helpdesk", "billable_tickets", D1, "e2", "delete", 5),  # a rule dropped e2
        ("a1", "helpdesk", "billable_tickets", D2, "e9", "insert", 5),
        ("a9", "helpdesk", "billable_tickets", D2, "e0", "delete", 5),  # the account's last event
    ], CHANGES_SCHEMA)
    touched = changes.transform(touched_daily_keys)
    current = (silver_after.join(touched.withColumnRenamed("usage_date", "event_date"),
                                 on=["account_id", "product", "metric", "event_date"], how="left_semi")
               .transform(aggregate_daily_usage))
    actual = touched.transform(with_recomputed_totals(current)).select(*DAILY_SCHEMA.fieldNames())
    expected = local_frame(spark, [
        ("a1", "helpdesk", "billable_tickets", D1, Decimal("0.100000"), 1, at(1)),
        ("a1", "helpdesk", "billable_tickets", D2, Decimal("7.250000"), 2, at(8)),
        ("a9", "helpdesk", "billable_tickets", D2, None, None, None),
    ], DAILY_SCHEMA)
    assert_df_equality(actual, expected, ignore_row_order=True, ignore_nullable=True, ignore_metadata=True)
    assert actual.filter(F.col("quantity").isNull()).count() == 1
