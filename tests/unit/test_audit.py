"""Audit reconciliations: every difference between silver, invoice lines and the export
ledger comes out with its explanation; agreeing rows say ok."""
from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from chispa import assert_df_equality

from pipelines.billing.audit import (
    OK, billed_per_period, count_homes, exported_per_period, invoiced_per_period, reconcile_amounts, reconcile_usage,
    used_per_period, with_homes,
)

D = Decimal


def test_usage_against_usage_lines(spark):
    usage = spark.createDataFrame([
        ("a", datetime(2026, 9, 1), "sms", "sms_segments", D("10")),
        ("a", datetime(2026, 9, 30, 23, 59), "sms", "sms_segments", D("2.5")),
        ("a", datetime(2026, 10, 1), "sms", "sms_segments", D("4")),        # open period, billed 3
        ("b", datetime(2026, 9, 5), "voice", "voice_minutes", D("7")),      # never billed
        ("c", datetime(2026, 9, 5), None, "odd_metric", D("1")),            # null product, billed with null product
        ("d", datetime(2026, 9, 5), "sms", "sms_segments", D("5")),         # late event after the close
    ], "account_id string, occurred_at timestamp, product string, metric string, quantity decimal(38,6)")
    lines = spark.createDataFrame([
        ("a", "2026-09", "usage", "sms_segments", "sms", D("12.5"), "final"),
        ("a", "2026-09", "base", "base_fee", None, D("1"), "final"),
        ("a", "2026-10", "usage", "sms_segments", "sms", D("3"), "estimate"),
        ("c", "2026-09", "usage", "odd_metric", None, D("1"), "final"),
        ("d", "2026-09", "usage", "sms_segments", "sms", D("2"), "final"),
        ("d", "2026-09", "usage", "sms_segments", "sms", D("1"), "final"),   # a second plan segment
        ("e", "2026-09", "usage", "sms_segments", "sms", D("4"), "final"),   # billed, gone from silver
    ], "account_id string, period string, line_type string, charge string, product string, "
       "units decimal(38,6), status string")
    out = {(r.account_id, r.period): r for r in
           used_per_period(usage).transform(reconcile_usage(billed_per_period(lines))).collect()}
    assert len(out) == 6
    assert out[("a", "2026-09")].explanation == OK and out[("a", "2026-09")].events == 2
    assert out[("c", "2026-09")].explanation == OK
    assert out[("a", "2026-10")].explanation.startswith("open period") and out[("a", "2026-10")].difference == D("1")
    assert out[("b", "2026-09")].explanation.startswith("not billed") and out[("b", "2026-09")].explanation.endswith("7 units unbilled")
    assert out[("d", "2026-09")].billed_units == D("3")
    assert out[("d", "2026-09")].explanation.startswith("2 units in silver not on the final lines")
    e = out[("e", "2026-09")]
    assert (e.used, e.events, e.billed_units, e.difference) == (D("0"), 0, D("4"), D("-4"))
    assert e.explanation.startswith("4 units billed that silver no longer holds")


def test_invoice_amounts_against_the_export_ledger(spark):
    lines = spark.createDataFrame([
        ("ok", "2026-09", "USD", "usage", D("10.00"), "final"),
        ("ok", "2026-09", "USD", "base", D("5.00"), "final"),
        ("moved", "2026-09", "USD", "usage", D("12.50"), "final"),
        ("moved", "2026-09", "USD", "adjustment", D("2.50"), "final"),   # restates a difference: not counted
        ("new", "2026-09", "EUR", "usage", D("3"), "final"),
        ("open", "2026-10", "USD", "usage", D("8"), "estimate"),
        ("staged", "2026-09", "USD", "usage", D("1"), "final"),
    ], "account_id string, period string, currency string, line_type string, amount decimal(38,6), status string")
    ledger = spark.createDataFrame([
        ("ok", "2026-09", "USD", "usage", D("10.00"), "delivered"),
        ("ok", "2026-09", "USD", "base", D("5.00"), "delivered"),
        ("moved", "2026-09", "USD", "usage", D("10.00"), "delivered"),
        ("staged", "2026-09", "USD", "usage", D("1"), "staged"),
        ("ghost", "2026-08", "USD", "usage", D("9.99"), "delivered"),
    ], "account_id string, period string, currency string, line_type string, amount decimal(38,6), state string")
    out = {r.account_id: r for r in
           invoiced_per_period(lines).transform(reconcile_amounts(exported_per_period(ledger))).collect()}
    assert out["ok"].explanation == OK and out["ok"].invoiced_final == D("15")
    assert out["moved"].difference == D("2.5")
    assert out["moved"].explanation == ("the final lines moved by 2.5 USD after export (late usage or plan change): "
                                        "the next export adds an adjustment line")
    assert out["new"].explanation == "final lines not exported yet: 3 EUR waits for the next export"
    assert out["open"].explanation.startswith("open period")
    assert out["staged"].explanation.startswith("an export is staged but not delivered")
    assert out["ghost"].explanation.startswith("9.99 USD exported but no final line")


def test_every_bronze_record_is_placed_lost_or_doubled(spark):
    bronze = spark.createDataFrame([
        ("t", 0, 0), ("t", 0, 1), ("t", 0, 2), ("t", 1, 0), ("t", 1, 1), ("u", 0, 0),
    ], "topic string, partition int, offset bigint")
    landed = spark.createDataFrame([
        ("t", 0, 0, "usage"),
        ("t", 0, 1, "quarantine"),
        ("t", 0, 2, "usage"), ("t", 0, 2, "duplicate"),    # in two tables: doubled
        ("t", 1, 1, "usage"),
        ("u", 0, 0, "account"),
        ("t", 9, 9, "usage"),                              # not in bronze: ignored
    ], "kafka_topic string, kafka_partition int, kafka_offset bigint, home string")
    # (t, 1, 0) is in no silver table: lost.
    expected = spark.createDataFrame(
        [("", 1), ("account", 1), ("duplicate+usage", 1), ("quarantine", 1), ("usage", 2)], "home string, count long")
    assert_df_equality(bronze.transform(with_homes(landed)).transform(count_homes), expected,
                       ignore_row_order=True, ignore_nullable=True)
