"""The billing and plan-rule edge cases docs/billing.md and docs/rules-notifications.md state (issue 23), each on real Delta
tables: silver rows written to a fresh lake, `run_billing` and `run_plan_rules` run over
them, the gold tables and their Delta history read back. No broker: the plan-rule runs
here are dry runs or apply nothing, so nothing is published."""
from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal

import pytest
from chispa import assert_df_equality

from pipelines.core.context import JobContext
from pipelines.rules.plan_rules import compute_decisions, decisions_outbox, run_plan_rules
from pipelines.billing.close import run_billing
from pipelines.rules.config import load_plan_rules
from pipelines.core.settings import Settings
from pipelines.core.tables import spec
from tests.unit.frames import local_frame

D = Decimal
T = "billable_tickets"


def quiet(_msg):
    return None


def ts(text: str) -> datetime:
    """A naive UTC datetime, as the local session reads and writes timestamps."""
    return datetime.fromisoformat(text)


@pytest.fixture
def ctx(tmp_path) -> JobContext:
    return JobContext.from_settings(Settings().with_overrides(lake_root=str(tmp_path / "lake")))


def write_silver(spark, ctx, lifecycle=(), usage=()):
    """lifecycle: (event_id, account, type, occurred_at, plan_id[, properties]);
    usage: (event_id, account, occurred_at, quantity) billable tickets. Kafka order
    follows the lists."""
    lake = ctx.lake
    for table in ("silver.account_events", "silver.usage_events"):
        lake.ensure(spark, table)
    accounts = [
        (eid, acct, kind, ts(at), ts(at).date(), 1, "test", plan, None, None, (rest[0] if rest else None), False,
         "billing.events", 0, i, ts(at), ts(at), None)
        for i, (eid, acct, kind, at, plan, *rest) in enumerate(lifecycle)]
    local_frame(spark, accounts, spec("silver.account_events").struct_type()).write.format("delta").mode("append") \
        .save(lake.path("silver.account_events"))
    used = [
        (eid, acct, "usage", ts(at), ts(at).date(), 1, "test", "helpdesk", T, D(q), None, None, False,
         "billing.events", 1, i, ts(at), ts(at), None)
        for i, (eid, acct, at, q) in enumerate(usage)]
    local_frame(spark, used, spec("silver.usage_events").struct_type()).write.format("delta").mode("append") \
        .save(lake.path("silver.usage_events"))


def history_version(spark, ctx, table: str) -> int:
    return spark.sql(f"DESCRIBE HISTORY delta.`{ctx.lake.path(table)}` LIMIT 1").first()["version"]


def decisions(spark, ctx, *cols: str, where: str = "true") -> list[tuple]:
    df = ctx.lake.read(spark, "gold.plan_decisions").filter(where)
    return sorted(tuple(r) for r in df.select(*cols).collect())


def base_lines(spark, ctx, where: str = "true") -> list[tuple]:
    df = ctx.lake.read(spark, "gold.invoice_lines").filter(f"line_type = 'base' AND amount <> 0 AND ({where})")
    return sorted(tuple(r) for r in df.select("account_id", "period", "plan_id", "segment_start", "segment_end").collect())


def cents(value: Decimal) -> Decimal:
    return value.quantize(D("0.01"), rounding=ROUND_HALF_UP)


# --------------------------------------------------------------------------- billing


