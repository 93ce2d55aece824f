"""Personal data through the real broker and every job downstream of silver.

The hostile corpus's PII cases (devtools/hostile.py: emails, IPv4, phones and IPv6 inside
free text, Luhn-valid card numbers whole and in text, credentials under any spelling of a
sensitive key, nested data, a personal value where a notification reads a property) are
sent on every event type silver keeps, beside a seeded hostile corpus, and run through
bronze, silver, gold, fraud and notify. No raw value may appear in any table of the lake
but the two that keep raw bytes by contract (bronze.events, silver.quarantine), nor in any
notification, staged or published. Then the key is rotated and the lake rehashed.
"""
from __future__ import annotations

import json
import stat
import uuid
from datetime import UTC, datetime, timedelta
from functools import reduce

import pytest
from pyspark.sql import functions as F

from devtools import hostile
from pipelines.core.context import JobContext
from pipelines.rules.notifications import close_publishers, read_topic
from pipelines.ingest.pii_key import KEY_FILE
from pipelines.ingest.rehash import rehash_lake
from pipelines.core.tables import Lake, table_specs
from tests.integration.helpers import context, event, run, send, usage

pytestmark = pytest.mark.kafka

RAW_BY_CONTRACT = {"bronze.events", "silver.quarantine"}


def _pii_events(now: datetime) -> list[tuple[str, dict]]:
    """Each PII case on an account.created, a subscription.started, a purchase.completed and
    a usage event, so it meets every reader of properties (fraud signals, receipts' sku)."""
    records = []
    for i, props in enumerate(hostile.PII):
        acct = f"acct_pii_{i:02d}"
        at = (now - timedelta(hours=2, minutes=i)).strftime("%Y-%m-%dT%H:%M:%SZ")
        records += [
            (acct, event(f"pii-created-{i}", acct, at, "account.created", properties=props)),
            (acct, event(f"pii-started-{i}", acct, at, "subscription.started", plan_id="starter", properties=props)),
            (acct, event(f"pii-bought-{i}", acct, at, "purchase.completed",
                         amount={"value": "12.34", "currency": "USD"}, properties=props)),
            (acct, usage(f"pii-used-{i}", acct, at, "helpdesk", "billable_tickets", 1, dedup_key=f"t-{i}",
                         properties=props)),
        ]
    return records


def test_no_raw_personal_value_reaches_silver_gold_or_a_notification_and_a_rotation_rehashes(
        spark, lake_settings, monkeypatch):
    settings = lake_settings.with_overrides(notifications_topic=f"test.notifications.{uuid.uuid4().hex[:10]}")
    send(settings, _pii_events(datetime.now(UTC)))
    assert hostile.send(hostile.corpus(seed=23, count=150), settings) == 150
    try:
        run(spark, context(settings), "bronze", "silver", "gold", "fraud", "notify")
    finally:
        close_publishers()

    lake = Lake(settings)
    needles = hostile.RAW_PII
    scanned, leaks = [], []
    for name in sorted(table_specs()):
        if name in RAW_BY_CONTRACT or not lake.exists(spark, name):
            continue
        text = F.to_json(F.struct(*[F.col(c) for c in lake.read(spark, name).columns]))
        df = lake.read(spark, name).select(text.alias("row"))
        hits = df.filter(reduce(lambda a, b: a | b, [F.col("row").contains(n) for n in needles]))
        scanned.append(name)
        leaks += [(name, r.row[:300]) for r in hits.limit(3).collect()]
    assert not leaks, leaks
    assert {"silver.usage_events", "silver.account_events", "gold.daily_usage", "gold.notifications"} <= set(scanned)

    # Notifications, as staged and as published: receipts were made for the PII purchases
    # (so the sku a receipt reads was there to leak), none holds a raw value.
    staged = lake.read(spark, "gold.notifications").filter(F.col("account_id").startswith("acct_pii_")).collect()
    assert {"account.welcome", "purchase.receipt"} <= {r.type for r in staged}, {r.type for r in staged}
    published = read_topic(settings, settings.notifications_topic)
    assert published, "nothing was published"
    text = json.dumps([r["value"] for r in published])
    assert not [n for n in needles if n in text]

    # What did arrive: keyed hashes with their key version, from the lake's own local key.
    props = {r.event_id: json.loads(r.properties) for r in lake.read(spark, "silver.account_events")
             .filter(F.col("event_id").startswith("pii-created-")).collect()}
    assert props["pii-created-0"]["email_hash"].startswith("hmac:v1:")
    assert set(props[f"pii-created-{hostile.PII.index({'memo': 'paid by 5425-2334-3010-9903 exp 04/28'})}"]) == set()
    key_file = settings.lake_root_abs / KEY_FILE
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600

    # Rotation: a new key version, then a rehash from bronze. Every hash moves to v2, the
    # values stay protected, and a second run finds nothing left to do.
    monkeypatch.setenv("LAKEHOUSE_PII_KEY", "v2:" + "r" * 48)
    ctx = JobContext.from_settings(settings)
    first = rehash_lake(spark, ctx)
    again = rehash_lake(spark, ctx)
    assert first["silver.account_events"] > 0 and first["silver.usage_events"] > 0
    assert not any(again.values()), again
    for name in ("silver.usage_events", "silver.account_events", "silver.duplicates"):
        texts = [r.properties or "" for r in lake.read(spark, name).select("properties").collect()]
        assert not [t for t in texts if "hmac:v1:" in t], name
        assert not [n for t in texts for n in needles if n in t], name
    rotated = json.loads(lake.read(spark, "silver.account_events").filter(F.col("event_id") == "pii-created-0")
                         .first().properties)
    assert rotated["email_hash"].startswith("hmac:v2:") and rotated["email_hash"] != props["pii-created-0"]["email_hash"]
