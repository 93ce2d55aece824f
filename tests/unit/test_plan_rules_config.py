"""The plan rules file: the shipped one loads; every mistake names the file and the entry."""
from __future__ import annotations

from decimal import Decimal

import pytest
import yaml

from pipelines.core.config import ConfigError
from pipelines.rules.config import DEFAULT_PLAN_RULES, load_plan_rules, parse_plan_rules


def shipped() -> dict:
    return yaml.safe_load(DEFAULT_PLAN_RULES.read_text())


def test_the_shipped_rules_load():
    rules = load_plan_rules()
    assert rules.upgrade.share > rules.downgrade.share
    assert rules.alert_thresholds == (Decimal("0.8"), Decimal("1.0"))
    assert "enterprise" in rules.exclusions.plans and rules.dry_run is False


@pytest.mark.parametrize("path, value, message", [
    (("upgrade", "share"), 1.0, r"f.yaml: upgrade.share: write shares as strings"),
    (("upgrade", "share"), "-1", r"upgrade.share: expected a share as a decimal string"),
    (("upgrade", "basis"), "guess", r"upgrade.basis must be one of \('actual', 'projected'\)"),
    (("upgrade", "sustained_days"), 0, r"upgrade.sustained_days: expected a positive integer"),
    (("upgrade", "sustained_days"), 40, r"at most 28"),
    (("downgrade", "share"), "1.0", r"downgrade.share \(1.0\) must be below upgrade.share \(1.0\).*hysteresis"),
    (("downgrade", "full_periods"), "2", r"downgrade.full_periods: expected a positive integer"),
    (("exclusions", "plans"), "enterprise", r"exclusions.plans: expected a list"),
    (("exclusions", "account_flags"), ["con tract"], r"must be a plain property name"),
    (("usage_alerts", "thresholds"), ["0.8", "0.8"], r"repeated values"),
    (("usage_alerts", "thresholds"), ["0.8", 1], None),
    (("dry_run",), "yes", r"f.yaml: dry_run: expected true or false"),
    (("cooldown_periods",), 0, r"cooldown_periods: expected a positive integer"),
    (("upgrade", "treshold"), "1", r"upgrade: unknown keys \['treshold'\]"),
])
def test_mistakes_are_named(path, value, message):
    doc = shipped()
    target = doc
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    if message is None:
        assert parse_plan_rules(doc, "f.yaml").alert_thresholds == (Decimal("0.8"), Decimal("1"))
        return
    with pytest.raises(ConfigError, match=message):
        parse_plan_rules(doc, "f.yaml")


def test_a_missing_file_and_a_wrong_version(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml: file not found"):
        load_plan_rules(tmp_path / "nope.yaml")
    doc = shipped()
    doc["version"] = 2
    with pytest.raises(ConfigError, match="version must be 1"):
        parse_plan_rules(doc, "f.yaml")
