"""Silver's batch plan on in-memory frames: no Delta table, no stream, no write.

The batch is what the stream hands foreachBatch (silver_input rows with their state
claims, nothing seen within the horizon before); the stored tables are frames given
through the plan's reader. Each case checks what the plan would write where.
"""
from __future__ import annotations

from datetime import UTC, date, datetime

import pytest
from chispa import assert_df_equality
from pyspark.sql import functions as F

from pipelines.core.context import JobContext
from pipelines.core.settings import Settings
from pipelines.core.tables import spec
from pipelines.ingest import dedup as D
from pipelines.ingest.silver import silver_input
from pipelines.ingest.silver_plan import (
    ACCOUNT, DUPLICATES, QUARANTINE, RULE_STATE, USAGE, plan_batch, rule_state_of, select_for,
)
from tests.unit.frames import local_frame
from tests.unit.test_parse import ACCOUNT as ACCOUNT_DOC
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


def _stored(spark, ctx, usage_rows, dropped_rows=()):
    """A reader over stored tables: usage_events from silver_input rows, duplicates from
    (silver_input rows, rule, duplicate_of), account_events empty, and the rule state as
    those events make it (what a lake holds after they were written)."""
    usage = select_for(silver_input(_bronze(spark, usage_rows), ctx), USAGE)
    tables = {USAGE: usage, **{t: spark.createDataFrame([], spec(t).struct_type()) for t in (ACCOUNT, DUPLICATES)}}
    if dropped_rows:
        by_offset = {(p, o): (rule, of) for p, o, _, _, rule, of in dropped_rows}
        rows = silver_input(_bronze(spark, [r[:4] for r in dropped_rows]), ctx)
        decided = local_frame(spark, [(p, o, rule, of) for (p, o), (rule, of) in by_offset.items()],
                              "kafka_partition int, kafka_offset bigint, rule string, duplicate_of string")
        tables[DUPLICATES] = select_for(rows.join(decided, on=["kafka_partition", "kafka_offset"], how="inner"),
                                        DUPLICATES)
    tables[RULE_STATE] = rule_state_of(tables.__getitem__, ctx.rules).localCheckpoint()
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
    # Decided from the month's state alone (the kept ticket), not its stored events.
    assert not plan.exact_rules
    assert plan.rule_state.count() == 0         # the month's kept ticket did not change
    # So no stored row moves: the writer may append without counting first.
    assert plan.appends_only and plan.empty == {QUARANTINE, ACCOUNT}


def test_a_late_ticket_before_the_kept_one_re_anchors_its_month(spark, ctx):
    batch = _batch(spark, ctx, [(0, 10, _ticket("n2", "2024-05-01T09:00:00Z"), MAY_10)])

    plan = plan_batch(batch, _stored(spark, ctx, STORED), ctx.rules, ctx.silver)

    # The late ticket is kept; the stored one moves to duplicates, pointing at it.
    assert _ids(plan.usage, "event_id", "_replaces") == [("n2", False)]
    assert _ids(plan.usage_deletes, "kafka_partition", "kafka_offset") == [(0, 0)]
    assert _ids(plan.duplicates, "event_id", "rule", "duplicate_of", "_update") == [("s1", MONTHLY, "n2", False)]
    # Earlier than the month's kept ticket: decided over the stored events, and the month
    # gains an earlier anchor (the state's fold takes the earliest).
    assert plan.exact_rules
    assert _ids(plan.rule_state, "rule", "scope_date", "anchor_event_id", "kafka_offset") == [
        (MONTHLY, date(2024, 5, 1), "n2", 10)]
    assert not plan.appends_only                # a stored row moves: the writer counts first


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


