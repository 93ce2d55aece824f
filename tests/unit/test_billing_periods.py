"""The plan timeline: upgrades at once, downgrades at the next period, cancellations."""
from __future__ import annotations

from datetime import datetime

import pytest
from chispa import assert_df_equality

from pipelines.billing.periods import (
    period_segments, plan_changes, plan_segments, with_plan_rank, with_segment,
)
from tests.unit.frames import local_frame

RANKS = {"starter": 1, "basic": 2, "pro": 3, "advanced": 4, "enterprise": 5}
EVENTS = ("account_id string, event_type string, occurred_at timestamp, plan_id string, kafka_timestamp timestamp, "
          "kafka_topic string, kafka_partition int, kafka_offset bigint")
SEGMENTS = ("account_id string, plan_id string, period string, segment_start timestamp, segment_end timestamp")
HORIZON = datetime(2026, 3, 15)


def ts(text: str) -> datetime:
    return datetime.fromisoformat(text)


def events(spark, rows):
    """(account, type, occurred_at, plan) -> event rows; Kafka order follows the list."""
    full = [(a, t, ts(at), p, ts("2026-06-01"), "billing.events", 0, i) for i, (a, t, at, p) in enumerate(rows)]
    return local_frame(spark, full, EVENTS)


def plans(spark):
    return local_frame(spark, list(RANKS.items()), "plan_id string, plan_rank int")


def segments(spark, rows, horizon=HORIZON, period=None):
    return (
        events(spark, rows).transform(with_plan_rank(plans(spark))).transform(plan_changes)
        .transform(plan_segments).transform(period_segments(horizon, period))
        .select("account_id", "plan_id", "period", "segment_start", "segment_end")
    )


def expect(spark, rows):
    return local_frame(spark, [(a, p, per, ts(s), ts(e)) for a, p, per, s, e in rows], SEGMENTS)


def check(spark, event_rows, expected_rows, **kw):
    assert_df_equality(segments(spark, event_rows, **kw), expect(spark, expected_rows),
                       ignore_row_order=True, ignore_nullable=True)


def test_started_mid_month_runs_to_the_horizon_period(spark):
    check(spark, [("a", "subscription.started", "2026-01-10T08:00:00", "pro")], [
        ("a", "pro", "2026-01", "2026-01-10T08:00:00", "2026-02-01T00:00:00"),
        ("a", "pro", "2026-02", "2026-02-01T00:00:00", "2026-03-01T00:00:00"),
        ("a", "pro", "2026-03", "2026-03-01T00:00:00", "2026-04-01T00:00:00"),
    ])


def test_upgrade_splits_the_period_at_its_instant(spark):
    check(spark, [("a", "subscription.started", "2026-01-01T00:00:00", "basic"),
                  ("a", "plan.changed", "2026-01-16T12:00:00", "pro")], [
        ("a", "basic", "2026-01", "2026-01-01T00:00:00", "2026-01-16T12:00:00"),
        ("a", "pro", "2026-01", "2026-01-16T12:00:00", "2026-02-01T00:00:00"),
    ], horizon=datetime(2026, 1, 20))


def test_downgrade_waits_for_the_next_period(spark):
    check(spark, [("a", "subscription.started", "2026-01-01T00:00:00", "pro"),
                  ("a", "plan.changed", "2026-01-20T00:00:00", "basic")], [
        ("a", "pro", "2026-01", "2026-01-01T00:00:00", "2026-02-01T00:00:00"),
        ("a", "basic", "2026-02", "2026-02-01T00:00:00", "2026-03-01T00:00:00"),
    ], horizon=datetime(2026, 2, 2))


def test_pending_downgrade_is_cancelled_by_a_change_back_and_replaced_by_an_upgrade(spark):
    check(spark, [("back", "subscription.started", "2026-01-01T00:00:00", "pro"),
                  ("back", "plan.changed", "2026-01-10T00:00:00", "basic"),
                  ("back", "plan.changed", "2026-01-20T00:00:00", "pro"),
                  ("up", "subscription.started", "2026-01-01T00:00:00", "pro"),
                  ("up", "plan.changed", "2026-01-10T00:00:00", "basic"),
                  ("up", "plan.changed", "2026-01-20T00:00:00", "advanced")], [
        ("back", "pro", "2026-01", "2026-01-01T00:00:00", "2026-02-01T00:00:00"),
        ("back", "pro", "2026-02", "2026-02-01T00:00:00", "2026-03-01T00:00:00"),
        ("up", "pro", "2026-01", "2026-01-01T00:00:00", "2026-01-20T00:00:00"),
        ("up", "advanced", "2026-01", "2026-01-20T00:00:00", "2026-02-01T00:00:00"),
        ("up", "advanced", "2026-02", "2026-02-01T00:00:00", "2026-03-01T00:00:00"),
    ], horizon=datetime(2026, 2, 2))


