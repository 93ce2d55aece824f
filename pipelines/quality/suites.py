"""Quality suites (pipelines/conf/quality/<layer>.yaml, shipped in the wheel) loaded and
validated: every error names the file and the check. Expectation types and arguments are
checked against great-expectations on load (through the adapter), so a typo fails before
any data is read."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from pipelines.core.config import CONF_DIR, ConfigError
from pipelines.core.tables import table_specs
from pipelines.quality import gx_adapter
from pipelines.quality.datasets import DATASETS

QUALITY_DIR = CONF_DIR / "quality"
SEVERITIES = ("critical", "warning")
GATES = ("export",)
_KEYS = {"name", "description", "severity", "table", "dataset", "expect", "kwargs", "gates"}


@dataclass(frozen=True)
class Check:
    suite: str
    name: str
    description: str
    severity: str
    expect: str
    kwargs: dict = field(hash=False, compare=False)
    table: str | None = None
    dataset: str | None = None
    gates: tuple[str, ...] = ()

    @property
    def target(self) -> str:
        return self.table or f"dataset:{self.dataset}"

    @property
    def critical(self) -> bool:
        return self.severity == "critical"


def parse_suite(doc: object, where: str, *, check_expectations: bool = True) -> tuple[Check, ...]:
    if not isinstance(doc, dict):
        raise ConfigError(f"{where}: expected a mapping at the top level")
    if doc.get("version") != 1:
        raise ConfigError(f"{where}: version must be 1, got {doc.get('version')!r}")
    suite = doc.get("suite")
    if not isinstance(suite, str) or not suite:
        raise ConfigError(f"{where}: 'suite' must be a non-empty string")
    raw_checks = doc.get("checks")
    if not isinstance(raw_checks, list) or not raw_checks:
        raise ConfigError(f"{where}: 'checks' must be a non-empty list")
    checks = []
    for i, raw in enumerate(raw_checks):
        at = f"{where}: checks[{i}]" + (f" ({raw.get('name')})" if isinstance(raw, dict) and raw.get("name") else "")
        if not isinstance(raw, dict):
            raise ConfigError(f"{at}: expected a mapping")
        if unknown := set(raw) - _KEYS:
            raise ConfigError(f"{at}: unknown keys {sorted(unknown)} (allowed: {sorted(_KEYS)})")
        for key in ("name", "description", "expect"):
            if not isinstance(raw.get(key), str) or not raw[key].strip():
                raise ConfigError(f"{at}: '{key}' is required and must be a non-empty string")
        if raw.get("severity") not in SEVERITIES:
            raise ConfigError(f"{at}: severity must be one of {SEVERITIES}, got {raw.get('severity')!r}")
        if ("table" in raw) == ("dataset" in raw):
            raise ConfigError(f"{at}: give exactly one of 'table' or 'dataset'")
        if "table" in raw and raw["table"] not in table_specs():
            raise ConfigError(f"{at}: unknown table {raw['table']!r} (schemas/tables.yaml)")
        if "dataset" in raw and raw["dataset"] not in DATASETS:
            raise ConfigError(f"{at}: unknown dataset {raw['dataset']!r}; known: {sorted(DATASETS)}")
        kwargs = raw.get("kwargs", {})
        if not isinstance(kwargs, dict):
            raise ConfigError(f"{at}: 'kwargs' must be a mapping")
        gates = raw.get("gates", [])
        if not isinstance(gates, list) or any(g not in GATES for g in gates):
            raise ConfigError(f"{at}: gates must be a list of {GATES}, got {gates!r}")
        if check_expectations:
            try:
                gx_adapter.build(raw["expect"], kwargs)
            except ValueError as exc:
                raise ConfigError(f"{at}: {exc}") from None
        checks.append(Check(suite, raw["name"], raw["description"], raw["severity"], raw["expect"], kwargs,
                            table=raw.get("table"), dataset=raw.get("dataset"), gates=tuple(gates)))
    return tuple(checks)


def load_suites(folder: Path | str | None = None, *, check_expectations: bool = True) -> tuple[Check, ...]:
    """Every suite (*.yaml) of `folder` (default: the shipped suites), in name order; check names are unique across suites (they key
    ops.quality_results and the gate's refusals)."""
    folder = Path(folder or QUALITY_DIR)
    files = sorted(folder.glob("*.yaml"))
    if not files:
        raise ConfigError(f"{folder}: no quality suites (*.yaml) found")
    checks: list[Check] = []
    for path in files:
        try:
            doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        checks += parse_suite(doc, str(path), check_expectations=check_expectations)
    names = [c.name for c in checks]
    if dupes := sorted({n for n in names if names.count(n) > 1}):
        raise ConfigError(f"{folder}: check names must be unique across suites; repeated: {dupes}")
    return tuple(checks)
