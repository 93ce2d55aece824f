"""Invoice lines: prorated base fees, usage above a prorated quota, one half-up rounding."""
from __future__ import annotations

from datetime import datetime
from decimal import Decimal

import pytest

from pipelines.billing.catalog import parse_catalog, plans_frame, prices_frame
from pipelines.billing.invoice import (
    FINAL, ESTIMATE, aggregate_period_usage, base_lines, finish_lines, unpriced_usage, usage_lines,
)
from pipelines.billing.periods import period_segments, plan_changes, plan_segments, with_plan_rank, with_segment
from pipelines.core.tables import spec
from tests.unit.frames import local_frame

TICKETS = {"billable_tickets": {"product": "helpdesk", "included": "0",
                                "charge": {"model": "per_unit", "unit_amount": "1"}}}
CATALOG = {
    "version": 1, "effective_from": "2026-01-01", "currencies": {"USD": 2, "JPY": 0},
    "plans": [
        {"id": "basic", "rank": 1, "currency": "USD", "base_fee": "60.00", "metrics": {
            "billable_tickets": {"product": "helpdesk", "included": "300",
                                 "charge": {"model": "per_unit", "unit_amount": "0.40"}}}},
        {"id": "pro", "rank": 2, "currency": "USD", "base_fee": "300.00", "metrics": {
            "billable_tickets": {"product": "helpdesk", "included": "2000",
                                 "charge": {"model": "per_unit", "unit_amount": "0.30"}}}},
        {"id": "penny", "rank": 3, "currency": "USD", "base_fee": "0.01", "metrics": TICKETS},
        {"id": "yen", "rank": 4, "currency": "JPY", "base_fee": "1001", "metrics": TICKETS},
    ],
}
NOW = datetime(2026, 2, 10)
EVENTS = ("account_id string, event_type string, occurred_at timestamp, plan_id string, kafka_timestamp timestamp, "
          "kafka_topic string, kafka_partition int, kafka_offset bigint")
USAGE = "account_id string, occurred_at timestamp, product string, metric string, quantity decimal(38,6)"


@pytest.fixture(scope="module")
def catalog(spark):
    c = parse_catalog(CATALOG, "test catalog")
    return plans_frame(spark, c).cache(), prices_frame(spark, c).cache()


def segments(spark, plans, rows):
    ev = local_frame(spark, [(a, t, datetime.fromisoformat(at), p, datetime(2026, 6, 1), "t", 0, i)
                             for i, (a, t, at, p) in enumerate(rows)], EVENTS)
    return (ev.transform(with_plan_rank(plans)).transform(plan_changes).transform(plan_segments)
            .transform(period_segments(NOW)))


def amounts(lines, *cols):
    return sorted((tuple(r[c] for c in cols) for r in lines.collect()), key=lambda t: tuple(map(str, t)))


def test_upgrade_mid_month_prorates_both_base_fees_by_the_second(spark, catalog):
    plans, _ = catalog
    # January has 31 days; the upgrade lands at noon on the 16th: 15.5 days each side.
    segs = segments(spark, plans, [("a", "subscription.started", "2026-01-01T00:00:00", "basic"),
                                   ("a", "plan.changed", "2026-01-16T12:00:00", "pro")])
    lines = segs.filter("period = '2026-01'").transform(base_lines(plans))
    assert amounts(lines, "plan_id", "units", "amount") == [
        ("basic", Decimal("0.500000"), Decimal("30.000000")),
        ("pro", Decimal("0.500000"), Decimal("150.000000")),
    ]


def test_cancellation_bills_the_base_fee_up_to_its_time(spark, catalog):
    plans, _ = catalog
    segs = segments(spark, plans, [("a", "subscription.started", "2026-01-01T00:00:00", "basic"),
                                   ("a", "subscription.cancelled", "2026-01-11T00:00:00", None)])
    lines = segs.transform(base_lines(plans))
    # 60.00 x 10/31 = 19.3548... -> 19.35; nothing for February.
    assert amounts(lines, "period", "amount") == [("2026-01", Decimal("19.350000"))]


def test_downgrade_keeps_the_full_fee_until_the_period_ends(spark, catalog):
    plans, _ = catalog
    segs = segments(spark, plans, [("a", "subscription.started", "2026-01-01T00:00:00", "pro"),
                                   ("a", "plan.changed", "2026-01-20T00:00:00", "basic")])
    lines = segs.transform(base_lines(plans))
    assert amounts(lines, "period", "plan_id", "amount") == [
        ("2026-01", "pro", Decimal("300.000000")), ("2026-02", "basic", Decimal("60.000000"))]


