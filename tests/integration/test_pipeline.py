"""Kafka -> bronze -> silver -> gold against the real local broker, asserted exactly.

One known event set, sent in three rounds with the jobs run after each, covers: in-batch
and cross-batch duplicates (identical and conflicting), copies re-sent after the
watermark has moved on, gateway retries inside and outside 10 minutes (and a late retry
that re-anchors the chain), a ticket reopened in the same month and in the next one
(and a late earlier copy that takes over), late events, and every bad-record kind.
"""
from __future__ import annotations

import time
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal

import pytest

from pipelines.core.batch_expressions import FACTORY_MODE
from pipelines.core.tables import Lake
from tests.integration.helpers import context, event, rows, run, send, usage

pytestmark = pytest.mark.kafka

A, B, X = "acct-a", "acct-b", "acct-x"
D = Decimal


def _future() -> str:
    return (datetime.now(timezone.utc) + timedelta(days=2)).strftime("%Y-%m-%dT%H:%M:%SZ")


def round_one() -> list[tuple]:
    v1 = usage("v1", A, "2026-10-10T08:00:00Z", "voice", "voice_minutes", D("1.5"))
    v2 = usage("v2", A, "2026-10-10T09:00:00Z", "automate", "automated_interactions", 2)
    v2_conflict = usage("v2", A, "2026-10-10T09:00:00Z", "automate", "automated_interactions", 9)
    v3 = usage("v3", A, "2026-10-11T00:00:00+02:00", "voice", "voice_minutes", D("0.25"))
    sms = [usage(f"s{i}", B, f"2026-10-12T{t}Z", "sms", "sms_segments", 1, dedup_key="m1")
           for i, t in ((1, "10:00:00"), (2, "10:05:00"), (3, "10:11:00"), (4, "10:20:59"))]
    sms += [usage("s5", B, "2026-10-12T11:00:00Z", "sms", "sms_segments", 1, dedup_key="m2"),
            usage("s6", B, "2026-10-12T11:10:00Z", "sms", "sms_segments", 1, dedup_key="m2")]
    tickets = [usage(f"t{i}", B, t, "helpdesk", "billable_tickets", 1, dedup_key="k1")
               for i, t in ((1, "2026-10-05T12:00:00Z"), (2, "2026-10-20T12:00:00Z"), (3, "2026-11-02T12:00:00Z"))]
    lifecycle = [
        event("c1", A, "2026-10-01T00:00:00Z", "account.created", properties={"email_domain": "shop.example"}),
        event("c2", A, "2026-10-01T00:00:01Z", "subscription.started", plan_id="starter"),
        event("c3", B, "2026-10-02T00:00:00Z", "plan.changed", plan_id="pro"),
        event("c4", B, "2026-10-03T00:00:00Z", "purchase.completed", amount={"value": "49.00", "currency": "USD"}),
        event("c5", A, "2026-10-30T00:00:00Z", "subscription.cancelled"),
    ]
    good = [(A, v1), (A, v1), (A, v2), (A, v2_conflict), (A, v3)] + [(B, e) for e in sms + tickets]
    good += [(e["account_id"], e) for e in lifecycle]
    base = usage("bad", X, "2026-10-10T00:00:00Z", "voice", "voice_minutes", 1)
    bad = [
        None,
        b"\xff\xfe{}",
        b'{"event_id": ',
        b"[1, 2]",
        {k: v for k, v in base.items() if k != "account_id"} | {"event_id": "bad-missing"},
        base | {"event_id": None},
        base | {"event_id": "bad-type", "quantity": "2"},
        base | {"event_id": "bad-event-type", "event_type": "usage.v2"},
        base | {"event_id": "bad-version", "schema_version": 2},
        base | {"event_id": "bad-negative", "quantity": -1},
        base | {"event_id": "bad-future", "occurred_at": _future()},
        base | {"event_id": "bad-timestamp", "occurred_at": "2026-10-10T00:00:00"},
    ]
    return good + [(X, b) for b in bad], v1, v2, v3


