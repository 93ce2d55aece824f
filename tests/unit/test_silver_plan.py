"""Silver's batch plan on in-memory frames: no Delta table, no stream, no write.

The batch is what the stream hands foreachBatch (silver_input rows with their state
claims, nothing seen within the horizon before); the stored tables are frames given
through the plan's reader. Each case checks what the plan would write where.
"""
from __future__ import annotations

from datetime import UTC, datetime

import pytest
from chispa import assert_df_equality
from pyspark.sql import functions as F

from pipelines.core.context import JobContext
from pipelines.ingest.silver import silver_input
from pipelines.core.settings import Settings
from pipelines.core.tables import spec
from pipelines.ingest import dedup as D
from pipelines.ingest.silver_plan import (
    ACCOUNT, DUPLICATES, USAGE, plan_batch, select_for,
)
from tests.unit.frames import local_frame
from tests.unit.test_parse import USAGE as USAGE_DOC
from tests.unit.test_parse import doc

TOPIC = "billing.events"
MONTHLY = "billable_tickets_monthly"


@pytest.fixture
def ctx(tmp_path) -> JobContext:
    return JobContext.from_settings(Settings().with_overrides(lake_root=str(tmp_path)))


def _bronze(spark, rows: list[tuple[int, int, bytes | None, datetime]]):
    """(partition, offset, value, ingested_at) -> bronze.events rows."""
    return local_frame(spark, [(b"acc-1", value, TOPIC, p, o, at, 1, [], at) for p, o, value, at in rows],
                       spec("bronze.events").struct_type())


def _batch(spark, ctx, rows):
    """What foreachBatch gets when no claim was seen within the horizon."""
    return silver_input(_bronze(spark, rows), ctx).transform(D.with_state_claims).drop(D.STATE_KEY)


def _stored(spark, ctx, usage_rows):
    """A reader over stored tables: usage_events from silver_input rows, the others empty."""
    usage = select_for(silver_input(_bronze(spark, usage_rows), ctx), USAGE)
    tables = {USAGE: usage, **{t: spark.createDataFrame([], spec(t).struct_type()) for t in (ACCOUNT, DUPLICATES)}}
    return tables.__getitem__


def _ticket(event_id: str, occurred_at: str, **changes) -> bytes:
    return doc(USAGE_DOC, event_id=event_id, occurred_at=occurred_at, **changes)


MAY_10 = datetime(2024, 5, 10, 10, 0, tzinfo=UTC)
JUN_2 = datetime(2024, 6, 2, 10, 0, tzinfo=UTC)
STORED = [(0, 0, _ticket("s1", "2024-05-01T11:30:00Z"), datetime(2024, 5, 1, 11, 31, tzinfo=UTC))]


def _ids(df, *cols):
    return sorted(tuple(r) for r in df.select(*cols).collect())


def test_a_ticket_after_the_kept_one_in_its_month_is_dropped_without_moving_it(spark, ctx):
    batch = _batch(spark, ctx, [(0, 10, _ticket("n1", "2024-05-10T09:00:00Z"), MAY_10)])

    plan = plan_batch(batch, _stored(spark, ctx, STORED), ctx.rules, ctx.silver)

    assert plan.usage.count() == 0
    assert_df_equality(plan.duplicates.select("event_id", "rule", "duplicate_of", "_update"),
                       spark.createDataFrame([("n1", MONTHLY, "s1", False)],
                                             "event_id string, rule string, duplicate_of string, _update boolean"),
                       ignore_nullable=True)
    assert plan.usage_deletes.count() == 0 and plan.revived.count() == 0
    assert plan.quarantine.count() == 0


def test_a_late_ticket_before_the_kept_one_re_anchors_its_month(spark, ctx):
    batch = _batch(spark, ctx, [(0, 10, _ticket("n2", "2024-05-01T09:00:00Z"), MAY_10)])

    plan = plan_batch(batch, _stored(spark, ctx, STORED), ctx.rules, ctx.silver)

    # The late ticket is kept; the stored one moves to duplicates, pointing at it.
    assert _ids(plan.usage, "event_id", "_replaces") == [("n2", False)]
    assert _ids(plan.usage_deletes, "kafka_partition", "kafka_offset") == [(0, 0)]
    assert _ids(plan.duplicates, "event_id", "rule", "duplicate_of", "_update") == [("s1", MONTHLY, "n2", False)]


def test_bad_records_go_to_quarantine_and_a_conflicting_copy_to_duplicates(spark, ctx):
    other_month = _ticket("n3", "2024-06-02T09:00:00Z")
    batch = _batch(spark, ctx, [
        (0, 10, other_month, JUN_2),
        (0, 11, doc(USAGE_DOC, event_id="n3", occurred_at="2024-06-02T09:00:00Z", quantity=2), JUN_2),
        (0, 12, b"{not json", JUN_2),
        (1, 3, None, JUN_2),
    ])

    plan = plan_batch(batch, _stored(spark, ctx, STORED), ctx.rules, ctx.silver)

    assert _ids(plan.usage, "event_id", "kafka_offset") == [("n3", 10)]       # the first copy in Kafka order
    assert _ids(plan.duplicates, "event_id", "kafka_offset", "rule", "duplicate_of") == [("n3", 11, D.IDENTITY_RULE, "n3")]
    quarantined = plan.quarantine.select("kafka_partition", "kafka_offset", F.col("reason").isNotNull())
    assert _ids(quarantined, "kafka_partition", "kafka_offset") == [(0, 12), (1, 3)]
    assert plan.quarantine.filter(F.col("reason").isNull()).count() == 0
    # The batch's own offset ranges, as the appends' replay guard uses them.
    assert sorted(plan.own) == [(TOPIC, 0, 10, 12), (TOPIC, 1, 3, 3)]
