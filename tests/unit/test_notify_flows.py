"""Usage alerts and reactive notifications as pure transforms: thresholds just under, at
and over, quotas of zero, no plan, a late event, and each lifecycle follow-up."""
from __future__ import annotations

import json
from datetime import datetime
from decimal import Decimal as D

from pipelines.rules.notifications import notification_id
from pipelines.rules import alerts as A
from tests.unit.frames import local_frame

USAGE = "account_id string, event_id string, product string, metric string, occurred_at timestamp, " \
        "quantity decimal(38,6)"
SEGMENTS = "account_id string, plan_id string, start timestamp, end timestamp"
T = "billable_tickets"


def prices(spark):
    return local_frame(spark, [("basic", T, D("300")), ("basic", "sms_segments", D("0")), ("pro", T, D("2000"))],
                       "plan_id string, metric string, included decimal(38,6)")


def plans(spark):
    return local_frame(spark, [("basic", 1), ("pro", 2)], "plan_id string, plan_rank int")


def d(text):
    return datetime.fromisoformat(text)


def alerts(spark, usage_rows, segment_rows, thresholds=(D("0.8"), D("1.0"))):
    usage = local_frame(spark, [(a, e, "helpdesk", m, d(t), D(q)) for a, e, m, t, q in usage_rows], USAGE)
    segments = local_frame(spark, [(a, p, d(s), d(e) if e else None) for a, p, s, e in segment_rows], SEGMENTS)
    out = usage.transform(A.quota_threshold_alerts(thresholds, segments, prices(spark))).collect()
    return sorted((r["account_id"], json.loads(r["payload"])["threshold"], r["trigger_event_ids"][0], r) for r in out)


def test_thresholds_just_under_at_and_over(spark):
    got = alerts(spark, [
        ("under", "u1", T, "2026-01-02T00:00:00", "239.999999"),
        ("at", "a1", T, "2026-01-02T00:00:00", "200"), ("at", "a2", T, "2026-01-03T00:00:00", "40"),
        ("over", "o1", T, "2026-01-02T00:00:00", "310"),
        ("zero-quota", "z1", "sms_segments", "2026-01-02T00:00:00", "5000"),
        ("no-plan", "n1", T, "2026-01-02T00:00:00", "5000"),
    ], [(a, "basic", "2025-01-01T00:00:00", None) for a in ("under", "at", "over", "zero-quota")])
    assert [(a, t, e) for a, t, e, _ in got] == [("at", "0.8", "a2"), ("over", "0.8", "o1"), ("over", "1", "o1")]
    row = got[0][3]
    assert row["notification_id"] == notification_id(A.THRESHOLD, "at", "2026-01|billable_tickets|0.8")
    assert row["occurred_at"] == d("2026-01-03T00:00:00")
    assert json.loads(row["payload"]) == {"period": "2026-01", "product": "helpdesk", "metric": T, "plan_id": "basic",
                                          "threshold": "0.8", "percent": "80", "included": "300",
                                          "usage_at_crossing": "240", "usage_in_period": "240"}


def test_each_period_alerts_on_its_own_and_uses_the_plan_at_its_last_event(spark):
    got = alerts(spark, [
        ("a", "j1", T, "2026-01-10T00:00:00", "250"),       # January: basic, 250 >= 240
        ("a", "f1", T, "2026-02-10T00:00:00", "250"),       # February: pro since Feb 5, 250 < 1600
    ], [("a", "basic", "2025-01-01T00:00:00", "2026-02-05T00:00:00"), ("a", "pro", "2026-02-05T00:00:00", None)])
    assert [(a, t, e) for a, t, e, _ in got] == [("a", "0.8", "j1")]


def test_a_late_earlier_event_moves_the_trigger_but_not_the_id(spark):
    segs = [("a", "basic", "2025-01-01T00:00:00", None)]
    before = alerts(spark, [("a", "e1", T, "2026-01-10T00:00:00", "240")], segs)
    after = alerts(spark, [("a", "e1", T, "2026-01-10T00:00:00", "240"),
                           ("a", "late", T, "2026-01-02T00:00:00", "240")], segs)
    assert before[0][2] == "e1" and after[0][2] == "late"
    assert before[0][3]["notification_id"] == after[0][3]["notification_id"]


