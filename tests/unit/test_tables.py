"""Table specs from schemas/tables.yaml and the logical-name -> storage mapping.

Only struct_type() needs Spark (it parses DDL types in the JVM): those tests take `spark`."""
from __future__ import annotations

import re

import pytest
from pyspark.sql import types as T

from pipelines.core.settings import Settings
from pipelines.core.tables import ColumnSpec, Lake, TableSpec, TableSpecError, parse_table_specs, spec, table_specs

DESIGN_TABLES = ("bronze.events", "silver.usage_events", "silver.account_events", "silver.quarantine",
                 "gold.daily_usage")
DECIMAL = "decimal(38,6)"


def raises(message: str, exc=TableSpecError):
    return pytest.raises(exc, match=f"^{re.escape(message)}$")


def col(name: str, type_: str = "string", comment: str = "c") -> dict:
    return {"name": name, "type": type_, "comment": comment}


# --- the shipped specs -------------------------------------------------------------------------

def test_design_tables_are_specified():
    assert set(DESIGN_TABLES) <= set(table_specs())
    for name in table_specs():
        layer, table = name.split(".")
        assert layer and table and name == spec(name).name


def test_bronze_events_columns():
    assert [(c.name, c.type) for c in spec("bronze.events").columns] == [
        ("key", "binary"), ("value", "binary"), ("topic", "string"), ("partition", "int"), ("offset", "bigint"),
        ("kafka_timestamp", "timestamp"), ("kafka_timestamp_type", "int"),
        ("headers", "array<struct<key:string,value:binary>>"), ("ingested_at", "timestamp"),
    ]


@pytest.mark.parametrize("table, column", [
    ("silver.usage_events", "quantity"),
    ("gold.daily_usage", "quantity"),
    ("silver.account_events", "amount_value"),
])
def test_quantities_and_money_are_decimal_38_6(spark, table, column):
    types = {c.name: c.type for c in spec(table).columns}
    assert types[column] == DECIMAL
    assert spec(table).struct_type()[column].dataType == T.DecimalType(38, 6)


def test_no_table_stores_floats(spark):
    for name, table in table_specs().items():
        for field in table.struct_type().fields:
            assert not isinstance(field.dataType, (T.FloatType, T.DoubleType)), f"{name}.{field.name}"


def test_silver_usage_events_has_the_contract_columns_and_coordinates():
    columns = spec("silver.usage_events").column_names
    for name in ("event_id", "account_id", "event_type", "occurred_at", "schema_version", "source", "event_date",
                 "product", "metric", "quantity", "dedup_key", "properties", "is_late",
                 "kafka_topic", "kafka_partition", "kafka_offset", "kafka_timestamp", "ingested_at"):
        assert name in columns
    assert len(columns) == len(set(columns))
    assert spec("silver.usage_events").change_data_feed is True


def test_silver_account_events_columns():
    columns = spec("silver.account_events").column_names
    for name in ("event_id", "account_id", "event_type", "occurred_at", "plan_id", "amount_value",
                 "amount_currency", "kafka_topic", "kafka_partition", "kafka_offset"):
        assert name in columns
    assert "quantity" not in columns
    assert spec("silver.account_events").change_data_feed is True


def test_silver_quarantine_keeps_raw_bytes_reason_and_coordinates():
    types = {c.name: c.type for c in spec("silver.quarantine").columns}
    assert spec("silver.quarantine").column_names[:6] == ["key", "value", "reason", "detail", "event_id",
                                                          "account_id"]
    assert (types["key"], types["value"], types["reason"], types["detail"]) == ("binary", "binary", "string",
                                                                                "string")
    assert (types["kafka_topic"], types["kafka_partition"], types["kafka_offset"]) == ("string", "int", "bigint")


def test_gold_daily_usage_columns():
    assert [(c.name, c.type) for c in spec("gold.daily_usage").columns][:6] == [
        ("account_id", "string"), ("product", "string"), ("metric", "string"), ("usage_date", "date"),
        ("quantity", DECIMAL), ("event_count", "bigint"),
    ]


def test_every_column_has_a_comment_and_a_valid_type(spark):
    for name, table in table_specs().items():
        assert table.comment, name
        struct = table.struct_type()  # raises on an invalid DDL type
        assert struct.fieldNames() == table.column_names
        for c in table.columns:
            assert c.comment, f"{name}.{c.name}"
            assert struct[c.name].metadata == {"comment": c.comment}


def test_parse_output_columns_fit_the_silver_tables():
    """Every typed column parse_events produces has a home in silver usage or account events."""
    usage = set(spec("silver.usage_events").column_names)
    account = set(spec("silver.account_events").column_names)
    parsed = {"event_id", "account_id", "event_type", "occurred_at", "schema_version", "source", "event_date",
              "product", "metric", "quantity", "dedup_key", "plan_id", "amount_value", "amount_currency",
              "properties", "is_late"}
    assert parsed <= usage | account


