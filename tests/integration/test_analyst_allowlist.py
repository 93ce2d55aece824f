"""The analyst SQL surface is an allowlist decided on Spark's analysed plan (issue 20, item 1).

Every payload of REFUSED is refused twice over: by `run_sql` (what `lakehouse sql` runs)
and by the plan check alone (`checked_plan`, no lexical pass in front), so no refusal here
rests on how the text is spelled. Each class has several spellings: backticks, case,
comments, hints, unicode escapes, IDENTIFIER(), subqueries, CTEs, lambdas and views.
ALLOWED are ordinary analyst queries that must still run and return the right rows.

The lake is built from tiny inline rows; the raw tables hold a canary that must never come
back. Traps a careless catalog could hold (a persistent view over bronze, a view or a SQL
function calling reflect, a global temporary view, a caller's temp view and Python UDF) are
planted by the trusted session first.
"""
from __future__ import annotations

import io
import os
from datetime import date, datetime
from decimal import Decimal

import pytest

from pipelines.analyst import guard as analyst
from pipelines.analyst.guard import ReadOnlyQueryError, analyst_session, checked_plan, surface
from pipelines.analyst.query import run_sql
from pipelines.core.settings import Settings
from pipelines.core.tables import Lake, spec, table_specs
from pipelines.analyst.views import load_views, register_views

CANARY = "ann.canary@shop.example"
HOME = os.path.expanduser("~")
TABLES = ("bronze.events", "silver.usage_events", "silver.quarantine", "gold.daily_usage")


def _rows(spark, name, rows):
    cols = spec(name).column_names
    return spark.createDataFrame([tuple(r.get(c) for c in cols) for r in rows], spec(name).struct_type())


@pytest.fixture(scope="module")
def lake(spark, tmp_path_factory):
    lake = Lake(Settings(lake_root=tmp_path_factory.mktemp("analyst") / "lake"))
    for name in table_specs():
        layer, table = name.split(".")
        # The session's catalog may still name an earlier test's lake; point it at this one.
        spark.sql(f"DROP TABLE IF EXISTS `{layer}`.`{table}`")
    for view in load_views():
        spark.sql(f"DROP VIEW IF EXISTS {view}")
    for name in TABLES:
        lake.ensure(spark, name)
    t = datetime(2026, 10, 5, 12)
    raw = f'{{"event_id":"x1","account_id":"acct_a","properties":{{"email":"{CANARY}"}}}}'.encode()
    _rows(spark, "bronze.events", [{"key": b"acct_a", "value": raw, "topic": "billing.events", "partition": 0,
                                    "offset": 1, "ingested_at": t}]) \
        .write.format("delta").mode("append").save(lake.path("bronze.events"))
    _rows(spark, "silver.quarantine", [{"key": b"acct_a", "value": raw, "reason": "invalid_json",
                                        "detail": CANARY, "account_id": "acct_a"}]) \
        .write.format("delta").mode("append").save(lake.path("silver.quarantine"))
    usage = [
        {"event_id": "e1", "account_id": "acct_a", "event_type": "usage", "occurred_at": datetime(2026, 10, 1, 9),
         "event_date": date(2026, 10, 1), "product": "sms", "metric": "sms_segments", "quantity": Decimal("2")},
        {"event_id": "e2", "account_id": "acct_a", "event_type": "usage", "occurred_at": datetime(2026, 10, 2, 9),
         "event_date": date(2026, 10, 2), "product": "helpdesk", "metric": "billable_tickets",
         "quantity": Decimal("1"), "source": None},
        {"event_id": "e3", "account_id": "acct_b", "event_type": "usage", "occurred_at": datetime(2026, 10, 3, 9),
         "event_date": date(2026, 10, 3), "product": "sms", "metric": "sms_segments", "quantity": Decimal("5")},
    ]
    _rows(spark, "silver.usage_events", usage).write.format("delta").mode("append") \
        .save(lake.path("silver.usage_events"))
    daily = [{"account_id": u["account_id"], "product": u["product"], "metric": u["metric"],
              "usage_date": u["event_date"], "quantity": u["quantity"], "event_count": 1, "last_ingested_at": t}
             for u in usage]
    _rows(spark, "gold.daily_usage", daily).write.format("delta").mode("append").save(lake.path("gold.daily_usage"))
    lake.register_views(spark)
    register_views(spark, lake)

    # Traps, planted by the trusted session: each must be refused when the analyst names it.
    spark.sql("CREATE OR REPLACE VIEW default.sneaky_bronze AS SELECT CAST(value AS STRING) AS v FROM bronze.events")
    spark.sql("CREATE OR REPLACE VIEW default.sneaky_home AS "
              "SELECT reflect('java.lang.System', 'getProperty', 'user.home') AS h")
    spark.sql("CREATE OR REPLACE GLOBAL TEMPORARY VIEW leak AS SELECT CAST(value AS STRING) AS v FROM bronze.events")
    spark.sql("CREATE OR REPLACE TEMPORARY VIEW leak_tmp AS SELECT CAST(value AS STRING) AS v FROM bronze.events")
    spark.udf.register("py_home", lambda: HOME, "string")
    spark.sql("CREATE OR REPLACE FUNCTION default.home() RETURNS STRING "
              "RETURN reflect('java.lang.System', 'getProperty', 'user.home')")
    yield lake
    for view in ("default.sneaky_bronze", "default.sneaky_home", "global_temp.leak", "leak_tmp"):
        spark.sql(f"DROP VIEW IF EXISTS {view}")
    spark.sql("DROP FUNCTION IF EXISTS default.home")
    for view in load_views():
        spark.sql(f"DROP VIEW IF EXISTS {view}")
    for name in TABLES:
        layer, table = name.split(".")
        spark.sql(f"DROP TABLE IF EXISTS `{layer}`.`{table}`")