def test_known_event_set_end_to_end(spark, lake_settings):
    settings = lake_settings
    ctx = context(settings, watermark_seconds=2)
    first, v1, v2, v3 = round_one()
    send(settings, first)
    mode = spark.conf.get(FACTORY_MODE)
    run(spark, ctx)

    # Round 1: what silver kept and why.
    assert rows(spark, settings, "silver.usage_events", "event_id", "quantity") == [
        ("s1", D("1.000000")), ("s3", D("1.000000")), ("s5", D("1.000000")), ("s6", D("1.000000")),
        ("t1", D("1.000000")), ("t3", D("1.000000")),
        ("v1", D("1.500000")), ("v2", D("2.000000")), ("v3", D("0.250000")),
    ]
    assert rows(spark, settings, "silver.duplicates", "event_id", "rule", "duplicate_of") == [
        ("s2", "sms_gateway_retry", "s1"), ("s4", "sms_gateway_retry", "s3"),
        ("t2", "billable_tickets_monthly", "t1"), ("v2", "identity", "v2"),
    ]
    # The conflicting copy of v2 is the one recorded; the first copy (quantity 2) was kept.
    assert rows(spark, settings, "silver.duplicates", "quantity", where="event_id = 'v2'") == [(D("9.000000"),)]
    assert rows(spark, settings, "silver.quarantine", "reason") == sorted([
        ("null_value",), ("invalid_utf8",), ("invalid_json",), ("not_an_object",), ("missing_field",),
        ("null_field",), ("wrong_type",), ("unknown_event_type",), ("unsupported_schema_version",),
        ("negative_quantity",), ("occurred_at_in_future",), ("invalid_value",),
    ])
    assert rows(spark, settings, "silver.account_events", "event_id", "event_type", "plan_id", "amount_value",
                "amount_currency") == [
        ("c1", "account.created", None, None, None),
        ("c2", "subscription.started", "starter", None, None),
        ("c3", "plan.changed", "pro", None, None),
        ("c4", "purchase.completed", None, D("49.000000"), "USD"),
        ("c5", "subscription.cancelled", None, None, None),
    ]
    # v3 happened at 00:00 +02:00, i.e. 22:00 UTC the day before.
    assert rows(spark, settings, "silver.usage_events", "occurred_at", "event_date", where="event_id = 'v3'") == [
        (datetime(2026, 10, 10, 22, 0), date(2026, 10, 10))]

    # Round 2 (the watermark has moved on: > 2 s of ingestion time later): an identical
    # re-send of v1 and a conflicting copy of v3 reach silver history, not dedup state.
    time.sleep(3)
    send(settings, [(A, v1), (A, v3 | {"quantity": 7}), (A, v2)])
    run(spark, ctx)
    # Round 3: late events. s0 is an earlier gateway copy that re-anchors m1's chain, t4 an
    # earlier opening of ticket k1 in October, v4 a usage event from September.
    time.sleep(3)
    send(settings, [
        (B, usage("s0", B, "2026-10-12T09:58:00Z", "sms", "sms_segments", 1, dedup_key="m1")),
        (B, usage("t4", B, "2026-10-01T00:00:00Z", "helpdesk", "billable_tickets", 1, dedup_key="k1")),
        (A, usage("v4", A, "2026-09-01T23:59:59.999Z", "voice", "voice_minutes", 3)),
        (A, v1),
    ])
    run(spark, ctx)

    assert rows(spark, settings, "silver.usage_events", "event_id", "quantity", "is_late") == [
        ("s0", D("1.000000"), True), ("s3", D("1.000000"), True), ("s5", D("1.000000"), True),
        ("s6", D("1.000000"), True), ("t3", D("1.000000"), True), ("t4", D("1.000000"), True),
        ("v1", D("1.500000"), True), ("v2", D("2.000000"), True), ("v3", D("0.250000"), True),
        ("v4", D("3.000000"), True),
    ]
    assert rows(spark, settings, "silver.duplicates", "event_id", "rule", "duplicate_of") == [
        ("s1", "sms_gateway_retry", "s0"), ("s2", "sms_gateway_retry", "s0"), ("s4", "sms_gateway_retry", "s3"),
        ("t1", "billable_tickets_monthly", "t4"), ("t2", "billable_tickets_monthly", "t4"),
        ("v2", "identity", "v2"), ("v3", "identity", "v3"),
    ]
    assert rows(spark, settings, "gold.daily_usage", "account_id", "product", "metric", "usage_date",
                "quantity", "event_count") == [
        (A, "automate", "automated_interactions", date(2026, 10, 10), D("2.000000"), 1),
        (A, "voice", "voice_minutes", date(2026, 9, 1), D("3.000000"), 1),
        (A, "voice", "voice_minutes", date(2026, 10, 10), D("1.750000"), 2),
        (B, "helpdesk", "billable_tickets", date(2026, 10, 1), D("1.000000"), 1),
        (B, "helpdesk", "billable_tickets", date(2026, 11, 2), D("1.000000"), 1),
        (B, "sms", "sms_segments", date(2026, 10, 12), D("4.000000"), 4),
    ]
    # Every record is accounted for: bronze holds all of them.
    assert Lake(settings).read(spark, "bronze.events").count() == len(first) + 3 + 4
    # The identical copies sent after the watermark moved on were caught by the history
    # guard (state no longer held them) and counted.
    batches = rows(spark, settings, "ops.silver_batches", "batch_id", "identity_duplicates")
    assert sum(n for _, n in batches) >= 3

    # Rerunning with nothing new changes nothing.
    before = {t: rows(spark, settings, t, "*") for t in ("silver.usage_events", "silver.duplicates", "gold.daily_usage")}
    run(spark, ctx)
    assert {t: rows(spark, settings, t, "*") for t in before} == before
    # The streams' small batches set their expression mode (batch_expressions) on the
    # streams' own sessions, never on the session that started them.
    assert spark.conf.get(FACTORY_MODE) == mode