def test_the_plan_tells_which_tables_stay_empty_and_whether_a_stored_row_can_move(spark, ctx):
    """What lets the writer skip counting a batch: the tables the profile shows no rows
    for, and no identity lookup and no exact rule key (so only appends)."""
    unruled = doc(USAGE_DOC, event_id="u1", occurred_at="2024-06-02T09:00:00Z", metric="voice_minutes",
                  dedup_key=None)
    batch = _batch(spark, ctx, [(0, 10, unruled, JUN_2), (0, 11, b"[]", JUN_2), (0, 12, None, JUN_2)])

    plan = plan_batch(batch, _stored(spark, ctx, STORED), ctx.rules, ctx.silver)

    assert plan.appends_only and plan.empty == {ACCOUNT, RULE_STATE}
    assert plan.quarantine.count() == 2 and plan.account.count() == 0 and plan.rule_state.count() == 0
    assert _ids(plan.usage, "event_id") == [("u1",)]

    lifecycle = doc(ACCOUNT_DOC, event_id="a1", occurred_at="2024-06-02T09:00:00Z")
    plan = plan_batch(_batch(spark, ctx, [(0, 20, lifecycle, JUN_2)]), _stored(spark, ctx, STORED),
                      ctx.rules, ctx.silver)
    assert plan.appends_only and plan.empty == {QUARANTINE, RULE_STATE}
    assert _ids(plan.account, "event_id") == [("a1",)]

    # Ingested more than the horizon after it happened: its first copy may have left the
    # hot state, so silver is looked up, and a copy found there could be replaced.
    old = doc(USAGE_DOC, event_id="u2", occurred_at="2024-05-25T09:00:00Z", metric="voice_minutes",
              dedup_key=None)
    plan = plan_batch(_batch(spark, ctx, [(0, 30, old, JUN_2)]), _stored(spark, ctx, STORED), ctx.rules, ctx.silver)
    assert not plan.appends_only
    assert _ids(plan.usage, "event_id") == [("u2",)]


RETRY = "sms_gateway_retry"


def _sms(event_id: str, occurred_at: str, key: str = "msg-1") -> bytes:
    return doc(USAGE_DOC, event_id=event_id, occurred_at=occurred_at, product="sms", metric="sms_segments",
               dedup_key=key)


SMS_AT = datetime(2024, 5, 10, 12, 0, tzinfo=UTC)
# A retry chain already stored: s1 kept (anchor), s2 dropped as its retry.
SMS_STORED = [(0, 0, _sms("s1", "2024-05-10T10:00:00Z"), SMS_AT)]
SMS_DROPPED = [(0, 1, _sms("s2", "2024-05-10T10:04:00Z"), SMS_AT, RETRY, "s1")]


def test_retry_events_after_the_chain_are_decided_from_its_state(spark, ctx):
    batch = _batch(spark, ctx, [
        (0, 10, _sms("n1", "2024-05-10T10:08:00Z"), SMS_AT),    # within s1's window: a retry
        (0, 11, _sms("n2", "2024-05-10T10:12:00Z"), SMS_AT),    # outside it: kept, the new anchor
        (0, 12, _sms("n3", "2024-05-10T10:15:00Z"), SMS_AT),    # n2's retry
        (0, 13, _sms("m1", "2024-05-10T10:09:00Z", key="msg-2"), SMS_AT),   # a key with no state
    ])

    plan = plan_batch(batch, _stored(spark, ctx, SMS_STORED, SMS_DROPPED), ctx.rules, ctx.silver)

    assert not plan.exact_rules
    assert _ids(plan.usage, "event_id") == [("m1",), ("n2",)]
    assert _ids(plan.duplicates, "event_id", "rule", "duplicate_of") == [("n1", RETRY, "s1"), ("n3", RETRY, "n2")]
    assert plan.usage_deletes.count() == 0 and plan.revived.count() == 0
    # Each touched key's new state: its anchor in force and its latest event, written as
    # of the batch's latest event of the key (a replay's reads leave these rows out).
    assert _ids(plan.rule_state, "dedup_key", "anchor_event_id", "last_occurred_at", "kafka_offset", "seq") == [
        ("msg-1", "n2", datetime(2024, 5, 10, 10, 15), 12, 2), ("msg-2", "m1", datetime(2024, 5, 10, 10, 9), 13, 1)]


