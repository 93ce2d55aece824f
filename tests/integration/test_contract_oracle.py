"""Silver and gold against an independent reading of DESIGN section 4.

The oracle below is plain Python written from the design brief, sharing no code with the
pipeline: it takes the records on the topic as sent (Kafka order = timestamp, partition, offset),
keeps the first copy of each (account_id, event_id), applies the two default rules on event
time (UTC) and sums the kept usage per UTC day. The workload is seeded and adversarial:
events of one rule key arrive out of event-time order and spread over three runs of the
jobs, copies conflict with their first copy (lifecycle events reuse usage events' ids, before
or after them), offsets move events across UTC day and month boundaries, and some copies
arrive after the watermark has moved on.
"""
from __future__ import annotations

import json
import random
from collections import defaultdict
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest

from pipelines.core.batch_expressions import FACTORY_MODE
from pipelines.rules.notifications import read_topic
from tests.integration.helpers import context, encode, rows, run, send

UTC = timezone.utc
TICKET_MONTH_END = datetime(2026, 1, 31, 23, 40, tzinfo=UTC)   # tickets straddle January / February
SMS_START = datetime(2026, 1, 20, 9, 0, tzinfo=UTC)
RETRY_WINDOW = timedelta(minutes=10)
OFFSETS = [timezone.utc, timezone(timedelta(hours=2)), timezone(timedelta(hours=-5, minutes=-30))]


def rfc3339(at: datetime, rng: random.Random) -> str:
    """The same instant written in a random offset (Z, +02:00 or -05:30)."""
    local = at.astimezone(rng.choice(OFFSETS))
    text = local.isoformat(timespec="microseconds" if at.microsecond else "seconds")
    return text.replace("+00:00", "Z")


def quantity(rng: random.Random) -> Decimal:
    return Decimal(rng.randint(1, 5_000_000)) / Decimal(1_000_000) * rng.choice([1, 10, 100])


def workload(seed: int = 2026) -> tuple[list[tuple[str, dict | bytes]], int]:
    """(key, value) records in send order, and how many of them are bad."""
    rng = random.Random(seed)
    events: list[dict] = []

    def usage(account: str, n: int, product: str, metric: str, at: datetime, **extra) -> dict:
        body = {"event_id": f"{metric}-{account}-{n}", "event_type": "usage", "account_id": account,
                "occurred_at": rfc3339(at, rng), "schema_version": 1, "product": product, "metric": metric,
                "quantity": quantity(rng), **extra}
        events.append(body)
        return body

    for a in range(4):
        account = f"oracle-{a}"
        n = 0
        for k in range(3):
            # Retries clustered in 45 minutes: many fall inside some anchor's window, some
            # exactly on its edge (anchor + 10 min is outside the window).
            anchor = SMS_START + timedelta(hours=k)
            for _ in range(10):
                n += 1
                step = rng.choice([timedelta(minutes=rng.randint(0, 45)), timedelta(seconds=rng.randint(0, 2700)),
                                   RETRY_WINDOW, 2 * RETRY_WINDOW])
                usage(account, n, "sms", "sms_segments", anchor + step, dedup_key=f"msg-{k}")
            for _ in range(6):
                n += 1
                # Half of them within the hour around midnight UTC of January 31, where an
                # offset puts the local month on the other side of the boundary.
                at = TICKET_MONTH_END + timedelta(minutes=rng.choice([rng.randint(-60 * 24 * 20, 0),
                                                                      rng.randint(-30, 60)]))
                usage(account, n, "helpdesk", "billable_tickets", at, dedup_key=f"ticket-{k}")
        for _ in range(5):    # a dedup_key on a metric without a rule: no custom dedup
            n += 1
            usage(account, n, "voice", "voice_minutes", SMS_START + timedelta(minutes=rng.randint(0, 30)),
                  dedup_key="call-1")
        for _ in range(4):    # sms without a dedup_key: no custom dedup either
            n += 1
            usage(account, n, "sms", "sms_segments", SMS_START + timedelta(minutes=rng.randint(0, 5)))
        n += 1                # a late event: months behind everything else, still billed
        usage(account, n, "helpdesk", "billable_tickets", datetime(2025, 6, 1, 12, tzinfo=UTC), dedup_key="old")

    rng.shuffle(events)       # arrival order is not event-time order
    records: list[tuple[str, dict | bytes]] = [(e["account_id"], e) for e in events]
    for e in rng.sample(events, 40):          # exact re-sends, anywhere later in the stream
        records.insert(rng.randint(records.index((e["account_id"], e)) + 1, len(records)), (e["account_id"], dict(e)))
    for e in rng.sample(events, 15):          # same identity, another payload: the first copy must win
        other = dict(e, occurred_at=rfc3339(datetime.fromisoformat(e["occurred_at"]) + timedelta(minutes=7), rng),
                     quantity=quantity(rng))
        records.insert(rng.randint(records.index((e["account_id"], e)) + 1, len(records)), (e["account_id"], other))
    for e in rng.sample(events, 8):           # a lifecycle event reusing a usage event's id: one identity
        body = {"event_id": e["event_id"], "event_type": "subscription.started", "account_id": e["account_id"],
                "occurred_at": e["occurred_at"], "schema_version": 1, "plan_id": "basic"}
        records.insert(rng.randint(0, len(records)), (e["account_id"], body))
    bad = [("oracle-0", b"{not json"),
           (events[0]["account_id"], dict(events[0], event_id="neg", quantity=Decimal("-1"))),
           (events[1]["account_id"], dict(events[1], event_id="no-type", event_type=None))]
    for record in bad:
        records.insert(rng.randint(0, len(records)), record)
    return records, len(bad)


