"""Personal data in event properties: hashed or dropped on the way to silver.

Which keys and value patterns are personal is data (pipelines/conf/pii.yaml, documented
there); this module validates that file and turns it into a DataFrame transform built from
Spark's higher-order functions, so no Python runs per row.

Shape of the result, for `{"email": "Ann@Shop.example", "ip": "10.0.0.1", "plan": "pro"}`:

    {"email_domain_hash": h("shop.example"), "email_hash": h("ann@shop.example"),
     "ip_hash": h("10.0.0.1"), "plan": "pro"}

where h(v) = hex sha256 of "<salt>|v". Hashes are stable for a given salt, so equality
joins (same IP, same email domain) keep working; without the salt they cannot be reversed
by hashing a dictionary of addresses.
"""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from pipelines.config import CONF_DIR, ConfigError, read_yaml

log = logging.getLogger(__name__)

DEFAULT_PII = CONF_DIR / "pii.yaml"
KINDS = ("email", "phone", "ip", "text")
ACTIONS = ("hash", "drop")
DROP = "drop"
# Used only when the salt variable is unset (local runs, tests); production sets the
# variable from a secret. Documented in the README's Security section.
DEV_SALT = "lakehouse-local-dev-salt"


class PiiConfigError(ConfigError):
    pass


@dataclass(frozen=True)
class PiiKey:
    name: str
    kind: str          # one of KINDS, or DROP


@dataclass(frozen=True)
class PiiPattern:
    kind: str
    regex: str
    in_text: bool


@dataclass(frozen=True)
class PiiConfig:
    salt_env: str
    keys: tuple[PiiKey, ...]
    patterns: tuple[PiiPattern, ...]
    # A regex every value that any pattern could match also matches (checked by the tests
    # for the shipped patterns): properties with no match and no listed key skip the work.
    screen: str | None = None

    def salt(self) -> str:
        salt = os.environ.get(self.salt_env)
        if not salt:
            log.warning("%s is not set: hashing personal data with the local development salt", self.salt_env)
            return DEV_SALT
        return salt


def parse_pii_config(doc: object, where: str = "pii config") -> PiiConfig:
    if not isinstance(doc, dict):
        raise PiiConfigError(f"{where}: expected a mapping at the top level")
    if type(doc.get("version")) is not int or doc.get("version") != 1:
        raise PiiConfigError(f"{where}: version must be 1, got {doc.get('version')!r}")
    if unknown := set(doc) - {"version", "salt_env", "keys", "patterns", "screen"}:
        raise PiiConfigError(f"{where}: unknown keys {sorted(unknown)}")
    salt_env = doc.get("salt_env")
    if not isinstance(salt_env, str) or not re.fullmatch(r"[A-Z_][A-Z0-9_]*", salt_env):
        raise PiiConfigError(f"{where}: salt_env must name an environment variable, got {salt_env!r}")
    keys: list[PiiKey] = []
    for i, raw in enumerate(doc.get("keys") or []):
        at = f"{where}: keys[{i}]"
        if not isinstance(raw, dict):
            raise PiiConfigError(f"{at}: expected a mapping")
        if unknown := set(raw) - {"name", "kind", "action"}:
            raise PiiConfigError(f"{at}: unknown keys {sorted(unknown)} (allowed: action, kind, name)")
        name = raw.get("name")
        if not isinstance(name, str) or not name.strip():
            raise PiiConfigError(f"{at}: 'name' is required and must be a non-empty string")
        action = raw.get("action", "hash")
        if action not in ACTIONS:
            raise PiiConfigError(f"{at} ({name}): action must be one of {ACTIONS}, got {action!r}")
        if action == DROP:
            if "kind" in raw:
                raise PiiConfigError(f"{at} ({name}): a dropped key has no kind")
            keys.append(PiiKey(name.lower(), DROP))
            continue
        if raw.get("kind") not in KINDS:
            raise PiiConfigError(f"{at} ({name}): kind must be one of {KINDS}, got {raw.get('kind')!r}")
        keys.append(PiiKey(name.lower(), raw["kind"]))
    names = [k.name for k in keys]
    if dupes := sorted({n for n in names if names.count(n) > 1}):
        raise PiiConfigError(f"{where}: keys listed twice (names are case-insensitive): {dupes}")
    patterns: list[PiiPattern] = []
    for i, raw in enumerate(doc.get("patterns") or []):
        at = f"{where}: patterns[{i}]"
        if not isinstance(raw, dict):
            raise PiiConfigError(f"{at}: expected a mapping")
        if unknown := set(raw) - {"kind", "regex", "in_text"}:
            raise PiiConfigError(f"{at}: unknown keys {sorted(unknown)} (allowed: in_text, kind, regex)")
        if raw.get("kind") not in ("email", "phone", "ip"):
            raise PiiConfigError(f"{at}: kind must be email, phone or ip, got {raw.get('kind')!r}")
        regex = raw.get("regex")
        if not isinstance(regex, str) or not regex:
            raise PiiConfigError(f"{at}: 'regex' is required")
        try:
            re.compile(regex)
        except re.error as exc:
            raise PiiConfigError(f"{at}: regex does not compile: {exc}") from None
        if "'" in regex or "\\\\" in regex:
            raise PiiConfigError(f"{at}: regex must not contain quotes or escaped backslashes")
        in_text = raw.get("in_text", False)
        if not isinstance(in_text, bool):
            raise PiiConfigError(f"{at}: in_text must be true or false")
        patterns.append(PiiPattern(raw["kind"], regex, in_text))
    screen = doc.get("screen")
    if screen is not None:
        if not isinstance(screen, str) or not screen or "'" in screen:
            raise PiiConfigError(f"{where}: screen must be a non-empty regex without quotes")
        try:
            re.compile(screen)
        except re.error as exc:
            raise PiiConfigError(f"{where}: screen does not compile: {exc}") from None
    return PiiConfig(salt_env=salt_env, keys=tuple(keys), patterns=tuple(patterns), screen=screen)


