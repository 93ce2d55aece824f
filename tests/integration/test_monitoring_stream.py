"""The monitoring listener on real streams: Kafka -> bronze -> silver -> gold, every
micro-batch of every stream lands in ops.stream_metrics with lag, counts and freshness;
`status` reads it back and the plot is written."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from pipelines.monitoring.status import plot_metrics, read_metrics, render_status, status
from pipelines.core.tables import Lake
from tests.integration.helpers import context, rows, run, send, usage

pytestmark = pytest.mark.kafka


def test_listener_records_every_micro_batch_of_every_stream(spark, lake_settings, tmp_path):
    at = (datetime.now(UTC) - timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%SZ")
    first = usage("e-1", "acct-1", at, "helpdesk", "billable_tickets", 2)
    send(lake_settings, [
        ("acct-1", first),
        ("acct-1", {**first, "quantity": 3}),                       # conflicting copy: dropped by identity
        ("acct-2", usage("e-2", "acct-2", at, "sms", "sms_segments", 1)),
        ("acct-3", b"{not json"),                                  # quarantined
        ("acct-3", usage("e-3", "acct-3", at, "voice", "voice_minutes", Decimal("1.5"))),
        ("acct-4", usage("e-4", "acct-4", at, "helpdesk", "billable_tickets", 1)),
    ])
    # two records per bronze batch, two Delta files per silver batch: several batches each
    ctx = context(lake_settings, max_offsets_per_trigger=2, max_files_per_trigger=2)
    reporter = run(spark, ctx)
    lake = Lake(lake_settings)

    recorded = rows(spark, lake_settings, "ops.stream_metrics", "query_name", "run_id", "batch_id")
    expected = sorted((p["name"], p["runId"], p["batchId"]) for p in reporter.history)
    assert recorded == expected
    assert {name for name, _, _ in recorded} == {"bronze", "silver", "gold"}
    assert len([r for r in recorded if r[0] == "bronze"]) >= 3

    bronze = rows(spark, lake_settings, "ops.stream_metrics", "batch_id", "input_rows", "kafka_lag",
                  where="query_name = 'bronze'")
    assert sum(r[1] for r in bronze) == 6
    assert bronze[0][2] > 0 and bronze[-1][2] == 0          # the lag drains to zero
    assert [r[2] for r in bronze] == sorted((r[2] for r in bronze), reverse=True)

    silver = lake.read(spark, "ops.stream_metrics").filter("query_name = 'silver'").collect()
    quarantined, identity = {}, 0
    for r in silver:
        for reason, n in (r["quarantined"] or {}).items():
            quarantined[reason] = quarantined.get(reason, 0) + n
        identity += (r["rule_drops"] or {}).get("identity", 0)
    reasons = rows(spark, lake_settings, "silver.quarantine", "reason")
    assert len(reasons) == 1 and quarantined == {reasons[0][0]: 1} and identity == 1
    newest = max(r["newest_event_time"] for r in silver)
    assert newest.strftime("%Y-%m-%dT%H:%M:%SZ") == at
    assert all(r["ingestion_freshness_seconds"] is not None and r["ingestion_freshness_seconds"] >= 0
               for r in silver)
    assert all(r["mode"] == "available_now" and r["batch_duration_ms"] > 0 for r in silver)

    # a rerun keeps what was recorded and records no batch twice
    run(spark, ctx)
    again = rows(spark, lake_settings, "ops.stream_metrics", "query_name", "run_id", "batch_id")
    assert set(recorded) <= set(again) and len(again) == len(set(again))

    statuses = {s.name: s for s in status(spark, lake)}
    assert set(statuses) == {"bronze", "silver", "gold"}
    # 1 bad record of the 6 silver read: the 1% quarantine SLO is breached
    assert statuses["silver"].quarantine_share == pytest.approx(1 / 6)
    assert any(b.startswith("quarantine") for b in statuses["silver"].breaches)
    table = render_status(list(statuses.values()))
    assert table.splitlines()[0].startswith("STREAM") and "silver" in table
    png = plot_metrics(read_metrics(spark, lake), tmp_path / "status.png")
    assert png.read_bytes()[:4] == b"\x89PNG"