def test_unknown_table():
    with pytest.raises(TableSpecError, match=r"^unknown table 'gold\.nope'; known: \['bronze\.events', "):
        spec("gold.nope")


# --- parse_table_specs ------------------------------------------------------------------------------

def parse(**doc) -> dict[str, TableSpec]:
    """A tables.yaml document (version 1) parsed, errors naming it `tables.yaml`."""
    return parse_table_specs({"version": 1, **doc}, "tables.yaml")


def test_groups_columns_and_groups_after_in_order(spark):
    specs = parse(
        groups={"ids": [col("id")], "tail": [col("at", "timestamp")], "money": [col("amount", DECIMAL)]},
        tables={
            "s.t": {"comment": "T", "groups": ["ids", "money"], "columns": [col("x", "int")],
                    "groups_after": ["tail"], "change_data_feed": True},
            "s.u": {"columns": [{"name": "y", "type": "bigint"}]},
        },
    )
    t = specs["s.t"]
    assert t == TableSpec("s.t", "T", (
        ColumnSpec("id", "string", "c"), ColumnSpec("amount", DECIMAL, "c"), ColumnSpec("x", "int", "c"),
        ColumnSpec("at", "timestamp", "c"),
    ), True)
    assert t.ddl() == "`id` string, `amount` decimal(38,6), `x` int, `at` timestamp"
    assert t.struct_type()["amount"].dataType == T.DecimalType(38, 6)
    assert specs["s.u"] == TableSpec("s.u", "", (ColumnSpec("y", "bigint", ""),), False)


def test_empty_document():
    assert parse() == {}


@pytest.mark.parametrize("doc, message", [
    ({}, "'version' is required"),
    ({"version": 2}, "version: must be 1, got 2"),
    (None, "expected a mapping at the top level"),
    ({"version": 1, "table": {}}, "unknown keys ['table'] (allowed: ['groups', 'tables', 'version'])"),
    ({"version": 1, "tables": []}, "tables: expected a mapping, got []"),
], ids=["no-version", "version-2", "null", "unknown-key", "tables-list"])
def test_the_document(doc, message):
    with raises(f"tables.yaml: {message}"):
        parse_table_specs(doc, "tables.yaml")


@pytest.mark.parametrize("name", ["events", "a.b.c", ".t", "l.", "Silver.t", "s.t`x", "s.t\n"])
def test_table_name_must_be_layer_dot_table(name):
    with raises(f"tables.yaml: tables: table names are 'layer.table' in lower_snake_case, got {name!r}", ValueError):
        parse(tables={name: {"columns": [col("x")]}})


def test_unknown_table_keys():
    with raises("tables.yaml: tables.s.t: unknown keys ['partition_by', 'pk'] (allowed: ['change_data_feed', 'checkpoint_interval', "
                "'columns', 'comment', 'groups', 'groups_after', 'partitioned_by', 'stats_columns'])"):
        parse(tables={"s.t": {"columns": [col("x")], "partition_by": ["x"], "pk": "x"}})


@pytest.mark.parametrize("key", ["groups", "groups_after"])
def test_unknown_group(key):
    with raises(f"tables.yaml: tables.s.t.{key}[1]: unknown column group 'nope'; known: ['ids']"):
        parse(groups={"ids": [col("id")]}, tables={"s.t": {key: ["ids", "nope"]}})


def test_duplicated_columns():
    with raises("tables.yaml: tables.s.t: duplicated columns ['id', 'x']"):
        parse(
            groups={"ids": [col("id"), col("x")]},
            tables={"s.t": {"groups": ["ids"], "columns": [col("id"), col("x"), col("y")]}},
        )


@pytest.mark.parametrize("body", [{}, {"columns": []}, {"columns": None, "comment": "c"},
                                  {"groups": [], "groups_after": [], "comment": "c"}],
                         ids=["empty", "empty-list", "null", "empty-groups"])
def test_no_columns(body):
    with raises("tables.yaml: tables.s.t: no columns: give the table 'columns', 'groups' or 'groups_after'"):
        parse(tables={"s.t": body})


@pytest.mark.parametrize("item, message", [
    ({"name": "x"}, ": 'type' is required"),
    ({"type": "string"}, ": 'name' is required"),
    ({"name": "x", "type": "string", "nullable": False},
     ": unknown keys ['nullable'] (allowed: ['comment', 'name', 'type'])"),
    ("x string", ": expected a mapping, got 'x string'"),
    ({"name": "x", "type": ""}, ".type: expected a Spark SQL DDL type such as 'string' or 'decimal(38,6)', got ''"),
    ({"name": "x", "type": 1}, ".type: expected a Spark SQL DDL type such as 'string' or 'decimal(38,6)', got 1"),
    ({"name": "x`y", "type": "string"}, ".name: expected a lower_snake_case name, got 'x`y'"),
    ({"name": "x\n", "type": "string"}, ".name: expected a lower_snake_case name, got 'x\\n'"),
    ({"name": "x", "type": "string", "comment": None}, ".comment: expected a string, got None"),
], ids=["no-type", "no-name", "unknown-key", "not-a-mapping", "empty-type", "int-type", "bad-name", "newline-name", "null-comment"])
def test_bad_column(item, message):
    with raises(f"tables.yaml: tables.s.t.columns[0]{message}"):
        parse(tables={"s.t": {"columns": [item]}})


