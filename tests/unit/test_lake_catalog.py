"""The one mapping from logical names to storage: paths locally, catalog tables when a
catalog is configured. Spark's own session catalog stands in for Unity Catalog here: the
same name-based calls (createIfNotExists().tableName, read.table, forName, saveAsTable)."""
from __future__ import annotations

import uuid
from decimal import Decimal

import pytest

from pipelines.core.tables import QUALITY_RESULTS
from pipelines.quality.run import run_quality
from pipelines.quality.suites import load_suites
from pipelines.core.settings import Settings
from pipelines.core.tables import Lake, spec


def test_local_names_are_folders_and_catalog_names_are_tables(tmp_path):
    local = Lake(Settings(lake_root=tmp_path))
    assert local.table_name("silver.usage_events") is None
    assert local.path("silver.usage_events") == str(tmp_path.resolve() / "silver" / "usage_events")
    assert local.ref("gold.daily_usage") == f"delta.`{tmp_path.resolve() / 'gold' / 'daily_usage'}`"
    uc = Lake(Settings(lake_root=tmp_path, catalog="main", schema="billing"))
    assert uc.table_name("silver.usage_events") == "`main`.`billing`.`silver_usage_events`"
    assert uc.ref("gold.daily_usage") == "`main`.`billing`.`gold_daily_usage`"


def test_the_catalog_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("LAKEHOUSE_CATALOG", "prod")
    monkeypatch.setenv("LAKEHOUSE_SCHEMA", "lake")
    assert Settings().table_name("bronze.events") == "`prod`.`lake`.`bronze_events`"
    monkeypatch.setenv("LAKEHOUSE_CATALOG", "")
    assert Settings().table_name("bronze.events") is None


@pytest.fixture
def catalog_lake(spark, tmp_path):
    schema = f"lakehouse_{uuid.uuid4().hex[:8]}"
    spark.sql(f"CREATE SCHEMA spark_catalog.{schema} LOCATION '{tmp_path / schema}'")
    yield Lake(Settings(lake_root=tmp_path / "root", catalog="spark_catalog", schema=schema))
    spark.sql(f"DROP SCHEMA spark_catalog.{schema} CASCADE")


def test_catalog_tables_are_created_read_and_written_by_name(spark, catalog_lake):
    lake = catalog_lake
    name = "gold.daily_usage"
    assert not lake.exists(spark, name)
    lake.ensure(spark, name)
    lake.ensure(spark, name)   # idempotent
    assert lake.exists(spark, name)
    table = lake.table_name(name).replace("`", "")
    detail = spark.sql(f"DESCRIBE DETAIL {lake.table_name(name)}").first()
    assert detail["description"] == spec(name).comment
    assert not (lake.settings.lake_root_abs / "gold").exists(), "no folder under the lake root in catalog mode"
    row = [("a", "sms", "sms_segments", None, Decimal("1.5"), 1, None)]
    lake.save(spark.createDataFrame(row, spec(name).struct_type()).write.format("delta").mode("append"), name)
    lake.delta(spark, name).update("account_id = 'a'", {"event_count": "2"})
    got = lake.read(spark, name).collect()
    assert [(r.account_id, r.quantity, r.event_count) for r in got] == [("a", Decimal("1.500000"), 2)]
    assert spark.catalog.tableExists(table)
    comments = {f.name: f.metadata.get("comment") for f in lake.read(spark, name).schema.fields}
    assert comments == {c.name: c.comment for c in spec(name).columns}


def test_quality_results_go_to_the_catalog_table(spark, catalog_lake):
    """ops.quality_results through the mapping like every table, not into a folder."""
    checks = tuple(c for c in load_suites() if c.suite == "bronze")
    report = run_quality(spark, catalog_lake, checks=checks)
    assert catalog_lake.exists(spark, QUALITY_RESULTS)
    written = catalog_lake.read(spark, QUALITY_RESULTS).select("run_id").collect()
    assert [r.run_id for r in written] == [report.run_id] * len(checks)
    assert not (catalog_lake.settings.lake_root_abs / "ops").exists(), "no folder under the lake root in catalog mode"
