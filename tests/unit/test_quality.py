"""Every quality check passes on a good table and fails on a crafted bad one; suites load
with errors that name the file and the check; the report and the results table."""
from __future__ import annotations

import json
from datetime import UTC, date, datetime
from decimal import Decimal

import pytest
import yaml

from pipelines.core.config import ConfigError
from pipelines.quality.run import Inputs, QualityGateFailed, gate_refusals, run_checks, run_quality, run_quality_job
from pipelines.quality.suites import QUALITY_DIR, load_suites, parse_suite
from pipelines.core.settings import Settings
from pipelines.core.tables import Lake, spec
from tests.unit.frames import local_frame

NOW = datetime(2024, 6, 10, tzinfo=UTC)
T0 = datetime(2024, 5, 3, 10, tzinfo=UTC)
D = Decimal


@pytest.fixture(scope="module")
def checks():
    return load_suites()


def frame(spark, table: str, rows: list[dict], **overrides):
    """Rows (dicts, missing columns null) in the table's own schema; `overrides` swaps a
    column's type to craft a mistyped table."""
    struct = spec(table).struct_type()
    ddl = ", ".join(f"`{f.name}` {overrides.get(f.name, f.dataType.simpleString())}" for f in struct)
    return local_frame(spark, [tuple(r.get(f.name) for f in struct) for r in rows], ddl)


def usage(event_id, account="acct-1", quantity="2", **kw):
    row = {"event_id": event_id, "account_id": account, "event_type": "usage", "occurred_at": T0,
           "schema_version": 1, "event_date": date(2024, 5, 3), "product": "helpdesk", "metric": "billable_tickets",
           "quantity": D(quantity) if isinstance(quantity, str) else quantity,
           "kafka_topic": "billing.events", "kafka_partition": 0,
           "kafka_offset": int(event_id.split("-")[-1]) if event_id else 0, "ingested_at": T0}
    row.update(kw)
    return row


def outcome(results) -> dict[str, bool]:
    return {r.check.name: r.success for r in results}


def inputs(spark, tmp_path, tables):
    return Inputs.of(spark, Lake(Settings().with_overrides(lake_root=str(tmp_path / "lake"))), tables=tables, now=NOW)


def suite(checks, name):
    return [c for c in checks if c.suite == name]


# ------------------------------------------------------------------ bronze


def bronze_row(offset, **kw):
    row = {"key": b"acct-1", "value": b"{}", "topic": "billing.events", "partition": 0, "offset": offset,
           "kafka_timestamp": T0, "kafka_timestamp_type": 0, "ingested_at": T0}
    row.update(kw)
    return row


def test_bronze_checks_pass_on_good_and_each_fails_on_bad(spark, tmp_path, checks):
    bronze = suite(checks, "bronze")
    good = frame(spark, "bronze.events", [bronze_row(0), bronze_row(1), bronze_row(0, partition=1)])
    assert set(outcome(run_checks(inputs(spark, tmp_path, {"bronze.events": good}), bronze)).values()) == {True}

    bad = frame(spark, "bronze.events", [
        bronze_row(0), bronze_row(0),                       # same coordinates twice
        bronze_row(2, topic=None), bronze_row(3, partition=None), bronze_row(None), bronze_row(5, ingested_at=None)])
    results = run_checks(inputs(spark, tmp_path, {"bronze.events": bad}), bronze)
    assert outcome(results) == {c.name: False for c in bronze}
    dupes = next(r for r in results if r.check.name == "bronze_coordinates_unique")
    assert dupes.outcome.unexpected_count == 2


# ------------------------------------------------------------------ silver


def account(event_id, event_type="account.created", **kw):
    row = {"event_id": event_id, "account_id": "acct-1", "event_type": event_type, "occurred_at": T0,
           "schema_version": 1, "kafka_topic": "billing.events", "kafka_partition": 1,
           "kafka_offset": int(event_id.split("-")[-1]), "ingested_at": T0}
    row.update(kw)
    return row


def quarantined(offset, partition=0, reason="missing_field"):
    return {"key": b"k", "value": b"{", "reason": reason, "detail": "d", "kafka_topic": "billing.events",
            "kafka_partition": partition, "kafka_offset": offset, "ingested_at": T0}