def test_the_trigger_is_the_first_event_to_reach_the_limit_in_event_order(spark):
    # Same instant: event_id breaks the tie. Zero quantities at or after a crossing leave the
    # running usage where it was, so they never become a second trigger.
    got = alerts(spark, [
        ("a", "s-b", T, "2026-01-05T00:00:00", "120"), ("a", "s-a", T, "2026-01-05T00:00:00", "120"),
        ("a", "z0", T, "2026-01-05T00:00:00", "0"), ("a", "z1", T, "2026-01-06T00:00:00", "0"),
        ("a", "full", T, "2026-01-07T00:00:00", "60"), ("a", "z2", T, "2026-01-08T00:00:00", "0"),
    ], [("a", "basic", "2025-01-01T00:00:00", None)])
    assert [(a, t, e) for a, t, e, _ in got] == [("a", "0.8", "s-b"), ("a", "1", "full")]
    payloads = [json.loads(r["payload"]) for *_, r in got]
    assert [(p["usage_at_crossing"], p["usage_in_period"]) for p in payloads] == [("240", "300"), ("300", "300")]


def lifecycle(spark, rows):
    schema = ("account_id string, event_id string, event_type string, occurred_at timestamp, plan_id string, "
              "amount_value decimal(38,6), amount_currency string, properties string, source string, "
              "kafka_timestamp timestamp, kafka_partition int, kafka_offset bigint")
    return local_frame(spark, [(a, e, k, d(t), p, amt, cur, props, None, d(t), 0, i)
                               for i, (a, e, k, t, p, amt, cur, props) in enumerate(rows)], schema)


def test_reactive_follow_ups(spark):
    history = lifecycle(spark, [
        ("a", "s-a", "subscription.started", "2026-01-01T00:00:00", "basic", None, None, None),
        ("a", "up-a", "plan.changed", "2026-01-10T00:00:00", "pro", None, None, None),
        ("a", "down-a", "plan.changed", "2026-01-20T00:00:00", "basic", None, None, None),
        ("a", "odd-a", "plan.changed", "2026-01-21T00:00:00", "legacy", None, None, None),
        ("a", "buy-a", "purchase.completed", "2026-01-22T00:00:00", None, D("12.50"), "EUR", '{"sku": "x"}'),
        ("a", "x-a", "subscription.cancelled", "2026-01-30T00:00:00", None, None, None, None),
        ("b", "c-b", "account.created", "2026-01-01T00:00:00", None, None, None, None),
    ])
    out = (history.transform(A.with_previous_plan(history))
           .transform(A.reactive_notifications(plans(spark), prices(spark))).collect())
    got = {(r["type"], r["trigger_event_ids"][0]): json.loads(r["payload"]) for r in out}
    assert sorted(got) == [
        ("account.welcome", "s-a"), ("invoice.final_requested", "x-a"), ("plan.changed", "odd-a"),
        ("plan.downgraded", "down-a"), ("plan.upgraded", "up-a"), ("purchase.receipt", "buy-a"),
        ("quota.reset", "down-a"), ("quota.reset", "odd-a"), ("quota.reset", "up-a")]
    assert got[("account.welcome", "s-a")] == {"plan_id": "basic", "quotas": {T: "300", "sms_segments": "0"}}
    assert got[("plan.upgraded", "up-a")] == {"plan_id": "pro", "previous_plan_id": "basic",
                                              "effective_at": "2026-01-10T00:00:00Z"}
    assert got[("plan.downgraded", "down-a")]["effective_at"] == "2026-02-01T00:00:00Z"
    assert got[("quota.reset", "odd-a")] == {"plan_id": "legacy", "effective_at": "2026-01-21T00:00:00Z", "quotas": {}}
    assert got[("purchase.receipt", "buy-a")] == {"amount": {"value": "12.5", "currency": "EUR"}, "sku": "x"}
    assert got[("invoice.final_requested", "x-a")] == {"period": "2026-01", "plan_id": "legacy",
                                                      "cancelled_at": "2026-01-30T00:00:00Z"}
    ids = [r["notification_id"] for r in out]
    assert len(set(ids)) == len(ids)