def test_a_retry_event_before_the_chain_s_latest_is_decided_over_the_stored_events(spark, ctx):
    stored = [*SMS_STORED, (0, 2, _sms("s3", "2024-05-10T10:20:00Z"), SMS_AT)]    # s3 kept: 20 min after s1
    batch = _batch(spark, ctx, [(0, 10, _sms("n1", "2024-05-10T10:15:00Z"), SMS_AT)])

    plan = plan_batch(batch, _stored(spark, ctx, stored, SMS_DROPPED), ctx.rules, ctx.silver)

    # n1 lies outside s1's window, so it is kept and anchors a window that now holds s3:
    # s3 moves from usage_events to duplicates.
    assert plan.exact_rules
    assert _ids(plan.usage, "event_id") == [("n1",)]
    assert _ids(plan.usage_deletes, "kafka_offset") == [(2,)]
    assert _ids(plan.duplicates, "event_id", "duplicate_of") == [("s3", "n1")]
    assert _ids(plan.rule_state, "anchor_event_id", "last_occurred_at", "seq") == [("n1", datetime(2024, 5, 10, 10, 20), 2)]
    # The stored row (anchor s3) names the same latest event; the newer row decides the state.
    state = _stored(spark, ctx, stored, SMS_DROPPED)(RULE_STATE).unionByName(plan.rule_state)
    assert _ids(state.transform(D.rule_state_events(ctx.rules)), "event_id", "_seq") == [("n1", 2)]


def test_a_replay_leaves_its_own_state_rows_out(spark, ctx):
    """A crashed first attempt wrote the batch's state rows but not its events: the replay
    must plan as the first attempt did, not read its own anchor as stored."""
    rows = [(0, 10, _ticket("n1", "2024-06-02T09:00:00Z"), JUN_2)]
    first = plan_batch(_batch(spark, ctx, rows), _stored(spark, ctx, STORED), ctx.rules, ctx.silver)
    stored = _stored(spark, ctx, STORED)
    state = stored(RULE_STATE).unionByName(first.rule_state).localCheckpoint()
    assert state.count() == 2

    replay = plan_batch(_batch(spark, ctx, rows), lambda t: state if t == RULE_STATE else stored(t),
                        ctx.rules, ctx.silver)

    assert _ids(replay.usage, "event_id") == [("n1",)]
    assert _ids(replay.rule_state, "anchor_event_id") == [("n1",)]


def test_only_the_keys_with_a_late_event_are_decided_over_their_stored_events(spark, ctx):
    ticket = [(1, 0, _ticket("t1", "2024-05-01T11:30:00Z"), datetime(2024, 5, 1, 11, 31, tzinfo=UTC))]
    stored = _stored(spark, ctx, [*ticket, *SMS_STORED], SMS_DROPPED)
    batch = _batch(spark, ctx, [
        (0, 10, _ticket("n2", "2024-05-01T09:00:00Z"), MAY_10),     # before the month's kept ticket
        (0, 11, _sms("n1", "2024-05-10T10:08:00Z"), SMS_AT),        # after its chain: a retry of s1
    ])
    # The SMS key's stored events are not there to read: only its state can decide it.
    without_sms_events = {USAGE: stored(USAGE).filter(F.col("metric") != "sms_segments"),
                          DUPLICATES: stored(DUPLICATES).filter(F.col("metric") != "sms_segments")}

    plan = plan_batch(batch, lambda t: without_sms_events[t] if t in without_sms_events else stored(t),
                      ctx.rules, ctx.silver)

    assert plan.exact_rules
    assert _ids(plan.usage, "event_id") == [("n2",)]
    assert _ids(plan.usage_deletes, "kafka_partition", "kafka_offset") == [(1, 0)]
    assert _ids(plan.duplicates, "event_id", "duplicate_of") == [("n1", "s1"), ("t1", "n2")]


def test_a_materialised_frame_keeps_its_rows_and_loses_its_plan_s_size_estimate(spark):
    """The writer's rule-state copy is rebuilt this way after every batch: the same rows, null
    ones included, and Spark's default estimate, not one carried over from the plan (which
    squared with every batch until the driver ran out of heap)."""
    from pipelines.ingest.silver import without_size_estimate
    rows = [("a", 1, datetime(2024, 5, 1, 10)), (None, None, None), ("c", 3, datetime(2024, 5, 2))]
    schema = "k string, n bigint, at timestamp"
    materialised = local_frame(spark, rows, schema).crossJoin(spark.range(2)).localCheckpoint()

    rebuilt = without_size_estimate(materialised)

    assert_df_equality(rebuilt, materialised, ignore_row_order=True)
    assert rebuilt.count() == 6
    assert rebuilt._jdf.queryExecution().optimizedPlan().stats().sizeInBytes() == 2**63 - 1
    assert materialised._jdf.queryExecution().optimizedPlan().stats().sizeInBytes() < 2**63 - 1
