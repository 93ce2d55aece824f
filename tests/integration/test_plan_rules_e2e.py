"""`plan-rules` end to end against the real broker: decisions from silver, each applied
decision on the events topic once as plan.changed and once as a notification, read back
from Kafka, across a crash after the decisions were written, reruns and a later run."""
from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from pipelines.rules import plan_rules as job
from pipelines.rules.plan_rules import run_plan_rules
from pipelines.rules.notifications import close_publishers, read_topic
from pipelines.core.tables import Lake
from tests.integration.helpers import context, event, run, rows, send, usage

pytestmark = pytest.mark.kafka

AS_OF = datetime(2026, 3, 12, tzinfo=UTC)   # 11 full days of March


@pytest.fixture
def settings(lake_settings):
    return lake_settings.with_overrides(notifications_topic=f"test.notifications.{uuid.uuid4().hex[:10]}")


def started(eid, account, at, plan):
    return account, event(eid, account, at, "subscription.started", plan_id=plan)


def tickets(eid, account, at, quantity):
    return account, usage(eid, account, at, "helpdesk", "billable_tickets", quantity)


def quiet(_msg):
    return None


def fraud_flags(spark, settings, flags):
    schema = ("account_id string, flag_id string, rule string, evidence string, first_seen timestamp, "
              "last_seen timestamp, state string, cleared_at timestamp, cleared_by string, clear_reason string")
    at = datetime(2026, 3, 1)
    spark.createDataFrame([(a, f"f-{a}", rule, "{}", at, at, state, None, None, None) for a, rule, state in flags],
                          schema).write.format("delta").save(Lake(settings).path("gold.fraud_flags"))


def plan_events(settings):
    return sorted((r["key"], r["value"]["plan_id"], r["value"]["properties"]["direction"], r["value"]["event_id"])
                  for r in read_topic(settings, settings.events_topic)
                  if r["value"].get("source") == "plan-rules")


def notes(settings):
    return sorted((r["value"]["type"], r["key"]) for r in read_topic(settings, settings.notifications_topic))


def version(spark, settings, table):
    return spark.sql(f"DESCRIBE HISTORY delta.`{Lake(settings).path(table)}` LIMIT 1").first()["version"]


