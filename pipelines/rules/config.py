"""The plan rules file (pipelines/conf/plan_rules.yaml), validated into a frozen dataclass.

Every error is a ConfigError that names the file and the entry. Hysteresis is checked
here: a downgrade share at or above the upgrade share could move an account down and
straight back up, so such a file is refused.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

from pipelines.core.config import CONF_DIR, ConfigError, read_yaml

DEFAULT_PLAN_RULES = CONF_DIR / "plan_rules.yaml"
BASES = ("actual", "projected")
_SHARE = re.compile(r"^[0-9]+(\.[0-9]{1,6})?$")
_TOP = {"version", "dry_run", "upgrade", "downgrade", "cooldown_periods", "exclusions", "usage_alerts"}


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


def _mapping(raw: object, at: str, allowed: set[str], required: set[str] = frozenset()) -> dict:
    if not isinstance(raw, dict):
        raise ConfigError(f"{at}: expected a mapping, got {raw!r}")
    if unknown := set(raw) - allowed:
        raise ConfigError(f"{at}: unknown keys {sorted(map(str, unknown))} (allowed: {sorted(allowed)})")
    if missing := required - set(raw):
        raise ConfigError(f"{at}: missing {sorted(missing)}")
    return raw


def _share(value: object, at: str) -> Decimal:
    if isinstance(value, float):
        raise ConfigError(f'{at}: write shares as strings, e.g. "{value}" in quotes; the YAML float {value!r} '
                          "is binary and inexact")
    if isinstance(value, bool) or not isinstance(value, (str, int)) or not _SHARE.match(str(value)):
        raise ConfigError(f'{at}: expected a share as a decimal string like "0.8", got {value!r}')
    share = Decimal(str(value))
    if not Decimal(0) < share <= Decimal(10):
        raise ConfigError(f"{at}: a share must be above 0 and at most 10, got {value!r}")
    return share


def _positive_int(value: object, at: str) -> int:
    if type(value) is not int or value < 1:
        raise ConfigError(f"{at}: expected a positive integer, got {value!r}")
    return value


def _bool(value: object, at: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{at}: expected true or false, got {value!r}")
    return value


def _names(value: object, at: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise ConfigError(f"{at}: expected a list of non-empty strings, got {value!r}")
    return tuple(value)


def parse_plan_rules(doc: object, where: str = "plan rules") -> PlanRules:
    doc = _mapping(doc, where, _TOP, {"version", "upgrade", "downgrade"})
    if type(doc["version"]) is not int or doc["version"] != 1:
        raise ConfigError(f"{where}: version must be 1, got {doc['version']!r}")
    up = _mapping(doc["upgrade"], f"{where}: upgrade", {"share", "basis", "sustained_days"},
                  {"share", "basis", "sustained_days"})
    if up["basis"] not in BASES:
        raise ConfigError(f"{where}: upgrade.basis must be one of {BASES}, got {up['basis']!r}")
    upgrade = UpgradeRule(_share(up["share"], f"{where}: upgrade.share"), up["basis"],
                          _positive_int(up["sustained_days"], f"{where}: upgrade.sustained_days"))
    if upgrade.sustained_days > 28:
        raise ConfigError(f"{where}: upgrade.sustained_days must fit in a month (at most 28), "
                          f"got {upgrade.sustained_days}")
    down = _mapping(doc["downgrade"], f"{where}: downgrade", {"share", "full_periods"}, {"share", "full_periods"})
    downgrade = DowngradeRule(_share(down["share"], f"{where}: downgrade.share"),
                              _positive_int(down["full_periods"], f"{where}: downgrade.full_periods"))
    if downgrade.share >= upgrade.share:
        raise ConfigError(
            f"{where}: downgrade.share ({downgrade.share}) must be below upgrade.share ({upgrade.share}): "
            "that gap is the hysteresis that keeps an account moved down from qualifying to move straight back up")
    ex = _mapping(doc.get("exclusions") or {}, f"{where}: exclusions",
                  {"plans", "accounts", "account_flags", "open_fraud_flags"})
    exclusions = Exclusions(
        plans=_names(ex.get("plans"), f"{where}: exclusions.plans"),
        accounts=_names(ex.get("accounts"), f"{where}: exclusions.accounts"),
        account_flags=_names(ex.get("account_flags"), f"{where}: exclusions.account_flags"),
        open_fraud_flags=_bool(ex.get("open_fraud_flags", True), f"{where}: exclusions.open_fraud_flags"),
    )
    for flag in exclusions.account_flags:
        if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", flag):
            raise ConfigError(f"{where}: exclusions.account_flags: {flag!r} must be a plain property name")
    alerts = _mapping(doc.get("usage_alerts") or {"thresholds": []}, f"{where}: usage_alerts", {"thresholds"})
    raw_thresholds = alerts.get("thresholds") or []
    if not isinstance(raw_thresholds, list):
        raise ConfigError(f"{where}: usage_alerts.thresholds: expected a list of shares, got {raw_thresholds!r}")
    thresholds = tuple(_share(t, f"{where}: usage_alerts.thresholds[{i}]") for i, t in enumerate(raw_thresholds))
    if len(set(thresholds)) != len(thresholds):
        raise ConfigError(f"{where}: usage_alerts.thresholds: repeated values in {raw_thresholds!r}")
    return PlanRules(
        upgrade=upgrade, downgrade=downgrade,
        cooldown_periods=_positive_int(doc.get("cooldown_periods", 1), f"{where}: cooldown_periods"),
        exclusions=exclusions, alert_thresholds=tuple(sorted(thresholds)),
        dry_run=_bool(doc.get("dry_run", False), f"{where}: dry_run"),
    )


def load_plan_rules(path: Path | str | None = None) -> PlanRules:
    path = Path(path or DEFAULT_PLAN_RULES)
    return parse_plan_rules(read_yaml(path), str(path))
