"""The notification contract: ids, rendering, the outbox rows and their checks (pure)."""
from __future__ import annotations

import hashlib
import json
from datetime import datetime

import jsonschema
import pytest
from chispa import assert_df_equality
from pyspark.sql import functions as F

from pipelines.core.contract import schemas_dir
from pipelines.rules.notifications import (
    NotificationError, notification_id, notification_id_col, render_notification,
    summarise_for_staging, to_outbox_rows, with_contract_problem,
)
from tests.unit.frames import local_frame

STAGE = ("notification_id string, type string, account_id string, occurred_at timestamp, "
         "trigger_event_ids array<string>, payload string")


def schema():
    return json.loads((schemas_dir() / "notifications" / "v1.json").read_text())


def test_notification_id_is_sha256_of_type_account_and_key():
    assert notification_id("usage.quota_threshold", "acct-1", "2026-01|sms_segments|0.8") == hashlib.sha256(
        b"usage.quota_threshold|acct-1|2026-01|sms_segments|0.8").hexdigest()
    assert notification_id("a", "b", "c") != notification_id("a", "b", "d")
    with pytest.raises(NotificationError, match="account_id must be a non-empty string"):
        notification_id("a", "", "c")
    with pytest.raises(NotificationError, match="key must be"):
        notification_id("a", "b", None)


def test_column_version_matches_the_python_one_and_is_null_when_a_part_is(spark):
    df = local_frame(spark, [("welcome", "acct-1", "e-1"), ("welcome", None, "e-2"), ("ü", "東京", "k|1")],
                     "type string, account string, key string")
    got = [r[0] for r in df.select(notification_id_col("type", "account", F.col("key"))).collect()]
    assert got == [notification_id("welcome", "acct-1", "e-1"), None, notification_id("ü", "東京", "k|1")]


def test_rendered_notification_matches_the_json_schema_and_keeps_decimals_exact():
    nid = notification_id("purchase.receipt", "acct-1", "e-9")
    value = render_notification({"notification_id": nid, "type": "purchase.receipt", "account_id": "acct-1",
                                 "occurred_at": "2026-01-05T10:00:00.000000Z", "trigger_event_ids": ["e-9"],
                                 "payload": '{"amount": {"value": "12.10", "currency": "USD"}, "units": 0.1000001}'})
    body = json.loads(value)
    jsonschema.validate(body, schema())
    assert body["payload"]["amount"]["value"] == "12.10"
    assert b'"units":0.1000001' in value
    assert body["schema_version"] == 1 and body["trigger_event_ids"] == ["e-9"]


def test_the_schema_rejects_a_notification_without_trigger_ids():
    body = {"notification_id": "0" * 64, "schema_version": 1, "type": "x", "account_id": "a",
            "occurred_at": "2026-01-01T00:00:00Z", "payload": {}}
    with pytest.raises(jsonschema.ValidationError, match="trigger_event_ids"):
        jsonschema.validate(body, schema())


def test_contract_violations_name_the_problem(spark):
    good = notification_id("t", "a", "k")
    at = datetime(2026, 1, 1)
    df = local_frame(spark, [
        (good, "t", "a", at, ["e"], "{}"),
        ("XYZ", "t", "a", at, ["e"], "{}"),
        (good, None, "a", at, ["e"], "{}"),
        (good, "t", None, at, ["e"], "{}"),
        (good, "t", "a", None, ["e"], "{}"),
        (good, "t", "a", at, None, "{}"),
        (good, "t", "a", at, [], "[1]"),
        (good, "t", "a", at, [], "{not json"),
    ], STAGE)
    problems = [r["_problem"] for r in with_contract_problem(df).filter(F.col("_problem").isNotNull()).collect()]
    assert problems == [
        "notification_id must be 64 lower-case hex digits", "type is required", "account_id is required",
        "occurred_at is required", "trigger_event_ids is required (may be empty)",
        "payload must be a JSON object as text", "payload must be a JSON object as text",
    ]


def test_the_staging_summary_counts_the_rows_and_names_one_offending_row(spark):
    good = notification_id("t", "a", "k")
    at = datetime(2026, 1, 1)
    rows = [(good, "t", "a", at, ["e"], "{}"), (good, "t", "a", at, [], '{"n": 1}')]
    clean = summarise_for_staging(local_frame(spark, rows, STAGE)).collect()
    assert [(r["rows"], r["bad"]) for r in clean] == [(2, None)]

    one_bad = summarise_for_staging(local_frame(spark, rows + [(good, "t", None, at, ["e"], "{}")], STAGE)).collect()
    assert [(r["rows"], r["bad"].asDict()) for r in one_bad] == [
        (3, {"notification_id": good, "type": "t", "account_id": None, "_problem": "account_id is required"})]

    none = summarise_for_staging(local_frame(spark, [], STAGE)).collect()
    assert [(r["rows"], r["bad"]) for r in none] == [(0, None)]


def test_outbox_rows_keep_one_row_per_id_and_start_unpublished(spark):
    a, b = notification_id("t", "a", "1"), notification_id("t", "a", "2")
    df = local_frame(spark, [
        (a, "t", "a", datetime(2026, 1, 2), ["e2"], '{"n": 2}'),
        (a, "t", "a", datetime(2026, 1, 1), ["e1"], '{"n": 1}'),
        (b, "t", "a", datetime(2026, 1, 3), [], "{}"),
    ], STAGE)
    out = to_outbox_rows(df)
    expected = local_frame(spark, [
        # "a": its shard is the first hex digit of SHA-256("a"), ca978112...
        (a, 1, "t", "a", datetime(2026, 1, 1), ["e1"], '{"n": 1}', None, "c"),
        (b, 1, "t", "a", datetime(2026, 1, 3), [], "{}", None, "c"),
    ], "notification_id string, schema_version int, type string, account_id string, occurred_at timestamp, "
       "trigger_event_ids array<string>, payload string, published_at timestamp, account_shard string")
    assert_df_equality(out.drop("created_at"), expected, ignore_row_order=True, ignore_nullable=True)
    assert out.filter("created_at IS NULL").count() == 0