def test_decisions_are_applied_and_emitted_once(spark, settings, monkeypatch):
    ctx = context(settings)
    send(settings, [
        started("s-up", "up", "2026-01-01T00:00:00Z", "basic"),
        tickets("u-up", "up", "2026-03-02T10:00:00Z", 150),          # projected 150 x 31 / 9 = 516 > 300
        started("s-down", "down", "2025-12-15T00:00:00Z", "pro"),
        tickets("u-d1", "down", "2026-01-10T00:00:00Z", 100), tickets("u-d2", "down", "2026-02-10T00:00:00Z", 209),
        started("s-ent", "ent", "2025-06-01T00:00:00Z", "enterprise"),
        tickets("u-ent", "ent", "2026-03-01T00:00:00Z", 900000),
        ("con", event("c-con", "con", "2025-06-01T00:00:00Z", "account.created", properties={"contract": True})),
        started("s-con", "con", "2025-06-01T00:00:00Z", "basic"),
        tickets("u-con", "con", "2026-03-01T00:00:00Z", 5000),
        started("s-fr", "fraudy", "2025-06-01T00:00:00Z", "basic"),
        tickets("u-fr", "fraudy", "2026-03-01T00:00:00Z", 5000),
        started("s-cl", "cleared", "2025-06-01T00:00:00Z", "starter"),
        tickets("u-cl", "cleared", "2026-03-01T00:00:00Z", 5000),
    ])
    run(spark, ctx, "bronze", "silver")
    fraud_flags(spark, settings, [("fraudy", "velocity", "open"), ("cleared", "velocity", "cleared")])

    # A crash after the decisions and notifications were written, before anything was sent.
    def crash(*_a, **_k):
        raise RuntimeError("killed before publishing")

    monkeypatch.setattr(job, "publish_outbox", crash)
    with pytest.raises(RuntimeError, match="killed before publishing"):
        run_plan_rules(spark, ctx, now=AS_OF, log=quiet)
    monkeypatch.undo()
    assert plan_events(settings) == []
    close_publishers()

    result = run_plan_rules(spark, ctx, now=AS_OF, log=quiet)
    assert (result.events_sent, result.notifications_sent) == (3, 3)
    decided = rows(spark, settings, "gold.plan_decisions", "account_id", "rule", "from_plan", "to_plan", "state",
                   "reason")
    # Accounts on basic with an idle January and February also qualify to go down to
    # starter; the open period's usage (hysteresis) or the exclusion stops that.
    assert decided == [
        ("cleared", "auto_upgrade", "starter", "basic", "applied", None),
        ("con", "auto_downgrade", "basic", "starter", "skipped", "account flag contract"),
        ("con", "auto_upgrade", "basic", "pro", "skipped", "account flag contract"),
        ("down", "auto_downgrade", "pro", "basic", "applied", None),
        ("ent", "auto_downgrade", "enterprise", "advanced", "skipped", "excluded plan enterprise"),
        ("ent", "auto_upgrade", "enterprise", None, "skipped", "excluded plan enterprise"),
        ("fraudy", "auto_downgrade", "basic", "starter", "skipped", "open fraud flag velocity"),
        ("fraudy", "auto_upgrade", "basic", "pro", "skipped", "open fraud flag velocity"),
        ("up", "auto_downgrade", "basic", "starter", "skipped", "hysteresis: open-period billable_tickets at "
                                                                "projected 422.727273 is over the upgrade threshold "
                                                                "50 of starter"),
        ("up", "auto_upgrade", "basic", "pro", "applied", None),
    ]
    effective = dict(rows(spark, settings, "gold.plan_decisions", "account_id", "effective_at", where="state = 'applied'"))
    assert effective == {"cleared": datetime(2026, 3, 12), "down": datetime(2026, 4, 1), "up": datetime(2026, 3, 12)}
    events = plan_events(settings)
    assert [(k, p, d) for k, p, d, _ in events] == [
        ("cleared", "basic", "upgrade"), ("down", "basic", "downgrade"), ("up", "pro", "upgrade")]
    ids = dict(rows(spark, settings, "gold.plan_decisions", "decision_id", "event_id", where="state = 'applied'"))
    assert sorted(eid for *_, eid in events) == sorted(f"plan-rules-{d}" for d in ids) == sorted(ids.values())
    assert notes(settings) == [("plan.auto_changed", a) for a in ("cleared", "down", "up")]

    # Rerun an hour later: nothing new, so nothing written (not even the skipped rows'
    # decided_at), nothing sent.
    before = version(spark, settings, "gold.plan_decisions")
    again = run_plan_rules(spark, ctx, now=AS_OF + timedelta(hours=1), log=quiet)
    assert (again.events_sent, again.notifications_sent) == (0, 0)
    assert version(spark, settings, "gold.plan_decisions") == before

    # Silver takes the emitted plan.changed events like any other; a day later "up" is on
    # pro (no new upgrade), "down" still owes its April downgrade (the same decision).
    run(spark, ctx, "bronze", "silver")
    assert rows(spark, settings, "silver.account_events", "account_id", "plan_id",
                where="source = 'plan-rules'") == [("cleared", "basic"), ("down", "basic"), ("up", "pro")]
    later = run_plan_rules(spark, ctx, now=AS_OF + timedelta(days=1), log=quiet)
    assert (later.events_sent, later.notifications_sent) == (0, 0)
    assert len(plan_events(settings)) == 3 and len(notes(settings)) == 3
    # "cleared" now on basic with 5000 tickets would go up again: the cooldown holds it.
    assert rows(spark, settings, "gold.plan_decisions", "account_id", "from_plan", "state", "reason",
                where="account_id = 'cleared' AND from_plan = 'basic'") == [
        ("cleared", "basic", "skipped", "cooldown: auto_upgrade to basic applied in 2026-03")]


def test_dry_run_proposes_and_sends_nothing_without_a_fraud_table(spark, settings):
    ctx = context(settings)
    send(settings, [started("s-up", "up", "2026-01-01T00:00:00Z", "basic"),
                    tickets("u-up", "up", "2026-03-02T10:00:00Z", 150)])
    run(spark, ctx, "bronze", "silver")
    result = run_plan_rules(spark, ctx, now=AS_OF, dry_run=True, log=quiet)
    assert result.dry_run and (result.events_sent, result.notifications_sent) == (0, 0)
    assert rows(spark, settings, "gold.plan_decisions", "account_id", "rule", "state", "event_id") == [
        ("up", "auto_downgrade", "skipped", None), ("up", "auto_upgrade", "proposed", None)]
    assert plan_events(settings) == [] and read_topic(settings, settings.notifications_topic) == []
    # The real run turns the proposal into an applied decision.
    assert run_plan_rules(spark, ctx, now=AS_OF, log=quiet).events_sent == 1
    assert rows(spark, settings, "gold.plan_decisions", "account_id", "rule", "state") == [
        ("up", "auto_downgrade", "skipped"), ("up", "auto_upgrade", "applied")]
