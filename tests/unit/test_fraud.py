"""Fraud rules on crafted silver rows: bursts, spikes and trial look-alikes are flagged;
look-alike normal traffic is not. Config errors name the file and the entry."""
from __future__ import annotations

import json
import re
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest

from pipelines.core.config import ConfigError
from pipelines.fraud.rules import (load_fraud_rules, parse_fraud_rules, signup_burst_flags, trial_lookalike_flags,
                                   usage_spike_flags)
from pipelines.core.tables import spec
from tests.unit.frames import local_frame

RULES = load_fraud_rules()
AS_OF = datetime(2024, 6, 15, 12, tzinfo=UTC)
_offset = iter(range(1, 1_000_000))


def frame(spark, table: str, rows: list[dict]):
    struct = spec(table).struct_type()
    return local_frame(spark, [tuple(r.get(f.name) for f in struct) for r in rows], struct)


def created(account, at, **props):
    return {"event_id": f"c-{account}", "account_id": account, "event_type": "account.created", "occurred_at": at,
            "schema_version": 1, "properties": json.dumps(props) if props else None,
            "kafka_topic": "t", "kafka_partition": 0, "kafka_offset": next(_offset)}


def plan(account, at, plan_id, event_type="subscription.started"):
    return {"event_id": f"p-{account}-{at:%d%H}", "account_id": account, "event_type": event_type, "occurred_at": at,
            "schema_version": 1, "plan_id": plan_id, "kafka_topic": "t", "kafka_partition": 0,
            "kafka_offset": next(_offset)}


def used(account, at, quantity, metric="billable_tickets"):
    return {"event_id": f"u-{next(_offset)}", "account_id": account, "event_type": "usage", "occurred_at": at,
            "schema_version": 1, "event_date": at.date(), "product": "helpdesk", "metric": metric,
            "quantity": Decimal(str(quantity)), "kafka_topic": "t", "kafka_partition": 0, "kafka_offset": next(_offset)}


def flagged(df) -> set[tuple[str, str]]:
    return {(r["account_id"], r["rule"]) for r in df.collect()}


def at(h, m=0):
    return datetime(2024, 6, 1, h, m, tzinfo=UTC)


def test_signup_burst_flags_accounts_sharing_a_signal_within_the_window(spark):
    events = frame(spark, "silver.account_events", [
        # burst: three accounts, one hashed email domain, inside an hour
        created("b1", at(10), email_domain_hash="h-evil"), created("b2", at(10, 20), email_domain_hash="h-evil"),
        created("b3", at(10, 50), email_domain_hash="h-evil"),
        # burst by IP, found under either configured key
        created("i1", at(14), signup_ip_hash="ip-x"), created("i2", at(14, 10), ip_hash="ip-x"),
        created("i3", at(14, 29), signup_ip_hash="ip-x"),
        # look-alike normal traffic: a popular domain, three signups but never three in one hour
        created("n1", at(10), email_domain_hash="h-gmail"), created("n2", at(11, 30), email_domain_hash="h-gmail"),
        created("n3", at(13), email_domain_hash="h-gmail"),
        # two accounts on one card: below min_accounts
        created("c1", at(9), card_fingerprint="fp-1"), created("c2", at(9, 5), card_fingerprint="fp-1"),
        # no signal at all, and a plan event sharing nothing
        created("x1", at(10, 5)), plan("b1", at(10, 30), "pro"),
    ])
    flags = signup_burst_flags(events, RULES.signup_burst)
    assert flagged(flags) == {(a, "signup_burst") for a in ("b1", "b2", "b3", "i1", "i2", "i3")}
    b2 = next(r for r in flags.collect() if r["account_id"] == "b2")
    evidence = json.loads(b2["evidence"])
    assert (evidence["signal"], evidence["value"], evidence["accounts"]) == ("email_domain", "h-evil", ["b1", "b2", "b3"])
    assert (b2["first_seen"], b2["last_seen"]) == (at(10).replace(tzinfo=None), at(10, 50).replace(tzinfo=None))
    # the same evidence gives the same flag id on every run
    assert {r["flag_id"] for r in flags.collect()} == {r["flag_id"] for r in signup_burst_flags(events, RULES.signup_burst).collect()}


def days_before(n, hour=12):
    return AS_OF.replace(hour=hour) - timedelta(days=n)


def test_usage_spike_against_the_accounts_own_robust_baseline(spark):
    rows = []
    normal = [10, 12, 9, 11, 10, 13, 8, 10, 12, 11, 9, 10, 11, 10, 12]
    for i, q in enumerate(normal):                      # days -15 .. -1, spike replaces day -1
        rows.append(used("spiky", days_before(15 - i), q if i < 14 else 500))
    for i in range(16):                                 # high but always this variable: not a spike
        rows.append(used("variable", days_before(16 - i), 100 if i % 2 else 400))
    rows.append(used("variable", days_before(1, 18), 20))   # day -1 totals 420
    for i in range(15):                                 # perfectly flat, then a jump: MAD is 0
        rows.append(used("flat", days_before(15 - i), 10 if i < 14 else 200))
    rows += [used("newbie", days_before(2), 5), used("newbie", days_before(1), 500)]   # no baseline yet
    for i in range(15):                                 # a jump far above baseline but tiny
        rows.append(used("tiny", days_before(15 - i), 1 if i < 14 else 50))
    rows.append(used("spiky", days_before(1), 1, metric="sms_segments"))  # other metric, own baseline
    flags = usage_spike_flags(frame(spark, "silver.usage_events", rows), RULES.usage_spike, AS_OF)
    assert flagged(flags) == {("spiky", "usage_spike"), ("flat", "usage_spike")}
    spiky = json.loads(next(r for r in flags.collect() if r["account_id"] == "spiky")["evidence"])
    assert spiky["day"] == str((AS_OF - timedelta(days=1)).date()) and spiky["quantity"] == "500.000000"
    assert spiky["baseline_median"] == 10.0 and spiky["baseline_days"] == 14 and spiky["robust_z"] > 6
    # a flat baseline has MAD 0: the jump is flagged by the fallback, not divided by zero
    assert json.loads(next(r for r in flags.collect() if r["account_id"] == "flat")["evidence"])["baseline_mad"] == 0