def test_silver_checks_pass_on_good_and_each_fails_on_bad(spark, tmp_path, checks):
    silver = suite(checks, "silver")
    good = {
        "silver.usage_events": frame(spark, "silver.usage_events", [
            usage("e-1"), usage("e-2", quantity="0"), usage("e-1", account="acct-2", kafka_offset=3),
            usage("e-4", product="sms", metric="sms_segments", dedup_key=None)]),
        "silver.account_events": frame(spark, "silver.account_events", [
            account("a-1"), account("a-2", "purchase.completed", amount_value=D("9.99"), amount_currency="USD")]),
        # a bad record at other coordinates: not a leak
        "silver.quarantine": frame(spark, "silver.quarantine", [quarantined(99)]),
    }
    assert set(outcome(run_checks(inputs(spark, tmp_path, good), silver)).values()) == {True}

    bad_usage = [
        usage("e-1", quantity=1.0), usage("e-1", quantity=2.0, kafka_offset=2),            # identity twice
        usage("", quantity=1.0, kafka_offset=3), usage("e-4", account=None, quantity=1.0),
        usage("e-5", occurred_at=None, quantity=1.0), usage("e-6", quantity=None),
        usage("e-7", quantity=-1.0), usage("e-8", product="fax", quantity=1.0),
        usage("e-9", event_type="plan.changed", quantity=1.0), usage("e-10", schema_version=2, quantity=1.0),
    ]
    bad = {
        # quantity as a float: the type check must notice
        "silver.usage_events": frame(spark, "silver.usage_events", bad_usage, quantity="double"),
        "silver.account_events": frame(spark, "silver.account_events", [
            account("a-1"), account("a-1", kafka_offset=2), account("a-3", "usage"),
            account("a-4", "purchase.completed", amount_value=D("-5"))]),
        # e-8's record (partition 0, offset 8) is also in quarantine: a leak
        "silver.quarantine": frame(spark, "silver.quarantine", [quarantined(8), quarantined(50, reason=None)]),
    }
    results = run_checks(inputs(spark, tmp_path, bad), silver)
    assert outcome(results) == {c.name: False for c in silver}
    leak = next(r for r in results if r.check.name == "no_quarantined_record_leaked")
    assert leak.shown == {"no_quarantined_record_leaked": [
        "silver usage event e-8 (account acct-1) is quarantined record billing.events:0:8 (missing_field)"]}


# ------------------------------------------------------------------ gold


def daily(account="acct-1", quantity="5", count=2, day=date(2024, 5, 3)):
    return {"account_id": account, "product": "helpdesk", "metric": "billable_tickets", "usage_date": day,
            "quantity": D(quantity), "event_count": count, "last_ingested_at": T0}


def period(account="acct-1", quantity="5"):
    return {"account_id": account, "period": "2024-05", "period_start": datetime(2024, 5, 1, tzinfo=UTC),
            "period_end": datetime(2024, 6, 1, tzinfo=UTC), "plan_id": "starter", "product": "helpdesk",
            "metric": "billable_tickets", "quantity": D(quantity), "event_count": 2}


def line(key, amount, line_type="usage", **kw):
    row = {"idempotency_key": key, "account_id": "acct-1", "period": "2024-05",
           "period_start": datetime(2024, 5, 1, tzinfo=UTC), "period_end": datetime(2024, 6, 1, tzinfo=UTC),
           "line_type": line_type, "plan_id": "starter", "charge": "billable_tickets", "amount": D(amount),
           "currency": "USD", "status": "final", "computed_at": NOW}
    row.update(kw)
    return row


def ledger_row(key):
    return {"idempotency_key": key, "export_id": "exp-1", "account_id": "acct-1", "period": "2024-05",
            "amount": D("12.50"), "currency": "USD", "state": "delivered"}


def gold_tables(spark, *, daily_rows, period_rows, lines, ledger):
    return {
        "silver.usage_events": frame(spark, "silver.usage_events", [usage("e-1", quantity="2"), usage("e-2", quantity="3")]),
        "gold.daily_usage": frame(spark, "gold.daily_usage", daily_rows),
        "gold.period_usage": frame(spark, "gold.period_usage", period_rows),
        "gold.invoice_lines": frame(spark, "gold.invoice_lines", lines),
        "gold.billing_exports": frame(spark, "gold.billing_exports", ledger),
    }