def test_a_batch_s_counts_say_which_lookups_it_needs(spark):
    from pipelines.rules.notify import count_changes

    schema = ("_kind string, account_id string, event_id string, event_type string, metric string, "
              "occurred_at timestamp, _change_type string")
    at = d("2026-01-05T00:00:00")
    rows = [
        ("usage", "a", "u1", "usage.recorded", T, at, "insert"),
        ("usage", "a", "u2", "usage.recorded", T, None, "update_postimage"),
        ("account", "a", "s1", "subscription.started", None, at, "insert"),
        ("account", "a", "p1", "plan.changed", None, at, "update_postimage"),
        ("account", "a", "p1", "plan.changed", None, at, "update_preimage"),   # the old copy: no follow-up
        ("account", "a", "d1", "plan.changed", None, at, "delete"),
        ("account", "a", "n1", "account.note_added", None, at, "insert"),     # no follow-up for this type
        ("account", None, "c1", "subscription.cancelled", None, None, "insert"),
    ]

    def counts(batch):
        return [r.asDict() for r in local_frame(spark, batch, schema).transform(count_changes).collect()]

    # The outbox's shard of account "a" (SHA-256 "ca97...").
    assert counts(rows) == [{"rows": 8, "usage": 2, "lifecycle": 3, "plan": 3, "shards": ["c"]}]
    assert counts(rows[4:7]) == [{"rows": 3, "usage": 0, "lifecycle": 0, "plan": 0, "shards": ["c"]}]
    assert counts([]) == [{"rows": 0, "usage": 0, "lifecycle": 0, "plan": 0, "shards": []}]
    purchase = [("account", "b", "buy", "purchase.completed", None, at, "insert")]
    assert counts(purchase) == [{"rows": 1, "usage": 0, "lifecycle": 1, "plan": 0, "shards": ["3"]}]


def test_a_plan_event_touches_every_metric_of_its_account_s_periods_from_its_own_on(spark):
    from datetime import UTC, date

    events = local_frame(spark, [("a", d("2026-01-20T10:00:00")), ("a", d("2026-01-02T00:00:00")),
                                 ("b", None), (None, d("2026-02-01T00:00:00"))],
                         "account_id string, occurred_at timestamp")
    got = sorted((tuple(r) for r in events.transform(A.touched_plan_periods).collect()), key=repr)
    # Up to the month after the current one (usage may lie ahead of the clock); the session is UTC.
    today = datetime.now(UTC).date()
    months, m = [], date(2026, 1, 1)
    while m <= date(today.year + today.month // 12, today.month % 12 + 1, 1):
        months.append(m.strftime("%Y-%m"))
        m = date(m.year + m.month // 12, m.month % 12 + 1, 1)
    assert got == sorted([("a", None, p) for p in months] + [(None, None, p) for p in months[1:]], key=repr)


def test_touched_keys_with_no_metric_keep_every_metric_of_the_period(spark):
    usage = local_frame(spark, [("a", "u1", T, "2026-01"), ("a", "u2", "sms_segments", "2026-01"),
                                ("a", "u3", T, "2026-02"), ("b", "u4", T, "2026-01"),
                                ("b", "u5", "sms_segments", "2026-01"), ("c", "u6", T, "2026-01")],
                        "account_id string, event_id string, metric string, period string")
    keys = local_frame(spark, [("a", None, "2026-01"), ("b", T, "2026-01"), ("b", T, "2026-03")],
                       "account_id string, metric string, period string")
    got = sorted(r.event_id for r in usage.transform(A.filter_touched_keys(keys)).collect())
    assert got == ["u1", "u2", "u4"]
