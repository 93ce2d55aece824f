"""The bundle's dashboard (resources/billing.dashboard.yml, dashboards/billing_lakehouse.lvdash.json).

Its datasets name the jobs' tables unqualified (`ops_stream_metrics`), resolved in the
deployed jobs' schema through the resource's dataset_catalog/dataset_schema. Checked here:
the analyst datasets are the analyst views' own SQL (pipelines/conf/views.yaml), every
widget reads a dataset that exists and fields it has, and every query runs, in Spark's
session catalog standing in for Unity Catalog, against tables made from the table specs.
"""
from __future__ import annotations

import json
import re
import uuid
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
import yaml

from pipelines.core.settings import Settings
from pipelines.core.tables import Lake, spec, table_specs
from pipelines.analyst.views import _TABLE_REF, load_views

ROOT = Path(__file__).resolve().parents[2]
RESOURCE = ROOT / "resources" / "billing.dashboard.yml"
_COLUMN = re.compile(r"`([^`]+)`")


def dashboard_resource() -> dict:
    return yaml.safe_load(RESOURCE.read_text(encoding="utf-8"))["resources"]["dashboards"]["billing_lakehouse"]


def dashboard() -> dict:
    path = (RESOURCE.parent / dashboard_resource()["file_path"]).resolve()
    return json.loads(path.read_text(encoding="utf-8"))


def datasets() -> dict[str, str]:
    return {d["name"]: "".join(d["queryLines"]) for d in dashboard()["datasets"]}


def widgets():
    for page in dashboard()["pages"]:
        for item in page["layout"]:
            yield page["name"], item["widget"]


def unqualified(sql: str) -> str:
    """A view's SQL with each logical table `layer.table` named as the jobs' schema names it."""
    return _TABLE_REF.sub(lambda m: f"{m.group(1)}_{m.group(2)}" if f"{m.group(1)}.{m.group(2)}" in table_specs()
                          else m.group(0), sql)


def test_the_resource_points_every_dataset_at_the_deployed_jobs_schema():
    res = dashboard_resource()
    assert res["dataset_catalog"] == "${var.catalog}"
    assert res["dataset_schema"] == "${resources.schemas.lakehouse.name}"
    assert res["warehouse_id"] == "${var.warehouse_id}"
    assert res["embed_credentials"] is True
    text = json.dumps(dashboard())
    assert "${" not in text, "a dashboard file cannot hold bundle variables (the CLI reads it after resolving them)"


def test_the_analyst_datasets_are_the_analyst_views():
    views = load_views()
    found = {name: sql for name, sql in datasets().items() if name.startswith("analyst_")}
    assert found, "the dashboard reads the analyst views"
    for name, sql in found.items():
        view = views[name.replace("analyst_", "analyst.", 1)]
        assert sql.strip() == unqualified(view.sql).strip(), (
            f"{name} differs from pipelines/conf/views.yaml: copy the view's SQL with layer.table as layer_table")


def test_the_dashboard_covers_freshness_lag_quarantine_and_invoices():
    sql = "\n".join(datasets().values())
    for table in ("ops_stream_metrics", "gold_invoice_lines"):
        assert table in sql
    fields = {f["name"] for _page, w in widgets() for q in w.get("queries", []) for f in q["query"]["fields"]}
    for needle in ("ingestion_freshness_seconds", "kafka_lag", "quarantine_share", "amount"):
        assert any(needle in f for f in fields), needle


@pytest.fixture(scope="module")
def jobs_schema(spark, tmp_path_factory):
    """A schema of spark_catalog holding every table of the specs under its catalog name."""
    schema = f"dash_{uuid.uuid4().hex[:8]}"
    where = tmp_path_factory.mktemp("dashboard")
    spark.sql(f"CREATE SCHEMA spark_catalog.{schema} LOCATION '{where / schema}'")
    lake = Lake(Settings(lake_root=where / "root", catalog="spark_catalog", schema=schema))
    for name in ("ops.stream_metrics", "gold.invoice_lines", "gold.daily_usage", "silver.usage_events"):
        lake.ensure(spark, name)
    now = datetime.now().replace(microsecond=0)
    metrics = spec("ops.stream_metrics")
    base = {c: None for c in metrics.column_names}
    rows = [
        {**base, "query_name": "silver", "query_id": "q", "run_id": "r", "batch_id": 1, "mode": "continuous",
         "batch_started_at": now - timedelta(minutes=2), "input_rows": 90, "quarantined": {"invalid_utf8": 9},
         "ingestion_freshness_seconds": Decimal("12.5")},
        {**base, "query_name": "silver", "query_id": "q", "run_id": "r", "batch_id": 2, "mode": "continuous",
         "batch_started_at": now - timedelta(minutes=1), "input_rows": 10, "quarantined": {"invalid_utf8": 1},
         "ingestion_freshness_seconds": Decimal("3.0")},
        {**base, "query_name": "bronze", "query_id": "b", "run_id": "r", "batch_id": 7, "mode": "continuous",
         "batch_started_at": now - timedelta(minutes=1), "input_rows": 100, "kafka_lag": 42},
    ]
    spark.createDataFrame(rows, metrics.struct_type()).write.format("delta").mode("append") \
        .saveAsTable(lake.table_name("ops.stream_metrics"))
    yield schema
    spark.sql(f"DROP SCHEMA spark_catalog.{schema} CASCADE")


def run(spark, schema: str, sql: str):
    """The query as the dashboard runs it: default catalog and schema set, names unqualified."""
    previous = spark.catalog.currentDatabase()
    spark.sql(f"USE spark_catalog.{schema}")
    try:
        return spark.sql(sql)
    finally:
        spark.sql(f"USE spark_catalog.`{previous}`")


def test_every_dataset_runs_and_every_widget_reads_its_fields(spark, jobs_schema):
    frames = {name: run(spark, jobs_schema, sql) for name, sql in datasets().items()}
    for name, df in frames.items():
        df.collect()   # analysed and run: names, types and functions all exist
    for page, widget in widgets():
        for q in widget.get("queries", []):
            dataset = q["query"]["datasetName"]
            assert dataset in frames, f"{page}/{widget['name']}: no dataset {dataset}"
            columns = set(frames[dataset].columns)
            for f in q["query"]["fields"]:
                used = set(_COLUMN.findall(f["expression"]))
                assert used and used <= columns, f"{page}/{widget['name']}: {f['expression']} not in {dataset}"
            encoded = widget["spec"]["encodings"]
            named = [e["fieldName"] for e in encoded.get("columns", [])] + \
                    [e["fieldName"] for k, e in encoded.items() if k != "columns"]
            assert set(named) <= {f["name"] for f in q["query"]["fields"]}, f"{page}/{widget['name']}"


def test_freshness_lag_and_quarantine_share_read_as_lakehouse_status_does(spark, jobs_schema):
    latest = {r.stream: r for r in run(spark, jobs_schema, datasets()["stream_status"]).collect()}
    assert latest["silver"].ingestion_freshness_seconds == 3.0   # the newest batch, not the worst
    assert latest["bronze"].kafka_lag == 42
    hourly = run(spark, jobs_schema, datasets()["stream_hourly"]).where("stream = 'silver'").collect()
    quarantined = sum(r.quarantined_rows for r in hourly)
    counted = sum(r.counted_rows for r in hourly)
    assert (quarantined, counted) == (10, 100)   # 10 % of what silver read, as `lakehouse status` says
    reasons = run(spark, jobs_schema, datasets()["quarantine_reasons"]).collect()
    assert {(r.reason, r.records) for r in reasons} == {("invalid_utf8", 10)}
