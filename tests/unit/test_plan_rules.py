"""Plan rules against usage histories just under, at and over every threshold; the
cooldown, the hysteresis, the exclusions and the dry run (pure transforms)."""
from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal as D

import pytest

from pipelines.rules import plan as R
from pipelines.rules.config import DowngradeRule, Exclusions, PlanRules, UpgradeRule
from tests.unit.frames import local_frame

USAGE = "account_id string, metric string, occurred_at timestamp, quantity decimal(38,6)"
CURRENT = "account_id string, plan_id string, plan_since timestamp"
T = "billable_tickets"
RULES = PlanRules(
    upgrade=UpgradeRule(share=D("1.0"), basis="actual", sustained_days=2),
    downgrade=DowngradeRule(share=D("0.5"), full_periods=2),
    cooldown_periods=1,
    exclusions=Exclusions(plans=("enterprise",), accounts=("acct-vip",), account_flags=("contract",)),
    alert_thresholds=(D("0.8"), D("1.0")),
)


def ts(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).replace(tzinfo=None)


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.fixture(scope="module")
def catalog(spark):
    plans = local_frame(spark, [("basic", 1), ("pro", 2), ("enterprise", 3)], "plan_id string, plan_rank int")
    prices = local_frame(spark, [
        ("basic", T, D("100")), ("basic", "sms_segments", D("0")),
        ("pro", T, D("1000")), ("pro", "sms_segments", D("500")),
        ("enterprise", T, D("10000")), ("enterprise", "sms_segments", D("5000")),
    ], "plan_id string, metric string, included decimal(38,6)")
    return plans, prices, plans.transform(R.plan_moves(("enterprise",)))


def usage_frame(spark, rows):
    return local_frame(spark, [(a, m, ts(t), D(q)) for a, m, t, q in rows], USAGE)


def current_frame(spark, rows):
    return local_frame(spark, [(a, p, ts(s)) for a, p, s in rows], CURRENT)


def test_plan_moves_skip_excluded_plans(spark, catalog):
    plans, _, moves = catalog
    # An excluded plan is no target, but has neighbours: its accounts are evaluated both ways.
    assert sorted(tuple(r) for r in moves.select("plan_id", "up_plan", "down_plan").collect()) == [
        ("basic", "pro", None), ("enterprise", None, "pro"), ("pro", None, "basic")]
    middle = plans.transform(R.plan_moves(("pro",)))
    assert sorted(tuple(r) for r in middle.select("plan_id", "up_plan", "down_plan").collect()) == [
        ("basic", "enterprise", None), ("enterprise", None, "basic"), ("pro", "enterprise", "basic")]


def test_upgrade_actual_usage_just_under_at_and_over_the_quota(spark, catalog):
    _, prices, moves = catalog
    win = R.Evaluation.at(at("2026-01-10T12:00:00"))   # full days Jan 1-9; the last two: Jan 8, Jan 9
    usage = usage_frame(spark, [
        ("under", T, "2026-01-03T10:00:00", "99.999999"),
        ("at", T, "2026-01-03T10:00:00", "100"),
        ("over", T, "2026-01-03T10:00:00", "60"), ("over", T, "2026-01-07T10:00:00", "40.000001"),
        ("late-cross", T, "2026-01-02T00:00:00", "100"), ("late-cross", T, "2026-01-09T08:00:00", "1"),  # 1 day only
        ("cross-day8", T, "2026-01-08T23:59:59", "101"),                                                  # exactly 2 days
        ("today", T, "2026-01-10T01:00:00", "500"),                                                       # partial day
        ("prev-period", T, "2025-12-31T23:59:59", "500"),
        ("zero-quota", "sms_segments", "2026-01-02T00:00:00", "999"),
    ])
    accounts = ["under", "at", "over", "late-cross", "cross-day8", "today", "prev-period", "zero-quota"]
    current = current_frame(spark, [(a, "basic", "2025-06-01T00:00:00") for a in accounts])
    got = current.transform(R.upgrade_candidates(usage, prices, moves, RULES.upgrade, win)).collect()
    assert sorted((r["account_id"], r["metric"], r["from_plan"], r["to_plan"]) for r in got) == [
        ("cross-day8", T, "basic", "pro"), ("over", T, "basic", "pro")]
    evidence = json.loads(next(r for r in got if r["account_id"] == "over")["evidence"])
    assert evidence == {"metric": T, "included": "100", "share": "1.0", "basis": "actual", "threshold": "100",
                        "sustained_days": 2, "days": [{"day": "2026-01-08", "usage": "100.000001", "value": "100.000001"},
                                                      {"day": "2026-01-09", "usage": "100.000001", "value": "100.000001"}]}
    assert {r["effective_at"] for r in got} == {ts("2026-01-10T12:00:00")}


