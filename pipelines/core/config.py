"""Config files (dedup rules, pipeline settings) loaded and validated into dataclasses.

Config is data: the files live in pipelines/conf/ (shipped in the wheel) and any of them
can be replaced by a path given on the command line. Every error names the file and the
offending entry.

Every data file a job reads (this folder, the quality suites in conf/quality/, the schemas
in _schemas/) is found through the package, never through a checkout's layout, so a
checkout, a wheel installed anywhere and a Databricks cluster read the same files.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta
from importlib import resources
from pathlib import Path

import yaml

# A wheel installs as plain files (never zipped), so the package's folder is a real Path.
PACKAGE_DIR = Path(str(resources.files("pipelines")))
CONF_DIR = PACKAGE_DIR / "conf"
DEFAULT_DEDUP_RULES = CONF_DIR / "dedup_rules.yaml"
DEFAULT_PIPELINE = CONF_DIR / "pipeline.yaml"

RULE_KINDS = ("once_per_calendar_period", "retry_window")
PERIODS = ("day", "week", "month", "quarter", "year")
_DURATION = re.compile(r"^\s*(\d+)\s*(second|minute|hour|day)s?\s*$")


class ConfigError(ValueError):
    pass


def parse_duration(text: object, where: str) -> timedelta:
    if not isinstance(text, str) or not (m := _DURATION.match(text)):
        raise ConfigError(f"{where}: expected a duration like '10 minutes', got {text!r}")
    amount, unit = int(m.group(1)), m.group(2)
    delta = timedelta(**{f"{unit}s": amount})
    if delta <= timedelta(0):
        raise ConfigError(f"{where}: duration must be positive, got {text!r}")
    return delta


@dataclass(frozen=True)
class DedupRule:
    name: str
    metric: str
    kind: str
    period: str | None = None
    window: timedelta | None = None


def read_yaml(path: Path | str, error: type[ConfigError] = ConfigError):
    """A config file's YAML document; a missing file or bad YAML is `error` naming the file."""
    try:
        return yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise error(f"{path}: file not found") from None
    except yaml.YAMLError as exc:
        raise error(f"{path}: not valid YAML: {exc}") from None


def _load_yaml(path: Path) -> dict:
    doc = read_yaml(path)
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    if type(doc.get("version")) is not int or doc.get("version") != 1:
        raise ConfigError(f"{path}: version must be 1, got {doc.get('version')!r}")
    return doc


def parse_dedup_rules(doc: dict, where: str = "dedup rules") -> tuple[DedupRule, ...]:
    raw_rules = doc.get("rules")
    if not isinstance(raw_rules, list):
        raise ConfigError(f"{where}: 'rules' must be a list")
    rules: list[DedupRule] = []
    for i, raw in enumerate(raw_rules):
        at = f"{where}: rules[{i}]"
        if not isinstance(raw, dict):
            raise ConfigError(f"{at}: expected a mapping")
        allowed = {"name", "metric", "kind", "period", "window"}
        if unknown := set(raw) - allowed:
            raise ConfigError(f"{at}: unknown keys {sorted(unknown)} (allowed: {sorted(allowed)})")
        for key in ("name", "metric", "kind"):
            if not isinstance(raw.get(key), str) or not raw[key].strip():
                raise ConfigError(f"{at}: '{key}' is required and must be a non-empty string")
        if raw["name"] == "identity":
            raise ConfigError(f"{at}: the name 'identity' is reserved for identity deduplication")
        kind = raw["kind"]
        if kind not in RULE_KINDS:
            raise ConfigError(f"{at}: kind must be one of {RULE_KINDS}, got {kind!r}")
        if kind == "once_per_calendar_period":
            if raw.get("period") not in PERIODS:
                raise ConfigError(f"{at}: period must be one of {PERIODS}, got {raw.get('period')!r}")
            if "window" in raw:
                raise ConfigError(f"{at}: 'window' belongs to retry_window rules")
            rules.append(DedupRule(raw["name"], raw["metric"], kind, period=raw["period"]))
        else:
            if "period" in raw:
                raise ConfigError(f"{at}: 'period' belongs to once_per_calendar_period rules")
            rules.append(DedupRule(raw["name"], raw["metric"], kind,
                                   window=parse_duration(raw.get("window"), f"{at}.window")))
    for attr in ("name", "metric"):
        values = [getattr(r, attr) for r in rules]
        if dupes := sorted({v for v in values if values.count(v) > 1}):
            raise ConfigError(f"{where}: each rule needs its own {attr}; repeated: {dupes}")
    return tuple(rules)


def load_dedup_rules(path: Path | str | None = None) -> tuple[DedupRule, ...]:
    path = Path(path or DEFAULT_DEDUP_RULES)
    return parse_dedup_rules(_load_yaml(path), str(path))


@dataclass(frozen=True)
class SilverConfig:
    watermark_delay: timedelta = timedelta(hours=26)
    late_threshold: timedelta = timedelta(hours=1)
    future_tolerance: timedelta = timedelta(hours=24)


def parse_pipeline_config(doc: dict, where: str = "pipeline config") -> SilverConfig:
    silver = doc.get("silver", {})
    if not isinstance(silver, dict):
        raise ConfigError(f"{where}: 'silver' must be a mapping")
    allowed = {"watermark_delay", "late_threshold", "future_tolerance"}
    if unknown := set(silver) - allowed:
        raise ConfigError(f"{where}: silver: unknown keys {sorted(unknown)} (allowed: {sorted(allowed)})")
    defaults = SilverConfig()
    return SilverConfig(**{
        key: parse_duration(silver[key], f"{where}: silver.{key}") if key in silver else getattr(defaults, key)
        for key in allowed
    })


def load_pipeline_config(path: Path | str | None = None) -> SilverConfig:
    path = Path(path or DEFAULT_PIPELINE)
    return parse_pipeline_config(_load_yaml(path), str(path))
