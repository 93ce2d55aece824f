"""Quality suites (pipelines/conf/quality/<layer>.yaml, shipped in the wheel) loaded and
validated: every error names the file and the check. A suite's format is its JSON Schema
(conf/schemas/config/quality_suite.schema.json); tables and datasets are checked against
the lake's and expectation types and arguments against great-expectations on load (through
the adapter), so a typo fails before any data is read."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pipelines.core.config import CONF_DIR, ConfigError, check_document, read_yaml, repeated
from pipelines.core.tables import table_specs
from pipelines.quality import gx_adapter
from pipelines.quality.datasets import DATASETS

QUALITY_DIR = CONF_DIR / "quality"


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
    """A suite's checks. Its structure is conf/schemas/config/quality_suite.schema.json;
    checked here is what a schema cannot say: the table is one of the table specs, the
    dataset one of DATASETS, the expectation and its kwargs fit great-expectations."""
    check_document(doc, "quality_suite", where)
    checks = []
    for i, raw in enumerate(doc["checks"]):
        at = f"{where}: checks[{i}] ({raw['name']})"
        if "table" in raw and raw["table"] not in table_specs():
            raise ConfigError(f"{at}: unknown table {raw['table']!r} (schemas/tables.yaml)")
        if "dataset" in raw and raw["dataset"] not in DATASETS:
            raise ConfigError(f"{at}: unknown dataset {raw['dataset']!r}; known: {sorted(DATASETS)}")
        kwargs = raw.get("kwargs", {})
        if check_expectations:
            try:
                gx_adapter.build(raw["expect"], kwargs)
            except ValueError as exc:
                raise ConfigError(f"{at}: {exc}") from None
        checks.append(Check(doc["suite"], raw["name"], raw["description"], raw["severity"], raw["expect"], kwargs,
                            table=raw.get("table"), dataset=raw.get("dataset"), gates=tuple(raw.get("gates", ()))))
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
        checks += parse_suite(read_yaml(path), str(path), check_expectations=check_expectations)
    if dupes := repeated(c.name for c in checks):
        raise ConfigError(f"{folder}: check names must be unique across suites; repeated: {dupes}")
    return tuple(checks)