def test_trial_accounts_using_like_paying_merchants(spark):
    win = AS_OF - timedelta(days=3)
    accounts = [
        plan("p1", days_before(30), "pro"), plan("p2", days_before(30), "pro"), plan("p3", days_before(30), "growth"),
        plan("t1", days_before(30), "trial"), plan("t2", days_before(30), "trial"),
        created("t3", days_before(30)),                                   # no plan at all: a trial
        plan("t4", days_before(30), "trial"), plan("t4", days_before(10), "pro", "plan.changed"),  # upgraded: paying
        plan("t5", days_before(30), "trial"),
        plan("gone", days_before(30), "pro"), plan("gone", days_before(20), None, "subscription.cancelled"),
    ]
    usage = [used("p1", win, 100), used("p2", win, 200), used("p3", win, 300), used("t4", win, 300),
             used("t1", win, 250), used("t2", win, 20), used("t3", win, 210),
             used("t5", days_before(20), 900),                           # outside the window
             used("t1", win, 900, metric="voice_minutes"), used("p1", win, 5, metric="voice_minutes"),
             used("gone", win, 50)]
    flags = trial_lookalike_flags(frame(spark, "silver.usage_events", usage),
                                  frame(spark, "silver.account_events", accounts), RULES.trial_lookalike, AS_OF)
    assert flagged(flags) == {("t1", "trial_lookalike"), ("t3", "trial_lookalike")}
    t1 = json.loads(next(r for r in flags.collect() if r["account_id"] == "t1")["evidence"])
    assert (t1["metric"], t1["plan"], t1["usage"], t1["paying_level"], t1["paying_accounts"]) == (
        "billable_tickets", "trial", "250.000000", "200.000000", 4)   # p1-p3 and upgraded t4; not the cancelled one


@pytest.mark.parametrize("change, message", [
    (lambda d: d["signup_burst"].update(min_accounts=1), "signup_burst.min_accounts: expected an integer >= 2, got 1"),
    (lambda d: d["signup_burst"].update(signals=[{"name": "ip"}]), "signup_burst.signals[0]: 'keys' is required"),
    (lambda d: d["usage_spike"].update(baseline="soon"),
     "usage_spike.baseline: expected a positive duration like '10 minutes', got 'soon'"),
    (lambda d: d["usage_spike"].update(min_baseline_days=20),
     "usage_spike.min_baseline_days: cannot exceed the baseline's 14 days"),
    (lambda d: d["trial_lookalike"].update(paying_percentile=2),
     "trial_lookalike.paying_percentile: expected a number >= 0 and <= 1, got 2"),
    (lambda d: d["trial_lookalike"].pop("window"), "trial_lookalike: 'window' is required"),
    (lambda d: d.update(velocity={}), "unknown keys ['velocity']"),
    (lambda d: d.pop("version"), "'version' is required"),
    (lambda d: d.update(version=2), "version: must be 1, got 2"),
    (lambda d: d.update(version=True), "version: must be 1, got True"),
])
def test_fraud_config_errors_name_the_file_and_entry(change, message):
    import yaml

    from pipelines.fraud.rules import DEFAULT_FRAUD_RULES

    doc = yaml.safe_load(DEFAULT_FRAUD_RULES.read_text())
    change(doc)
    with pytest.raises(ConfigError) as err:
        parse_fraud_rules(doc, "fraud_rules.yaml")
    assert str(err.value).startswith("fraud_rules.yaml: ") and message in str(err.value)


def test_a_fraud_rules_file_of_another_version_is_refused(tmp_path):
    from pipelines.fraud.rules import DEFAULT_FRAUD_RULES

    path = tmp_path / "fraud_rules.yaml"
    path.write_text(DEFAULT_FRAUD_RULES.read_text().replace("\nversion: 1\n", "\nversion: 2\n"))
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}: version: must be 1, got 2$"):
        load_fraud_rules(path)


def test_disabled_rules_produce_nothing(spark):
    from pipelines.fraud.rules import fraud_candidates

    off = replace(RULES, signup_burst=replace(RULES.signup_burst, enabled=False),
                  usage_spike=replace(RULES.usage_spike, enabled=False),
                  trial_lookalike=replace(RULES.trial_lookalike, enabled=False))
    events = frame(spark, "silver.account_events", [created(f"b{i}", at(10, i), email_domain_hash="h") for i in range(3)])
    assert fraud_candidates(frame(spark, "silver.usage_events", []), events, off, AS_OF).count() == 0
    assert fraud_candidates(frame(spark, "silver.usage_events", []), events, RULES, AS_OF).count() == 3
    assert date(2024, 6, 1) == at(0).date()
