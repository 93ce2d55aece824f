"""The wheel's entry points called the way Databricks' python_wheel_task calls them: the
function named by the installed package's console_scripts entry point, with the task's
parameters in sys.argv and its return value ignored. A failure must raise; success must not.
"""
from __future__ import annotations

import sys
from importlib.metadata import entry_points

import pytest

from pipelines.entrypoints import ENTRY_POINTS
from tests.integration.test_export import seeded_lake


def call_like_a_wheel_task(monkeypatch, script: str, *parameters: str) -> None:
    (entry,) = entry_points(group="console_scripts", name=script)
    monkeypatch.setattr(sys, "argv", [script, *parameters])
    entry.load()()


@pytest.mark.parametrize("script", sorted(ENTRY_POINTS))
@pytest.mark.parametrize("parameters", [
    ["--no-such-option"],              # argparse's own error
    ["--period", "last month"],        # a failure the CLI reports in one line and returns 2 for
], ids=["unknown-option", "bad-period"])
def test_every_entry_point_raises_on_bad_parameters(monkeypatch, capsys, script, parameters):
    with pytest.raises(SystemExit) as failed:
        call_like_a_wheel_task(monkeypatch, script, *parameters)
    assert failed.value.code == 2
    assert parameters[-1] in capsys.readouterr().err


@pytest.mark.parametrize("script, reason", [
    ("lakehouse-export", "export refused for period(s) 2024-05"),
    ("lakehouse-quality", "critical check(s) failed"),
])
def test_a_refused_export_and_a_failed_quality_gate_raise(spark, tmp_path, monkeypatch, capsys, script, reason):
    seeded_lake(spark, tmp_path, second_event="30")  # silver has 80 tickets, gold bills 83
    with pytest.raises(SystemExit) as failed:
        call_like_a_wheel_task(monkeypatch, script, "--lake-root", str(tmp_path / "lake"),
                               "--exports-dir", str(tmp_path / "exports"))
    assert failed.value.code == 2
    assert reason in capsys.readouterr().err
    assert not (tmp_path / "exports").exists()


def test_a_successful_export_returns(spark, tmp_path, monkeypatch):
    seeded_lake(spark, tmp_path)
    call_like_a_wheel_task(monkeypatch, "lakehouse-export", "--lake-root", str(tmp_path / "lake"),
                           "--exports-dir", str(tmp_path / "exports"))
    assert sorted(p.name for p in (tmp_path / "exports").glob("*/*")) == ["finance.csv", "provider.jsonl"]


def test_the_views_job_creates_the_analyst_views_over_the_tables_there(spark, tmp_path, monkeypatch, capsys):
    from pipelines.core.context import JobContext
    from pipelines.core.settings import Settings
    from pipelines.analyst.views import load_views

    seeded_lake(spark, tmp_path)
    call_like_a_wheel_task(monkeypatch, "lakehouse-views", "--lake-root", str(tmp_path / "lake"))

    lake = JobContext.from_settings(Settings().with_overrides(lake_root=str(tmp_path / "lake"))).lake
    expected = sorted(v.name for v in load_views().values() if all(lake.exists(spark, t) for t in v.tables))
    line = next(x for x in capsys.readouterr().err.splitlines() if x.startswith("views: "))
    assert expected and sorted(line.split(": ", 2)[2].split(", ")) == expected
    for name in expected:
        spark.table(name).limit(1).collect()   # each view resolves against this lake