def test_proration_counts_a_plan_change_from_its_whole_second(spark, ctx):
    # The upgrade at 07:46:08.718 splits the period at that exact instant for usage, and is
    # prorated from 07:46:08 (whole seconds, so January's segments add up to its length).
    write_silver(spark, ctx, lifecycle=[
        ("s", "a", "subscription.started", "2026-01-01T00:00:00", "basic"),
        ("up", "a", "plan.changed", "2026-01-16T07:46:08.718", "pro"),
    ], usage=[
        ("before", "a", "2026-01-16T07:46:08.500", "1"),   # same second, before the change: basic
        ("after", "a", "2026-01-16T07:46:08.900", "2"),    # after it: pro
    ])
    run_billing(spark, ctx, now=datetime(2026, 2, 10, tzinfo=UTC), log=quiet)

    january = 31 * 86400
    on_basic = 15 * 86400 + 7 * 3600 + 46 * 60 + 8   # 2026-01-01T00:00:00 -> 07:46:08 on the 16th
    on_pro = january - on_basic
    lines = ctx.lake.read(spark, "gold.invoice_lines").filter("period = '2026-01' AND line_type = 'base'")
    expected = local_frame(spark, [
        ("basic", ts("2026-01-16T07:46:08.718"), (D(on_basic) / january).quantize(D("0.000001")),
         cents(D("60.00") * on_basic / january)),
        ("pro", ts("2026-01-16T07:46:08.718"), (D(on_pro) / january).quantize(D("0.000001")),
         cents(D("360.00") * on_pro / january)),
    ], "plan_id string, split timestamp, units decimal(38,6), amount decimal(38,6)")
    got = lines.selectExpr("plan_id", "IF(plan_id = 'basic', segment_end, segment_start) AS split", "units", "amount")
    assert_df_equality(got, expected, ignore_row_order=True, ignore_nullable=True, ignore_metadata=True)
    usage = ctx.lake.read(spark, "gold.period_usage").filter("period = '2026-01'")
    assert sorted((r["plan_id"], r["quantity"]) for r in usage.collect()) == [("basic", D("1")), ("pro", D("2"))]


def test_a_plan_change_without_an_active_subscription_bills_nothing(spark, ctx):
    write_silver(spark, ctx, lifecycle=[
        ("s1", "a", "subscription.started", "2026-01-01T00:00:00", "pro"),
        ("x1", "a", "subscription.cancelled", "2026-01-10T00:00:00", None),
        ("c1", "a", "plan.changed", "2026-01-20T00:00:00", "basic"),     # while cancelled: ignored
        ("c2", "a", "plan.changed", "2026-01-25T00:00:00", "advanced"),  # ignored too, upgrade or not
        ("s2", "a", "subscription.started", "2026-02-05T00:00:00", "starter"),   # billing resumes here
        ("c0", "never", "plan.changed", "2026-01-03T00:00:00", "pro"),   # never subscribed: ignored
    ], usage=[("u1", "a", "2026-01-22T00:00:00", "5"), ("u2", "never", "2026-01-04T00:00:00", "5")])
    result = run_billing(spark, ctx, now=datetime(2026, 2, 10, tzinfo=UTC), log=quiet)

    assert base_lines(spark, ctx) == [
        ("a", "2026-01", "pro", ts("2026-01-01T00:00:00"), ts("2026-01-10T00:00:00")),
        ("a", "2026-02", "starter", ts("2026-02-05T00:00:00"), ts("2026-03-01T00:00:00")),
    ]
    assert ctx.lake.read(spark, "gold.invoice_lines").filter("account_id = 'never'").count() == 0
    # The usage of those spans is reported, not billed.
    assert [(r["period"], r["rows"], r["reason"]) for r in result.unpriced] == [
        ("2026-01", 2, "no plan in force at occurred_at")]


def test_a_cancellation_drops_a_pending_downgrade(spark, ctx):
    auto = json.dumps({"initiated_by": "plan-rules", "rule": "auto_downgrade"})
    write_silver(spark, ctx, lifecycle=[
        # Cancelled with a downgrade booked for February: nothing after the cancellation.
        ("s-a", "a", "subscription.started", "2026-01-01T00:00:00", "pro"),
        ("d-a", "a", "plan.changed", "2026-01-10T00:00:00", "basic", auto),
        ("x-a", "a", "subscription.cancelled", "2026-01-20T00:00:00", None),
        # Cancelled and back on pro before February: the downgrade does not come back.
        ("s-b", "b", "subscription.started", "2026-01-01T00:00:00", "pro"),
        ("d-b", "b", "plan.changed", "2026-01-10T00:00:00", "basic"),
        ("x-b", "b", "subscription.cancelled", "2026-01-15T00:00:00", None),
        ("r-b", "b", "subscription.started", "2026-01-20T00:00:00", "pro"),
    ])
    run_billing(spark, ctx, now=datetime(2026, 2, 10, tzinfo=UTC), log=quiet)
    assert base_lines(spark, ctx) == [
        ("a", "2026-01", "pro", ts("2026-01-01T00:00:00"), ts("2026-01-20T00:00:00")),
        ("b", "2026-01", "pro", ts("2026-01-01T00:00:00"), ts("2026-01-15T00:00:00")),
        ("b", "2026-01", "pro", ts("2026-01-20T00:00:00"), ts("2026-02-01T00:00:00")),
        ("b", "2026-02", "pro", ts("2026-02-01T00:00:00"), ts("2026-03-01T00:00:00")),
    ]