def oracle(on_topic: list[tuple[int, int, int, bytes]]) -> tuple[dict, dict, dict]:
    """DESIGN section 4 by hand -> (kept usage by identity, daily usage, drops per rule)."""
    first: dict[tuple[str, str], tuple[dict, tuple]] = {}
    for ts, partition, offset, value in sorted(on_topic):
        try:
            body = json.loads(value, parse_float=Decimal, parse_int=Decimal)
        except ValueError:
            continue
        usage = body.get("event_type") == "usage"
        if (usage and body["quantity"] < 0) or (not usage and body.get("event_type") != "subscription.started"):
            continue                                           # bad
        identity = (body["account_id"], body["event_id"])
        if identity not in first:                              # identity: the first copy in Kafka order wins,
            first[identity] = (body, (ts, partition, offset))  # whatever its event type
    first = {identity: v for identity, v in first.items() if v[0]["event_type"] == "usage"}

    def at(body: dict) -> datetime:
        return datetime.fromisoformat(body["occurred_at"]).astimezone(UTC)

    kept = {}
    by_rule: dict[tuple, list] = defaultdict(list)
    for identity, (body, order) in first.items():
        if body.get("dedup_key") is not None and body["metric"] == "billable_tickets":
            by_rule[("month", body["account_id"], body["dedup_key"], at(body).strftime("%Y-%m"))].append((at(body), order, body))
        elif body.get("dedup_key") is not None and body["metric"] == "sms_segments":
            by_rule[("retry", body["account_id"], body["dedup_key"])].append((at(body), order, body))
        else:
            kept[identity] = body
    for key, group in by_rule.items():
        group.sort(key=lambda g: (g[0], g[1]))                 # event time, ties by Kafka order
        if key[0] == "month":                                  # once per key and UTC calendar month
            kept[(group[0][2]["account_id"], group[0][2]["event_id"])] = group[0][2]
            continue
        anchor = None
        for occurred, _, body in group:                        # a retry lies in [anchor, anchor + 10 min)
            if anchor is None or occurred >= anchor + RETRY_WINDOW:
                kept[(body["account_id"], body["event_id"])] = body
                anchor = occurred
    dropped = {"month": 0, "retry": 0}
    for key, group in by_rule.items():
        dropped[key[0]] += sum((g[2]["account_id"], g[2]["event_id"]) not in kept for g in group)
    daily: dict[tuple, list] = defaultdict(lambda: [Decimal(0), 0])
    for body in kept.values():
        day = daily[(body["account_id"], body["product"], body["metric"], at(body).date())]
        day[0] += body["quantity"]
        day[1] += 1
    return kept, daily, dropped


@pytest.fixture
def production_expressions(spark):
    """Spark's default expression mode on the session the streams are cloned from, as in
    production (the suite's session runs everything interpreted, tests/conftest.py); bronze
    still starts interpreted, and silver and notify choose per batch, as they do there
    (pipelines/core/batch_expressions.py)."""
    before = spark.conf.get(FACTORY_MODE)
    spark.conf.set(FACTORY_MODE, "FALLBACK")
    yield
    spark.conf.set(FACTORY_MODE, before)


def test_silver_and_gold_match_an_independent_reading_of_the_contract(spark, kafka_settings, topic, tmp_path,
                                                                      production_expressions):
    records, bad = workload()
    settings = kafka_settings.with_overrides(events_topic=topic, lake_root=str(tmp_path / "lake"))
    ctx = context(settings, watermark_seconds=1)
    third = -(-len(records) // 3)
    for start in range(0, len(records), third):      # three runs: rule keys span micro-batches and restarts
        send(settings, records[start:start + third])
        run(spark, ctx, "bronze", "silver", "gold")

    on_topic = [(r["timestamp_ms"], r["partition"], r["offset"], r["value"])
                for r in read_topic(settings, topic, raw=True)]
    assert sorted(v for *_, v in on_topic) == sorted(encode(v) for _, v in records)
    kept, daily, dropped = oracle(on_topic)

    def utc(body: dict) -> datetime:
        return datetime.fromisoformat(body["occurred_at"]).astimezone(UTC).replace(tzinfo=None)

    expected_silver = sorted((a, e, utc(b), b["quantity"]) for (a, e), b in kept.items())
    assert rows(spark, settings, "silver.usage_events", "account_id", "event_id", "occurred_at", "quantity") == expected_silver
    expected_gold = sorted((a, p, m, d, q, n) for (a, p, m, d), (q, n) in daily.items())
    got_gold = rows(spark, settings, "gold.daily_usage", "account_id", "product", "metric", "usage_date", "quantity",
                    "event_count")
    assert got_gold == expected_gold
    assert len(rows(spark, settings, "silver.quarantine", "kafka_offset")) == bad
    # The workload exercised what it claims to: both rules dropped events on every account.
    assert dropped["month"] >= 4 and dropped["retry"] >= 4, dropped
