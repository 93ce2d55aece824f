"""Analyst views: the config is validated with clear errors, and each view answers its question."""
from __future__ import annotations

import re
from datetime import date, datetime
from decimal import Decimal

import pytest
from chispa import assert_df_equality

from pipelines.core.settings import Settings
from pipelines.core.tables import Lake, spec
from pipelines.analyst import views as views_module
from pipelines.analyst.views import (ViewConfigError, create_statement, load_views, parse_views, register_views,
                             surface_statements)

GOOD_SQL = "SELECT account_id FROM gold.daily_usage"


def doc(**view) -> dict:
    body = {"comment": "one row per account", "columns": {"account_id": "Merchant account"}, "sql": GOOD_SQL}
    body.update(view)
    return {"version": 1, "views": {"analyst.accounts": body}}


def without(key: str) -> dict:
    d = doc()
    del d["views"]["analyst.accounts"][key]
    return d


def named(name: str) -> dict:
    return {"version": 1, "views": {name: doc()["views"]["analyst.accounts"]}}


@pytest.mark.parametrize("broken, message", [
    ({"version": 2, "views": {}}, "views.yaml: version: must be 1, got 2"),
    ({"version": 1}, "views.yaml: 'views' is required"),
    ({"version": 1, "views": {}, "tables": {}}, "views.yaml: unknown keys ['tables'] (allowed: ['version', 'views'])"),
    ({"version": 1, "views": {}}, "views.yaml: views: expected a non-empty mapping of view name to view, got {}"),
    (named("gold.accounts"), "views.yaml: views: view names are analyst.<lower_snake_case>, got 'gold.accounts'"),
    (named("analyst.Accounts"), "views.yaml: views: view names are analyst.<lower_snake_case>, got 'analyst.Accounts'"),
    (named("analyst.a`b"), "views.yaml: views: view names are analyst.<lower_snake_case>, got 'analyst.a`b'"),
    (named("analyst.accounts\n"), "views.yaml: views: view names are analyst.<lower_snake_case>, "
                                   "got 'analyst.accounts\\n'"),
    (named(7), "views.yaml: views: view names are analyst.<lower_snake_case>, got 7"),
    (doc(comment=" "), "views.yaml: views.analyst.accounts.comment: say what one row is, got ' '"),
    (without("comment"), "views.yaml: views.analyst.accounts: 'comment' is required"),
    (doc(owner="me"), "views.yaml: views.analyst.accounts: unknown keys ['owner'] (allowed: ['columns', 'comment', 'sql'])"),
    (doc(columns={"Account": "x"}),
     "views.yaml: views.analyst.accounts.columns: expected a lower_snake_case name, got 'Account'"),
    (doc(columns={"account_id`": "x"}),
     "views.yaml: views.analyst.accounts.columns: expected a lower_snake_case name, got 'account_id`'"),
    (doc(columns={"account_id\n": "x"}),
     "views.yaml: views.analyst.accounts.columns: expected a lower_snake_case name, got 'account_id\\n'"),
    (doc(columns={"account_id": " "}),
     "views.yaml: views.analyst.accounts.columns.account_id: say what the column holds, got ' '"),
    (doc(columns={}), "views.yaml: views.analyst.accounts.columns: expected a mapping of column name to its meaning, got {}"),
    (doc(sql=["SELECT 1"]), "views.yaml: views.analyst.accounts.sql: expected the query as text, got ['SELECT 1']"),
    (doc(sql="DELETE FROM gold.daily_usage"), "views.yaml: views.analyst.accounts.sql: only read queries"),
    (doc(sql="SELECT 1; SELECT 2"), "views.yaml: views.analyst.accounts.sql: one statement"),
    (doc(sql="SELECT * FROM gold.daily_usages"), "views.yaml: views.analyst.accounts.sql: unknown tables ['gold.daily_usages']"),
    (doc(sql="SELECT 1 AS account_id"), "views.yaml: views.analyst.accounts.sql: reads no table"),
])
def test_config_mistakes_name_the_file_and_the_entry(broken, message):
    with pytest.raises(ViewConfigError, match="^" + re.escape(message)):
        parse_views(broken, "views.yaml")


