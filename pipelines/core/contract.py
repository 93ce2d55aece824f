"""The event contract, read from schemas/events/v<N>.json (the single source of truth).

The JSON Schema is standard draft 2020-12 so producers can validate against it with any
tool; this module turns it into the field specs the Spark parser and the docs use.
Only the subset of JSON Schema the contract needs is understood; anything else in the
file is rejected on load rather than silently ignored.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from pipelines.core.config import PACKAGE_DIR

SUPPORTED_KEYWORDS = {
    "type", "description", "minLength", "maxLength", "enum", "const", "minimum", "format",
    "pattern", "properties", "required", "x-decimal-scale", "x-spark-type",
}
JSON_TYPES = {"string", "integer", "number", "object", "boolean"}


class ContractError(ValueError):
    pass


@dataclass(frozen=True)
class FieldSpec:
    name: str
    json_type: str
    description: str = ""
    required: bool = False
    required_for: frozenset[str] = frozenset()
    enum: tuple[str, ...] = ()
    const: object | None = None
    min_length: int | None = None
    max_length: int | None = None
    minimum: float | None = None
    decimal_scale: int | None = None
    fmt: str | None = None
    pattern: str | None = None
    spark_type: str | None = None
    children: tuple["FieldSpec", ...] = ()

    @property
    def column(self) -> str:
        return self.name


@dataclass(frozen=True)
class EventContract:
    version: int
    title: str
    fields: tuple[FieldSpec, ...]
    event_types: tuple[str, ...]
    raw: dict = field(repr=False, compare=False, default_factory=dict)

    def field(self, name: str) -> FieldSpec:
        for spec in self.fields:
            if spec.name == name:
                return spec
        raise KeyError(name)

    @property
    def required(self) -> tuple[FieldSpec, ...]:
        return tuple(f for f in self.fields if f.required)


def schemas_dir() -> Path:
    """The schemas, through the package: they live in pipelines/conf/schemas/, shipped with
    the rest of the declarative data; the repository's top-level schemas/ (kept for
    producers, who validate against it with any tool) is a symlink to it."""
    return PACKAGE_DIR / "conf" / "schemas"


def _field(name: str, body: dict, required: bool, required_for: frozenset[str]) -> FieldSpec:
    if not isinstance(body, dict):
        raise ContractError(f"field {name!r}: expected a schema object, got {body!r}")
    unknown = set(body) - SUPPORTED_KEYWORDS
    if unknown:
        raise ContractError(f"field {name!r}: unsupported schema keywords {sorted(unknown)}")
    json_type = body.get("type")
    if not isinstance(json_type, str) or json_type not in JSON_TYPES:
        raise ContractError(f"field {name!r}: type must be one of {sorted(JSON_TYPES)}, got {json_type!r}")
    child_required = set(body.get("required", []))
    children = tuple(
        _field(child, child_body, child in child_required, frozenset())
        for child, child_body in body.get("properties", {}).items()
    )
    return FieldSpec(
        name=name,
        json_type=json_type,
        description=body.get("description", ""),
        required=required,
        required_for=required_for,
        enum=tuple(body.get("enum", ())),
        const=body.get("const"),
        min_length=body.get("minLength"),
        max_length=body.get("maxLength"),
        minimum=body.get("minimum"),
        decimal_scale=body.get("x-decimal-scale"),
        fmt=body.get("format"),
        pattern=body.get("pattern"),
        spark_type=body.get("x-spark-type"),
        children=children,
    )


def _conditional_required(schema: dict) -> dict[str, set[str]]:
    """allOf: [{if: {properties: {event_type: {const: T}}}, then: {required: [...]}}]."""
    by_field: dict[str, set[str]] = {}
    for rule in schema.get("allOf", []):
        try:
            event_type = rule["if"]["properties"]["event_type"]["const"]
            fields = rule["then"]["required"]
        except (KeyError, TypeError) as exc:
            raise ContractError(f"allOf entries must be if event_type const / then required: {rule}") from exc
        for name in fields:
            by_field.setdefault(name, set()).add(event_type)
    return by_field


def parse_contract(schema: dict, version: int) -> EventContract:
    if schema.get("type") != "object" or "properties" not in schema:
        raise ContractError("the event schema must describe a JSON object with properties")
    required = set(schema.get("required", []))
    conditional = _conditional_required(schema)
    props = schema["properties"]
    missing = (required | set(conditional)) - set(props)
    if missing:
        raise ContractError(f"required fields not declared in properties: {sorted(missing)}")
    fields = tuple(
        _field(name, body, name in required, frozenset(conditional.get(name, ())))
        for name, body in props.items()
    )
    event_types = tuple(props.get("event_type", {}).get("enum", ()))
    if not event_types:
        raise ContractError("event_type must list its allowed values in enum")
    unknown_types = {t for ts in conditional.values() for t in ts} - set(event_types)
    if unknown_types:
        raise ContractError(f"allOf names event types not in the enum: {sorted(unknown_types)}")
    return EventContract(version=version, title=schema.get("title", ""), fields=fields,
                         event_types=event_types, raw=schema)


@lru_cache(maxsize=None)
def load_contract(version: int = 1) -> EventContract:
    path = schemas_dir() / "events" / f"v{version}.json"
    if not path.is_file():
        raise ContractError(f"no schema for events version {version} at {path}")
    try:
        schema = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ContractError(f"{path}: not valid JSON: {exc}") from exc
    return parse_contract(schema, version)
