"""The `notify` stream against the real broker: usage alerts at 80 % and 100 % and the
reactive follow-ups, each on the topic once, read back from Kafka, across a crash in the
middle of a batch, a restart from the checkpoint and a rerun from a fresh checkpoint."""
from __future__ import annotations

import shutil
import uuid
from collections import Counter
from decimal import Decimal

import pytest

from pipelines.rules import notify as job
from pipelines.rules.notifications import close_publishers, read_topic
from pipelines.core.tables import Lake
from tests.integration.helpers import context, event, run, send, usage

pytestmark = pytest.mark.kafka


@pytest.fixture
def settings(lake_settings):
    return lake_settings.with_overrides(notifications_topic=f"test.notifications.{uuid.uuid4().hex[:10]}")


def life(eid, account, at, kind, **fields):
    return account, event(eid, account, at, kind, **fields)


def tickets(eid, account, at, quantity):
    return account, usage(eid, account, at, "helpdesk", "billable_tickets", quantity)


def on_topic(settings) -> list[dict]:
    return [r["value"] for r in read_topic(settings, settings.notifications_topic)]


def summary(values) -> list[tuple]:
    return sorted((v["type"], v["account_id"], tuple(v["trigger_event_ids"])) for v in values)


def test_alerts_and_follow_ups_once_across_a_crash_a_restart_and_a_rerun(spark, settings, monkeypatch):
    ctx = context(settings)
    send(settings, [
        life("s-a", "a", "2026-01-01T00:00:00Z", "subscription.started", plan_id="basic"),   # 300 tickets included
        tickets("t1", "a", "2026-01-05T00:00:00Z", 200),
        tickets("t2", "a", "2026-01-06T00:00:00Z", 50),     # 250 >= 240: 80 %
        tickets("t3", "a", "2026-01-07T00:00:00Z", Decimal("49.999999")),
        tickets("t4", "a", "2026-01-08T00:00:00Z", Decimal("0.000001")),   # exactly 300: 100 %
        life("s-b", "b", "2026-01-01T00:00:00Z", "subscription.started", plan_id="starter"),
        life("pc-b", "b", "2026-01-10T00:00:00Z", "plan.changed", plan_id="pro"),
        life("buy-b", "b", "2026-01-11T00:00:00Z", "purchase.completed",
             amount={"value": "49.90", "currency": "USD"}, properties={"sku": "sms_credits_1000"}),
        life("x-b", "b", "2026-01-20T00:00:00Z", "subscription.cancelled"),
        life("s-c", "c", "2026-01-01T00:00:00Z", "subscription.started", plan_id="pro"),    # 2000 included
        tickets("c1", "c", "2026-01-03T00:00:00Z", Decimal("1599.999999")),                 # just under 80 %
        life("s-d", "d", "2026-01-01T00:00:00Z", "subscription.started", plan_id="pro"),
        life("pc-d", "d", "2026-01-15T00:00:00Z", "plan.changed", plan_id="basic"),
    ])
    run(spark, ctx, "bronze", "silver", "notify")
    first = on_topic(settings)
    assert summary(first) == [
        ("account.welcome", "a", ("s-a",)), ("account.welcome", "b", ("s-b",)),
        ("account.welcome", "c", ("s-c",)), ("account.welcome", "d", ("s-d",)),
        ("invoice.final_requested", "b", ("x-b",)),
        ("plan.downgraded", "d", ("pc-d",)), ("plan.upgraded", "b", ("pc-b",)),
        ("purchase.receipt", "b", ("buy-b",)),
        ("quota.reset", "b", ("pc-b",)), ("quota.reset", "d", ("pc-d",)),
        ("usage.quota_threshold", "a", ("t2",)), ("usage.quota_threshold", "a", ("t4",)),
    ]
    by = {(v["type"], v["account_id"], v["trigger_event_ids"][0]): v["payload"] for v in first}
    assert by[("usage.quota_threshold", "a", "t2")] == {
        "period": "2026-01", "product": "helpdesk", "metric": "billable_tickets", "plan_id": "basic",
        "threshold": "0.8", "percent": "80", "included": "300", "usage_at_crossing": "250", "usage_in_period": "300"}
    assert by[("usage.quota_threshold", "a", "t4")]["usage_at_crossing"] == "300"
    assert by[("plan.downgraded", "d", "pc-d")] == {"plan_id": "basic", "previous_plan_id": "pro",
                                                    "effective_at": "2026-02-01T00:00:00Z"}
    assert by[("quota.reset", "b", "pc-b")]["quotas"]["billable_tickets"] == "2000"
    assert by[("purchase.receipt", "b", "buy-b")] == {"amount": {"value": "49.9", "currency": "USD"},
                                                      "sku": "sms_credits_1000"}
    assert by[("invoice.final_requested", "b", "x-b")] == {"period": "2026-01", "plan_id": "pro",
                                                          "cancelled_at": "2026-01-20T00:00:00Z"}

    # More usage; the notify batch crashes after staging, before publishing.
    send(settings, [tickets("c2", "c", "2026-01-04T00:00:00Z", Decimal("0.000001")),   # exactly 1600: 80 %
                    tickets("t5", "a", "2026-01-09T00:00:00Z", 10)])                      # nothing new for a
    run(spark, ctx, "bronze", "silver")

    def crash(*_a, **_k):
        raise RuntimeError("killed between staging and publishing")

    monkeypatch.setattr(job, "publish_pending", crash)
    with pytest.raises(Exception, match="killed between staging and publishing"):
        run(spark, ctx, "notify")
    monkeypatch.undo()
    close_publishers()
    assert len(on_topic(settings)) == 12
    run(spark, ctx, "notify")   # restart from the checkpoint: the batch is replayed
    second = on_topic(settings)
    assert summary(second) == sorted(summary(first) + [("usage.quota_threshold", "c", ("c2",))])

    # A rerun of everything from a fresh checkpoint finds every notification already sent.
    shutil.rmtree(Lake(settings).checkpoint("notify", "notifications"))
    run(spark, ctx, "notify")
    third = on_topic(settings)
    assert len(third) == 13 and max(Counter(v["notification_id"] for v in third).values()) == 1
    assert Lake(settings).read(spark, "gold.notifications").filter("published_at IS NULL").count() == 0

    # A batch of lifecycle events alone, no usage: its follow-ups, and nothing else.
    send(settings, [life("x-c", "c", "2026-01-25T00:00:00Z", "subscription.cancelled")])
    run(spark, ctx, "bronze", "silver", "notify")
    fourth = on_topic(settings)
    assert summary(fourth) == sorted(summary(third) + [("invoice.final_requested", "c", ("x-c",))])
    assert {(v["type"], v["account_id"]): v["payload"] for v in fourth}[("invoice.final_requested", "c")] == {
        "period": "2026-01", "plan_id": "pro", "cancelled_at": "2026-01-25T00:00:00Z"}


