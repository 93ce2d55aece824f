"""Config files read and checked against their JSON Schemas; dedup rules and pipeline settings.

Config is data: every declarative file (settings, rules, pricing, SLOs, quality suites, the
event contract, the table specs) lives in pipelines/conf/, shipped in the wheel, and any of
them can be replaced by a path given on the command line. Each YAML file has a JSON Schema
in conf/schemas/config/, named on its first line for editors (`# yaml-language-server:
$schema=...`, completion and checks as you type), and its loader checks it against the
same schema on load (`read_yaml`, then `check_document`), so its structure (keys, types,
enums, patterns) is declared once, not re-checked by hand. What a schema cannot say (a name
repeated across entries, a reference to another file) stays in the loaders. Every error
names the file and the offending entry.

Every data file a job reads is found through the package, never through a checkout's
layout, so a checkout, a wheel installed anywhere and a Databricks cluster read the same
files.
"""
from __future__ import annotations

import functools
import json
import math
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import timedelta
from decimal import Decimal
from importlib import resources
from pathlib import Path

import jsonschema
import referencing
import yaml
from jsonschema.exceptions import ValidationError

# A wheel installs as plain files (never zipped), so the package's folder is a real Path.
PACKAGE_DIR = Path(str(resources.files("pipelines")))
CONF_DIR = PACKAGE_DIR / "conf"
CONFIG_SCHEMAS = CONF_DIR / "schemas" / "config"
DEFAULT_DEDUP_RULES = CONF_DIR / "dedup_rules.yaml"
DEFAULT_PIPELINE = CONF_DIR / "pipeline.yaml"

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


class _StrictLoader(yaml.SafeLoader):
    """safe_load, except that a repeated key is an error: plain YAML keeps the last one
    silently, which would let a second `pro:` or `unit_amount:` shadow the first."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key_node, _ in node.value:
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=deep)
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r}", key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


# YAML 1.1 (PyYAML) reads an unquoted 2025-01-01 as a date, YAML 1.2 (an editor) and JSON
# Schema as text: config reads the text, so the schema checks what the editor checks.
_StrictLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def read_yaml(path: Path | str, error: type[ConfigError] = ConfigError):
    """A config file's YAML document; a missing file, bad YAML or a repeated key is `error`
    naming the file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{path}: file not found") from None
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise error(f"{path}: not valid YAML: {exc}") from None


# JSON Schema's "integer" admits 1.0 and Python's bool is an int: config wants neither, so
# `version: 1.0`, `version: true` or `quantity: yes` are type errors, not silent equals.
# YAML's .nan and .inf are floats that every range check lets through (NaN compares false
# both ways): they are not numbers here.
_TYPES = jsonschema.Draft202012Validator.TYPE_CHECKER.redefine_many({
    "integer": lambda _, v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda _, v: (isinstance(v, int) and not isinstance(v, bool)) or (isinstance(v, float) and math.isfinite(v)),
})
_Validator = jsonschema.validators.extend(jsonschema.Draft202012Validator, type_checker=_TYPES)


@functools.cache
def config_schema(name: str) -> dict:
    """conf/schemas/config/<name>.schema.json, itself checked against the metaschema."""
    schema = json.loads((CONFIG_SCHEMAS / f"{name}.schema.json").read_text(encoding="utf-8"))
    _Validator.check_schema(schema)
    return schema


def _retrieve(uri: str) -> referencing.Resource:
    # The schemas refer to each other by file name ("common.schema.json#/$defs/duration"),
    # as an editor resolves them: next to the referring file.
    name = uri.removesuffix(".schema.json")
    if "/" in name or ":" in name:
        raise referencing.exceptions.NoSuchResource(ref=uri)
    return referencing.Resource.from_contents(config_schema(name), default_specification=referencing.jsonschema.DRAFT202012)


_REGISTRY = referencing.Registry(retrieve=_retrieve)