def _payloads(lake_root: str) -> list[tuple[str, str]]:
    bronze, quarantine, usage = (f"{lake_root}/bronze/events", f"{lake_root}/silver/quarantine",
                                 f"{lake_root}/silver/usage_events")
    home = "'java.lang.System', 'getProperty', 'user.home'"
    return [
        # Reflection and Java calls, however spelled or wherever put.
        ("reflection", f"SELECT `reflect`({home})"),
        ("reflection", f"SELECT reflect({home})"),
        ("reflection", f"SELECT ReFlEcT({home})"),
        ("reflection", f"SELECT `java_method`({home})"),
        ("reflection", "SELECT java_method('java.lang.System', 'getenv', 'HOME')"),
        ("reflection", f"SELECT `try_reflect`({home})"),
        ("reflection", f"SELECT /* a comment */ `reflect` /* another */ ({home})"),
        ("reflection", f"SELECT /*+ BROADCAST(u) */ `reflect`({home}) FROM silver.usage_events u"),
        ("reflection", "SELECT `reflect`('java.lang.\\u0053ystem', 'getProperty', 'user.home')"),
        ("reflection", f"SELECT IDENTIFIER('reflect')({home})"),
        ("reflection", f"SELECT builtin.reflect({home})"),
        ("reflection", f"SELECT system.builtin.java_method({home})"),
        ("reflection", f"SELECT * FROM silver.usage_events WHERE account_id = (SELECT `reflect`({home}))"),
        ("reflection", f"WITH x AS (SELECT `java_method`({home}) AS h) SELECT * FROM x"),
        ("reflection", f"SELECT max(`reflect`({home})) OVER () FROM silver.usage_events"),
        ("reflection", f"SELECT transform(array(1), x -> `reflect`({home}))"),
        ("reflection", f"SELECT event_id FROM silver.usage_events ORDER BY `reflect`({home})"),
        ("reflection", f"SELECT account_id FROM silver.usage_events GROUP BY account_id "
                       f"HAVING max(`reflect`({home})) IS NOT NULL"),
        ("reflection", f"SELECT * FROM silver.usage_events |> SELECT `reflect`({home}) AS h"),
        ("reflection", "SELECT * FROM default.sneaky_home"),
        ("reflection", "SELECT default.home()"),
        # Files and paths: SQL on files is off, and a path is never a lake table.
        ("file", "SELECT * FROM text.`/etc/hostname`"),
        ("file", "SELECT * FROM TEXT.`file:///etc/hostname`"),
        ("file", "SELECT * FROM `text`.`/etc/hostname`"),
        ("file", "SELECT * FROM json.`/etc/hostname`"),
        ("file", "SELECT * FROM csv.`/etc/hostname`"),
        ("file", "SELECT * FROM parquet.`/etc/hostname`"),
        ("file", "SELECT * FROM orc.`/etc/hostname`"),
        ("file", "SELECT * FROM binaryFile.`/etc/hostname`"),
        ("file", "SELECT * FROM IDENTIFIER('text.`/etc/hostname`')"),
        ("file", "SELECT * FROM (SELECT * FROM text.`/etc/hostname`) AS t"),
        ("file", "WITH f AS (SELECT * FROM text.`/etc/hostname`) SELECT * FROM f"),
        ("file", "SELECT (SELECT first(value) FROM text.`/etc/hostname`) AS h"),
        ("file", "SELECT * FROM read_files('/etc/hostname')"),
        ("file", "SELECT * FROM read_files('/etc/hostname', format => 'text')"),
        ("path", f"SELECT * FROM delta.`{bronze}`"),
        ("path", f"SELECT * FROM DELTA.`{quarantine}`"),
        ("path", f"SELECT * FROM delta.`{usage}`"),
        ("path", f"SELECT * FROM spark_catalog.delta.`{bronze}`"),
        ("path", f"SELECT * FROM IDENTIFIER('delta.`{bronze}`')"),
        ("path", f"SELECT * FROM table_changes_by_path('{bronze}', 0)"),
        # Raw personal data: bronze and the quarantine, however named.
        ("raw data", "SELECT * FROM bronze.events"),
        ("raw data", "SELECT CAST(value AS STRING) FROM BRONZE.EVENTS"),
        ("raw data", "SELECT * FROM `bronze`.`events`"),
        ("raw data", "SELECT * FROM spark_catalog.bronze.events"),
        ("raw data", "SELECT * FROM IDENTIFIER('bronze.events')"),
        ("raw data", "SELECT * FROM IDENTIFIER('bronze' || '.' || 'events')"),
        ("raw data", "SELECT detail FROM silver.quarantine"),
        ("raw data", "SELECT u.event_id, q.detail FROM silver.usage_events u JOIN silver.quarantine q "
                     "ON u.account_id = q.account_id"),
        ("raw data", "SELECT event_id FROM silver.usage_events WHERE EXISTS (SELECT 1 FROM bronze.events)"),
        ("raw data", "SELECT (SELECT max(detail) FROM silver.quarantine) AS d"),
        ("raw data", "WITH b AS (SELECT * FROM bronze.events) SELECT count(*) FROM b"),
        ("raw data", "SELECT account_id FROM silver.usage_events UNION ALL SELECT account_id FROM silver.quarantine"),
        ("raw data", "SELECT * FROM silver.usage_events u, LATERAL (SELECT count(*) AS n FROM bronze.events)"),
        ("raw data", "SELECT * FROM silver.usage_events |> JOIN silver.quarantine USING (account_id)"),
        ("raw data", "DESCRIBE bronze.events"),
        ("raw data", "SHOW COLUMNS IN silver.quarantine"),
        ("raw data", "EXPLAIN SELECT * FROM bronze.events"),
        ("raw data", "SHOW TABLE EXTENDED IN bronze LIKE '*'"),
        # History instead of the table: another version, the change feed.
        ("history", "SELECT * FROM silver.usage_events VERSION AS OF 0"),
        ("history", "SELECT * FROM silver.usage_events TIMESTAMP AS OF '2000-01-01'"),
        ("history", "SELECT * FROM silver.usage_events WITH ('versionAsOf' = '0')"),
        ("history", "SELECT * FROM table_changes('silver.usage_events', 0)"),
        ("history", "DESCRIBE HISTORY silver.usage_events"),
        ("history", "DESCRIBE DETAIL silver.usage_events"),
        # Views wrapping forbidden things, and views the analyst would make.
        ("view", "SELECT * FROM default.sneaky_bronze"),
        ("view", "SELECT * FROM global_temp.leak"),
        ("view", "SELECT * FROM leak_tmp"),
        ("view", "CREATE TEMPORARY VIEW v AS SELECT * FROM bronze.events"),
        ("view", "CREATE OR REPLACE VIEW analyst.usage_by_product_month AS SELECT * FROM bronze.events"),
        ("view", "CREATE GLOBAL TEMPORARY VIEW g AS SELECT 1"),
        # Functions: registration, and functions the caller registered.
        ("udf", "CREATE TEMPORARY FUNCTION f AS 'java.lang.System' USING JAR '/tmp/x.jar'"),
        ("udf", "CREATE FUNCTION f() RETURNS STRING RETURN 'x'"),
        ("udf", "CREATE TEMPORARY FUNCTION f() RETURNS STRING RETURN reflect('java.lang.System', 'lineSeparator')"),
        ("udf", "SELECT py_home()"),
        ("udf", "DROP FUNCTION IF EXISTS default.home"),
        # Commands: session, cache, jars, writes, dynamic SQL.
        ("command", "SET spark.sql.runSQLOnFiles=true"),
        ("command", "SET"),
        ("command", "RESET"),
        ("command", "ADD JAR /tmp/x.jar"),
        ("command", "ADD FILE /etc/hostname"),
        ("command", "LIST FILES"),
        ("command", "CACHE TABLE silver.usage_events"),
        ("command", "CACHE LAZY TABLE c AS SELECT * FROM bronze.events"),
        ("command", "UNCACHE TABLE IF EXISTS silver.usage_events"),
        ("command", "REFRESH TABLE silver.usage_events"),
        ("command", "USE bronze"),
        ("command", "INSERT INTO gold.daily_usage SELECT * FROM gold.daily_usage"),
        ("command", "WITH a AS (SELECT 1) INSERT INTO gold.daily_usage SELECT * FROM a"),
        ("command", "DELETE FROM gold.daily_usage"),
        ("command", "DROP TABLE silver.usage_events"),
        ("command", "EXECUTE IMMEDIATE 'SELECT * FROM bronze.events'"),
        ("command", "EXECUTE IMMEDIATE 'SET spark.sql.runSQLOnFiles=true'"),
        ("command", "DECLARE v STRING DEFAULT 'x'"),
        ("command", "SELECT 1; SET spark.sql.runSQLOnFiles=true"),
        ("command", "OPTIMIZE silver.usage_events"),
        ("command", "VACUUM silver.usage_events"),
    ]