@pytest.mark.parametrize("broken, message", [
    (named("analyst.a`b"), "views.analyst.a`b: view names are analyst.<lower_snake_case>"),
    (named("analyst.accounts\n"), "views.analyst.accounts\n: view names are analyst.<lower_snake_case>"),
    (doc(columns={"a` STRING) AS SELECT 1 --": "x"}),
     "views.analyst.accounts.columns.a` STRING) AS SELECT 1 --: column names are lower_snake_case"),
    (doc(columns={"account_id\n": "x"}), "views.analyst.accounts.columns.account_id\n: column names are lower_snake_case"),
    (doc(sql="DELETE FROM gold.daily_usage"), "views.analyst.accounts.sql: only read queries"),
])
def test_names_written_into_sql_are_refused_even_without_the_schema(monkeypatch, broken, message):
    """Defence in depth: view and column names go into CREATE VIEW statements, so the loader
    refuses bad ones itself, whatever the schema says (here: no schema check at all)."""
    monkeypatch.setattr(views_module, "check_document", lambda *args, **kwargs: None)
    with pytest.raises(ViewConfigError, match="^" + re.escape(f"views.yaml: {message}")):
        parse_views(broken, "views.yaml")


def test_the_file_is_read_strictly(tmp_path):
    path = tmp_path / "views.yaml"
    path.write_text("version: 1\nviews: {}\nviews: {}\n")
    with pytest.raises(ViewConfigError, match="^" + re.escape(f"{path}: not valid YAML: ") + ".*duplicate key 'views'"):
        load_views(path)


def test_the_shipped_views_load_and_name_their_tables():
    views = load_views()
    assert set(views) == {"analyst.usage_by_product_month", "analyst.top_growing_accounts", "analyst.billed_vs_used"}
    assert views["analyst.billed_vs_used"].tables == ("gold.invoice_lines", "silver.usage_events")


def test_in_a_catalog_views_and_tables_get_catalog_names():
    lake = Lake(Settings(catalog="main", schema="billing"))
    sql = create_statement(load_views()["analyst.usage_by_product_month"], lake)
    assert sql.startswith("CREATE OR REPLACE VIEW `main`.`billing_analyst`.`analyst_usage_by_product_month` "
                          "(`month` COMMENT")
    assert "FROM `main`.`billing`.`gold_daily_usage`" in sql and "gold.daily_usage" not in sql


def test_in_a_catalog_the_analyst_schema_holds_a_view_per_surface_table():
    """The analyst group is granted the analyst schema only (databricks.yml)."""
    lake = Lake(Settings(catalog="main", schema="billing", analyst_schema="billing_readers"))
    statements = surface_statements(lake, ["silver.usage_events", "gold.daily_usage"])
    assert [s.split(" COMMENT ")[0] for s in statements] == [
        "CREATE OR REPLACE VIEW `main`.`billing_readers`.`silver_usage_events`",
        "CREATE OR REPLACE VIEW `main`.`billing_readers`.`gold_daily_usage`"]
    assert statements[0].endswith("AS SELECT * FROM `main`.`billing`.`silver_usage_events`")
    assert surface_statements(Lake(Settings()), ["silver.usage_events"]) == []


@pytest.fixture
def lake(spark, tmp_path):
    lake = Lake(Settings(lake_root=tmp_path / "lake"))
    for name in ("silver.usage_events", "gold.daily_usage", "gold.invoice_lines"):
        layer, table = name.split(".")
        # The session's catalog may still name an earlier test's lake; point it at this one.
        spark.sql(f"DROP TABLE IF EXISTS `{layer}`.`{table}`")
        lake.ensure(spark, name)
    return lake


def _daily(spark, lake, rows):
    cols = spec("gold.daily_usage").column_names
    spark.createDataFrame(rows, ", ".join(f"{c} {t}" for c, t in zip(cols, [
        "string", "string", "string", "date", "decimal(38,6)", "bigint", "timestamp"]))) \
        .write.format("delta").mode("append").save(lake.path("gold.daily_usage"))


