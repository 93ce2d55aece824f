"""The three notebooks, executed headless (nbclient) against the shared lakehouse the real
jobs built from real Kafka records (billed_lakehouse). Any cell error fails the test;
parameters reach the notebooks as LAKEHOUSE_NB_<NAME> environment variables, as on a
developer's machine."""
from __future__ import annotations

import os
import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from pipelines.core.tables import Lake
from tests.integration.helpers import BILLED_EVENTS

pytestmark = pytest.mark.kafka

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
CELL_TIMEOUT = 900


def execute(name: str, settings, **params) -> nbformat.NotebookNode:
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    env = {**os.environ, "LAKEHOUSE_ROOT": str(settings.lake_root_abs), "LAKEHOUSE_DRIVER_MEMORY": "1g",
           "LAKEHOUSE_EVENTS_TOPIC": settings.events_topic}
    env.pop("LAKEHOUSE_CATALOG", None)
    env.update({f"LAKEHOUSE_NB_{k.upper()}": str(v) for k, v in params.items()})
    client = NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name="python3", allow_errors=False,
                            resources={"metadata": {"path": str(NOTEBOOKS.parent)}})
    client.execute(env=env)   # start_kernel(env=...): the kernel process sees the parameters
    return nb


def outputs(nb, kind: str) -> list:
    return [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", []) if kind in o.get("data", {})
            or o.get("output_type") == kind]


def text_of(nb) -> str:
    parts = []
    for cell in nb.cells:
        for o in cell.get("outputs", []):
            parts.append(o.get("text", "") + o.get("data", {}).get("text/plain", ""))
    return "\n".join(parts)


def test_backfill_notebook_over_a_processed_range_changes_nothing(spark, billed_lakehouse):
    lake = Lake(billed_lakehouse)
    before = {t: lake.delta(spark, t).history(1).first()["version"]
              for t in ("silver.usage_events", "silver.duplicates", "silver.quarantine", "gold.daily_usage")}
    nb = execute("backfill", billed_lakehouse, topic=billed_lakehouse.events_topic, from_offset=0)
    text = text_of(nb)
    assert re.search(rf"bronze records in range\s+{BILLED_EVENTS}\n", text)
    assert re.search(r"tables changed\s+none\n", text)
    after = {t: lake.delta(spark, t).history(1).first()["version"] for t in before}
    assert after == before


def test_backfill_notebook_refuses_bad_parameters_with_the_reason(billed_lakehouse):
    from nbclient.exceptions import CellExecutionError

    with pytest.raises(CellExecutionError, match="from_offset: expected an integer"):
        execute("backfill", billed_lakehouse, topic=billed_lakehouse.events_topic, from_offset="zero")


def test_audit_notebook_reconciles_and_plots(billed_lakehouse):
    nb = execute("audit", billed_lakehouse)
    assert outputs(nb, "image/png"), "the audit notebook draws its plots"
    text = text_of(nb)
    assert "usage rows with a difference:" in text and "amount rows with a difference:" in text


def test_exploration_notebook_runs_the_views_and_the_independent_reader(billed_lakehouse):
    nb = execute("exploration", billed_lakehouse)
    text = text_of(nb)
    assert "gold.daily_usage version" in text
    html = [o["data"]["text/html"] for o in outputs(nb, "text/html")]
    assert any("usage_date" in h for h in html)          # DESCRIBE TABLE gold.daily_usage
    assert any("growth_rank" in h for h in html)         # top growing accounts