def test_gold_checks_pass_on_good_and_each_fails_on_bad(spark, tmp_path, checks):
    gold = suite(checks, "gold")
    good = gold_tables(spark, daily_rows=[daily()], period_rows=[period()],
                       lines=[line("k1", "12.50"), line("k2", "-2.00", "adjustment", adjusts_key="k1")],
                       ledger=[ledger_row("k1"), ledger_row("k2")])
    assert set(outcome(run_checks(inputs(spark, tmp_path, good), gold)).values()) == {True}

    bad = gold_tables(spark, daily_rows=[daily(quantity="4"), daily("acct-2", "-1", 1)],
                      period_rows=[period(quantity="6"), period("acct-2", "-1")],
                      lines=[line("k1", "12.50"), line(None, "1.00"), line("k3", "-3.00", "base")],
                      ledger=[ledger_row("k1"), ledger_row("k1")])
    results = run_checks(inputs(spark, tmp_path, bad), gold)
    assert outcome(results) == {c.name: False for c in gold}
    by_name = {r.check.name: r for r in results}
    assert by_name["reconcile_period_usage"].shown["reconcile_period_usage"][0] == (
        "account acct-1, period 2024-05, metric billable_tickets: gold.period_usage 6.000000, "
        "silver.usage_events 5.000000 (difference 1.000000)")
    assert "account acct-1, helpdesk/billable_tickets, 2024-05-03: gold.daily_usage 4.000000 in 2 event(s), " \
           "silver.usage_events 5.000000 in 2 event(s)" in by_name["daily_usage_reconciles"].shown["daily_usage_reconciles"]
    # the line checks of the gate, by their own names
    assert set(by_name["invoice_line_critical_checks"].shown) == {"idempotency_key_not_null", "no_negative_charge"}


def test_gate_refusals_only_run_critical_checks_gated_on_export(spark, tmp_path, checks):
    bad = gold_tables(spark, daily_rows=[daily(quantity="4")], period_rows=[period(quantity="6")],
                      lines=[line("k1", "12.50")], ledger=[])
    gated = [c for c in checks if "export" in c.gates]
    assert {c.suite for c in gated} == {"silver", "gold"}
    # daily_usage is not exported: its mismatch does not refuse the export
    failures = gate_refusals(inputs(spark, tmp_path, bad), gate="export", checks=checks)
    assert list(failures) == ["reconcile_period_usage"]


# ------------------------------------------------------------------ job, table, report


def test_run_quality_writes_results_reports_and_fails_on_critical(spark, tmp_path, checks):
    lake = Lake(Settings().with_overrides(lake_root=str(tmp_path / "lake")))
    bad = frame(spark, "bronze.events", [bronze_row(0), bronze_row(0), bronze_row(1, ingested_at=None)])
    bad.write.format("delta").save(lake.path("bronze.events"))
    said: list[str] = []
    with pytest.raises(QualityGateFailed, match="1 critical check.*bronze_coordinates_unique"):
        run_quality_job(spark, lake, said.append, checks=tuple(suite(checks, "bronze")), now=NOW)
    report = said[0]
    assert "5 check(s), 3 passed, 1 critical failure(s), 1 warning(s)" in report
    assert "FAIL" in report and "WARN" in report and "bronze_coordinates_unique" in report
    stored = {r["check_name"]: (r["success"], r["severity"], r["unexpected_count"])
              for r in lake.read(spark, "ops.quality_results").collect()}
    assert stored == {"bronze_topic_present": (True, "critical", 0), "bronze_partition_present": (True, "critical", 0),
                      "bronze_offset_present": (True, "critical", 0),
                      "bronze_coordinates_unique": (False, "critical", 2),
                      "bronze_ingested_at_present": (False, "warning", 1)}
    # a missing table reads as empty: nothing to check, nothing fails
    report = run_quality(spark, lake, checks=tuple(suite(checks, "gold")), now=NOW)
    assert report.critical_failures == []
    assert lake.read(spark, "ops.quality_results").select("run_id").distinct().count() == 2


# ------------------------------------------------------------------ suites as data


def test_shipped_suites_cover_each_layer(checks):
    assert {c.suite for c in checks} == {"bronze", "silver", "gold"}
    assert {p.stem for p in QUALITY_DIR.glob("*.yaml")} == {"bronze", "silver", "gold"}


