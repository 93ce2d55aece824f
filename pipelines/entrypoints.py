"""One console script per deployable job, for Databricks python_wheel_task (and local use).

Each is `lakehouse run <jobs>` with the caller's extra arguments appended, so a job
behaves the same under its own name, under `lakehouse run`, locally and on Databricks.
Which jobs a script runs is the wiring table's (pipelines/wiring.py: each job names its
script); pyproject.toml's [project.scripts] and the bundle's tasks name these functions,
and tests check the three agree.

A failure raises (SystemExit with the exit code, or the exception itself) and success
returns None: python_wheel_task calls the function and ignores what it returns, so a
returned code would mark a refused export or a failed quality gate as a successful run.
"""
from __future__ import annotations

import sys

from pipelines import cli
from pipelines.wiring import entry_points

# console script -> the `lakehouse run` jobs it runs, in order.
ENTRY_POINTS: dict[str, tuple[str, ...]] = entry_points()


def _run(script: str, argv: list[str] | None) -> None:
    args = sys.argv[1:] if argv is None else argv
    code = cli.main(["run", *ENTRY_POINTS[script], *args])
    if code:
        raise SystemExit(code)


def ingest(argv: list[str] | None = None) -> None:
    """bronze -> silver -> gold; pass --continuous to keep streaming (the bundle does)."""
    _run("lakehouse-ingest", argv)


def notify(argv: list[str] | None = None) -> None:
    _run("lakehouse-notify", argv)


def billing(argv: list[str] | None = None) -> None:
    _run("lakehouse-billing", argv)


def export(argv: list[str] | None = None) -> None:
    _run("lakehouse-export", argv)


def plan_rules(argv: list[str] | None = None) -> None:
    _run("lakehouse-plan-rules", argv)


def quality(argv: list[str] | None = None) -> None:
    _run("lakehouse-quality", argv)


def fraud(argv: list[str] | None = None) -> None:
    _run("lakehouse-fraud", argv)


def views(argv: list[str] | None = None) -> None:
    """(Re)creates the analyst views; the views job of the nightly close."""
    _run("lakehouse-views", argv)