# Payload ids read as the class and the statement: `pytest -k "reflection"` picks a class.
REFUSED = _payloads("<lake>")


@pytest.fixture(scope="module")
def payloads(lake) -> dict[str, str]:
    return {sql: real for (_cls, sql), (_c, real) in zip(REFUSED, _payloads(str(lake.settings.lake_root_abs)))}


@pytest.mark.parametrize("cls, sql", REFUSED, ids=[f"{c}: {s[:70]}" for c, s in REFUSED])
def test_lakehouse_sql_refuses(spark, lake, payloads, cls, sql):
    out = io.StringIO()
    files_on = spark.conf.get("spark.sql.runSQLOnFiles")
    with pytest.raises(ReadOnlyQueryError):
        run_sql(spark, lake.settings, payloads[sql], fmt="csv", out=out)
    assert out.getvalue() == ""
    assert spark.conf.get("spark.sql.runSQLOnFiles") == files_on


@pytest.mark.parametrize("cls, sql", REFUSED, ids=[f"{c}: {s[:70]}" for c, s in REFUSED])
def test_the_plan_check_alone_refuses(spark, lake, payloads, cls, sql):
    """No lexical pass in front: the parsed and analysed plans decide."""
    with pytest.raises(ReadOnlyQueryError):
        checked_plan(analyst_session(spark), payloads[sql], surface(lake, load_views()))


