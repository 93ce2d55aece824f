"""Kafka -> bronze -> silver -> billing -> export files, against the real broker and the
shipped catalog; then a late event after the export becomes one adjustment line."""
from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal

from pipelines.billing.export import run_export
from pipelines.billing.close import run_billing
from pipelines.core.tables import Lake
from tests.integration.helpers import context, event, run, send, usage

NOW = datetime(2026, 2, 10, tzinfo=UTC)


def lifecycle(event_id, account, at, kind, plan=None):
    fields = {"plan_id": plan} if plan else {}
    return account, event(event_id, account, at, kind, **fields)


def tickets(event_id, account, at, quantity, **fields):
    return account, usage(event_id, account, at, "helpdesk", "billable_tickets", quantity, **fields)


def lines(spark, settings, where="true"):
    df = Lake(settings).read(spark, "gold.invoice_lines").filter(where)
    return sorted((r["account_id"], r["period"], r["line_type"], r["plan_id"], r["charge"], r["amount"], r["status"])
                  for r in df.collect())


def table_version(spark, settings, table):
    return spark.sql(f"DESCRIBE HISTORY delta.`{Lake(settings).path(table)}` LIMIT 1").first()["version"]


def test_kafka_to_export_files_then_a_late_event_is_one_adjustment(spark, lake_settings, tmp_path):
    ctx = context(lake_settings)
    send(lake_settings, [
        lifecycle("a-start", "acct-a", "2026-01-01T00:00:00Z", "subscription.started", "basic"),
        lifecycle("a-up", "acct-a", "2026-01-16T12:00:00Z", "plan.changed", "pro"),   # upgrade: split at noon
        lifecycle("b-start", "acct-b", "2026-01-01T00:00:00Z", "subscription.started", "starter"),
        lifecycle("b-stop", "acct-b", "2026-01-11T00:00:00Z", "subscription.cancelled"),
        tickets("u1", "acct-a", "2026-01-03T09:00:00Z", 400),
        tickets("u1", "acct-a", "2026-01-03T09:00:00Z", 400),                         # re-sent copy
        tickets("t1", "acct-a", "2026-01-05T10:00:00Z", 1, dedup_key="T-9"),
        tickets("t1-reopen", "acct-a", "2026-01-10T10:00:00Z", 1, dedup_key="T-9"),   # same month: not again
        tickets("u2", "acct-a", "2026-01-20T08:00:00Z", 1200),
        tickets("u3", "acct-b", "2026-01-05T08:00:00Z", 60),
        tickets("u4", "acct-a", "2026-02-03T08:00:00Z", 10),                          # open period
    ])
    run(spark, ctx, "bronze", "silver", "gold")
    run_billing(spark, ctx, now=NOW, log=lambda _m: None)

    D = Decimal
    assert lines(spark, lake_settings, "period = '2026-01'") == [
        # basic half of January: base 60.00 / 2; 401 tickets - 150 included (300 / 2) = 251 x 0.40
        ("acct-a", "2026-01", "base", "basic", "base_fee", D("30.000000"), "final"),
        ("acct-a", "2026-01", "base", "pro", "base_fee", D("180.000000"), "final"),
        ("acct-a", "2026-01", "usage", "basic", "billable_tickets", D("100.400000"), "final"),
        # pro half: 1200 - 1000 included (2000 / 2) = 200, first graduated tier at 0.36
        ("acct-a", "2026-01", "usage", "pro", "billable_tickets", D("72.000000"), "final"),
        # starter until the cancellation on the 11th: 10.00 x 10/31 = 3.2258 -> 3.23;
        # 60 - 16.129032 included (50 x 10/31) = 43.870968 x 0.40 = 17.548387 -> 17.55
        ("acct-b", "2026-01", "base", "starter", "base_fee", D("3.230000"), "final"),
        ("acct-b", "2026-01", "usage", "starter", "billable_tickets", D("17.550000"), "final"),
    ]
    assert {r[-1] for r in lines(spark, lake_settings, "period = '2026-02'")} == {"estimate"}

    # Rerunning the close changes nothing.
    version = table_version(spark, lake_settings, "gold.invoice_lines")
    run_billing(spark, ctx, now=NOW, log=lambda _m: None)
    assert table_version(spark, lake_settings, "gold.invoice_lines") == version

    exports = tmp_path / "exports"
    first = run_export(spark, ctx.lake, exports_dir=exports, now=NOW)
    assert first.lines == 6 and first.amounts == {"USD": D("403.18")}
    provider = [json.loads(line) for line in first.provider_file.read_text().splitlines()]
    assert len(provider) == 6 and len({p["idempotency_key"] for p in provider}) == 6
    assert len(first.finance_file.read_text().splitlines()) == 7   # header + 6 lines
    assert run_export(spark, ctx.lake, exports_dir=exports, now=NOW).export_id is None

    # A late January event for the pro segment after January was exported.
    send(lake_settings, [tickets("u5-late", "acct-a", "2026-01-25T08:00:00Z", 100)])
    run(spark, ctx, "bronze", "silver", "gold")
    run_billing(spark, ctx, now=NOW, log=lambda _m: None)
    second = run_export(spark, ctx.lake, exports_dir=exports, now=NOW)
    # 1300 - 1000 = 300 x 0.36 = 108.00 now, 72.00 exported: +36.00 only.
    assert (second.lines, second.adjustments, second.amounts) == (1, 1, {"USD": D("36.00")})
    ledger = Lake(lake_settings).read(spark, "gold.billing_exports")
    assert ledger.count() == 7 and ledger.filter("state <> 'delivered'").count() == 0
    adjustment = ledger.filter("line_type = 'adjustment'").first()
    assert adjustment["amount"] == D("36.000000") and "72.00" in adjustment["reason"] and "108.00" in adjustment["reason"]