def _location(path: Iterable) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _describe(err: ValidationError) -> str:
    """One error in words: a schema's own `x-message` where it has one (`{got}` is the
    offending value), else a sentence for the common keywords, else jsonschema's."""
    schema = err.schema if isinstance(err.schema, dict) else {}
    got = repr(err.instance)
    if "x-message" in schema:
        return schema["x-message"].format(got=got)
    match err.validator:
        case "additionalProperties" | "unevaluatedProperties":
            allowed = sorted(schema.get("properties", {}))
            unknown = sorted(map(str, set(err.instance) - set(allowed)))
            return f"unknown keys {unknown} (allowed: {allowed})"
        case "required":
            missing = [k for k in err.validator_value if k not in err.instance]
            return f"{missing[0]!r} is required"
        case "enum":
            return f"must be one of {tuple(err.validator_value)}, got {got}"
        case "const":
            return f"must be {err.validator_value!r}, got {got}"
        case "type":
            kinds = err.validator_value if isinstance(err.validator_value, list) else [err.validator_value]
            return f"expected {' or '.join(_TYPE_WORDS.get(k, k) for k in kinds)}, got {got}"
    return err.message


_TYPE_WORDS = {"object": "a mapping", "array": "a list", "string": "a string", "integer": "an integer",
               "number": "a number", "boolean": "true or false", "null": "null"}


def check_document(doc: object, schema: str, where: str, error: type[ConfigError] = ConfigError) -> None:
    """`doc` against conf/schemas/config/<schema>.schema.json. One error is reported, as
    `error` naming `where` and the entry (e.g. `pricing.yaml: plans[0].base_fee: ...`): the
    version's if it has one (it says how to read the rest), else the one jsonschema's
    `best_match` ranks first (the deepest, most specific one, inside oneOf/anyOf too)."""
    errors = list(_Validator(config_schema(schema), registry=_REGISTRY).iter_errors(doc))
    if not errors:
        return
    # The version says how to read the rest, so its error comes first.
    version = [e for e in errors if list(e.absolute_path)[:1] == ["version"]
               or (e.validator == "required" and not e.absolute_path and "version" not in e.instance)]
    first = jsonschema.exceptions.best_match(version or sorted(errors, key=lambda e: [str(p) for p in e.absolute_path]))
    at = _location(first.absolute_path)
    if not at and first.validator == "type":
        raise error(f"{where}: expected a mapping at the top level")
    raise error(f"{where}: {at + ': ' if at else ''}{_describe(first)}")


def config_decimal(value: str | int) -> Decimal:
    """An amount, quantity or share as a config file writes it (a decimal string, or a YAML
    integer; its schema has checked the format and range, and refuses floats) as a Decimal."""
    return Decimal(str(value))


def repeated(values: Iterable) -> list:
    """The values that occur more than once, sorted: what a schema's uniqueItems cannot
    see when uniqueness is of one field across entries, or across files."""
    return sorted(v for v, n in Counter(values).items() if n > 1)


def parse_dedup_rules(doc: object, where: str = "dedup rules") -> tuple[DedupRule, ...]:
    check_document(doc, "dedup_rules", where)
    rules = tuple(DedupRule(raw["name"], raw["metric"], raw["kind"], period=raw.get("period"),
                            window=parse_duration(raw["window"], f"{where}: window") if "window" in raw else None)
                  for raw in doc["rules"])
    for attr in ("name", "metric"):
        if dupes := repeated(getattr(r, attr) for r in rules):
            raise ConfigError(f"{where}: each rule needs its own {attr}; repeated: {dupes}")
    return rules


def load_dedup_rules(path: Path | str | None = None) -> tuple[DedupRule, ...]:
    path = Path(path or DEFAULT_DEDUP_RULES)
    return parse_dedup_rules(read_yaml(path), str(path))


@dataclass(frozen=True)
class SilverConfig:
    watermark_delay: timedelta = timedelta(hours=26)
    late_threshold: timedelta = timedelta(hours=1)
    future_tolerance: timedelta = timedelta(hours=24)


def parse_pipeline_config(doc: object, where: str = "pipeline config") -> SilverConfig:
    check_document(doc, "pipeline", where)
    silver = doc.get("silver", {})
    return replace(SilverConfig(), **{key: parse_duration(text, f"{where}: silver.{key}")
                                      for key, text in silver.items()})


def load_pipeline_config(path: Path | str | None = None) -> SilverConfig:
    path = Path(path or DEFAULT_PIPELINE)
    return parse_pipeline_config(read_yaml(path), str(path))
