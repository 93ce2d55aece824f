"""Personal data in event properties: keyed hashes or dropped on the way to silver.

Which keys and value patterns are personal is data (pipelines/conf/pii.yaml, documented
there; its format is conf/schemas/config/pii.schema.json, checked on load); this module turns
that file into a DataFrame transform built from Spark's higher-order functions, so no Python
runs per row.

Shape of the result, for `{"email": "Ann@Shop.example", "ip": "10.0.0.1", "plan": "pro"}`:

    {"email_domain_hash": h("shop.example"), "email_hash": h("ann@shop.example"),
     "ip_hash": h("10.0.0.1"), "plan": "pro"}

where h(v) = "hmac:v<version>:" + hex HMAC-SHA256(key, v), the key and its version from
pipelines/ingest/pii_key.py. Equal values give equal hashes under one key version, so equality
joins (same IP, same email domain) keep working; without the key a hash cannot be reversed
by hashing a dictionary of addresses or phone numbers. The version is part of every hash,
so hashes made under two keys never compare equal by accident, and a lake being rehashed
says which rows are done.

Why the key travels as data: Spark has no HMAC function, and any expression holding the
key (or the padded key states HMAC derives from it) as a literal prints it in every plan,
log line and Spark UI page that shows the query. Here the two padded states are the one row
of a small broadcast relation joined to the input, so plans show only the column names
`_pii_ipad` and `_pii_opad`; HMAC is then two built-in sha2 calls, in the JVM, only for
values that are personal. A Python UDF would keep the key out of the plan too, but would
ship every row of silver's input to a Python worker and back.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from pipelines.core.config import CONF_DIR, ConfigError, check_document, read_yaml, repeated
from pipelines.ingest.pii_key import KeySource, PiiHmacKey

DEFAULT_PII = CONF_DIR / "pii.yaml"
DROP = "drop"
CARD = "card"
# Columns of the one-row key relation (see the module docstring).
_IPAD = "_pii_ipad"
_OPAD = "_pii_opad"


class PiiConfigError(ConfigError):
    pass


@dataclass(frozen=True)
class PiiKey:
    name: str
    kind: str          # email, phone, ip or text (pii.schema.json), or DROP


@dataclass(frozen=True)
class PiiPattern:
    kind: str
    regex: str
    in_text: bool


@dataclass(frozen=True)
class PiiConfig:
    key: KeySource
    keys: tuple[PiiKey, ...]
    patterns: tuple[PiiPattern, ...]
    # A regex every value that any pattern could match also matches (checked by the tests
    # for the shipped patterns): properties with no match and no listed key skip the work.
    screen: str | None = None
    # Words a key ends with when its value is a credential (any case, `_` also matching
    # `-` or nothing): such entries are dropped, at the top level or nested.
    sensitive_keys: tuple[str, ...] = ()

    @property
    def sensitive_regex(self) -> str | None:
        """Alternation of the sensitive words: `api_key` matches api_key, api-key, apikey."""
        if not self.sensitive_keys:
            return None
        return "(?:" + "|".join(re.escape(w).replace("_", "[_-]?") for w in self.sensitive_keys) + ")"


def _compiles(regex: str, at: str) -> str:
    # The regexes run on Java's engine; Python's accepts the same constructs these use
    # (lookbehinds, possessive repeats, inline flags), ECMA-262 (a schema's "format": "regex") does not.
    try:
        re.compile(regex)
    except re.error as exc:
        raise PiiConfigError(f"{at}: regex does not compile: {exc}") from None
    return regex


def parse_pii_config(doc: object, where: str = "pii config") -> PiiConfig:
    """The structure is conf/schemas/config/pii.schema.json; what it cannot say (two fields
    naming one variable, a key listed twice in two cases, a regex that does not compile) is
    checked here."""
    check_document(doc, "pii", where, PiiConfigError)
    raw_key = doc["key"]
    if raw_key["env"] == raw_key["scope_env"]:
        raise PiiConfigError(f"{where}: key: env and scope_env must be two different variables")
    key = KeySource(raw_key["env"], raw_key["scope_env"], raw_key["scope_key"])
    keys = tuple(PiiKey(raw["name"].lower(), DROP if raw.get("action") == DROP else raw["kind"])
                 for raw in doc.get("keys") or ())
    if dupes := repeated(k.name for k in keys):
        raise PiiConfigError(f"{where}: keys listed twice (names are case-insensitive): {dupes}")
    patterns = tuple(PiiPattern(raw["kind"], _compiles(raw["regex"], f"{where}: patterns[{i}]"),
                                raw.get("in_text", False)) for i, raw in enumerate(doc.get("patterns") or ()))
    screen = doc.get("screen")
    return PiiConfig(key=key, keys=keys, patterns=patterns,
                     screen=_compiles(screen, f"{where}: screen") if screen is not None else None,
                     sensitive_keys=tuple(doc.get("sensitive_keys") or ()))


def load_pii_config(path: Path | str | None = None) -> PiiConfig:
    path = Path(path or DEFAULT_PII)
    return parse_pii_config(read_yaml(path, PiiConfigError), str(path))


def luhn_valid(digits: Column) -> Column:
    """True when a string of 13 to 19 digits passes the Luhn check (card numbers do; order
    ids and other long numbers mostly do not, so they are not taken for cards).

    Built-ins only: from the right, every second digit is doubled (minus 9 above 9) and the
    sum must end in 0; the sum is an `aggregate` over the reversed digits."""
    reversed_digits = F.split(F.reverse(digits), "")

    def weight(d: Column, i: Column) -> Column:
        n = d.cast("int")
        return F.when(i % 2 == 1, F.when(n > 4, n * 2 - 9).otherwise(n * 2)).otherwise(n)

    total = F.aggregate(F.transform(reversed_digits, weight), F.lit(0), lambda acc, x: acc + x)
    return F.length(digits).between(13, 19) & digits.rlike("^[0-9]+$") & (total % 10 == 0)


def _digits(s: Column) -> Column:
    return F.regexp_replace(s, "[^0-9]", "")


def _kind(config: PiiConfig, key: Column, value: Column) -> Column:
    """The PII kind of one property (null when it is not personal).

    Order: listed keys, credentials by key name (top level or nested), card numbers, whole
    values matching a pattern, then patterns inside text or nested data."""
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
    if (words := config.sensitive_regex) is not None:
        case(k.rlike(f"{words}$"), DROP)
        # A nested object's key is followed by `":` in its JSON text, which a string value
        # cannot hold unescaped.
        case(text.rlike(f'(?i){words}":'), DROP)
    for p in config.patterns:
        if p.kind == CARD:
            case(is_string & s.rlike(f"^(?:{p.regex})$") & luhn_valid(_digits(s)), DROP)
    for p in config.patterns:
        if p.kind != CARD:
            case(is_string & s.rlike(f"^(?:{p.regex})$"), p.kind)
    for p in config.patterns:
        if p.in_text and p.kind == CARD:
            candidates = F.regexp_extract_all(text, F.lit(p.regex), 0)
            case(F.exists(candidates, lambda c: luhn_valid(_digits(c))), DROP)
    for p in config.patterns:
        if p.in_text and p.kind != CARD:
            case(~F.is_variant_null(value) & text.rlike(p.regex), "text")
    return expr.otherwise(F.lit(None)) if expr is not None else F.lit(None).cast("string")


# Hidden columns of the staged transform below.
_ENTRIES = "_pii_entries"
_MADE = "_pii_made"
_CLEAR = "_pii_clear"


def _clear(config: PiiConfig, text: Column) -> Column:
    """True when the properties text cannot hold anything personal: no listed key anywhere
    (as a JSON key, any case), no sensitive word before a quote, and nothing the screen
    matches. Most events carry a couple of plain attributes, and this one pass over the
    text spares them the per-entry regexes."""
    if config.screen is None:
        return F.lit(False)
    keys = "|".join(re.escape(k.name) for k in config.keys)
    clear = ~text.rlike(config.screen)
    if keys:
        clear = clear & ~text.rlike(f'(?i)"(?:{keys})"')
    if (words := config.sensitive_regex) is not None:
        clear = clear & ~text.rlike(f'(?i){words}"')
    return clear


def key_relation(spark, key: PiiHmacKey) -> DataFrame:
    """The one-row relation holding the key's padded states (see the module docstring).
    Data, not expressions: no plan, log or UI page that shows the query shows them."""
    ipad, opad = key.padded()
    return spark.createDataFrame([(bytearray(ipad), bytearray(opad))], f"{_IPAD} binary, {_OPAD} binary")


def with_key_columns(df: DataFrame, key: PiiHmacKey) -> DataFrame:
    """`df` with the key relation's two columns on every row (a broadcast of one row)."""
    return df.join(F.broadcast(key_relation(df.sparkSession, key)), how="cross")