def _versions(spark, settings, table: str) -> list[dict]:
    """(version, operation, operationMetrics) of each commit, oldest first."""
    history = Lake(settings).delta(spark, table).history().select("version", "operation", "operationMetrics")
    return [r.asDict() for r in history.orderBy("version").collect()]


def test_decisions_that_stand_rewrite_no_file(spark, lake_settings):
    """A batch touching a custom-rule key re-decides the key's stored events. The ones that
    keep their decision must not be written again: the batch appends its new row and
    rewrites no file (a MERGE would copy every file it matches a row in)."""
    settings = lake_settings
    ctx = context(settings, watermark_seconds=2)
    s1 = usage("s1", B, "2026-10-12T10:00:00Z", "sms", "sms_segments", 1, dedup_key="m1")
    s2 = usage("s2", B, "2026-10-12T10:05:00Z", "sms", "sms_segments", 1, dedup_key="m1")
    send(settings, [(B, s1), (B, s2)])
    run(spark, ctx, "bronze", "silver")
    usage_before = _versions(spark, settings, "silver.usage_events")
    duplicates_before = _versions(spark, settings, "silver.duplicates")

    # s3 opens a new retry window on m1: kept. s1 (kept) and s2 (dropped, duplicate of s1)
    # are re-decided alongside it and stand.
    s3 = usage("s3", B, "2026-10-12T10:30:00Z", "sms", "sms_segments", 1, dedup_key="m1")
    send(settings, [(B, s3)])
    run(spark, ctx, "bronze", "silver")

    assert rows(spark, settings, "silver.usage_events", "event_id") == [("s1",), ("s3",)]
    assert rows(spark, settings, "silver.duplicates", "event_id", "rule", "duplicate_of") == [
        ("s2", "sms_gateway_retry", "s1")]
    new_usage = _versions(spark, settings, "silver.usage_events")[len(usage_before):]
    # Steady state is an append: one commit adding the one new row, no file rewritten.
    assert [(v["operation"], v["operationMetrics"]["numOutputRows"], v["operationMetrics"].get("numRemovedFiles", "0"))
            for v in new_usage] == [("WRITE", "1", "0")]
    # Nothing new was dropped, so silver.duplicates gets no commit at all.
    assert _versions(spark, settings, "silver.duplicates") == duplicates_before
