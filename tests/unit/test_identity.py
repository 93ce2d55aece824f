"""An event's identity and Kafka order (pipelines/core/identity.py): the earliest copy of
each (account_id, event_id) is the one kept, whatever order the rows come in."""
from __future__ import annotations

from datetime import UTC, datetime

from chispa import assert_df_equality

from pipelines.core.identity import IDENTITY, filter_earliest_copy, kafka_order
from pipelines.core.tables import KAFKA_ORDER
from tests.unit.frames import local_frame

SCHEMA = ("account_id string, event_id string, kafka_timestamp timestamp, kafka_topic string, "
          "kafka_partition int, kafka_offset bigint, plan_id string")
T0 = datetime(2024, 6, 1, tzinfo=UTC)
T1 = datetime(2024, 6, 1, 0, 0, 1, tzinfo=UTC)


def test_kafka_order_is_a_struct_of_the_order_columns_with_an_optional_prefix(spark):
    df = local_frame(spark, [("a", "e", T0, "t", 0, 5, "p")], SCHEMA).alias("s")
    assert df.select(kafka_order().alias("o")).schema["o"].dataType.fieldNames() == KAFKA_ORDER
    assert df.select(kafka_order("s.").alias("o")).first().o.kafka_offset == 5
    assert IDENTITY == ["account_id", "event_id"]


def test_the_earliest_copy_in_kafka_order_wins_per_identity(spark):
    rows = [
        ("a", "e1", T1, "t", 0, 1, "late"),       # later timestamp loses to an earlier one
        ("a", "e1", T0, "t", 0, 9, "early"),
        ("a", "e2", T0, "t", 1, 4, "p1-later"),   # same timestamp: the partition breaks the tie
        ("a", "e2", T0, "t", 0, 7, "p0"),
        ("a", "e3", T0, "t", 0, 2, "off2"),       # same partition: the offset breaks the tie
        ("a", "e3", T0, "t", 0, 3, "off3"),
        ("b", "e1", T1, "t", 0, 8, "other account"),  # same event id, another account: its own event
        ("a", None, T0, "t", 0, 1, "null id"),        # a null identity is one group, not dropped
    ]
    got = local_frame(spark, rows, SCHEMA).transform(filter_earliest_copy)
    want = local_frame(spark, [r for r in rows if r[-1] in {"early", "p0", "off2", "other account", "null id"}],
                       SCHEMA)
    assert_df_equality(got, want, ignore_row_order=True)