def test_second_downgrade_replaces_the_first_and_falls_due_before_a_later_event(spark):
    check(spark, [("a", "subscription.started", "2026-01-01T00:00:00", "advanced"),
                  ("a", "plan.changed", "2026-01-10T00:00:00", "pro"),
                  ("a", "plan.changed", "2026-01-12T00:00:00", "starter"),
                  # In March the starter plan is in force: basic is an upgrade, at once.
                  ("a", "plan.changed", "2026-03-05T00:00:00", "basic")], [
        ("a", "advanced", "2026-01", "2026-01-01T00:00:00", "2026-02-01T00:00:00"),
        ("a", "starter", "2026-02", "2026-02-01T00:00:00", "2026-03-01T00:00:00"),
        ("a", "starter", "2026-03", "2026-03-01T00:00:00", "2026-03-05T00:00:00"),
        ("a", "basic", "2026-03", "2026-03-05T00:00:00", "2026-04-01T00:00:00"),
    ])


def test_cancellation_bills_up_to_its_time_and_drops_a_pending_downgrade(spark):
    check(spark, [("a", "subscription.started", "2026-01-01T00:00:00", "pro"),
                  ("a", "plan.changed", "2026-01-05T00:00:00", "basic"),
                  ("a", "subscription.cancelled", "2026-01-15T06:30:00", None)], [
        ("a", "pro", "2026-01", "2026-01-01T00:00:00", "2026-01-15T06:30:00"),
    ])


def test_a_plan_change_with_no_active_subscription_changes_nothing(spark):
    check(spark, [("never", "plan.changed", "2026-01-03T00:00:00", "pro"),
                  ("a", "subscription.started", "2026-01-01T00:00:00", "pro"),
                  ("a", "subscription.cancelled", "2026-01-10T00:00:00", None),
                  ("a", "plan.changed", "2026-01-20T00:00:00", "basic"),
                  ("a", "subscription.started", "2026-02-05T00:00:00", "starter")], [
        ("a", "pro", "2026-01", "2026-01-01T00:00:00", "2026-01-10T00:00:00"),
        ("a", "starter", "2026-02", "2026-02-05T00:00:00", "2026-03-01T00:00:00"),
    ], horizon=datetime(2026, 2, 10))


def test_events_are_folded_in_event_time_order_not_arrival_order(spark):
    check(spark, [("a", "plan.changed", "2026-01-16T00:00:00", "pro"),          # arrived first
                  ("a", "subscription.started", "2026-01-01T00:00:00", "basic")], [
        ("a", "basic", "2026-01", "2026-01-01T00:00:00", "2026-01-16T00:00:00"),
        ("a", "pro", "2026-01", "2026-01-16T00:00:00", "2026-02-01T00:00:00"),
    ], horizon=datetime(2026, 1, 31))


def test_plan_unknown_to_the_catalog_applies_at_once(spark):
    check(spark, [("a", "subscription.started", "2026-01-01T00:00:00", "pro"),
                  ("a", "plan.changed", "2026-01-11T00:00:00", "legacy-gold"),
                  ("a", "plan.changed", "2026-01-21T00:00:00", "starter")], [
        ("a", "pro", "2026-01", "2026-01-01T00:00:00", "2026-01-11T00:00:00"),
        ("a", "legacy-gold", "2026-01", "2026-01-11T00:00:00", "2026-01-21T00:00:00"),
        ("a", "starter", "2026-01", "2026-01-21T00:00:00", "2026-02-01T00:00:00"),
    ], horizon=datetime(2026, 1, 31))


def test_resubscribing_after_a_cancellation_and_one_period_filter(spark):
    rows = [("a", "subscription.started", "2026-01-01T00:00:00", "pro"),
            ("a", "subscription.cancelled", "2026-01-10T00:00:00", None),
            ("a", "subscription.started", "2026-02-20T00:00:00", "basic")]
    check(spark, rows, [("a", "basic", "2026-02", "2026-02-20T00:00:00", "2026-03-01T00:00:00")], period="2026-02")


def test_a_period_boundary_is_exclusive_at_the_end(spark):
    # An upgrade exactly at a period start leaves no empty segment behind it.
    check(spark, [("a", "subscription.started", "2026-01-01T00:00:00", "basic"),
                  ("a", "plan.changed", "2026-02-01T00:00:00", "pro")], [
        ("a", "basic", "2026-01", "2026-01-01T00:00:00", "2026-02-01T00:00:00"),
        ("a", "pro", "2026-02", "2026-02-01T00:00:00", "2026-03-01T00:00:00"),
    ], horizon=datetime(2026, 2, 10))


@pytest.mark.parametrize("at, plan, period", [
    ("2026-01-16T11:59:59.999999", "basic", "2026-01"),   # just before the upgrade
    ("2026-01-16T12:00:00", "pro", "2026-01"),            # at the upgrade: the new plan
    ("2026-02-03T00:00:00", None, "2026-02"),             # after the cancellation: unpriced
])
def test_usage_lands_in_the_segment_holding_its_event_time(spark, at, plan, period):
    segs = segments(spark, [("a", "subscription.started", "2026-01-01T00:00:00", "basic"),
                            ("a", "plan.changed", "2026-01-16T12:00:00", "pro"),
                            ("a", "subscription.cancelled", "2026-02-01T00:00:00", None)],
                    horizon=datetime(2026, 2, 10))
    segs = segs.selectExpr("*", "date_trunc('month', segment_start) AS period_start",
                           "add_months(date_trunc('month', segment_start), 1) AS period_end")
    usage = local_frame(spark, [("a", ts(at))], "account_id string, occurred_at timestamp")
    row = usage.transform(with_segment(segs)).select("plan_id", "period").first()
    assert (row["plan_id"], row["period"]) == (plan, period)