# --------------------------------------------------------------------------- plan rules

MARCH_12 = datetime(2026, 3, 12, 9, 0, tzinfo=UTC)   # 11 full days of March, 9 h into the 12th


def test_a_rerun_that_finds_nothing_new_commits_no_version(spark, ctx):
    write_silver(spark, ctx, lifecycle=[
        ("s-up", "up", "subscription.started", "2025-12-01T00:00:00", "basic"),
        ("c-con", "con", "account.created", "2025-12-01T00:00:00", None, '{"contract": true}'),
        ("s-con", "con", "subscription.started", "2025-12-01T00:00:00", "basic"),
    ], usage=[("u-up", "up", "2026-03-02T10:00:00", "150"), ("u-con", "con", "2026-03-02T10:00:00", "5000")])
    run_plan_rules(spark, ctx, now=MARCH_12, dry_run=True, log=quiet)
    first = decisions(spark, ctx, "account_id", "rule", "state", "decided_at", "effective_at", "updated_at")
    # Proposed and skipped, upgrades and downgrades: every kind a rerun re-evaluates.
    assert [r[:3] for r in first] == [("con", "auto_downgrade", "skipped"), ("con", "auto_upgrade", "skipped"),
                                      ("up", "auto_downgrade", "skipped"), ("up", "auto_upgrade", "proposed")]
    version = history_version(spark, ctx, "gold.plan_decisions")

    # Half an hour later, nothing new in silver: the same decisions, no table version.
    run_plan_rules(spark, ctx, now=MARCH_12 + timedelta(minutes=30), dry_run=True, log=quiet)
    assert history_version(spark, ctx, "gold.plan_decisions") == version
    assert decisions(spark, ctx, "account_id", "rule", "state", "decided_at", "effective_at", "updated_at") == first
    assert {r[3] for r in first} == {ts("2026-03-12T09:00:00")}

    # A new usage event is something new: the rows it changes are rewritten, one version.
    write_silver(spark, ctx, usage=[("u-up2", "up", "2026-03-12T09:10:00", "1")])
    run_plan_rules(spark, ctx, now=MARCH_12 + timedelta(minutes=40), dry_run=True, log=quiet)
    assert history_version(spark, ctx, "gold.plan_decisions") == version + 1
    assert decisions(spark, ctx, "account_id", "rule", "decided_at", where="decided_at > '2026-03-12 09:00:00'") == [
        ("up", "auto_downgrade", ts("2026-03-12T09:40:00"))]   # its hysteresis figure moved; nothing else did


def test_excluded_plans_are_recorded_both_ways(spark, ctx):
    write_silver(spark, ctx, lifecycle=[
        ("s-hot", "ent-hot", "subscription.started", "2025-06-01T00:00:00", "enterprise"),
        ("s-idle", "ent-idle", "subscription.started", "2025-06-01T00:00:00", "enterprise"),
    ], usage=[("u-hot1", "ent-hot", "2026-01-15T10:00:00", "900000"),
              ("u-hot2", "ent-hot", "2026-02-15T10:00:00", "900000"),
              ("u-hot3", "ent-hot", "2026-03-02T10:00:00", "900000"),
              ("u-idle", "ent-idle", "2026-01-15T10:00:00", "3")])   # far under advanced's quota
    run_plan_rules(spark, ctx, now=MARCH_12, log=quiet)
    assert decisions(spark, ctx, "account_id", "rule", "from_plan", "to_plan", "state", "reason") == [
        # No plan above enterprise; below it the rule measures against advanced.
        ("ent-hot", "auto_upgrade", "enterprise", None, "skipped", "excluded plan enterprise"),
        ("ent-idle", "auto_downgrade", "enterprise", "advanced", "skipped", "excluded plan enterprise"),
    ]