def test_bad_column_in_a_group():
    with raises("tables.yaml: groups.ids[0]: 'type' is required"):
        parse(groups={"ids": [{"name": "id"}]}, tables={})


def test_a_group_has_columns():
    with raises("tables.yaml: groups.ids: a group is a non-empty list of columns, got []"):
        parse(groups={"ids": []}, tables={})


# `s.t:` with nothing under it in YAML is None.
@pytest.mark.parametrize("body", [None, [col("x")], "x string"], ids=["null", "list", "string"])
def test_table_body_must_be_a_mapping(body):
    with raises(f"tables.yaml: tables.s.t: expected a mapping, got {body!r}"):
        parse(tables={"s.t": body})


@pytest.mark.parametrize("body, message", [
    ({"partitioned_by": ["y"]}, "tables.s.t.partitioned_by: ['y'] are not columns of the table"),
    ({"partitioned_by": "x"}, "tables.s.t.partitioned_by: expected a list, got 'x'"),
    ({"partitioned_by": ["x", "x"]}, "tables.s.t.partitioned_by: ['x', 'x'] has non-unique elements"),
    ({"change_data_feed": "yes"}, "tables.s.t.change_data_feed: expected true or false, got 'yes'"),
    ({"comment": 3}, "tables.s.t.comment: expected a string, got 3"),
    ({"stats_columns": ["y"]}, "tables.s.t.stats_columns: ['y'] are not columns of the table"),
    ({"stats_columns": ["x"], "partitioned_by": ["x"]},
     "tables.s.t.stats_columns: ['x'] are partition columns (a partition has no file statistics)"),
    ({"stats_columns": []}, "tables.s.t.stats_columns: [] should be non-empty"),
    ({"checkpoint_interval": 0}, "tables.s.t.checkpoint_interval: 0 is less than the minimum of 1"),
    ({"checkpoint_interval": "100"}, "tables.s.t.checkpoint_interval: expected an integer, got '100'"),
    ({"checkpoint_interval": True}, "tables.s.t.checkpoint_interval: expected an integer, got True"),
], ids=["not-a-column", "not-a-list", "repeated", "cdf-not-bool", "comment-not-text", "stats-not-a-column",
        "stats-on-a-partition", "stats-empty", "checkpoint-zero", "checkpoint-text", "checkpoint-bool"])
def test_table_settings(body, message):
    with raises(f"tables.yaml: {message}"):
        parse(tables={"s.t": {"columns": [col("x")], **body}})


def test_table_specs_read_the_file_strictly(tmp_path, monkeypatch):
    from pipelines.core import tables

    path = tmp_path / "tables.yaml"
    path.write_text("version: 1\ntables:\n  s.t:\n    columns: [{name: x, type: string}]\n  s.t: {}\n")
    monkeypatch.setattr(tables, "schemas_dir", lambda: tmp_path)
    tables.table_specs.cache_clear()
    try:
        with pytest.raises(TableSpecError, match=rf"^{re.escape(str(path))}: not valid YAML: .*duplicate key 's.t'"):
            table_specs()
    finally:
        tables.table_specs.cache_clear()


# --- Lake: logical names -> storage ------------------------------------------------------------------

def test_lake_paths(tmp_path):
    lake = Lake(Settings().with_overrides(lake_root=str(tmp_path / "lh")))
    assert lake.path("silver.usage_events") == str((tmp_path / "lh" / "silver" / "usage_events").resolve())
    assert lake.path("gold.daily_usage") == str((tmp_path / "lh" / "gold" / "daily_usage").resolve())
    assert lake.checkpoint("silver", "events") == str((tmp_path / "lh" / "_checkpoints" / "silver" / "events")
                                                      .resolve())
    with raises("table names are 'layer.table', got 'usage_events'", ValueError):
        lake.path("usage_events")


def test_every_table_name_constant_names_a_specified_table_and_each_table_has_one():
    """pipelines/core/tables.py spells each logical table name once; modules import it."""
    from pipelines.core import tables

    constants = {name: value for name, value in vars(tables).items()
                 if name.isupper() and isinstance(value, str) and "." in value}
    assert sorted(constants.values()) == sorted(table_specs())
    usage = table_specs()[tables.USAGE_EVENTS].column_names
    assert set(tables.COORDINATES) <= set(usage)