def test_upgrade_projected_usage_just_under_at_and_over(spark, catalog):
    _, prices, moves = catalog
    rule = UpgradeRule(share=D("1.0"), basis="projected", sustained_days=1)
    win = R.Evaluation.at(at("2026-02-08T00:00:00"))   # 7 full days of 28: projection = 4 x usage
    usage = usage_frame(spark, [
        ("under", T, "2026-02-01T00:00:00", "24.999999"),
        ("at", T, "2026-02-05T00:00:00", "25"),
        ("over", T, "2026-02-07T23:59:59.999", "25.000001"),
    ])
    current = current_frame(spark, [(a, "basic", "2026-01-01T00:00:00") for a in ("under", "at", "over")])
    got = current.transform(R.upgrade_candidates(usage, prices, moves, rule, win)).collect()
    assert [r["account_id"] for r in got] == ["over"]
    assert json.loads(got[0]["evidence"])["days"] == [{"day": "2026-02-07", "usage": "25.000001", "value": "100.000004"}]


def test_upgrade_needs_enough_full_days_and_picks_the_metric_furthest_over(spark, catalog):
    _, prices, moves = catalog
    usage = usage_frame(spark, [("a", T, "2026-01-01T01:00:00", "1200"),
                                ("a", "sms_segments", "2026-01-01T01:00:00", "1000")])
    current = current_frame(spark, [("a", "pro", "2025-01-01T00:00:00")])
    early = R.Evaluation.at(at("2026-01-02T06:00:00"))   # one full day, two needed
    assert current.transform(R.upgrade_candidates(usage, prices, moves, RULES.upgrade, early)).count() == 0
    win = R.Evaluation.at(at("2026-01-05T00:00:00"))
    (row,) = current.transform(R.upgrade_candidates(usage, prices, moves, RULES.upgrade, win)).collect()
    assert (row["metric"], row["to_plan"]) == ("sms_segments", None)   # 1000/500 beats 1200/1000; pro is the top


def test_downgrade_under_at_and_over_the_lower_quota_share_in_each_full_period(spark, catalog):
    _, prices, moves = catalog
    win = R.Evaluation.at(at("2026-03-15T00:00:00"))   # closed periods 2026-01, 2026-02; lower quota 100 x 0.5
    usage = usage_frame(spark, [
        ("under", T, "2026-01-10T00:00:00", "49.999999"), ("under", T, "2026-02-10T00:00:00", "10"),
        ("at", T, "2026-01-10T00:00:00", "50"),
        ("over-once", T, "2026-01-10T00:00:00", "40"), ("over-once", T, "2026-02-28T23:59:59", "50.000001"),
        ("split", T, "2026-01-10T00:00:00", "30"), ("split", T, "2026-01-20T00:00:00", "30"),   # 60 in January
        ("unpriced", "voice_minutes", "2026-01-10T00:00:00", "1"),
        ("old-usage", T, "2025-12-31T00:00:00", "5000"),
        ("hot", T, "2026-03-10T00:00:00", "46"),       # open period: 46 x 31 / 14 = 101.86 > 100 (basic's upgrade)
        ("warm", T, "2026-03-10T00:00:00", "45"),      # 45 x 31 / 14 = 99.64
    ])
    accounts = ["under", "at", "over-once", "split", "unpriced", "old-usage", "idle", "hot", "warm"]
    rows = [(a, "pro", "2026-01-01T00:00:00") for a in accounts] + [
        ("too-recent", "pro", "2026-01-01T00:00:01"), ("bottom", "basic", "2025-01-01T00:00:00"),
        ("top", "enterprise", "2025-01-01T00:00:00")]
    current = current_frame(spark, rows)
    rules = replace(RULES, upgrade=UpgradeRule(D("1.0"), "projected", 2))
    got = {r["account_id"]: r for r in current.transform(R.downgrade_candidates(usage, prices, moves, rules, win)).collect()}
    # "top" is on the excluded enterprise plan: still a candidate (to pro), decide() skips it.
    assert sorted(got) == ["hot", "idle", "old-usage", "top", "under", "warm"]
    assert {(r["from_plan"], r["to_plan"], r["effective_at"]) for r in got.values()} == {
        ("pro", "basic", ts("2026-04-01T00:00:00")), ("enterprise", "pro", ts("2026-04-01T00:00:00"))}
    assert got["hot"]["hysteresis"] == ("hysteresis: open-period billable_tickets at projected 101.857143 "
                                        "is over the upgrade threshold 100 of basic")
    assert got["warm"]["hysteresis"] is None
    assert json.loads(got["under"]["evidence"]) == {
        "lower_plan": "basic", "share": "0.5", "periods": ["2026-01", "2026-02"],
        "metrics": [{"metric": T, "max_usage": "49.999999", "lower_included": "100"}]}