def test_rounding_is_half_up_once_per_line_in_the_currency_minor_unit(spark, catalog):
    plans, _ = catalog
    segs = segments(spark, plans, [("cent", "subscription.started", "2026-01-16T12:00:00", "penny"),
                                   ("yen", "subscription.started", "2026-01-16T12:00:00", "yen")])
    lines = segs.filter("period = '2026-01'").transform(base_lines(plans))
    # 0.01 / 2 = 0.005 -> 0.01 (half-up, not half-even); 1001 JPY / 2 = 500.5 -> 501.
    assert amounts(lines, "account_id", "amount") == [("cent", Decimal("0.010000")), ("yen", Decimal("501.000000"))]


def test_usage_is_split_at_the_upgrade_and_charged_above_the_prorated_quota(spark, catalog):
    plans, prices = catalog
    segs = segments(spark, plans, [("a", "subscription.started", "2026-01-01T00:00:00", "basic"),
                                   ("a", "plan.changed", "2026-01-16T12:00:00", "pro")]).cache()
    usage = local_frame(spark, [
        ("a", datetime(2026, 1, 3), "helpdesk", "billable_tickets", Decimal("400")),
        ("a", datetime(2026, 1, 16, 11, 59, 59), "helpdesk", "billable_tickets", Decimal("0.5")),
        ("a", datetime(2026, 1, 20), "helpdesk", "billable_tickets", Decimal("1200")),
        ("a", datetime(2026, 1, 21), "helpdesk", "billable_tickets", None),   # null quantity counts, adds nothing
    ], USAGE)
    period_usage = usage.transform(with_segment(segs)).transform(aggregate_period_usage(NOW))
    lines = period_usage.transform(usage_lines(prices))
    # basic: quota 300 x 1/2 = 150, 400.5 used -> 250.5 x 0.40 = 100.20
    # pro: quota 2000 x 1/2 = 1000, 1200 used -> 200 x 0.30 = 60.00
    assert amounts(lines, "plan_id", "units", "included", "billable_units", "amount") == [
        ("basic", Decimal("400.500000"), Decimal("150.000000"), Decimal("250.500000"), Decimal("100.200000")),
        ("pro", Decimal("1200.000000"), Decimal("1000.000000"), Decimal("200.000000"), Decimal("60.000000")),
    ]
    assert sorted(r["event_count"] for r in period_usage.collect()) == [2, 2]


def test_usage_outside_any_plan_or_unpriced_by_the_plan_is_reported(spark, catalog):
    plans, prices = catalog
    segs = segments(spark, plans, [("a", "subscription.started", "2026-01-10T00:00:00", "basic")])
    usage = local_frame(spark, [
        ("a", datetime(2026, 1, 5), "helpdesk", "billable_tickets", Decimal("3")),     # before the subscription
        ("a", datetime(2026, 1, 12), "voice", "voice_minutes", Decimal("7.5")),        # basic does not price voice
        ("a", datetime(2026, 1, 12), "helpdesk", "billable_tickets", Decimal("1")),    # priced (within quota)
        ("nobody", datetime(2026, 1, 12), "helpdesk", "billable_tickets", Decimal("2")),
    ], USAGE)
    period_usage = usage.transform(with_segment(segs)).transform(aggregate_period_usage(NOW))
    unpriced = period_usage.transform(unpriced_usage(prices))
    assert amounts(unpriced, "account_id", "plan_id", "metric", "quantity") == [
        ("a", None, "billable_tickets", Decimal("3.000000")),
        ("a", "basic", "voice_minutes", Decimal("7.500000")),
        ("nobody", None, "billable_tickets", Decimal("2.000000")),
    ]
    priced = period_usage.transform(usage_lines(prices))
    assert amounts(priced, "account_id", "amount") == [("a", Decimal("0E-6"))]


def test_finished_lines_are_final_once_the_period_is_over_and_keep_their_key(spark, catalog):
    plans, _ = catalog
    rows = [("a", "subscription.started", "2026-01-01T00:00:00", "basic")]
    columns = spec("gold.invoice_lines").column_names
    first = segments(spark, plans, rows).transform(base_lines(plans)).transform(finish_lines(columns, NOW))
    later = datetime(2026, 3, 2)
    again = (segments(spark, plans, rows).transform(base_lines(plans))
             .transform(finish_lines(columns, later)))
    by_period = {r["period"]: (r["status"], r["idempotency_key"]) for r in first.collect()}
    assert {p: s for p, (s, _) in by_period.items()} == {"2026-01": FINAL, "2026-02": ESTIMATE}
    keys_later = {r["period"]: r["idempotency_key"] for r in again.collect()}
    assert keys_later["2026-01"] == by_period["2026-01"][1]
    assert keys_later["2026-02"] == by_period["2026-02"][1]
    assert first.columns == columns
