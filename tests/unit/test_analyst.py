"""The analyst SQL command runs reads only: lexical guard (pure) and Spark's parser (plan)."""
from __future__ import annotations

import io

import pytest

from pipelines.analyst.guard import (ReadOnlyQueryError, check_plan_read_only, check_read_only, qualified, surface,
                                     surface_tables)
from pipelines.analyst.query import run_sql
from pipelines.core.settings import Settings
from pipelines.core.tables import Lake, table_specs

READS = [
    "SELECT 1",
    "select * from silver.usage_events where account_id = 'acct_1';",
    "  -- leading comment\nSELECT 1",
    "/* block */ SELECT 1 /* trailing; with a semicolon */",
    "WITH a AS (SELECT 1 AS x) SELECT x FROM a",
    "(SELECT 1)",
    "SELECT 'INSERT INTO t; DROP TABLE x' AS s",
    "SELECT `set`, `update` FROM VALUES (1, 2) AS t(`set`, `update`)",
    "SELECT date_add(current_date(), 1), updated_at_x FROM VALUES (1) AS t(updated_at_x)",
    "SHOW TABLES",
    "DESCRIBE silver.usage_events",
    "EXPLAIN SELECT 1",
    "VALUES (1), (2)",
    "SELECT \"it's -- not a comment\" AS s",
]

WRITES = [
    ("", "empty"),
    ("   ;  ", "empty"),
    ("-- only a comment", "empty"),
    ("SELECT 1; DROP TABLE silver.usage_events", "one statement"),
    ("SELECT 1;/* */DELETE FROM silver.usage_events", "one statement"),
    ("INSERT INTO silver.usage_events SELECT * FROM silver.usage_events", "only read queries"),
    ("WITH a AS (SELECT 1) INSERT INTO t SELECT * FROM a", "INSERT"),
    ("FROM silver.usage_events INSERT INTO t SELECT *", "only read queries"),
    ("CACHE TABLE silver.usage_events", "only read queries"),
    ("CACHE LAZY TABLE x AS SELECT 1", "only read queries"),
    ("SET spark.sql.ansi.enabled=false", "only read queries"),
    ("ADD JAR /tmp/evil.jar", "only read queries"),
    ("/* SELECT */ DROP TABLE x", "only read queries"),
    ("-- SELECT\nMERGE INTO t USING s ON t.a = s.a WHEN MATCHED THEN DELETE", "only read queries"),
    ("SELECT reflect('java.lang.System', 'exit', 0)", "REFLECT"),
    ("SELECT java_method('java.lang.Runtime', 'getRuntime')", "JAVA_METHOD"),
    ("EXPLAIN INSERT INTO t SELECT 1", "INSERT"),
    ("SELECT 1 /* unterminated", "unterminated"),
    ("SELECT 'unterminated", "unterminated"),
    ("WITH a AS (SELECT 1) SELECT * FROM a; SET x=1", "one statement"),
    ("DESCRIBE silver.x; CREATE TABLE y (a INT)", "one statement"),
    ("SELECT * FROM t WHERE 1 = 1 UNION ALL SELECT * FROM t2 /*;*/ -- ;\n; ;", None),
]


@pytest.mark.parametrize("query", READS)
def test_reads_pass_the_lexical_guard(query):
    assert check_read_only(query) == query.strip().rstrip(";").strip()


@pytest.mark.parametrize("query, message", WRITES)
def test_writes_and_tricks_are_refused(query, message):
    if message is None:  # trailing empty statements and commented semicolons are fine
        assert check_read_only(query).startswith("SELECT")
        return
    with pytest.raises(ReadOnlyQueryError, match=message):
        check_read_only(query)


@pytest.mark.parametrize("query", ["SELECT 1", "WITH a AS (SELECT 1 AS x) SELECT * FROM a", "SHOW TABLES",
                                   "DESCRIBE t", "EXPLAIN SELECT 1", "SELECT * FROM (WITH b AS (SELECT 1) SELECT * FROM b)",
                                   "SELECT (SELECT max(x) FROM t) FROM u"])
def test_parser_accepts_reads(spark, query):
    check_plan_read_only(spark, query)


@pytest.mark.parametrize("query, node", [
    ("WITH a AS (SELECT 1) INSERT INTO t SELECT * FROM a", "InsertIntoStatement"),
    ("CACHE TABLE t", "CacheTable"),
    ("SET spark.sql.ansi.enabled=false", "SetCommand"),
    ("ADD JAR /tmp/x.jar", "AddJarsCommand"),
    ("SELECT * FROM (WITH b AS (SELECT 1) SELECT * FROM b) x", None),
])
def test_parser_refuses_what_the_lexer_would_miss(spark, query, node):
    # The parse check stands on its own: even without the lexical guard, writes are refused.
    if node is None:
        check_plan_read_only(spark, query)
        return
    with pytest.raises(ReadOnlyQueryError, match=node):
        check_plan_read_only(spark, query)


def test_run_sql_refuses_before_running_anything(spark, tmp_path):
    from pipelines.core.settings import Settings

    settings = Settings(lake_root=tmp_path / "lake")
    with pytest.raises(ReadOnlyQueryError):
        run_sql(spark, settings, "SELECT 1; SET spark.sql.shuffle.partitions=7", out=io.StringIO())
    assert spark.conf.get("spark.sql.shuffle.partitions") != "7"
    out = io.StringIO()
    run_sql(spark, settings, "SELECT 41 + 1 AS answer", fmt="csv", out=out)
    assert out.getvalue().split() == ["answer", "42"]


def test_the_surface_is_silver_and_gold_without_raw_data():
    tables = surface_tables()
    assert "silver.usage_events" in tables and "gold.invoice_lines" in tables
    for name in ("bronze.events", "silver.quarantine", "ops.quality_results"):
        assert name not in tables
    for name in table_specs():
        if name.split(".")[0] in ("silver", "gold") and name != "silver.quarantine":
            assert name in tables
    # Raw record bytes (bronze's and the quarantine's key and value) never reach the surface.
    for name in tables:
        assert "binary" not in {c.type for c in table_specs()[name].columns}, name


def test_the_surface_names_what_the_catalog_resolves(tmp_path):
    views = ["analyst.usage_by_product_month"]
    local = surface(Lake(Settings(lake_root=tmp_path)), views)
    assert ("spark_catalog", "silver", "usage_events") in local
    assert ("spark_catalog", "analyst", "usage_by_product_month") in local
    assert ("spark_catalog", "bronze", "events") not in local
    uc = surface(Lake(Settings(lake_root=tmp_path, catalog="Main", schema="billing")), views)
    assert ("main", "billing", "gold_daily_usage") in uc
    # The analyst schema: the analyst views, and a view per surface table (views.surface_statements).
    assert ("main", "billing_analyst", "analyst_usage_by_product_month") in uc
    assert ("main", "billing_analyst", "silver_usage_events") in uc
    for refused in (("main", "billing", "silver_quarantine"), ("main", "billing_analyst", "silver_quarantine"),
                    ("main", "billing", "bronze_events"), ("main", "billing_analyst", "bronze_events")):
        assert refused not in uc
    assert qualified("`a``b`.`C`") == ("a`b", "c")