def candidates(spark, rows):
    cols = "account_id string, rule string, metric string, evidence string, from_plan string, to_plan string, " \
           "effective_at timestamp, hysteresis string"
    return local_frame(spark, [(a, rule, None, "{}", f, t, ts("2026-01-10T00:00:00"), h) for a, rule, f, t, h in rows],
                       cols)


def prior_frame(spark, rows):
    return local_frame(spark, rows, "decision_id string, account_id string, rule string, to_plan string, "
                                    "period string, state string")


def decided(spark, cands, rules=RULES, prior=(), flagged=(), fraud=(), pending=(), as_of="2026-01-10T00:00:00"):
    win = R.Evaluation.at(at(as_of))
    return cands.transform(R.decide(
        rules, win, prior=prior_frame(spark, list(prior)),
        flagged=local_frame(spark, list(flagged), "account_id string, flag string"),
        fraud=local_frame(spark, list(fraud), "account_id string, fraud_rule string"),
        pending=local_frame(spark, [(a, p, ts(t)) for a, p, t in pending],
                            "account_id string, pending_plan string, pending_at timestamp"))).collect()


def decisions(spark, cands, **kw):
    return {r["account_id"]: r for r in decided(spark, cands, **kw)}


def test_decisions_skip_with_the_first_reason_that_applies(spark):
    up, down = R.UPGRADE, R.DOWNGRADE
    cands = candidates(spark, [
        ("ok", up, "basic", "pro", None),
        ("ent", up, "enterprise", None, None),
        ("acct-vip", up, "basic", "pro", None),
        ("contract", up, "basic", "pro", None),
        ("fraud", up, "basic", "pro", None),
        ("cool", up, "basic", "pro", None),
        ("top", up, "pro", None, None),
        ("hyst", down, "pro", "basic", "hysteresis: open-period x"),
        ("again", up, "basic", "pro", None),
        ("last-month", down, "pro", "basic", None),
    ])
    again_id = R.with_decision_id("2026-01")(candidates(spark, [("again", up, "basic", "pro", None)])).first()["decision_id"]
    got = decisions(spark, cands,
                    prior=[("x1", "cool", down, "basic", "2026-01", "applied"),
                           ("x2", "last-month", up, "pro", "2025-12", "applied"),
                           ("x3", "ok", up, "pro", "2026-01", "skipped"),
                           (again_id, "again", up, "pro", "2026-01", "applied")],
                    flagged=[("contract", "contract"), ("ent", "contract")], fraud=[("fraud", "velocity")])
    states = {a: (r["state"], r["reason"]) for a, r in got.items()}
    assert states == {
        "ok": ("applied", None),
        "ent": ("skipped", "excluded plan enterprise"),
        "acct-vip": ("skipped", "excluded account"),
        "contract": ("skipped", "account flag contract"),
        "fraud": ("skipped", "open fraud flag velocity"),
        "cool": ("skipped", "cooldown: auto_downgrade to basic applied in 2026-01"),
        "top": ("skipped", "no plan to move to"),
        "hyst": ("skipped", "hysteresis: open-period x"),
        "again": ("applied", None),              # its own earlier application is no cooldown
        "last-month": ("applied", None),         # cooldown of one period: last month does not count
    }
    assert got["ok"]["event_id"] == "plan-rules-" + got["ok"]["decision_id"] and got["ent"]["event_id"] is None
    assert got["again"]["decision_id"] == again_id and got["ok"]["period"] == "2026-01"