ALLOWED = [
    ("SELECT u.event_id, u.account_id, d.quantity FROM silver.usage_events u JOIN gold.daily_usage d "
     "ON d.account_id = u.account_id AND d.usage_date = u.event_date AND d.metric = u.metric ORDER BY u.event_id",
     ["event_id,account_id,quantity", "e1,acct_a,2.000000", "e2,acct_a,1.000000", "e3,acct_b,5.000000"]),
    ("SELECT event_id, row_number() OVER (PARTITION BY account_id ORDER BY occurred_at DESC) AS n "
     "FROM silver.usage_events ORDER BY event_id",
     ["event_id,n", "e1,2", "e2,1", "e3,1"]),
    ("WITH per AS (SELECT account_id, sum(quantity) AS q FROM silver.usage_events GROUP BY account_id) "
     "SELECT account_id, q FROM per WHERE q > 2 ORDER BY account_id",
     ["account_id,q", "acct_a,3.000000", "acct_b,5.000000"]),
    ("SELECT event_id FROM silver.usage_events WHERE quantity = (SELECT max(quantity) FROM silver.usage_events) "
     "AND account_id IN (SELECT account_id FROM gold.daily_usage) AND EXISTS (SELECT 1 FROM gold.daily_usage)",
     ["event_id", "e3"]),
    ("SELECT month, product, metric, quantity, events, accounts FROM analyst.usage_by_product_month "
     "ORDER BY product",
     ["month,product,metric,quantity,events,accounts", "2026-10,helpdesk,billable_tickets,1.000000,1,1",
      "2026-10,sms,sms_segments,7.000000,2,2"]),
    ("SELECT count(*) AS n FROM `SILVER`.`Usage_Events`", ["n", "3"]),
    ("SELECT count(*) AS n FROM IDENTIFIER('gold.daily_usage')", ["n", "3"]),
    ("select count(*) as n from spark_catalog.silver.usage_events -- a comment", ["n", "3"]),
    ("SELECT /*+ BROADCAST(d) */ count(*) AS n FROM silver.usage_events u JOIN gold.daily_usage d "
     "ON u.account_id = d.account_id AND u.event_date = d.usage_date AND u.metric = d.metric", ["n", "3"]),
    ("SELECT account_id FROM silver.usage_events UNION SELECT account_id FROM gold.daily_usage ORDER BY account_id",
     ["account_id", "acct_a", "acct_b"]),
    ("SELECT x FROM VALUES (2), (1) AS t(x) ORDER BY x", ["x", "1", "2"]),
    ("SELECT sum(id) AS s FROM range(4)", ["s", "6"]),
    ("SELECT v FROM silver.usage_events LATERAL VIEW explode(array(event_id)) e AS v WHERE account_id = 'acct_b'",
     ["v", "e3"]),
    ("SELECT base64('a') AS b, url_decode('a%20b') AS u, luhn_check('4111111111111111') AS l, "
     "get_json_object('{\"a\": 1}', '$.a') AS j", ["b,u,l,j", "YQ==,a b,True,1"]),
    ("WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 3) SELECT sum(n) AS s FROM r",
     ["s", "6"]),
]


