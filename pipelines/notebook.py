"""What the notebooks share: parameters, the session, the lake. Keeps every notebook thin.

On Databricks a notebook's parameters are widgets (job parameters arrive as widgets too)
and `spark` is the platform's session. Locally (and in CI, where nbclient runs the
notebooks headless) a parameter comes from the environment variable LAKEHOUSE_NB_<NAME>,
else its default, and the session is built here.
"""
from __future__ import annotations

import os
from typing import Mapping

import pandas as pd

from pipelines.analyst.views import register_views
from pipelines.core.context import JobContext
from pipelines.core.session import build_spark
from pipelines.core.settings import Settings
from pipelines.core.tables import Lake, table_specs

ENV_PREFIX = "LAKEHOUSE_NB_"


def parameters(defaults: Mapping[str, str], dbutils=None) -> dict[str, str]:
    """Parameter name -> value (always a string; empty = not set)."""
    values = {}
    for name, default in defaults.items():
        if dbutils is not None:
            dbutils.widgets.text(name, default)
            values[name] = dbutils.widgets.get(name)
        else:
            values[name] = os.environ.get(ENV_PREFIX + name.upper(), default)
    return values


def session(spark=None):
    """The notebook's SparkSession: the platform's when there is one, else a local one."""
    if spark is not None:
        return spark
    return build_spark("lakehouse-notebook", shuffle_partitions=2)


def job_context(settings: Settings | None = None) -> JobContext:
    """The same context the jobs run with (settings from the environment, shipped config)."""
    return JobContext.from_settings(settings or Settings())


def register(spark, lake: Lake) -> list[str]:
    """Name every table and analyst view for SQL (`SELECT ... FROM gold.daily_usage`)."""
    return lake.register_views(spark) + register_views(spark, lake)


def table_reference() -> pd.DataFrame:
    """Every table with its comment, from schemas/tables.yaml (the single source of truth)."""
    return pd.DataFrame([{"table": s.name, "columns": len(s.columns), "comment": s.comment}
                         for s in table_specs().values()])