def test_usage_seen_before_its_late_subscription_is_alerted_when_the_subscription_arrives(spark, settings):
    """The plan in force comes from the plan timeline as notify has read it so far. A usage
    event whose account's subscription.started comes later (a late event) finds no plan and
    no alert in its own batch; the subscription's batch looks at the account's periods again
    and owes the alert then, once, and the timeline ends up holding silver's plan events."""
    ctx = context(settings)
    send(settings, [tickets("e1", "e", "2026-03-05T00:00:00Z", 250),          # 80 % of basic's 300
                    tickets("f1", "f", "2026-03-05T00:00:00Z", 250)])         # f never subscribes
    run(spark, ctx, "bronze", "silver", "notify")
    assert on_topic(settings) == []

    send(settings, [life("s-e", "e", "2026-03-01T00:00:00Z", "subscription.started", plan_id="basic"),
                    life("pc-f", "f", "2026-03-02T00:00:00Z", "plan.changed", plan_id="pro")])   # no subscription
    run(spark, ctx, "bronze", "silver", "notify")
    got = on_topic(settings)
    assert summary(got) == [("account.welcome", "e", ("s-e",)), ("plan.changed", "f", ("pc-f",)),
                            ("quota.reset", "f", ("pc-f",)), ("usage.quota_threshold", "e", ("e1",))]
    assert {v["type"]: v["payload"] for v in got if v["account_id"] == "e"}["usage.quota_threshold"]["plan_id"] == "basic"

    lake = Lake(settings)
    timeline = lake.read(spark, "gold.plan_timeline")
    silver = lake.read(spark, "silver.account_events").filter(
        "event_type IN ('subscription.started', 'plan.changed', 'subscription.cancelled')")
    columns = ["account_id", "event_id", "event_type", "occurred_at", "plan_id", "kafka_timestamp", "kafka_topic",
               "kafka_partition", "kafka_offset"]
    assert sorted(timeline.select(*columns).collect()) == sorted(silver.select(*columns).collect())
    assert timeline.count() == 2

    # A rerun from a fresh checkpoint stages nothing and leaves the timeline as it is.
    shutil.rmtree(lake.checkpoint("notify", "notifications"))
    run(spark, ctx, "notify")
    assert len(on_topic(settings)) == 4
    assert sorted(lake.read(spark, "gold.plan_timeline").select(*columns).collect()) == sorted(
        silver.select(*columns).collect())