def test_the_emitted_event_id_is_plan_rules_and_the_decision_id(spark, ctx):
    write_silver(spark, ctx, lifecycle=[("s-up", "up", "subscription.started", "2025-12-01T00:00:00", "basic")],
                 usage=[("u-up", "up", "2026-03-02T10:00:00", "150")])
    ctx.lake.ensure(spark, "gold.plan_decisions")
    applied = compute_decisions(spark, ctx, load_plan_rules(), MARCH_12).filter("state = 'applied'")
    outbox = decisions_outbox("billing.events")
    (row,) = [r.asDict() for r in applied.select(*outbox.select).collect()]
    key, value = outbox.render(row)
    event = json.loads(value)
    assert (key, event["event_type"], event["source"]) == (b"up", "plan.changed", "plan-rules")
    assert event["event_id"] == row["event_id"] == "plan-rules-" + row["decision_id"]
    assert event["properties"]["decision_id"] == row["decision_id"]


def test_hysteresis_counts_the_open_period_up_to_the_run_partial_day_included(spark, ctx):
    # pro since December, no usage in January and February: both qualify to go down to basic
    # (upgrade threshold 300 tickets, projected). 120 tickets today x 31 / 11 full days =
    # 338.18 > 300: counted before the run's as-of, not after it.
    write_silver(spark, ctx, lifecycle=[
        ("s-today", "today", "subscription.started", "2025-12-15T00:00:00", "pro"),
        ("s-later", "later", "subscription.started", "2025-12-15T00:00:00", "pro"),
    ], usage=[("u-today", "today", "2026-03-12T08:00:00", "120"),
              ("u-later", "later", "2026-03-12T09:00:01", "120")])
    run_plan_rules(spark, ctx, now=MARCH_12, dry_run=True, log=quiet)
    assert decisions(spark, ctx, "account_id", "rule", "to_plan", "state", "reason") == [
        ("later", "auto_downgrade", "basic", "proposed", None),
        ("today", "auto_downgrade", "basic", "skipped", "hysteresis: open-period billable_tickets at projected "
                                                        "338.181818 is over the upgrade threshold 300 of basic"),
    ]


def test_a_rule_does_not_override_a_pending_downgrade(spark, ctx):
    write_silver(spark, ctx, lifecycle=[
        # Idle on pro, and the merchant already asked for starter from April.
        ("s-down", "down", "subscription.started", "2025-12-15T00:00:00", "pro"),
        ("m-down", "down", "plan.changed", "2026-03-05T00:00:00", "starter"),
        # Busy on basic, and the merchant already asked for starter from April.
        ("s-up", "up", "subscription.started", "2025-12-15T00:00:00", "basic"),
        ("m-up", "up", "plan.changed", "2026-03-03T00:00:00", "starter"),
        # The same downgrade asked after the run's as-of is not pending yet.
        ("s-next", "next", "subscription.started", "2025-12-15T00:00:00", "pro"),
        ("m-next", "next", "plan.changed", "2026-03-12T10:00:00", "starter"),
    ], usage=[("u-up", "up", "2026-03-02T10:00:00", "900")])
    run_plan_rules(spark, ctx, now=MARCH_12, dry_run=True, log=quiet)
    pending = "pending downgrade to starter from 2026-04-01"
    assert decisions(spark, ctx, "account_id", "rule", "from_plan", "to_plan", "state", "reason") == [
        ("down", "auto_downgrade", "pro", "basic", "skipped", pending),
        ("next", "auto_downgrade", "pro", "basic", "proposed", None),
        ("up", "auto_downgrade", "basic", "starter", "skipped", "hysteresis: open-period billable_tickets at "
                                                                "projected 2536.363636 is over the upgrade "
                                                                "threshold 50 of starter"),
        ("up", "auto_upgrade", "basic", "pro", "skipped", pending),
    ]
