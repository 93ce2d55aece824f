"""The plan rules file (pipelines/conf/plan_rules.yaml), validated into a frozen dataclass.

Its structure (keys, types, shares as decimal strings above 0 and at most 10, the basis, the
day and period counts, plain property names) is its JSON Schema, conf/schemas/config/
plan_rules.schema.json. What a schema cannot say is checked here: hysteresis (a downgrade
share at or above the upgrade share could move an account down and straight back up, so
such a file is refused) and alert thresholds equal as numbers ("0.8", "0.80"). Every error is
a ConfigError that names the file and the entry.
"""
from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

from pipelines.core.config import CONF_DIR, ConfigError, check_document, config_decimal, read_yaml, repeated

DEFAULT_PLAN_RULES = CONF_DIR / "plan_rules.yaml"


@dataclass(frozen=True)
class UpgradeRule:
    share: Decimal
    basis: str
    sustained_days: int


@dataclass(frozen=True)
class DowngradeRule:
    share: Decimal
    full_periods: int


@dataclass(frozen=True)
class Exclusions:
    plans: tuple[str, ...] = ()
    accounts: tuple[str, ...] = ()
    account_flags: tuple[str, ...] = ()
    open_fraud_flags: bool = True


@dataclass(frozen=True)
class PlanRules:
    upgrade: UpgradeRule
    downgrade: DowngradeRule
    cooldown_periods: int
    exclusions: Exclusions
    alert_thresholds: tuple[Decimal, ...]
    dry_run: bool = False


def parse_plan_rules(doc: object, where: str = "plan rules") -> PlanRules:
    check_document(doc, "plan_rules", where)
    up, down = doc["upgrade"], doc["downgrade"]
    upgrade = UpgradeRule(config_decimal(up["share"]), up["basis"], up["sustained_days"])
    downgrade = DowngradeRule(config_decimal(down["share"]), down["full_periods"])
    if downgrade.share >= upgrade.share:
        raise ConfigError(
            f"{where}: downgrade.share ({downgrade.share}) must be below upgrade.share ({upgrade.share}): "
            "that gap is the hysteresis that keeps an account moved down from qualifying to move straight back up")
    ex = doc.get("exclusions") or {}
    exclusions = Exclusions(
        plans=tuple(ex.get("plans") or ()),
        accounts=tuple(ex.get("accounts") or ()),
        account_flags=tuple(ex.get("account_flags") or ()),
        open_fraud_flags=ex.get("open_fraud_flags", True),
    )
    raw_thresholds = (doc.get("usage_alerts") or {}).get("thresholds") or []
    thresholds = tuple(config_decimal(t) for t in raw_thresholds)
    if repeated(thresholds):  # the schema's uniqueItems sees "0.8" and "0.80" as two
        raise ConfigError(f"{where}: usage_alerts.thresholds: repeated values in {raw_thresholds!r}")
    return PlanRules(
        upgrade=upgrade, downgrade=downgrade,
        cooldown_periods=doc.get("cooldown_periods", 1),
        exclusions=exclusions, alert_thresholds=tuple(sorted(thresholds)),
        dry_run=doc.get("dry_run", False),
    )


def load_plan_rules(path: Path | str | None = None) -> PlanRules:
    path = Path(path or DEFAULT_PLAN_RULES)
    return parse_plan_rules(read_yaml(path), str(path))
