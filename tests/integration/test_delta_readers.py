"""The analyst surface over a lake the jobs built from real Kafka records: every table and
column carries its comment from schemas/tables.yaml, and an independent Delta reader (the
deltalake package, delta-rs) reads every table exactly as Spark does."""
from __future__ import annotations

from datetime import datetime, timezone

import pytest
from deltalake import DeltaTable
from pyspark.sql import types as T

from pipelines.core.tables import Lake, table_specs

pytestmark = pytest.mark.kafka


@pytest.fixture(scope="module")
def built(spark, billed_lakehouse):
    settings = billed_lakehouse
    lake = Lake(settings)
    tables = [name for name in table_specs() if lake.exists(spark, name)]
    # Everything the jobs above write, at least.
    assert {"bronze.events", "silver.usage_events", "silver.account_events", "silver.quarantine",
            "gold.daily_usage", "gold.invoice_lines", "gold.billing_exports"} <= set(tables)
    return lake, tables


def _plain(value):
    """One Python value for both readers: aware datetimes in UTC made naive (Spark's local
    session returns naive UTC), rows and structs as dicts, arrays as tuples."""
    if isinstance(value, datetime) and value.tzinfo is not None:
        return value.astimezone(timezone.utc).replace(tzinfo=None)
    if isinstance(value, dict):
        return tuple(sorted((k, _plain(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_plain(v) for v in value)
    if hasattr(value, "asDict"):
        return _plain(value.asDict())
    return value


def test_every_table_and_column_carries_its_comment(spark, built):
    lake, tables = built
    for name in tables:
        table = table_specs()[name]
        assert lake.delta(spark, name).detail().first()["description"] == table.comment, name
        spark_comments = {f.name: f.metadata.get("comment") for f in lake.read(spark, name).schema.fields}
        delta_rs = DeltaTable(lake.path(name))
        assert delta_rs.metadata().description == table.comment, name
        rs_comments = {f.name: f.metadata.get("comment") for f in delta_rs.schema().fields}
        expected = {c.name: c.comment for c in table.columns}
        assert spark_comments == expected, name
        assert rs_comments == expected, name
        assert all(expected.values()), f"{name}: a column without a comment"


def test_deltalake_reads_every_table_as_spark_does(spark, built):
    lake, tables = built
    for name in tables:
        df = lake.read(spark, name)
        spark_rows = sorted((_plain(tuple(r)) for r in df.collect()), key=repr)
        arrow = DeltaTable(lake.path(name)).to_pyarrow_table()
        assert arrow.column_names == df.columns, name
        # Arrow hands a map over as a list of (key, value) pairs, Spark as a dict.
        maps = {f.name for f in df.schema.fields if isinstance(f.dataType, T.MapType)}

        def value(row, column):
            v = row[column]
            return dict(v) if column in maps and v is not None else v

        rs_rows = sorted((_plain(tuple(value(row, c) for c in df.columns)) for row in arrow.to_pylist()), key=repr)
        assert rs_rows == spark_rows, name
        assert len(rs_rows) == df.count()
    assert len(DeltaTable(lake.path("silver.usage_events")).to_pyarrow_table()) > 0
