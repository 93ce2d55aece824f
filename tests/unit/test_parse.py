"""parse_events over tiny inline bronze rows, and the silver hot path as a stream.

The contract checks compile into one large expression, so every crafted record is parsed
in a single DataFrame (module fixture) and each test reads its own row from the result.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from chispa import assert_df_equality
from pyspark.sql import functions as F
from pyspark.sql import types as T

from pipelines.config import SilverConfig
from pipelines.contract import load_contract
from pipelines.transforms import parse
from pipelines.transforms.parse import filter_bad, filter_good, parse_events

INGESTED = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
MISSING = object()


class Raw(str):
    """JSON text inserted as is (numbers spelled exactly: 1e2, 1.0, 0.1234567)."""


def doc(base: dict, **changes) -> bytes:
    """base with changes (MISSING removes a key), serialized keeping Raw fragments verbatim."""
    fields = {**base, **changes}
    parts = []
    for key, value in fields.items():
        if value is MISSING:
            continue
        text = value if isinstance(value, Raw) else json.dumps(value, ensure_ascii=False)
        parts.append(f"{json.dumps(key)}:{text}")
    return ("{" + ",".join(parts) + "}").encode("utf-8")


USAGE = {
    "event_id": "u-1", "event_type": "usage", "account_id": "acc-1",
    "occurred_at": "2024-05-01T11:30:00Z", "schema_version": 1, "source": "helpdesk-api",
    "product": "helpdesk", "metric": "billable_tickets", "quantity": Raw("1"), "dedup_key": "ticket-9",
}
ACCOUNT = {
    "event_id": "c-1", "event_type": "account.created", "account_id": "acc-1",
    "occurred_at": "2024-05-01T11:30:00Z", "schema_version": 1,
}
PLAN = {**ACCOUNT, "event_id": "p-1", "event_type": "plan.changed", "plan_id": "pro"}
PURCHASE = {
    **ACCOUNT, "event_id": "b-1", "event_type": "purchase.completed",
    "amount": Raw('{"value":"12.34","currency":"USD"}'),
}


@dataclass(frozen=True)
class Case:
    id: str
    value: bytes | None
    reason: str | None = None
    detail: str | None = None  # exact detail text
    detail_prefix: str | None = None  # when the tail names a Spark type
    ingested_at: datetime = INGESTED


BAD = [
    Case("null_value", None, parse.NULL_VALUE, "record has no value"),
    Case("invalid_utf8", b'\xff\xfe{"event_id":"x"}', parse.INVALID_UTF8, "value is not valid UTF-8"),
    Case("invalid_json_syntax", b'{"event_id": ', parse.INVALID_JSON,
         "value is not valid JSON (syntax, NaN/Infinity, duplicated key or over the size limit)"),
    Case("invalid_json_duplicated_key", doc(USAGE, extra=Raw('1')).replace(b'"extra"', b'"quantity"'),
         parse.INVALID_JSON,
         "value is not valid JSON (syntax, NaN/Infinity, duplicated key or over the size limit)"),
    Case("invalid_json_nan", doc(USAGE, quantity=Raw("NaN")), parse.INVALID_JSON,
         "value is not valid JSON (syntax, NaN/Infinity, duplicated key or over the size limit)"),
    Case("not_an_object_array", b"[1,2]", parse.NOT_AN_OBJECT, "value must be a JSON object, got array<bigint>"),
    Case("not_an_object_string", b'"usage"', parse.NOT_AN_OBJECT, "value must be a JSON object, got string"),
    Case("not_an_object_null", b"null", parse.NOT_AN_OBJECT, detail_prefix="value must be a JSON object, got "),
    Case("unsupported_version_2", doc(USAGE, schema_version=2), parse.UNSUPPORTED_SCHEMA_VERSION,
         "schema_version 2 has no schema here (supported: 1)"),
    Case("unsupported_version_1_5", doc(USAGE, schema_version=Raw("1.5")), parse.UNSUPPORTED_SCHEMA_VERSION,
         "schema_version 1.5 has no schema here (supported: 1)"),
    # The version is checked before anything else in the object: other fields follow its schema.
    Case("unsupported_version_wins", doc(USAGE, schema_version=3, event_id=MISSING, quantity=Raw("-1")),
         parse.UNSUPPORTED_SCHEMA_VERSION, "schema_version 3 has no schema here (supported: 1)"),
    Case("missing_event_id", doc(USAGE, event_id=MISSING), parse.MISSING_FIELD, "event_id is required"),
    Case("missing_schema_version", doc(USAGE, schema_version=MISSING), parse.MISSING_FIELD,
         "schema_version is required"),
    Case("missing_everything", b"{}", parse.MISSING_FIELD, "schema_version is required"),
    Case("missing_quantity_on_usage", doc(USAGE, quantity=MISSING), parse.MISSING_FIELD, "quantity is required"),
    Case("missing_plan_id_on_plan_changed", doc(PLAN, plan_id=MISSING), parse.MISSING_FIELD,
         "plan_id is required"),
    Case("missing_plan_id_on_subscription_started",
         doc(PLAN, event_type="subscription.started", plan_id=MISSING), parse.MISSING_FIELD, "plan_id is required"),
    Case("missing_amount_on_purchase", doc(PURCHASE, amount=MISSING), parse.MISSING_FIELD, "amount is required"),
    Case("missing_amount_currency", doc(PURCHASE, amount=Raw('{"value":"1.00"}')), parse.MISSING_FIELD,
         "amount.currency is required"),
    # Contract order: a missing field is reported before a negative quantity.
    Case("missing_before_negative", doc(USAGE, account_id=MISSING, quantity=Raw("-1")), parse.MISSING_FIELD,
         "account_id is required"),
    Case("null_account_id", doc(USAGE, account_id=None), parse.NULL_FIELD, "account_id is null"),
    Case("null_schema_version", doc(USAGE, schema_version=None), parse.NULL_FIELD, "schema_version is null"),
    Case("null_quantity_on_usage", doc(USAGE, quantity=None), parse.NULL_FIELD, "quantity is null"),
    Case("null_product_on_usage", doc(USAGE, product=None), parse.NULL_FIELD, "product is null"),
    Case("quantity_string", doc(USAGE, quantity="2"), parse.WRONG_TYPE, "quantity must be a JSON number, got string"),
    Case("quantity_boolean", doc(USAGE, quantity=True), parse.WRONG_TYPE,
         "quantity must be a JSON number, got boolean"),
    Case("schema_version_string", doc(USAGE, schema_version="1"), parse.WRONG_TYPE,
         "schema_version must be a JSON integer, got string"),
    Case("event_type_number", doc(USAGE, event_type=5), parse.WRONG_TYPE,
         "event_type must be a JSON string, got bigint"),
    # Optional fields, when present and not null, must still have their type.
    Case("dedup_key_number", doc(USAGE, dedup_key=123), parse.WRONG_TYPE,
         "dedup_key must be a JSON string, got bigint"),
    Case("properties_array", doc(USAGE, properties=[1]), parse.WRONG_TYPE,
         "properties must be a JSON object, got array<bigint>"),
    Case("amount_string", doc(PURCHASE, amount="12.34"), parse.WRONG_TYPE, "amount must be a JSON object, got string"),
    Case("amount_value_number", doc(PURCHASE, amount=Raw('{"value":12.34,"currency":"USD"}')), parse.WRONG_TYPE,
         detail_prefix="amount.value must be a JSON string, got "),
    Case("unknown_event_type", doc(USAGE, event_type="usage.v2"), parse.UNKNOWN_EVENT_TYPE,
         "event_type usage.v2 is not known"),
    Case("event_id_129", doc(USAGE, event_id="e" * 129), parse.INVALID_VALUE,
         "event_id must have at most 128 characters"),
    Case("event_id_empty", doc(USAGE, event_id=""), parse.INVALID_VALUE, "event_id must have at least 1 characters"),
    Case("account_id_65", doc(USAGE, account_id="a" * 65), parse.INVALID_VALUE,
         "account_id must have at most 64 characters"),
    Case("dedup_key_empty", doc(USAGE, dedup_key=""), parse.INVALID_VALUE, "dedup_key must have at least 1 characters"),
    Case("product_unknown", doc(USAGE, product="phone"), parse.INVALID_VALUE,
         "product must be one of helpdesk, automate, voice, sms, convert, got phone"),
    Case("occurred_at_no_offset", doc(USAGE, occurred_at="2024-05-01T12:00:00"), parse.INVALID_VALUE,
         "occurred_at is not an RFC 3339 timestamp with offset: 2024-05-01T12:00:00"),
    Case("occurred_at_space", doc(USAGE, occurred_at="2024-05-01 12:00:00Z"), parse.INVALID_VALUE,
         "occurred_at is not an RFC 3339 timestamp with offset: 2024-05-01 12:00:00Z"),
    Case("occurred_at_compact_offset", doc(USAGE, occurred_at="2024-05-01T12:00:00+0200"), parse.INVALID_VALUE,
         "occurred_at is not an RFC 3339 timestamp with offset: 2024-05-01T12:00:00+0200"),
    Case("occurred_at_feb_30", doc(USAGE, occurred_at="2024-02-30T12:00:00Z"), parse.INVALID_VALUE,
         "occurred_at is not an RFC 3339 timestamp with offset: 2024-02-30T12:00:00Z"),
    Case("quantity_7_decimals", doc(USAGE, quantity=Raw("1.1234567")), parse.INVALID_VALUE,
         "quantity must have at most 6 decimals and 32 integer digits"),
    Case("quantity_exponent_too_fine", doc(USAGE, quantity=Raw("1.5e-7")), parse.INVALID_VALUE,
         "quantity must have at most 6 decimals and 32 integer digits"),
    Case("quantity_float_noise", doc(USAGE, quantity=Raw("0.30000000000000004")), parse.INVALID_VALUE,
         "quantity must have at most 6 decimals and 32 integer digits"),
    Case("quantity_33_digits", doc(USAGE, quantity=Raw("1" * 33)), parse.INVALID_VALUE,
         "quantity must have at most 6 decimals and 32 integer digits"),
    # A too-precise negative quantity is first of all not a valid decimal.
    Case("negative_quantity_7_decimals", doc(USAGE, quantity=Raw("-1.1234567")), parse.INVALID_VALUE,
         "quantity must have at most 6 decimals and 32 integer digits"),
    Case("currency_lowercase", doc(PURCHASE, amount=Raw('{"value":"1.00","currency":"usd"}')), parse.INVALID_VALUE,
         "amount.currency must match ^[A-Z]{3}$"),
    Case("amount_value_comma", doc(PURCHASE, amount=Raw('{"value":"12,34","currency":"EUR"}')), parse.INVALID_VALUE,
         r"amount.value must match ^-?[0-9]+(\.[0-9]+)?$"),
    Case("negative_quantity", doc(USAGE, quantity=Raw("-1")), parse.NEGATIVE_QUANTITY, "quantity must be >= 0"),
    Case("negative_quantity_fraction", doc(USAGE, quantity=Raw("-0.000001")), parse.NEGATIVE_QUANTITY,
         "quantity must be >= 0"),
    Case("future_24h_plus_1s", doc(USAGE, occurred_at="2024-05-02T12:00:01Z"), parse.FUTURE_OCCURRED_AT,
         "occurred_at 2024-05-02T12:00:01Z is more than 24 h after ingestion"),
    Case("future_24h_plus_1us_offset", doc(USAGE, occurred_at="2024-05-02T14:00:00.000001+02:00"),
         parse.FUTURE_OCCURRED_AT,
         "occurred_at 2024-05-02T14:00:00.000001+02:00 is more than 24 h after ingestion"),
]

GOOD = [
    Case("usage_offset", doc(USAGE, event_id="u-offset", occurred_at="2024-05-01T12:15:30.5+02:00",
                             quantity=Raw("2.5"), properties={"b": [1, 2], "a": "x"})),
    Case("usage_lowercase_tz", doc(USAGE, event_id="u-lower", occurred_at="2024-04-30t23:59:59.123456z",
                                   product="sms", metric="sms_segments", quantity=Raw("0.123456"))),
    Case("usage_offset_day", doc(USAGE, occurred_at="2024-05-01T01:30:00+02:00")),
    Case("usage_exponent", doc(USAGE, event_id="u-exp", quantity=Raw("1e2"))),
    Case("usage_exponent_upper", doc(USAGE, quantity=Raw("1.5E+2"))),
    Case("usage_version_1_0", doc(USAGE, schema_version=Raw("1.0"))),
    Case("usage_trailing_zero", doc(USAGE, quantity=Raw("0.1234560"))),
    Case("usage_32_digits", doc(USAGE, quantity=Raw("9" * 32 + ".999999"))),
    Case("usage_zero", doc(USAGE, quantity=Raw("0"))),
    Case("usage_optional_nulls", doc(USAGE, source=None, dedup_key=None, properties=None, plan_id=None)),
    Case("usage_optional_absent", doc(USAGE, source=MISSING, dedup_key=MISSING)),
    Case("event_id_128", doc(USAGE, event_id="e" * 128, account_id="a" * 64)),
    Case("event_id_128_multibyte", doc(USAGE, event_id="\u00e9" * 128)),
    Case("future_exactly_24h", doc(USAGE, occurred_at="2024-05-02T12:00:00Z")),
    Case("late_exactly_threshold", doc(ACCOUNT, occurred_at="2024-05-01T11:00:00Z")),
    Case("late_past_threshold", doc(ACCOUNT, occurred_at="2024-05-01T10:59:59.999999Z")),
    Case("late_other_ingestion", doc(ACCOUNT, occurred_at="2024-05-01T11:00:00Z"),
         ingested_at=INGESTED + timedelta(seconds=1)),
    Case("account_created", doc(ACCOUNT, source="signup")),
    Case("plan_changed", doc(PLAN)),
    Case("purchase", doc(PURCHASE, amount=Raw('{"value":"-5.5","currency":"EUR"}'))),
    Case("purchase_plain", doc(PURCHASE)),
]

CASES = BAD + GOOD
INPUT_SCHEMA = "id string, value binary, ingested_at timestamp"


def test_case_ids_are_unique():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids))


@pytest.fixture(scope="module")
def parsed_df(spark):
    df = spark.createDataFrame([(c.id, c.value, c.ingested_at) for c in CASES], INPUT_SCHEMA)
    out = df.transform(parse_events(load_contract(1))).cache()
    yield out
    out.unpersist()


@pytest.fixture(scope="module")
def parsed(parsed_df):
    rows = parsed_df.withColumn(
        "occurred_at_utc", F.date_format("occurred_at", "yyyy-MM-dd'T'HH:mm:ss.SSSSSS")
    ).collect()
    return {r["id"]: r for r in rows}


def test_every_reason_code_is_produced(parsed):
    produced = {parsed[c.id]["_problem"]["reason"] for c in BAD}
    assert produced == set(parse.REASONS)


@pytest.mark.parametrize("case", BAD, ids=lambda c: c.id)
def test_bad_record_reason_and_detail(parsed, case):
    problem = parsed[case.id]["_problem"]
    assert problem is not None, f"{case.id} was accepted"
    assert problem["reason"] == case.reason
    if case.detail is not None:
        assert problem["detail"] == case.detail
    else:
        assert problem["detail"].startswith(case.detail_prefix)
        assert len(problem["detail"]) > len(case.detail_prefix)


@pytest.mark.parametrize("case", GOOD, ids=lambda c: c.id)
def test_good_record_has_no_problem(parsed, case):
    assert parsed[case.id]["_problem"] is None


def test_raw_bytes_are_kept_for_bad_records(parsed):
    assert parsed["invalid_utf8"]["value"] == b'\xff\xfe{"event_id":"x"}'
    assert parsed["null_value"]["value"] is None
    assert parsed["null_value"]["event_id"] is None


def test_filter_good_and_filter_bad_split_the_rows(parsed_df):
    good = {r["id"] for r in parsed_df.transform(filter_good).select("id").collect()}
    bad = {r["id"] for r in parsed_df.transform(filter_bad).select("id").collect()}
    assert good == {c.id for c in GOOD}
    assert bad == {c.id for c in BAD}


@pytest.mark.parametrize("case_id, expected", [
    ("usage_exponent", Decimal("100.000000")),
    ("usage_exponent_upper", Decimal("150.000000")),
    ("usage_trailing_zero", Decimal("0.123456")),
    ("usage_32_digits", Decimal("9" * 32 + ".999999")),
    ("usage_zero", Decimal("0.000000")),
    ("usage_lowercase_tz", Decimal("0.123456")),
])
def test_quantity_is_an_exact_decimal(parsed, case_id, expected):
    quantity = parsed[case_id]["quantity"]
    assert isinstance(quantity, Decimal)
    assert quantity == expected
    assert quantity.as_tuple().exponent == -6


@pytest.mark.parametrize("case_id, expected", [
    ("usage_offset", "2024-05-01T10:15:30.500000"),
    ("usage_lowercase_tz", "2024-04-30T23:59:59.123456"),
    ("future_exactly_24h", "2024-05-02T12:00:00.000000"),
    ("late_past_threshold", "2024-05-01T10:59:59.999999"),
    # A bad row still gets its typed columns where they could be read.
    ("future_24h_plus_1us_offset", "2024-05-02T12:00:00.000001"),
])
def test_occurred_at_is_utc(parsed, case_id, expected):
    assert parsed[case_id]["occurred_at_utc"] == expected


def test_event_date_is_the_utc_day(parsed):
    # 01:30 on May 1st at +02:00 is still April 30th in UTC.
    assert parsed["usage_offset_day"]["occurred_at_utc"] == "2024-04-30T23:30:00.000000"
    assert parsed["usage_offset_day"]["event_date"] == date(2024, 4, 30)
    assert parsed["usage_lowercase_tz"]["event_date"] == date(2024, 4, 30)
    assert parsed["usage_offset"]["event_date"] == date(2024, 5, 1)


def test_integer_valued_schema_version_is_accepted_as_int(parsed):
    assert parsed["usage_version_1_0"]["schema_version"] == 1


def test_optional_fields_null_or_absent_are_null(parsed):
    for case_id in ("usage_optional_nulls", "usage_optional_absent"):
        row = parsed[case_id]
        assert (row["source"], row["dedup_key"], row["plan_id"], row["properties"]) == (None, None, None, None)


def test_boundary_lengths_are_accepted(parsed):
    assert parsed["event_id_128"]["event_id"] == "e" * 128
    assert parsed["event_id_128"]["account_id"] == "a" * 64
    # Lengths are in characters (code points), not UTF-8 bytes.
    assert parsed["event_id_128_multibyte"]["event_id"] == "\u00e9" * 128


@pytest.mark.parametrize("case_id, expected", [
    ("late_exactly_threshold", False),  # exactly 1 h behind: not late
    ("late_past_threshold", True),  # 1 h and 1 microsecond behind
    ("late_other_ingestion", True),
    ("usage_offset", False),
    ("future_exactly_24h", False),
])
def test_is_late_at_the_threshold(parsed, case_id, expected):
    assert parsed[case_id]["is_late"] is expected


def test_properties_are_kept_as_json_text(parsed):
    text = parsed["usage_offset"]["properties"]
    assert json.loads(text) == {"a": "x", "b": [1, 2]}
    assert text == '{"a":"x","b":[1,2]}'


def test_non_object_properties_are_not_stringified(parsed):
    assert parsed["properties_array"]["properties"] is None


def test_options_change_the_thresholds(spark):
    options = SilverConfig(late_threshold=timedelta(minutes=5), future_tolerance=timedelta(hours=1))
    rows = [
        ("late", doc(ACCOUNT, occurred_at="2024-05-01T11:54:59Z"), INGESTED),
        ("on_time", doc(ACCOUNT, occurred_at="2024-05-01T11:55:00Z"), INGESTED),
        ("future", doc(ACCOUNT, occurred_at="2024-05-01T13:00:01Z"), INGESTED),
        ("not_future", doc(ACCOUNT, occurred_at="2024-05-01T13:00:00Z"), INGESTED),
    ]
    out = {
        r["id"]: (r["is_late"], r["reason"], r["detail"])
        for r in spark.createDataFrame(rows, INPUT_SCHEMA).transform(parse_events(load_contract(1), options))
        .select("id", "is_late", "_problem.reason", "_problem.detail").collect()
    }
    assert out == {
        "late": (True, None, None),
        "on_time": (False, None, None),
        "future": (False, parse.FUTURE_OCCURRED_AT, "occurred_at 2024-05-01T13:00:01Z is more than 1 h after ingestion"),
        "not_future": (False, None, None),
    }


TYPED_COLUMNS = [
    "id", "event_id", "account_id", "event_type", "occurred_at", "schema_version", "source", "event_date",
    "product", "metric", "quantity", "dedup_key", "plan_id", "amount_value", "amount_currency", "properties",
    "is_late",
]
TYPED_SCHEMA = T.StructType([
    T.StructField("id", T.StringType()),
    T.StructField("event_id", T.StringType()),
    T.StructField("account_id", T.StringType()),
    T.StructField("event_type", T.StringType()),
    T.StructField("occurred_at", T.TimestampType()),
    T.StructField("schema_version", T.IntegerType()),
    T.StructField("source", T.StringType()),
    T.StructField("event_date", T.DateType()),
    T.StructField("product", T.StringType()),
    T.StructField("metric", T.StringType()),
    T.StructField("quantity", T.DecimalType(38, 6)),
    T.StructField("dedup_key", T.StringType()),
    T.StructField("plan_id", T.StringType()),
    T.StructField("amount_value", T.DecimalType(38, 6)),
    T.StructField("amount_currency", T.StringType()),
    T.StructField("properties", T.StringType()),
    T.StructField("is_late", T.BooleanType()),
])


def test_typed_output_of_good_rows(spark, parsed_df):
    ids = ["usage_offset", "usage_lowercase_tz", "usage_exponent", "usage_optional_nulls",
           "plan_changed", "purchase", "purchase_plain"]
    actual = parsed_df.filter(F.col("id").isin(ids)).select(*TYPED_COLUMNS)
    utc = lambda *a: datetime(*a, tzinfo=UTC)  # noqa: E731
    expected = spark.createDataFrame([
        ("usage_offset", "u-offset", "acc-1", "usage", utc(2024, 5, 1, 10, 15, 30, 500000), 1, "helpdesk-api",
         date(2024, 5, 1), "helpdesk", "billable_tickets", Decimal("2.500000"), "ticket-9", None, None, None,
         '{"a":"x","b":[1,2]}', False),
        ("usage_lowercase_tz", "u-lower", "acc-1", "usage", utc(2024, 4, 30, 23, 59, 59, 123456), 1, "helpdesk-api",
         date(2024, 4, 30), "sms", "sms_segments", Decimal("0.123456"), "ticket-9", None, None, None, None, True),
        ("usage_exponent", "u-exp", "acc-1", "usage", utc(2024, 5, 1, 11, 30), 1, "helpdesk-api",
         date(2024, 5, 1), "helpdesk", "billable_tickets", Decimal("100.000000"), "ticket-9", None, None, None,
         None, False),
        ("usage_optional_nulls", "u-1", "acc-1", "usage", utc(2024, 5, 1, 11, 30), 1, None,
         date(2024, 5, 1), "helpdesk", "billable_tickets", Decimal("1.000000"), None, None, None, None, None, False),
        ("plan_changed", "p-1", "acc-1", "plan.changed", utc(2024, 5, 1, 11, 30), 1, None,
         date(2024, 5, 1), None, None, None, None, "pro", None, None, None, False),
        ("purchase", "b-1", "acc-1", "purchase.completed", utc(2024, 5, 1, 11, 30), 1, None,
         date(2024, 5, 1), None, None, None, None, None, Decimal("-5.500000"), "EUR", None, False),
        ("purchase_plain", "b-1", "acc-1", "purchase.completed", utc(2024, 5, 1, 11, 30), 1, None,
         date(2024, 5, 1), None, None, None, None, None, Decimal("12.340000"), "USD", None, False),
    ], TYPED_SCHEMA)
    assert_df_equality(actual, expected, ignore_nullable=True, ignore_row_order=True)


# --- the silver hot path as a stream -----------------------------------------------------

def _bronze_row(partition: int, offset: int, value: bytes | None, ingested_at: datetime):
    return (b"acc-1", value, "billing.events", partition, offset, ingested_at, 1, [], ingested_at)


def test_silver_input_hot_dedup_as_a_stream(spark, tmp_path):
    from pipelines.jobs.common import JobContext, RunOptions
    from pipelines.jobs.silver import BRONZE, drop_hot_duplicates, read_bronze, silver_input
    from pipelines.settings import Settings
    from pipelines.tables import spec

    ctx = JobContext.from_settings(Settings().with_overrides(lake_root=str(tmp_path)),
                                   RunOptions(max_files_per_trigger=1))
    ctx.lake.ensure(spark, BRONZE)
    e1 = doc(USAGE, event_id="e1")
    e2a = doc(USAGE, event_id="e2")
    e2b = doc(USAGE, event_id="e2", quantity=Raw("2"))  # same identity, different payload
    neg = doc(USAGE, event_id="e3", quantity=Raw("-1"))  # bad, but with readable ids
    t0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    t1 = t0 + timedelta(minutes=1)
    first = [
        _bronze_row(0, 0, e1, t0), _bronze_row(0, 1, e1, t0),
        _bronze_row(0, 2, e2a, t0), _bronze_row(1, 0, e2b, t0),
        _bronze_row(0, 3, b"{bad", t0), _bronze_row(0, 4, b"{bad", t0),
        _bronze_row(0, 5, b"[1]", t0), _bronze_row(1, 5, b"[1]", t0),
        _bronze_row(0, 6, None, t0), _bronze_row(0, 7, None, t0),
        _bronze_row(0, 8, neg, t0), _bronze_row(1, 8, neg, t0),
    ]
    # A second micro-batch: identical copies of good events are caught by the state,
    # identical copies of bad records still pass.
    second = [_bronze_row(2, 0, e1, t1), _bronze_row(2, 1, b"{bad", t1), _bronze_row(2, 2, e2a, t1),
              _bronze_row(2, 3, neg, t1)]
    schema = spec(BRONZE).struct_type()
    for rows in (first, second):
        spark.createDataFrame(rows, schema).repartition(1).write.format("delta").mode("append") \
            .save(ctx.lake.path(BRONZE))

    seen: list[tuple] = []

    def collect(batch_df, batch_id):
        for r in batch_df.select("partition", "offset", "event_id", "_problem.reason").collect():
            seen.append((batch_id, r["partition"], r["offset"], r["event_id"], r["reason"]))

    delay = int(ctx.silver.watermark_delay.total_seconds())
    stream = read_bronze(spark, ctx).transform(lambda df: silver_input(df, ctx)) \
        .transform(drop_hot_duplicates(delay))
    assert stream.isStreaming
    query = (stream.writeStream.foreachBatch(collect)
             .option("checkpointLocation", str(tmp_path / "_chk"))
             .trigger(availableNow=True).start())
    query.awaitTermination(120)
    assert query.exception() is None

    batches = sorted({b for b, *_ in seen})
    assert len(batches) == 2
    by_batch = {b: sorted((p, o) for bb, p, o, *_ in seen if bb == b) for b in batches}
    e1_copies = [(p, o) for _, p, o, eid, reason in seen if eid == "e1"]
    assert len(e1_copies) == 1 and e1_copies[0] in {(0, 0), (0, 1)}
    assert sorted((p, o) for _, p, o, eid, _r in seen if eid == "e2") == [(0, 2), (1, 0)]
    bad = sorted((p, o, reason) for _, p, o, _e, reason in seen if reason is not None)
    assert bad == [
        (0, 3, parse.INVALID_JSON), (0, 4, parse.INVALID_JSON),
        (0, 5, parse.NOT_AN_OBJECT), (0, 6, parse.NULL_VALUE), (0, 7, parse.NULL_VALUE),
        (0, 8, parse.NEGATIVE_QUANTITY),
        (1, 5, parse.NOT_AN_OBJECT), (1, 8, parse.NEGATIVE_QUANTITY),
        (2, 1, parse.INVALID_JSON), (2, 3, parse.NEGATIVE_QUANTITY),
    ]
    assert by_batch[batches[1]] == [(2, 1), (2, 3)]
    assert len(by_batch[batches[0]]) == 11


def test_silver_input_hot_keys_in_batch(spark, tmp_path):
    """The same transform in batch mode: keys that merge copies, and keys that never do."""
    from pipelines.jobs.common import JobContext
    from pipelines.jobs.silver import BRONZE, silver_input
    from pipelines.settings import Settings
    from pipelines.tables import spec

    ctx = JobContext.from_settings(Settings().with_overrides(lake_root=str(tmp_path)))
    e1 = doc(USAGE, event_id="e1", account_id="acc-7")
    rows = [_bronze_row(0, 0, e1, INGESTED), _bronze_row(0, 1, e1, INGESTED), _bronze_row(0, 2, None, INGESTED)]
    out = {
        r["offset"]: (r["_identity"], r["_payload"], r["kafka_topic"], r["kafka_partition"], r["kafka_offset"])
        for r in spark.createDataFrame(rows, spec(BRONZE).struct_type()).transform(lambda df: silver_input(df, ctx))
        .select("offset", "_identity", "_payload", "kafka_topic", "kafka_partition", "kafka_offset").collect()
    }
    import hashlib
    digest = hashlib.sha256(e1).hexdigest()
    assert out == {
        0: ("acc-7\u0000e1", digest, "billing.events", 0, 0),
        1: ("acc-7\u0000e1", digest, "billing.events", 0, 1),
        2: ("record:billing.events:0:2", "", "billing.events", 0, 2),
    }