def test_a_pending_downgrade_holds_both_rules_but_not_a_decision_already_applied(spark):
    up, down = R.UPGRADE, R.DOWNGRADE
    cands = candidates(spark, [
        ("asked", up, "basic", "pro", None),         # the merchant asked for starter: no upgrade over it
        ("asked", down, "basic", "starter", None),   # nor a downgrade, even to the plan asked for
        ("own", down, "pro", "basic", None),         # this decision's own application left the pending one
        ("cool", up, "basic", "pro", None),          # an earlier rule's downgrade: the cooldown says so first
        ("hyst", down, "pro", "basic", "hysteresis: x"),
    ])
    own_id = R.with_decision_id("2026-01")(candidates(spark, [("own", down, "pro", "basic", None)])).first()["decision_id"]
    feb = "2026-02-01T00:00:00"
    got = decided(spark, cands, prior=[(own_id, "own", down, "basic", "2026-01", "applied"),
                                       ("x1", "cool", down, "starter", "2026-01", "applied")],
                  pending=[("asked", "starter", feb), ("own", "basic", feb), ("cool", "starter", feb),
                           ("hyst", "starter", feb)])
    pending = "pending downgrade to starter from 2026-02-01"
    assert sorted((r["account_id"], r["rule"], r["state"], r["reason"]) for r in got) == [
        ("asked", down, "skipped", pending), ("asked", up, "skipped", pending),
        ("cool", up, "skipped", "cooldown: auto_downgrade to starter applied in 2026-01"),
        ("hyst", down, "skipped", "hysteresis: x"),
        ("own", down, "applied", None),
    ]


def test_pending_downgrades_are_the_changes_after_as_of(spark):
    changes = local_frame(spark, [("a", ts("2026-01-01T00:00:00"), "pro"), ("a", ts("2026-02-01T00:00:00"), "basic"),
                                  ("b", ts("2026-01-01T00:00:00"), "pro"), ("b", ts("2026-01-05T00:00:00"), None),
                                  ("c", ts("2026-01-10T00:00:00"), "pro")],
                          "account_id string, effective_at timestamp, plan_id string")
    got = changes.transform(R.pending_downgrades(at("2026-01-10T00:00:00"))).collect()
    assert [tuple(r) for r in got] == [("a", "basic", ts("2026-02-01T00:00:00"))]


def test_a_longer_cooldown_reaches_back_and_a_dry_run_only_proposes(spark):
    cands = candidates(spark, [("last-month", R.DOWNGRADE, "pro", "basic", None), ("ok", R.UPGRADE, "basic", "pro", None)])
    prior = [("x2", "last-month", R.UPGRADE, "pro", "2025-12", "applied"),
             ("x0", "ok", R.UPGRADE, "pro", "2025-11", "applied")]
    got = decisions(spark, cands, rules=replace(RULES, cooldown_periods=2, dry_run=True), prior=prior)
    assert (got["last-month"]["state"], got["last-month"]["reason"]) == (
        "skipped", "cooldown: auto_upgrade to pro applied in 2025-12")
    assert (got["ok"]["state"], got["ok"]["reason"], got["ok"]["event_id"]) == ("proposed", None, None)


def test_decision_ids_are_deterministic_per_account_rule_move_and_period(spark):
    c = candidates(spark, [("a", R.UPGRADE, "basic", "pro", None), ("a", R.UPGRADE, "pro", None, None)])
    jan = [r["decision_id"] for r in c.transform(R.with_decision_id("2026-01")).collect()]
    feb = [r["decision_id"] for r in c.transform(R.with_decision_id("2026-02")).collect()]
    assert len(set(jan + feb)) == 4
    assert jan == [r["decision_id"] for r in c.transform(R.with_decision_id("2026-01")).collect()]


def test_flagged_accounts_read_lifecycle_properties(spark):
    events = local_frame(spark, [("a", '{"contract": true}'), ("b", '{"contract": "true", "managed": false}'),
                                 ("c", '{"contract": false}'), ("d", None), ("e", '{"managed": true}')],
                         "account_id string, properties string")
    got = sorted(tuple(r) for r in events.transform(R.flagged_accounts(("contract", "managed"))).collect())
    assert got == [("a", "contract"), ("b", "contract"), ("e", "managed")]