@pytest.mark.parametrize("sql, expected", ALLOWED, ids=[s[:70] for s, _ in ALLOWED])
def test_ordinary_analyst_queries_run_and_return_the_right_rows(spark, lake, sql, expected):
    out = io.StringIO()
    run_sql(spark, lake.settings, sql, fmt="csv", limit=0, out=out)
    assert out.getvalue().splitlines() == expected


@pytest.mark.parametrize("sql, needles", [
    ("SHOW TABLES IN silver", ["usage_events"]),
    ("SHOW TABLES IN analyst", ["usage_by_product_month"]),
    ("SHOW DATABASES", ["gold"]),
    ("DESCRIBE silver.usage_events", ["account_id", "decimal(38,6)"]),
    ("DESCRIBE TABLE EXTENDED gold.daily_usage", ["usage_date"]),
    ("DESCRIBE silver.usage_events account_id", ["account_id"]),
    ("DESCRIBE analyst.usage_by_product_month", ["month"]),
    ("SHOW COLUMNS IN gold.daily_usage", ["event_count"]),
    ("SHOW TBLPROPERTIES silver.usage_events", ["delta.enableChangeDataFeed"]),
    ("DESCRIBE FUNCTION abs", ["abs"]),
    ("EXPLAIN SELECT count(*) FROM silver.usage_events", ["Physical Plan"]),
])
def test_show_and_describe_of_lake_tables_still_run(spark, lake, sql, needles):
    out = io.StringIO()
    run_sql(spark, lake.settings, sql, fmt="csv", limit=0, out=out)
    for needle in needles:
        assert needle in out.getvalue()
    assert CANARY not in out.getvalue()


def test_the_table_format_prints_through_the_checked_plan(spark, lake):
    out = io.StringIO()
    run_sql(spark, lake.settings, "SELECT event_id FROM silver.usage_events ORDER BY event_id", out=out)
    lines = [line.strip() for line in out.getvalue().splitlines()]
    assert lines[:6] == ["+--------+", "|event_id|", "+--------+", "|      e1|", "|      e2|", "|      e3|"]


@pytest.mark.parametrize("sql", ["SELECT * FROM text.`/etc/hostname`", "SELECT * FROM delta.`{lake}/bronze/events`",
                                 "SELECT * FROM delta.`{lake}/silver/usage_events`"])