def hmac_hex(value: Column, key: PiiHmacKey) -> Column:
    """`hmac:v<version>:` + hex HMAC-SHA256 of the UTF-8 bytes of `value` (RFC 2104), reading
    the padded key from the columns `key_relation` adds."""
    inner = F.unhex(F.sha2(F.concat(F.col(_IPAD), value.cast("binary")), 256))
    return F.concat(F.lit(key.prefix), F.sha2(F.concat(F.col(_OPAD), inner), 256))


def with_protected_properties(config: PiiConfig, key: PiiHmacKey, column: str = "properties"):
    """DataFrame transform: replaces `column` (a JSON object as text) by its protected form.

    Built in stages, each its own projection: every entry's kind is computed once and the
    generated entries once. As one nested expression, each lambda that read `made` re-ran
    all of its regexes and hashes per element, which made this the costliest step of silver.
    """

    def h(v: Column) -> Column:
        return hmac_hex(v, key).cast("variant")

    def entry(k: Column, value: Column) -> Column:
        return F.struct(k.alias("key"), value.alias("value"))

    def with_kind(e: Column) -> Column:
        return F.struct(e["key"].alias("key"), e["value"].alias("value"),
                        _kind(config, e["key"], e["value"]).alias("kind"))

    def generated(e: Column) -> Column:
        k, value, kind = e["key"], e["value"], e["kind"]
        s = F.try_variant_get(value, "$", "string")
        empty = F.array().cast("array<struct<key:string,value:variant>>")
        return (
            F.when(kind == "email", F.array(
                entry(F.concat(k, F.lit("_hash")), h(F.lower(F.trim(s)))),
                entry(F.concat(k, F.lit("_domain_hash")), h(F.lower(F.trim(F.substring_index(s, "@", -1))))),
            ))
            .when(kind == "phone", F.array(entry(F.concat(k, F.lit("_hash")),
                                                 h(F.regexp_replace(s, r"[^0-9+]", "")))))
            .when(kind == "ip", F.array(entry(F.concat(k, F.lit("_hash")), h(F.lower(F.trim(s))))))
            .when(kind == "text", F.array(entry(F.concat(k, F.lit("_hash")), h(F.to_json(value)))))
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
            with_key_columns(df, key)
            .withColumn(_CLEAR, F.coalesce(_clear(config, F.col(column)), F.lit(False)))
            .withColumn(_ENTRIES, F.transform(entries, with_kind))
            .withColumn(_MADE, F.flatten(F.transform(F.col(_ENTRIES), generated)))
            # Two sources could name the same generated key ("a" as email and "a_domain" as
            # anything); the first wins, as a map cannot hold a key twice.
            .withColumn(_MADE, F.filter(made, lambda e, i: ~F.array_contains(F.slice(made_keys, 1, i), e["key"])))
            .withColumn(column, F.when(F.col(_CLEAR), F.col(column)).when(
                F.col(_ENTRIES).isNotNull(), F.to_json(F.map_from_entries(F.concat(
                    F.transform(kept, lambda e: entry(e["key"], e["value"])), made)))))
            .drop(_ENTRIES, _MADE, _CLEAR, _IPAD, _OPAD)
        )

    return transform
