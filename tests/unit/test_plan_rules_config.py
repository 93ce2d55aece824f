"""The plan rules file: the shipped one loads; every mistake names the file and the entry."""
from __future__ import annotations

import re
from decimal import Decimal

import pytest
import yaml

from pipelines.core.config import ConfigError
from pipelines.rules.config import DEFAULT_PLAN_RULES, Exclusions, load_plan_rules, parse_plan_rules


def shipped() -> dict:
    return yaml.safe_load(DEFAULT_PLAN_RULES.read_text())


def test_the_shipped_rules_load():
    rules = load_plan_rules()
    assert rules.upgrade.share > rules.downgrade.share
    assert rules.alert_thresholds == (Decimal("0.8"), Decimal("1.0"))
    assert "enterprise" in rules.exclusions.plans and rules.dry_run is False


# Each mistake and its whole message; None: accepted. The schema (plan_rules.schema.json) finds
# all but the hysteresis and thresholds equal as numbers, which the loader checks.
@pytest.mark.parametrize("path, value, message", [
    (("upgrade", "share"), 1.0, 'upgrade.share: write decimals as strings, e.g. "1.0" in quotes; '
                                "the YAML float 1.0 is binary and inexact"),
    (("upgrade", "share"), "-1", "upgrade.share: must not be negative, got '-1'"),
    (("upgrade", "share"), "0", "upgrade.share: a share must be above 0 and at most 10, got '0'"),
    (("upgrade", "share"), "10.5", "upgrade.share: a share must be above 0 and at most 10, got '10.5'"),
    (("upgrade", "share"), "0.1234567", "upgrade.share: at most 6 decimal places, got '0.1234567'"),
    (("upgrade", "share"), "10", None),
    (("upgrade", "basis"), "guess", "upgrade.basis: must be one of ('actual', 'projected'), got 'guess'"),
    (("upgrade", "sustained_days"), 0, "upgrade.sustained_days: expected a positive integer, got 0"),
    (("upgrade", "sustained_days"), True, "upgrade.sustained_days: expected a positive integer, got True"),
    (("upgrade", "sustained_days"), 40, "upgrade.sustained_days: must fit in a month (at most 28), got 40"),
    (("upgrade", "sustained_days"), 28, None),
    (("downgrade", "share"), "1.0", "downgrade.share (1.0) must be below upgrade.share (1.0): that gap is the "
                                    "hysteresis that keeps an account moved down from qualifying to move straight back up"),
    (("downgrade", "full_periods"), "2", "downgrade.full_periods: expected a positive integer, got '2'"),
    (("exclusions", "plans"), "enterprise", "exclusions.plans: expected a list of plan ids, got 'enterprise'"),
    (("exclusions", "plans"), [" enterprise"],
     "exclusions.plans[0]: expected a non-empty string without surrounding spaces, got ' enterprise'"),
    (("exclusions", "accounts"), [" "], "exclusions.accounts[0]: expected a non-empty string, got ' '"),
    (("exclusions", "account_flags"), ["con tract"],
     "exclusions.account_flags[0]: 'con tract' must be a plain property name (letters, digits, '_'; not a digit first)"),
    (("exclusions", "open_fraud_flags"), "no", "exclusions.open_fraud_flags: expected true or false, got 'no'"),
    (("exclusions",), None, None),
    (("exclusions",), [], "exclusions: expected a mapping or null, got []"),
    (("usage_alerts", "thresholds"), ["0.8", "0.8"], "usage_alerts.thresholds: repeated values in ['0.8', '0.8']"),
    (("usage_alerts", "thresholds"), ["0.8", "0.80"], "usage_alerts.thresholds: repeated values in ['0.8', '0.80']"),
    (("usage_alerts", "thresholds"), ["0.8", 1], None),
    (("usage_alerts", "thresholds"), "0.8", "usage_alerts.thresholds: expected a list of shares, got '0.8'"),
    (("usage_alerts", "thresholds"), ["0.8", "11"], "usage_alerts.thresholds[1]: a share must be above 0 and at most 10, got '11'"),
    (("dry_run",), "yes", "dry_run: expected true or false, got 'yes'"),
    (("cooldown_periods",), 0, "cooldown_periods: expected a positive integer, got 0"),
    (("upgrade", "treshold"), "1", "upgrade: unknown keys ['treshold'] (allowed: ['basis', 'share', 'sustained_days'])"),
    (("dry_runs",), True, "unknown keys ['dry_runs'] (allowed: ['cooldown_periods', 'downgrade', 'dry_run', "
                          "'exclusions', 'upgrade', 'usage_alerts', 'version'])"),
])
def test_mistakes_are_named(path, value, message):
    doc = shipped()
    target = doc
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    if message is None:
        parse_plan_rules(doc, "f.yaml")
        return
    with pytest.raises(ConfigError, match=f"^{re.escape(f'f.yaml: {message}')}$"):
        parse_plan_rules(doc, "f.yaml")


def test_what_is_optional():
    doc = shipped()
    for key in ("dry_run", "cooldown_periods", "exclusions", "usage_alerts"):
        del doc[key]
    rules = parse_plan_rules(doc, "f.yaml")
    assert (rules.dry_run, rules.cooldown_periods, rules.exclusions, rules.alert_thresholds) == (False, 1, Exclusions(), ())
    assert parse_plan_rules(shipped() | {"usage_alerts": {"thresholds": ["0.8", 1]}}, "f.yaml").alert_thresholds == (
        Decimal("0.8"), Decimal("1"))


@pytest.mark.parametrize("key", ["share", "basis", "sustained_days"])
def test_upgrade_keys_are_required(key):
    doc = shipped()
    del doc["upgrade"][key]
    with pytest.raises(ConfigError, match=f"^f.yaml: upgrade: '{key}' is required$"):
        parse_plan_rules(doc, "f.yaml")


def test_a_missing_file_and_a_wrong_version(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml: file not found"):
        load_plan_rules(tmp_path / "nope.yaml")
    doc = shipped()
    doc["version"] = 2
    with pytest.raises(ConfigError, match=r"^f.yaml: version: must be 1, got 2$"):
        parse_plan_rules(doc, "f.yaml")