def test_a_read_by_path_is_refused_even_with_sql_on_files_on(spark, lake, sql):
    """The two layers stand apart: were `runSQLOnFiles` back on, a relation that is no lake
    table is still refused by the allowlist."""
    session = spark.newSession()
    session.conf.set("spark.sql.runSQLOnFiles", "true")
    plan = session.sql(sql.format(lake=lake.settings.lake_root_abs))._jdf.queryExecution().analyzed()
    with pytest.raises(ReadOnlyQueryError, match="a read by path"):
        analyst.check_analysed_plan(spark._jvm, plan, surface(lake, load_views()))


def test_user_defined_functions_are_refused_wherever_they_come_from(spark, lake):
    """A Python UDF is invisible to the analyst session (its own function registry); were
    one to reach a plan anyway, the expression check refuses it."""
    from pyspark.sql import functions as F

    home = F.udf(lambda: HOME, "string")
    plan = spark.table("silver.usage_events").select(home().alias("h"))._jdf.queryExecution().analyzed()
    with pytest.raises(ReadOnlyQueryError, match="user-defined function"):
        analyst.check_analysed_plan(spark._jvm, plan, surface(lake, load_views()))


def test_xml_functions_never_resolve_external_entities(spark, lake, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text(CANARY)
    entity = f'<!DOCTYPE a [<!ENTITY x SYSTEM "file://{secret}">]><a>&x;</a>'
    for sql in (f"SELECT xpath_string('{entity}', 'a') AS r", f"SELECT from_xml('{entity}', 'a STRING') AS r"):
        out = io.StringIO()
        run_sql(spark, lake.settings, sql, fmt="csv", out=out)
        assert CANARY not in out.getvalue()


def test_the_analyst_session_cannot_name_files_and_leaves_the_caller_alone(spark):
    session = analyst_session(spark)
    assert session.conf.get("spark.sql.runSQLOnFiles") == "false"
    assert spark.conf.get("spark.sql.runSQLOnFiles") == "true"


def test_in_a_catalog_the_surface_is_the_catalog_tables(spark, tmp_path):
    """Unity Catalog names (`<catalog>.<schema>.<layer>_<table>`), with Spark's session
    catalog standing in: silver and gold read, bronze and the quarantine refused."""
    schema, readers = "lakehouse_allowlist", "lakehouse_allowlist_analyst"
    for name in (schema, readers):
        spark.sql(f"CREATE SCHEMA IF NOT EXISTS spark_catalog.{name} LOCATION '{tmp_path / name}'")
    lake = Lake(Settings(lake_root=tmp_path / "root", catalog="spark_catalog", schema=schema))
    try:
        for name in TABLES:
            lake.ensure(spark, name)
        assert "analyst.usage_by_product_month" in register_views(spark, lake)
        allowed = surface(lake, load_views())
        session = analyst_session(spark)
        for sql in (f"SELECT count(*) FROM spark_catalog.{schema}.silver_usage_events",
                    f"SELECT count(*) FROM spark_catalog.{readers}.silver_usage_events",   # the analysts' view
                    f"SELECT * FROM spark_catalog.{readers}.analyst_usage_by_product_month",
                    f"DESCRIBE spark_catalog.{schema}.gold_daily_usage"):
            checked_plan(session, sql, allowed)
        for table in ("bronze_events", "silver_quarantine"):
            with pytest.raises(ReadOnlyQueryError, match=f"{schema}.{table}"):
                checked_plan(session, f"SELECT * FROM spark_catalog.{schema}.{table}", allowed)
        assert not spark.catalog.tableExists(f"spark_catalog.{readers}.bronze_events")
        assert not spark.catalog.tableExists(f"spark_catalog.{readers}.silver_quarantine")
    finally:
        for name in (readers, schema):
            spark.sql(f"DROP SCHEMA spark_catalog.{name} CASCADE")


def test_a_plan_that_cannot_be_inspected_is_refused_not_skipped(spark, lake, monkeypatch):
    class ConnectLike:   # a session without py4j access to its plans (Spark Connect)
        pass

    with pytest.raises(ReadOnlyQueryError, match="cannot show its query plans"):
        analyst.check_plan_read_only(ConnectLike(), "SELECT 1")

    def broken_walk(jvm, plan):
        raise RuntimeError("the walk broke")
        yield   # pragma: no cover

    monkeypatch.setattr(analyst, "_walk", broken_walk)
    with pytest.raises(ReadOnlyQueryError, match="could not be inspected: the walk broke"):
        checked_plan(analyst_session(spark), "SELECT count(*) FROM silver.usage_events", surface(lake, load_views()))