@pytest.mark.parametrize("entry, message", [
    ({"expect": "expect_column_values_to_be_purple", "kwargs": {"column": "x"}},
     " (c1): unknown expectation type 'expect_column_values_to_be_purple'"),
    ({"kwargs": {"column_list": ["a"]}, "expect": "expect_compound_columns_to_be_unique"},
     " (c1): expect_compound_columns_to_be_unique: invalid arguments"),
    ({"severity": "fatal"}, ".severity: must be one of ('critical', 'warning'), got 'fatal'"),
    ({"table": "silver.nope"}, " (c1): unknown table 'silver.nope'"),
    ({"table": None, "dataset": "nope"}, " (c1): unknown dataset 'nope'; known: "),
    ({"dataset": "x"}, ": give exactly one of 'table' or 'dataset', not both"),
    ({"table": None}, ": give exactly one of 'table' or 'dataset'"),
    ({"gates": ["publish"]}, ".gates[0]: must be one of ('export',), got 'publish'"),
    ({"gates": "export"}, ".gates: expected a list, got 'export'"),
    ({"colour": "red"}, ": unknown keys ['colour'] (allowed: ['dataset', 'description', 'expect', 'gates', "
                        "'kwargs', 'name', 'severity', 'table'])"),
    ({"name": None}, ": 'name' is required"),
    ({"description": " "}, ".description: expected a non-empty string, got ' '"),
    ({"kwargs": ["x"]}, ".kwargs: expected a mapping, got ['x']"),
    ({"expect": "ExpectColumnValuesToNotBeNull"},
     ".expect: expected a great-expectations expectation type in snake_case"),
], ids=["unknown-expectation", "bad-kwargs", "severity", "unknown-table", "unknown-dataset", "table-and-dataset",
        "neither", "unknown-gate", "gates-not-a-list", "unknown-key", "no-name", "blank-description",
        "kwargs-not-a-mapping", "camel-case-expect"])
def test_suite_errors_name_the_file_and_the_check(entry, message):
    check = {"name": "c1", "description": "d", "severity": "critical", "table": "silver.usage_events",
             "expect": "expect_column_values_to_not_be_null", "kwargs": {"column": "event_id"}}
    check.update(entry)
    check = {k: v for k, v in check.items() if v is not None}
    with pytest.raises(ConfigError) as err:
        parse_suite({"version": 1, "suite": "s", "checks": [check]}, "quality/s.yaml")
    assert str(err.value).startswith(f"quality/s.yaml: checks[0]{message}"), str(err.value)


@pytest.mark.parametrize("doc, message", [
    ({"suite": "s", "checks": []}, "'version' is required"),
    ({"version": 2, "suite": "s", "checks": []}, "version: must be 1, got 2"),
    ({"version": 1, "suite": "", "checks": []}, "suite: expected a non-empty string, got ''"),
    ({"version": 1, "suite": "s", "checks": []}, "checks: expected a non-empty list of checks, got []"),
    ({"version": 1, "suite": "s", "checks": {"c1": {}}}, "checks: expected a non-empty list of checks, got {'c1': {}}"),
    ({"version": 1, "suite": "s", "checks": ["c1"]}, "checks[0]: expected a mapping, got 'c1'"),
    ({"version": 1, "checks": []}, "'suite' is required"),
    ([], "expected a mapping at the top level"),
], ids=["no-version", "version-2", "empty-suite", "no-checks", "checks-not-a-list", "check-not-a-mapping",
        "no-suite", "not-a-mapping"])
def test_suite_document_errors(doc, message):
    with pytest.raises(ConfigError) as err:
        parse_suite(doc, "quality/s.yaml", check_expectations=False)
    assert str(err.value) == f"quality/s.yaml: {message}"


def test_suite_files_are_read_strictly(tmp_path):
    (tmp_path / "s.yaml").write_text("version: 1\nsuite: s\nsuite: t\nchecks: []\n")
    with pytest.raises(ConfigError, match=r"s\.yaml: not valid YAML: .*duplicate key 'suite'"):
        load_suites(tmp_path)


def test_check_names_are_unique_across_suites(tmp_path):
    entry = {"name": "same", "description": "d", "severity": "warning", "table": "bronze.events",
             "expect": "expect_column_values_to_not_be_null", "kwargs": {"column": "topic"}}
    for name in ("a", "b"):
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump({"version": 1, "suite": name, "checks": [entry]}))
    with pytest.raises(ConfigError, match=r"repeated: \['same'\]"):
        load_suites(tmp_path)
    assert json.loads(json.dumps(entry))  # the suite is plain data
