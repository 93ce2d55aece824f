"""Bronze records -> typed events plus a quarantine reason, driven by the event contract.

The value is parsed once into a VARIANT (Spark's binary JSON), which keeps the JSON type
of every field: a quoted "5" stays a string and 5 stays a number, so the contract's types
can be checked exactly without a UDF. The first failed check (in contract order) becomes
the record's reason; a good record has reason null.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from pipelines.core.config import SilverConfig
from pipelines.core.contract import EventContract, FieldSpec

# Reason codes, in the order they are checked. Documented in docs/contracts.md.
NULL_VALUE = "null_value"
INVALID_UTF8 = "invalid_utf8"
INVALID_JSON = "invalid_json"
NOT_AN_OBJECT = "not_an_object"
MISSING_FIELD = "missing_field"
NULL_FIELD = "null_field"
WRONG_TYPE = "wrong_type"
UNSUPPORTED_SCHEMA_VERSION = "unsupported_schema_version"
UNKNOWN_EVENT_TYPE = "unknown_event_type"
INVALID_VALUE = "invalid_value"
NEGATIVE_QUANTITY = "negative_quantity"
FUTURE_OCCURRED_AT = "occurred_at_in_future"

REASONS = (
    NULL_VALUE, INVALID_UTF8, INVALID_JSON, NOT_AN_OBJECT, UNSUPPORTED_SCHEMA_VERSION, MISSING_FIELD,
    NULL_FIELD, WRONG_TYPE, UNKNOWN_EVENT_TYPE, INVALID_VALUE, NEGATIVE_QUANTITY, FUTURE_OCCURRED_AT,
)

# RFC 3339 date-time: full date, 'T', full time with optional fraction, 'Z' or a numeric offset.
# Ends with (?![\s\S]), not $: in Java (and Python) regexes $ also matches before a final
# newline, which would let "...Z\n" through.
RFC3339 = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?([Zz]|[+-][0-9]{2}:[0-9]{2})(?![\s\S])"
RFC3339_PARSE = "yyyy-MM-dd'T'HH:mm:ss[.SSSSSSSSS]XXX"

INTEGER_TYPES = ("TINYINT", "SMALLINT", "INT", "BIGINT")
# Spark's variant functions (schema_of_variant, to_json) recurse once per nesting level
# and kill the JVM on a value nested about a thousand deep, so a record with more JSON
# objects and arrays than this is not parsed at all and is quarantined as invalid_json.
# Counting every '{' and '[' (even inside strings) bounds the depth without a parser;
# a billing event carries a handful.
MAX_CONTAINERS = 256
# A \uD800-\uDFFF escape that is not half of a surrogate pair is legal JSON syntax but
# names no character: it has no UTF-8 form, and Spark turns every one into the same '?',
# which would make distinct event ids equal. Such a record counts as invalid UTF-8.
_ESCAPE = r"(?<!\\)(?:\\\\)*"   # an escape's backslash: preceded by an even run of them
_HIGH = r"\\u[dD][89abAB][0-9a-fA-F]{2}"
_LOW = r"\\u[dD][c-fC-F][0-9a-fA-F]{2}"
LONE_SURROGATE = f"{_ESCAPE}{_HIGH}(?!{_LOW})|{_ESCAPE}(?<!{_HIGH}){_LOW}"
MIN_OCCURRED_AT = "2000-01-01T00:00:00Z"
MAX_QUANTITY_DIGITS = 32  # decimal(38,6) keeps 32 integer digits


def _interval(delta: timedelta) -> Column:
    return F.expr(f"INTERVAL {int(delta.total_seconds())} SECONDS")


def _path(name: str) -> str:
    return f"$.{name}" if name.isidentifier() else f"$['{name}']"


class _Fields:
    """Named, once-per-row views of the parsed value `_v`.

    Checks ask for a field's sub-variant, its JSON type, its value as some type or its
    timestamp; each view is registered once as a hidden column and computed in its own
    projection, so a field is navigated once per row however many checks read it (Spark
    does not collapse a projection whose costly columns are read more than once). Without
    this, a good record re-walked its JSON a few hundred times.
    """

    def __init__(self, root: str = "_v") -> None:
        self.root = root
        self._stages: list[dict[str, Column]] = [{}, {}, {}]
        self._names: dict[tuple, str] = {}

    def _view(self, stage: int, key: tuple, expr) -> Column:
        if key not in self._names:
            self._names[key] = name = f"_f{len(self._names)}"
            self._stages[stage][name] = expr()
        return F.col(self._names[key])

    def raw(self, path: str) -> Column:
        """The sub-variant at path: SQL NULL when the key is absent, a variant null when it is JSON null."""
        return self._view(0, ("raw", path), lambda: F.variant_get(F.col(self.root), path, "variant"))

    def is_object(self) -> Column:
        """Whether the whole value is a JSON object. Only objects convert to a map, and the
        conversion is far cheaper than naming the type (which spells out the whole schema)."""
        def converts() -> Column:
            return F.try_variant_get(F.col(self.root), "$", "map<string,variant>").isNotNull()

        return self._view(0, ("is_object",), converts)

    def vtype(self, path: str) -> Column:
        return self._view(1, ("vtype", path), lambda: F.schema_of_variant(self.raw(path)))

    def get(self, path: str, spark_type: str) -> Column:
        return self._view(1, ("get", path, spark_type), lambda: F.try_variant_get(self.raw(path), "$", spark_type))

    def string(self, path: str) -> Column:
        return self.get(path, "string")

    def timestamp(self, path: str) -> Column:
        return self._view(2, ("timestamp", path), lambda: _timestamp(self.string(path)))

    def add(self, df: DataFrame) -> DataFrame:
        for stage in self._stages:
            df = df.withColumns(stage)
        return df

    def drop(self, df: DataFrame) -> DataFrame:
        return df.drop(*self._names.values())


def _is_json_type(vtype: Column, json_type: str) -> Column:
    if json_type == "string":
        return vtype == "STRING"
    if json_type == "boolean":
        return vtype == "BOOLEAN"
    if json_type == "object":
        return vtype.startswith("OBJECT")
    if json_type == "integer":
        # JSON Schema counts 1.0 and 1e0 as integers (Spark reads them as DECIMAL(2,1) and
        # DOUBLE); whether the value is whole is checked with the field's values.
        return vtype.isin(*INTEGER_TYPES, "DOUBLE", "FLOAT") | vtype.startswith("DECIMAL")
    if json_type == "number":
        return vtype.isin(*INTEGER_TYPES, "FLOAT", "DOUBLE") | vtype.startswith("DECIMAL")
    raise ValueError(json_type)


@dataclass(frozen=True)
class _Check:
    """One contract check: where `failed` is true the record gets `reason` and `detail`."""
    failed: Column
    reason: str
    detail: Column


def _lit_detail(text: str) -> Column:
    return F.lit(text)


def _presence_checks(f: _Fields, spec: FieldSpec, path: str, applies: Column | None) -> list[_Check]:
    raw = f.raw(path)
    vtype = f.vtype(path)
    scope = applies if applies is not None else F.lit(True)
    label = path[2:]
    checks: list[_Check] = []
    if spec.required or spec.required_for:
        checks.append(_Check(scope & raw.isNull(), MISSING_FIELD, _lit_detail(f"{label} is required")))
        checks.append(_Check(scope & raw.isNotNull() & F.is_variant_null(raw), NULL_FIELD,
                             _lit_detail(f"{label} is null")))
    # An optional field that is present and not null must still have its declared type:
    # a numeric dedup_key would silently change what the dedup rules compare.
    checks.append(_Check(
        raw.isNotNull() & ~F.is_variant_null(raw) & ~_is_json_type(vtype, spec.json_type),
        WRONG_TYPE,
        F.concat(F.lit(f"{label} must be a JSON {spec.json_type}, got "), F.lower(vtype)),
    ))
    return checks


def _value_checks(f: _Fields, spec: FieldSpec, path: str) -> list[_Check]:
    """Range, length, enum, format checks for a field whose type is already right."""
    label = path[2:]
    checks: list[_Check] = []
    raw = f.raw(path)
    present = raw.isNotNull() & ~F.is_variant_null(raw) & _is_json_type(f.vtype(path), spec.json_type)
    if spec.json_type == "string":
        s = f.string(path)
        if spec.min_length is not None:
            checks.append(_Check(F.char_length(s) < spec.min_length, INVALID_VALUE,
                                 _lit_detail(f"{label} must have at least {spec.min_length} characters")))
        if spec.max_length is not None:
            checks.append(_Check(F.char_length(s) > spec.max_length, INVALID_VALUE,
                                 _lit_detail(f"{label} must have at most {spec.max_length} characters")))
        if spec.pattern:
            checks.append(_Check(~s.rlike(spec.pattern), INVALID_VALUE,
                                 _lit_detail(f"{label} must match {spec.pattern}")))
        if spec.fmt == "date-time":
            checks.append(_Check(~s.rlike(RFC3339) | f.timestamp(path).isNull(), INVALID_VALUE,
                                 F.concat(F.lit(f"{label} is not an RFC 3339 timestamp with offset: "),
                                          F.substring(s, 1, 64))))
        if spec.enum and spec.name != "event_type":
            checks.append(_Check(~s.isin(*spec.enum), INVALID_VALUE,
                                 F.concat(F.lit(f"{label} must be one of {', '.join(spec.enum)}, got "),
                                          F.substring(s, 1, 64))))
    if spec.json_type == "string" and spec.spark_type and spec.spark_type.startswith("decimal"):
        # A decimal carried as a string must fit its column exactly: no silent rounding,
        # no overflow to null.
        precision, scale = (int(x) for x in re.findall(r"\d+", spec.spark_type))
        fits = rf"^-?[0-9]{{1,{precision - scale}}}(\.[0-9]{{1,{scale}}})?$"
        checks.append(_Check(~f.string(path).rlike(fits), INVALID_VALUE,
                             _lit_detail(f"{label} must be a decimal with at most {scale} decimals "
                                         f"and {precision - scale} integer digits")))
    if spec.json_type == "integer":
        # A whole number is a decimal with no fraction: the same exactness rule as quantity.
        checks.append(_Check(~_exact_decimal(f, path, 0), WRONG_TYPE,
                             _lit_detail(f"{label} must be a JSON integer")))
    if spec.json_type == "number" and spec.decimal_scale is not None:
        checks.append(_Check(~_exact_decimal(f, path, spec.decimal_scale), INVALID_VALUE,
                             _lit_detail(f"{label} must have at most {spec.decimal_scale} decimals "
                                         f"and {MAX_QUANTITY_DIGITS} integer digits")))
    # Value rules speak only of a field that is there with the right type; absence and
    # type errors are reported by the presence checks.
    return [_Check(present & c.failed, c.reason, c.detail) for c in checks]


def _sealed_parse(value: Column) -> Column:
    """`[<value>,"<md5 of value>"]` parsed as one VARIANT array (null past the nesting limit).
    Reads the hidden columns `_containers` (how many '{' and '[' the value holds) and `_md5`.

    Spark's JSON parser reads the first value and ignores whatever follows it, so
    `{...}{...}` or `{...} junk` would parse as the first object. Sealing the text in an
    array with a trailing element only the whole value can predict (its own digest) makes
    any trailing content either a syntax error or a wrong second element.
    """
    text = value.cast("string")
    sealed = F.concat(F.lit("["), text, F.lit(',"'), F.col("_md5"), F.lit('"]'))
    return F.when(F.col("_containers") <= MAX_CONTAINERS, F.try_parse_json(sealed))


def _sealed_value() -> Column:
    """The parsed value from `_w`, or null when something followed it."""
    whole = F.try_variant_get(F.col("_w"), "$[1]", "string") == F.col("_md5")
    return F.when(whole, F.variant_get(F.col("_w"), "$[0]", "variant"))


def _containers(text: Column) -> Column:
    """How many '{' and '[' the text holds (linear, no regex: huge values stay cheap; two
    byte-level replaces cost a quarter of one `translate`, which walks code points)."""
    stripped = F.replace(F.replace(text, F.lit("{"), F.lit("")), F.lit("["), F.lit(""))
    return F.octet_length(text) - F.octet_length(stripped)


def _timestamp(s: Column) -> Column:
    return F.try_to_timestamp(F.upper(s), F.lit(RFC3339_PARSE))


def _exact_decimal(f: _Fields, path: str, scale: int) -> Column:
    """True when the JSON number converts to decimal(38, scale) without rounding.

    Spark's JSON reader keeps plain numbers as exact decimals and numbers with an exponent
    (or too many digits) as doubles. An exact decimal is judged by its digits as written
    (no cast can round a far decimal away first); a double by its value.
    """
    vtype = f.vtype(path)
    target = f.get(path, f"decimal(38,{scale})")
    as_double = f.get(path, "double")
    decimal_scale = F.regexp_extract(vtype, r"^DECIMAL\(\d+,(\d+)\)$", 1).cast("int")
    digits_fit = f.string(path).rlike(rf"^-?[0-9]+(\.[0-9]{{0,{scale}}}0*)?$")
    # A double of 0 is exact only if it was written as zero: 1e-400 underflows to 0 and
    # its digits are gone from the variant, so they are looked for in the raw text (any
    # "<key>": number whose mantissa has a non-zero digit; `*+` never backtracks). A
    # zero is a double only in exponent form, so nothing ordinary takes this branch.
    key = path.removeprefix("$.")
    underflowed = (as_double == 0) & F.col("value").cast("string").rlike(rf'"{key}"\s*:\s*-?[0.]*+[1-9]')
    exact = (
        F.when(vtype.isin(*INTEGER_TYPES), F.lit(True))
        # Zero with a long scale prints as 0E-8, which the digit pattern does not read.
        .when(vtype.startswith("DECIMAL"), (decimal_scale <= scale) | digits_fit | (as_double == 0))
        .when(vtype.isin("DOUBLE", "FLOAT"),
              target.isNotNull() & (target.cast("double") == as_double) & ~underflowed)
        .otherwise(F.lit(False))
    )
    return target.isNotNull() & F.coalesce(exact, F.lit(False))


def _checks(contract: EventContract, f: _Fields, options: SilverConfig) -> list[_Check]:
    event_type = f.string("$.event_type")
    text = F.col("value").cast("string")
    checks: list[_Check] = [
        _Check(F.col("value").isNull(), NULL_VALUE, _lit_detail("record has no value")),
        _Check(~F.is_valid_utf8(text), INVALID_UTF8, _lit_detail("value is not valid UTF-8")),
        # Only a value with a \u escape can hold one; the test is cheap, the regex is not.
        _Check(text.contains("\\u") & text.rlike(LONE_SURROGATE), INVALID_UTF8,
               _lit_detail("value escapes a lone UTF-16 surrogate (\\uD800-\\uDFFF), which has no UTF-8 form")),
        _Check(F.col("_containers") > MAX_CONTAINERS, INVALID_JSON,
               _lit_detail(f"value has more than {MAX_CONTAINERS} JSON objects and arrays (nesting limit)")),
        _Check(F.col("_v").isNull(), INVALID_JSON,
               _lit_detail("value is not valid JSON (syntax, NaN/Infinity, duplicated key or over the size limit)")),
        _Check(~f.is_object(), NOT_AN_OBJECT,
               F.concat(F.lit("value must be a JSON object, got "), F.lower(F.schema_of_variant(F.col("_v"))))),
    ]
    version_spec = contract.field("schema_version")
    checks += _presence_checks(f, version_spec, "$.schema_version", None)
    version = f.get("$.schema_version", "decimal(38,6)")
    # A version too large for the decimal reads as null: unsupported too, not a pass
    # (absent or mistyped versions were reported by the presence checks above).
    checks.append(_Check(F.coalesce(version != F.lit(contract.version), F.lit(True)), UNSUPPORTED_SCHEMA_VERSION,
                         F.concat(F.lit("schema_version "), f.get("$.schema_version", "string"),
                                  F.lit(f" has no schema here (supported: {contract.version})"))))
    for spec in contract.fields:
        if spec.name == "schema_version":
            continue
        path = _path(spec.name)
        applies = event_type.isin(*spec.required_for) if spec.required_for and not spec.required else None
        checks += _presence_checks(f, spec, path, applies)
        for child in spec.children:
            child_path = f"{path}.{child.name}"
            parent_ok = _is_json_type(f.vtype(path), "object")
            checks += [
                _Check(parent_ok & c.failed, c.reason, c.detail)
                for c in _presence_checks(f, child, child_path, None)
            ]
    checks.append(_Check(~event_type.isin(*contract.event_types), UNKNOWN_EVENT_TYPE,
                         F.concat(F.lit("event_type "), F.substring(event_type, 1, 64), F.lit(" is not known"))))
    for spec in contract.fields:
        path = _path(spec.name)
        checks += _value_checks(f, spec, path)
        for child in spec.children:
            checks += _value_checks(f, child, f"{path}.{child.name}")
    # RFC 3339 admits year 0000; no billing event is that old, and dates before the
    # floor break every reader that is not Spark (Python's datetime starts at year 1).
    checks.append(_Check(f.timestamp("$.occurred_at") < F.lit(MIN_OCCURRED_AT).cast("timestamp"), INVALID_VALUE,
                         F.concat(F.lit("occurred_at "), F.substring(f.string("$.occurred_at"), 1, 64),
                                  F.lit(f" is before {MIN_OCCURRED_AT} (out of range)"))))
    quantity = f.get("$.quantity", "decimal(38,6)")
    checks.append(_Check(quantity < 0, NEGATIVE_QUANTITY, _lit_detail("quantity must be >= 0")))
    occurred_at = f.timestamp("$.occurred_at")
    checks.append(_Check(
        occurred_at > F.col("ingested_at") + _interval(options.future_tolerance), FUTURE_OCCURRED_AT,
        F.concat(F.lit("occurred_at "), f.string("$.occurred_at"),
                 F.lit(f" is more than {options.future_tolerance.total_seconds() / 3600:g} h after ingestion")),
    ))
    return checks


def _first_failure(checks: list[_Check]) -> Column:
    """struct(reason, detail) of the first failing check, null when all pass.

    A check whose inputs are null (the field is absent) neither passes nor fails; the
    presence checks earlier in the list own that case.
    """
    expr = F.lit(None).cast("struct<reason:string,detail:string>")
    for check in reversed(checks):
        expr = F.when(F.coalesce(check.failed, F.lit(False)),
                      F.struct(F.lit(check.reason).alias("reason"), check.detail.alias("detail"))
                      ).otherwise(expr)
    return expr


class _FastPath:
    """The good path: certifies the records every check would pass, with no diagnostics.

    The sealed VARIANT parse is cheap (a few microseconds a record); what costs is walking
    to each field by path, naming its JSON type and running every check's expression.
    Here the top-level object is cast three times, each in one pass, into structs: the
    typed values (`_sv`); the string fields as binary (`_sb`: a VARIANT casts to binary
    only from a string, so a non-null there proves the JSON type); and the numbers and
    objects as sub-variants (`_sx`), whose type is named (numbers, to tell an exact
    decimal from a double) or rendered (objects). A record is certified only when the
    contract's checks, as one conjunction over those, are all true; whatever the fast path
    cannot vouch for (a \\u escape, a number with an exponent, a version written 1.0, any
    failure) is left to the exact path, which then runs for those records alone.

    Certified records get the typed values the exact path would give: the same casts of
    the same VARIANT (tests/unit/test_hostile_input.py checks that the two paths agree on
    the hostile corpus and on generated traffic, and that generated traffic is certified).
    """

    def __init__(self, contract: EventContract, options: SilverConfig):
        self.contract = contract
        self.options = options
        self.strings = [f for f in contract.fields if f.json_type == "string"]
        self.others = [f for f in contract.fields if f.json_type != "string"]

    @staticmethod
    def _struct(fields: list[tuple[str, str]]) -> str:
        return "struct<" + ",".join(f"`{name}`:{type_}" for name, type_ in fields) + ">"

    def _typed_type(self, spec: FieldSpec) -> str:
        if spec.json_type == "string":
            return "string"
        if spec.json_type in ("integer", "number"):
            return "decimal(38,6)"
        return "variant"

    def stages(self) -> list[dict[str, Column]]:
        v = F.col("_v")
        first = {
            "_sv": F.try_variant_get(v, "$", self._struct([(f.name, self._typed_type(f)) for f in self.contract.fields])),
            "_sb": F.try_variant_get(v, "$", self._struct([(f.name, "binary") for f in self.strings])),
            "_sx": F.try_variant_get(v, "$", self._struct([(f.name, "variant") for f in self.others])),
        }
        # Objects are rendered (their type name would spell out their whole schema); numbers
        # named; the timestamp parsed once (its formatter is the dearest call here).
        second = {self.kind(f.name): (F.to_json(F.col("_sx")[f.name]) if f.json_type == "object"
                                      else F.schema_of_variant(F.col("_sx")[f.name])) for f in self.others}
        second["_ts"] = _timestamp(self.value("occurred_at"))
        return [first, second]

    @staticmethod
    def kind(name: str) -> str:
        return f"_t_{name}"

    def hidden(self) -> list[str]:
        return ["_sv", "_sb", "_sx", "_ts", *(self.kind(f.name) for f in self.others)]

    @staticmethod
    def value(name: str) -> Column:
        return F.col("_sv")[name]

    def _present_and_typed(self, spec: FieldSpec) -> tuple[Column, Column]:
        """(present and not JSON null, of the declared JSON type); the second is read only when
        the first holds."""
        if spec.json_type == "string":
            # A non-string casts to string too (numbers, objects as JSON): only binary tells.
            return self.value(spec.name).isNotNull(), F.col("_sb")[spec.name].isNotNull()
        sub = F.col("_sx")[spec.name]
        present = sub.isNotNull() & ~F.is_variant_null(sub)
        t = F.col(self.kind(spec.name))
        if spec.json_type == "object":
            return present, t.startswith("{")
        if spec.json_type == "integer":
            return present, t.isin(*INTEGER_TYPES)
        if spec.json_type == "number" and spec.decimal_scale is not None:
            scales = [f"{s})" for s in range(spec.decimal_scale + 1)]
            exact = t.isin(*INTEGER_TYPES) | (t.startswith("DECIMAL(") & F.substring_index(t, ",", -1).isin(*scales))
            # decimal(38,6) holds 32 integer digits: a longer number is null here, not certified.
            return present, exact & self.value(spec.name).isNotNull()
        return present, F.lit(False)  # a JSON type the fast path does not vouch for

    @staticmethod
    def _string_ok(spec: FieldSpec, s: Column) -> list[Column]:
        ok = []
        if spec.min_length is not None:
            ok.append(F.char_length(s) >= spec.min_length)
        if spec.max_length is not None:
            ok.append(F.char_length(s) <= spec.max_length)
        if spec.pattern:
            ok.append(s.rlike(spec.pattern))
        if spec.enum:
            ok.append(s.isin(*spec.enum))
        if spec.fmt == "date-time":
            ok.append(s.rlike(RFC3339) & (F.col("_ts") if spec.name == "occurred_at" else _timestamp(s)).isNotNull())
        if spec.spark_type and spec.spark_type.startswith("decimal"):
            precision, scale = (int(x) for x in re.findall(r"\d+", spec.spark_type))
            ok.append(s.rlike(rf"^-?[0-9]{{1,{precision - scale}}}(\.[0-9]{{1,{scale}}})?$"))
        return ok

    def _child_ok(self, parent: FieldSpec, child: FieldSpec) -> Column:
        path = f"$.{parent.name}.{child.name}"
        s = F.try_variant_get(F.col("_v"), path, "string")
        if child.json_type != "string":
            return F.lit(False)
        ok = _all([F.try_variant_get(F.col("_v"), path, "binary").isNotNull(), *self._string_ok(child, s)])
        return (s.isNotNull() & ok) if child.required else (s.isNull() | ok)

    def certified(self) -> Column:
        text = F.col("value").cast("string")
        event_type = self.value("event_type")
        conds = [
            F.col("value").isNotNull(), F.is_valid_utf8(text),
            # Escapes can hide lone surrogates and odd spellings of keys: the exact path reads those.
            ~text.contains("\\u"),
            F.col("_sv").isNotNull(),
        ]
        for spec in self.contract.fields:
            present, typed = self._present_and_typed(spec)
            ok = _all([typed, *(self._string_ok(spec, self.value(spec.name)) if spec.json_type == "string" else []),
                       *(self._child_ok(spec, c) for c in spec.children)])
            if spec.required:
                conds.append(present & ok)
            elif spec.required_for:
                conds.append(F.when(event_type.isin(*spec.required_for), present & ok).otherwise(~present | ok))
            else:
                conds.append(~present | ok)
        occurred_at = F.col("_ts")
        quantity = self.value("quantity")
        conds += [
            self.value("schema_version") == F.lit(self.contract.version),
            occurred_at >= F.lit(MIN_OCCURRED_AT).cast("timestamp"),
            occurred_at <= F.col("ingested_at") + _interval(self.options.future_tolerance),
            quantity.isNull() | (quantity >= 0),
        ]
        return F.coalesce(_all(conds), F.lit(False))

    def typed(self) -> dict[str, Column]:
        """The typed columns of a certified record, read as the exact path reads them."""
        occurred_at = F.col("_ts")
        properties = F.col(self.kind("properties"))
        return {
            "event_id": self.value("event_id"),
            "account_id": self.value("account_id"),
            "event_type": self.value("event_type"),
            "occurred_at": occurred_at,
            "schema_version": self.value("schema_version").cast("int"),
            "source": self.value("source"),
            "event_date": F.to_date(occurred_at),
            "product": self.value("product"),
            "metric": self.value("metric"),
            "quantity": self.value("quantity"),
            "dedup_key": self.value("dedup_key"),
            "plan_id": self.value("plan_id"),
            "amount_value": F.try_variant_get(F.col("_v"), "$.amount.value", "decimal(38,6)"),
            "amount_currency": F.try_variant_get(F.col("_v"), "$.amount.currency", "string"),
            "properties": F.when(properties.startswith("{"), properties),
            "is_late": occurred_at < F.col("ingested_at") - _interval(self.options.late_threshold),
        }


def _all(conds: list[Column]) -> Column:
    out = F.lit(True)
    for c in conds:
        out = out & c
    return out


def parse_events(contract: EventContract, options: SilverConfig = SilverConfig(), *, fast_path: bool = True):
    """bronze rows (value, ingested_at, Kafka coordinates) -> typed columns + `_problem`.

    Returns a transform for DataFrame.transform. Output keeps the raw key/value so bad
    records can be quarantined byte for byte.

    Two paths over one sealed VARIANT parse: the fast path certifies good records with
    plain column expressions; the exact path (every check, its reason and detail) reads a
    copy of the VARIANT that is null for certified records, so it costs nothing for them.
    `fast_path=False` sends every record down the exact path (tests compare the two).
    """

    def transform(df: DataFrame) -> DataFrame:
        fast = _FastPath(contract, options)
        staged, named = fast.stages()
        f = _Fields(root="_vs")
        checks = _checks(contract, f, options)
        occurred_at = f.timestamp("$.occurred_at")
        exact = {
            "event_id": f.string("$.event_id"),
            "account_id": f.string("$.account_id"),
            "event_type": f.string("$.event_type"),
            "occurred_at": occurred_at,
            "schema_version": f.get("$.schema_version", "int"),
            "source": f.string("$.source"),
            "event_date": F.to_date(occurred_at),
            "product": f.string("$.product"),
            "metric": f.string("$.metric"),
            "quantity": f.get("$.quantity", "decimal(38,6)"),
            "dedup_key": f.string("$.dedup_key"),
            "plan_id": f.string("$.plan_id"),
            "amount_value": f.get("$.amount.value", "decimal(38,6)"),
            "amount_currency": f.string("$.amount.currency"),
            "properties": F.when(f.vtype("$.properties").startswith("OBJECT"),
                                 F.to_json(f.raw("$.properties"))),
            "is_late": occurred_at < F.col("ingested_at") - _interval(options.late_threshold),
        }
        certified = F.col("_certified")
        typed = {name: F.when(certified, value).otherwise(exact[name]) for name, value in fast.typed().items()}
        typed["_problem"] = F.when(certified, F.lit(None).cast("struct<reason:string,detail:string>")).otherwise(
            _first_failure(checks))
        parsed = (
            df.withColumns({"_containers": _containers(F.col("value").cast("string")), "_md5": F.md5(F.col("value"))})
            .withColumn("_w", _sealed_parse(F.col("value"))).withColumn("_v", _sealed_value())
            .withColumns(staged).withColumns(named)
            .withColumn("_certified", fast.certified() if fast_path else F.lit(False))
            .withColumn("_vs", F.when(~certified, F.col("_v")))
        )
        # `_certified` stays: it tells which records needed the exact path.
        hidden = ["_w", "_md5", "_vs", *fast.hidden()]
        return (parsed.transform(f.add).withColumns(typed).transform(f.drop)
                .drop(*hidden).drop("_v", "_containers"))

    return transform


def with_kafka_coordinates(df: DataFrame) -> DataFrame:
    """Bronze column names -> the silver coordinate columns (kept beside the raw ones)."""
    return df.withColumns({
        "kafka_topic": F.col("topic"),
        "kafka_partition": F.col("partition"),
        "kafka_offset": F.col("offset"),
    })


def is_bad() -> Column:
    """A row with a problem: quarantined, never stored as an event."""
    return F.col("_problem").isNotNull()


def filter_bad(df: DataFrame) -> DataFrame:
    return df.filter(is_bad())


def filter_good(df: DataFrame) -> DataFrame:
    return df.filter(F.col("_problem").isNull())