def load_pii_config(path: Path | str | None = None) -> PiiConfig:
    path = Path(path or DEFAULT_PII)
    return parse_pii_config(read_yaml(path, PiiConfigError), str(path))


def _kind(config: PiiConfig, key: Column, value: Column) -> Column:
    """The PII kind of one property (null when it is not personal)."""
    k = F.lower(key)
    is_string = F.schema_of_variant(value) == "STRING"
    s = F.try_variant_get(value, "$", "string")
    text = F.to_json(value)
    expr = None

    def case(cond: Column, kind: str):
        nonlocal expr
        expr = F.when(cond, F.lit(kind)) if expr is None else expr.when(cond, F.lit(kind))

    for spec in config.keys:
        # A listed key whose value is not a string (an object, a number) is hashed whole.
        kind = spec.kind if spec.kind in (DROP, "text") else None
        if kind:
            case(k == spec.name, kind)
        else:
            case((k == spec.name) & is_string, spec.kind)
            case(k == spec.name, "text")
    for p in config.patterns:
        case(is_string & s.rlike(f"^(?:{p.regex})$"), p.kind)
    for p in config.patterns:
        if p.in_text:
            case(~F.is_variant_null(value) & text.rlike(p.regex), "text")
    return expr.otherwise(F.lit(None)) if expr is not None else F.lit(None).cast("string")


# Hidden columns of the staged transform below.
_ENTRIES = "_pii_entries"
_MADE = "_pii_made"
_CLEAR = "_pii_clear"


def _clear(config: PiiConfig, text: Column) -> Column:
    """True when the properties text cannot hold anything personal: no listed key anywhere
    (as a JSON key, any case) and nothing the screen matches. Most events carry a couple of
    plain attributes, and this one pass over the text spares them the per-entry regexes."""
    if config.screen is None:
        return F.lit(False)
    keys = "|".join(re.escape(k.name) for k in config.keys)
    listed = f'(?i)"(?:{keys})"' if keys else None
    clear = ~text.rlike(config.screen)
    return clear & ~text.rlike(listed) if listed else clear


def with_protected_properties(config: PiiConfig, salt: str, column: str = "properties"):
    """DataFrame transform: replaces `column` (a JSON object as text) by its protected form.

    Built in stages, each its own projection: every entry's kind is computed once and the
    generated entries once. As one nested expression, each lambda that read `made` re-ran
    all of its regexes and hashes per element, which made this the costliest step of silver.
    """

    def h(v: Column) -> Column:
        return F.sha2(F.concat(F.lit(salt + "|"), v), 256).cast("variant")

    def entry(key: Column, value: Column) -> Column:
        return F.struct(key.alias("key"), value.alias("value"))

    def with_kind(e: Column) -> Column:
        return F.struct(e["key"].alias("key"), e["value"].alias("value"),
                        _kind(config, e["key"], e["value"]).alias("kind"))

    def generated(e: Column) -> Column:
        key, value, kind = e["key"], e["value"], e["kind"]
        s = F.try_variant_get(value, "$", "string")
        empty = F.array().cast("array<struct<key:string,value:variant>>")
        return (
            F.when(kind == "email", F.array(
                entry(F.concat(key, F.lit("_hash")), h(F.lower(F.trim(s)))),
                entry(F.concat(key, F.lit("_domain_hash")), h(F.lower(F.trim(F.substring_index(s, "@", -1))))),
            ))
            .when(kind == "phone", F.array(entry(F.concat(key, F.lit("_hash")),
                                                 h(F.regexp_replace(s, r"[^0-9+]", "")))))
            .when(kind == "ip", F.array(entry(F.concat(key, F.lit("_hash")), h(F.lower(F.trim(s))))))
            .when(kind == "text", F.array(entry(F.concat(key, F.lit("_hash")), h(F.to_json(value)))))
            .otherwise(empty)
        )

    def transform(df: DataFrame) -> DataFrame:
        entries = F.when(~F.col(_CLEAR), F.map_entries(
            F.try_variant_get(F.try_parse_json(F.col(column)), "$", "map<string,variant>")))
        # Resolved by name in each projection that uses them: the de-duplication below
        # reads the generated entries as first made, `kept` and the result the de-duplicated.
        made = F.col(_MADE)
        made_keys = F.transform(made, lambda g: g["key"])
        kept = F.filter(F.col(_ENTRIES), lambda e: e["kind"].isNull() & ~F.array_contains(made_keys, e["key"]))
        return (
            df.withColumn(_CLEAR, F.coalesce(_clear(config, F.col(column)), F.lit(False)))
            .withColumn(_ENTRIES, F.transform(entries, with_kind))
            .withColumn(_MADE, F.flatten(F.transform(F.col(_ENTRIES), generated)))
            # Two sources could name the same generated key ("a" as email and "a_domain" as
            # anything); the first wins, as a map cannot hold a key twice.
            .withColumn(_MADE, F.filter(made, lambda e, i: ~F.array_contains(F.slice(made_keys, 1, i), e["key"])))
            .withColumn(column, F.when(F.col(_CLEAR), F.col(column)).when(
                F.col(_ENTRIES).isNotNull(), F.to_json(F.map_from_entries(F.concat(
                    F.transform(kept, lambda e: entry(e["key"], e["value"])), made)))))
            .drop(_ENTRIES, _MADE, _CLEAR)
        )

    return transform
