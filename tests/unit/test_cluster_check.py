"""scripts/cluster_check.py's judgement, without a cluster: when two lakes count as equal,
and how the event log proves where tasks ran. The run itself is `make cluster-check`."""
from __future__ import annotations

import importlib.util
import json
import sys
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import write_deltalake

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "cluster_check.py"
spec = importlib.util.spec_from_file_location("cluster_check", SCRIPT)
cluster_check = importlib.util.module_from_spec(spec)
sys.modules["cluster_check"] = cluster_check  # its dataclasses look their module up by name
spec.loader.exec_module(cluster_check)


def ts(hour: int) -> datetime:
    return datetime(2026, 11, 2, hour, tzinfo=timezone.utc)


def write(lake: Path, table: str, rows: list[dict], schema: pa.Schema) -> None:
    write_deltalake(str(lake / table), pa.Table.from_pylist(rows, schema=schema))


EVENTS = pa.schema([("offset", pa.int64()), ("value", pa.binary()), ("ingested_at", pa.timestamp("us", "UTC"))])
BATCHES = pa.schema([("query_id", pa.string()), ("rows_in", pa.int64()),
                     ("quarantined", pa.map_(pa.string(), pa.int64()))])
LEDGER = pa.schema([("idempotency_key", pa.string()), ("amount", pa.decimal128(38, 6)),
                    ("provider_file", pa.string()), ("finance_file", pa.string()), ("staged_at", pa.timestamp("us", "UTC"))])


@pytest.fixture
def lakes(tmp_path):
    """Two lakes as two runs over the same records would leave them: the run's own stamps
    (ingestion and staging times, the stream's query id, the lake's folder) differ, the rows
    and the export file do not."""
    made = []
    for n, name in enumerate(("local", "cluster")):
        lake = tmp_path / name / "lake"
        write(lake, "bronze/events", [{"offset": i, "value": b"e%d" % i, "ingested_at": ts(n)} for i in range(3)],
              EVENTS)
        # Map entries in another order on each side: the same map.
        write(lake, "ops/silver_batches", [{"query_id": f"q-{name}", "rows_in": 3,
                                            "quarantined": [("bad", 1), ("late", 2)][::1 - 2 * n]}], BATCHES)
        write(lake, "gold/billing_exports", [{"idempotency_key": "k1", "amount": Decimal("1.50"),
                                              "provider_file": str(lake / "exports/exp-1/provider.jsonl"),
                                              "staged_at": ts(n)}], LEDGER)
        write(lake, "ops/stream_metrics", [{"offset": n, "value": None, "ingested_at": ts(n)}], EVENTS)
        (lake / "exports" / "exp-1").mkdir(parents=True)
        (lake / "exports" / "exp-1" / "provider.jsonl").write_text('{"k": 1}\n')
        made.append(lake)
    return made


def by_table(results) -> dict:
    return {r.table: r for r in results}


def test_runs_that_differ_only_in_their_own_stamps_are_equal(lakes):
    results = by_table(cluster_check.compare_lakes(*lakes))
    for table in ("bronze/events", "ops/silver_batches", "gold/billing_exports", "exports/ (files)"):
        assert results[table].equal, results[table].note
    assert results["bronze/events"].local_rows == results["bronze/events"].cluster_rows == 3
    assert results["ops/stream_metrics"].skipped
    # The tables a real run must fill and this one does not are reported, not passed over.
    assert not results["silver/usage_events, silver/account_events, gold/daily_usage, gold/period_usage, "
                       "gold/invoice_lines"].equal


def test_one_changed_cell_makes_a_table_different(lakes):
    local, cluster = lakes
    write_deltalake(str(cluster / "bronze/events"),
                    pa.Table.from_pylist([{"offset": 9, "value": b"x", "ingested_at": ts(1)}], schema=EVENTS),
                    mode="append")
    write_deltalake(str(cluster / "gold/billing_exports"),
                    pa.Table.from_pylist([{"idempotency_key": "k1", "amount": Decimal("1.51"),
                                           "provider_file": str(cluster / "exports/exp-1/provider.jsonl"),
                                           "staged_at": ts(1)}], schema=LEDGER), mode="overwrite")
    results = by_table(cluster_check.compare_lakes(local, cluster))
    assert not results["bronze/events"].equal
    assert (results["bronze/events"].local_rows, results["bronze/events"].cluster_rows) == (3, 4)
    assert "0 row(s) only local, 1 only on the cluster" in results["bronze/events"].note
    assert not results["gold/billing_exports"].equal and "1.51" in results["gold/billing_exports"].note


def test_an_export_file_must_match_byte_for_byte(lakes):
    local, cluster = lakes
    (cluster / "exports" / "exp-1" / "provider.jsonl").write_text('{"k": 2}\n')
    assert not by_table(cluster_check.compare_lakes(local, cluster))["exports/ (files)"].equal


def test_a_table_in_one_lake_only_is_a_difference(lakes):
    local, cluster = lakes
    write(cluster, "gold/fraud_flags", [{"offset": 1, "value": None, "ingested_at": ts(1)}], EVENTS)
    result = by_table(cluster_check.compare_lakes(local, cluster))["gold/fraud_flags"]
    assert not result.equal and "only in the cluster lake" in result.note


def test_the_event_log_says_which_executor_ran_each_task(tmp_path):
    app = "app-20261206000000-0000"
    folder = tmp_path / f"eventlog_v2_{app}"
    folder.mkdir()
    events = [{"Event": "SparkListenerEnvironmentUpdate", "Spark Properties": {"spark.master": "spark://127.0.0.1:1"}},
              {"Event": "SparkListenerExecutorAdded", "Executor ID": "0", "Executor Info": {"Host": "127.0.0.1"}},
              {"Event": "SparkListenerExecutorAdded", "Executor ID": "1", "Executor Info": {"Host": "127.0.0.1"}},
              *[{"Event": "SparkListenerTaskEnd", "Task Info": {"Executor ID": e}} for e in "0010"],
              {"Event": "SparkListenerTaskEnd", "Task Info": {"Executor ID": "driver"}}]
    (folder / f"events_1_{app}").write_text("".join(json.dumps(e) + "\n" for e in events))
    tasks, added, master = cluster_check.executor_tasks(tmp_path, app)
    assert tasks == {"0": 3, "1": 1, "driver": 1}
    assert added == {"0": "127.0.0.1", "1": "127.0.0.1"}
    assert master == "spark://127.0.0.1:1"
    with pytest.raises(cluster_check.CheckFailed):
        cluster_check.executor_tasks(tmp_path, "app-other")
