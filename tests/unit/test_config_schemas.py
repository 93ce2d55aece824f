"""The declarative data's one home (pipelines/conf/): every YAML file names its JSON Schema
for editors and is checked against the same schema on load (no Spark)."""
from __future__ import annotations

import re

import pytest
import yaml

from pipelines.core.config import CONF_DIR, CONFIG_SCHEMAS, ConfigError, check_document, config_schema, read_yaml

# Each shipped YAML file (relative to conf/) and the schema its loader checks it against.
SCHEMA_OF = {
    "dedup_rules.yaml": "dedup_rules",
    "fraud_rules.yaml": "fraud_rules",
    "pii.yaml": "pii",
    "pipeline.yaml": "pipeline",
    "plan_rules.yaml": "plan_rules",
    "pricing.yaml": "pricing",
    "slo.yaml": "slo",
    "schemas/tables.yaml": "tables",
    "quality/bronze.yaml": "quality_suite",
    "quality/silver.yaml": "quality_suite",
    "quality/gold.yaml": "quality_suite",
    "views.yaml": "views",
}
_MODELINE = re.compile(r"^# yaml-language-server: \$schema=(\S+)$")


def test_every_yaml_file_of_the_package_has_a_schema():
    """One home: every declarative YAML file the package ships is listed above, so none is
    left to a hand-written check."""
    shipped = {str(p.relative_to(CONF_DIR)) for p in CONF_DIR.rglob("*.yaml")}
    assert shipped == set(SCHEMA_OF)


@pytest.mark.parametrize("value", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_non_finite_floats_are_not_numbers(value):
    """YAML's .nan passes every range check (it compares false both ways): not a number here."""
    with pytest.raises(ConfigError, match=rf"^f: defaults\.max_quarantine_share: expected a number between 0 and 1, "
                                          rf"got {value!r}$"):
        check_document({"version": 1, "defaults": {"max_quarantine_share": value}}, "slo", "f")


def test_every_schema_is_a_valid_json_schema():
    names = sorted(p.name.removesuffix(".schema.json") for p in CONFIG_SCHEMAS.glob("*.schema.json"))
    assert set(SCHEMA_OF.values()) <= set(names)
    for name in names:
        assert config_schema(name)["$schema"] == "https://json-schema.org/draft/2020-12/schema", name


@pytest.mark.parametrize("relative, schema", sorted(SCHEMA_OF.items()))
def test_each_file_names_its_schema_for_editors_and_passes_it(relative, schema):
    path = CONF_DIR / relative
    first = path.read_text(encoding="utf-8").splitlines()[0]
    assert (m := _MODELINE.match(first)), f"{relative}: first line must be the yaml-language-server modeline"
    assert (path.parent / m.group(1)).resolve() == (CONFIG_SCHEMAS / f"{schema}.schema.json").resolve()
    check_document(read_yaml(path), schema, str(path))


def test_repeated_keys_are_an_error(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("version: 1\nrules: []\nrules: []\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r": not valid YAML: .*duplicate key 'rules'"):
        read_yaml(path)


@pytest.mark.parametrize("value", [True, 1.0, "1"], ids=["bool", "float", "string"])
def test_integers_are_integers(value):
    """YAML's `true` and `1.0` equal 1 in Python; config refuses both where it wants 1."""
    with pytest.raises(ConfigError, match=rf"^f: version: must be 1, got {re.escape(repr(value))}$"):
        check_document({"version": value, "rules": []}, "dedup_rules", "f")


def test_schemas_refer_to_each_other_by_file_name():
    """A reference resolves next to the referring schema, as in an editor; nothing is fetched."""
    with pytest.raises(ConfigError, match=r"^f: rules\[0\]\.window: expected a positive duration"):
        check_document({"version": 1, "rules": [{"name": "r", "metric": "m", "kind": "retry_window",
                                                 "window": "soon"}]}, "dedup_rules", "f")


def test_dates_are_read_as_text_as_an_editor_reads_them(tmp_path):
    """YAML 1.1 would make an unquoted 2025-01-01 a date, which no JSON Schema type admits;
    the editor's YAML 1.2 and read_yaml keep the text (and only that changes: yes is still true)."""
    path = tmp_path / "c.yaml"
    path.write_text("day: 2025-01-01\nat: 2025-01-01 10:00:00\nquoted: '2025-01-01'\nflag: yes\n", encoding="utf-8")
    assert read_yaml(path) == {"day": "2025-01-01", "at": "2025-01-01 10:00:00", "quoted": "2025-01-01", "flag": True}
    assert yaml.safe_load("day: 2025-01-01")["day"] != "2025-01-01"  # PyYAML's own loader is untouched