def test_usage_by_month_and_growth(spark, lake):
    t = datetime(2026, 10, 1)
    _daily(spark, lake, [
        ("a", "sms", "sms_segments", date(2026, 9, 3), Decimal("10"), 2, t),
        ("a", "sms", "sms_segments", date(2026, 10, 1), Decimal("15"), 3, t),
        ("a", "sms", "sms_segments", date(2026, 10, 20), Decimal("5.5"), 1, t),
        ("b", "sms", "sms_segments", date(2026, 10, 2), Decimal("4"), 4, t),
        ("b", None, "sms_segments", date(2026, 8, 2), Decimal("1"), 1, None),   # a null product stays its own row
    ])
    lake.register_views(spark)
    assert len(register_views(spark, lake)) == 3
    month = spark.sql("SELECT * FROM analyst.usage_by_product_month")
    expected = spark.createDataFrame([
        ("2026-08", None, "sms_segments", Decimal("1"), 1, 1),
        ("2026-09", "sms", "sms_segments", Decimal("10"), 2, 1),
        ("2026-10", "sms", "sms_segments", Decimal("24.5"), 8, 2),
    ], "month string, product string, metric string, quantity decimal(38,6), events bigint, accounts bigint")
    assert_df_equality(month, expected, ignore_row_order=True, ignore_nullable=True, ignore_metadata=True)

    growth = spark.sql("SELECT month, account_id, quantity, previous_quantity, growth, growth_ratio, growth_rank "
                       "FROM analyst.top_growing_accounts WHERE month = '2026-10'")
    expected = spark.createDataFrame([
        ("2026-10", "a", Decimal("20.5"), Decimal("10"), Decimal("10.5"), Decimal("1.05"), 1),
        ("2026-10", "b", Decimal("4"), Decimal("0"), Decimal("4"), None, 2),
    ], "month string, account_id string, quantity decimal(38,6), previous_quantity decimal(38,6), "
       "growth decimal(38,6), growth_ratio decimal(20,4), growth_rank int")
    assert_df_equality(growth, expected, ignore_row_order=True, ignore_nullable=True, ignore_metadata=True)


def test_billed_vs_used_shows_what_was_not_billed(spark, lake):
    usage_cols = spec("silver.usage_events").column_names
    rows = [
        {"event_id": "e1", "account_id": "a", "occurred_at": datetime(2026, 9, 3), "product": "sms",
         "metric": "sms_segments", "quantity": Decimal("700")},
        {"event_id": "e2", "account_id": "a", "occurred_at": datetime(2026, 9, 30, 23), "product": "sms",
         "metric": "sms_segments", "quantity": Decimal("300.5")},
        {"event_id": "e3", "account_id": "b", "occurred_at": datetime(2026, 9, 4), "product": "voice",
         "metric": "voice_minutes", "quantity": Decimal("7")},
    ]
    spark.createDataFrame([tuple(r.get(c) for c in usage_cols) for r in rows],
                          spec("silver.usage_events").struct_type()) \
        .write.format("delta").mode("append").save(lake.path("silver.usage_events"))
    line_cols = spec("gold.invoice_lines").column_names
    line = {"idempotency_key": "k1", "account_id": "a", "period": "2026-09", "line_type": "usage", "plan_id": "pro",
            "charge": "sms_segments", "product": "sms", "units": Decimal("1000"), "included": Decimal("500"),
            "billable_units": Decimal("500"), "amount": Decimal("5.00"), "currency": "USD", "status": "final"}
    base = {**line, "idempotency_key": "k2", "line_type": "base", "charge": "base_fee", "product": None}
    spark.createDataFrame([tuple(r.get(c) for c in line_cols) for r in (line, base)],
                          spec("gold.invoice_lines").struct_type()) \
        .write.format("delta").mode("append").save(lake.path("gold.invoice_lines"))
    lake.register_views(spark)
    register_views(spark, lake)
    out = spark.sql("SELECT account_id, period, metric, used, billed_units, amount, status, unbilled_units "
                    "FROM analyst.billed_vs_used")
    expected = spark.createDataFrame([
        ("a", "2026-09", "sms_segments", Decimal("1000.5"), Decimal("1000"), Decimal("5"), "final", Decimal("0.5")),
        ("b", "2026-09", "voice_minutes", Decimal("7"), Decimal("0"), None, None, Decimal("7")),
    ], "account_id string, period string, metric string, used decimal(38,6), billed_units decimal(38,6), "
       "amount decimal(38,6), status string, unbilled_units decimal(38,6)")
    assert_df_equality(out, expected, ignore_row_order=True, ignore_nullable=True, ignore_metadata=True)


def test_every_view_column_is_documented_on_the_view(spark, lake):
    lake.register_views(spark)
    created = register_views(spark, lake)
    for name in created:
        view = load_views()[name]
        described = {r.col_name: r.comment for r in spark.sql(f"DESCRIBE TABLE {name}").collect()}
        assert list(described) == [c for c, _ in view.columns], name
        assert described == dict(view.columns), name
