"""`lakehouse sql`: an analyst's statement, checked by the guard (guard.py) and run over
the lake's tables and the analyst views (views.py) in a session of its own."""
from __future__ import annotations

import contextlib
from typing import TextIO

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.classic.dataframe import DataFrame as ClassicDataFrame

from pipelines.analyst.guard import analyst_session, check_plan_read_only, check_read_only, checked_plan, surface
from pipelines.analyst.views import load_views, register_views
from pipelines.core.settings import Settings
from pipelines.core.tables import Lake


def analyst_frame(spark: SparkSession, lake: Lake, statement: str) -> DataFrame:
    """The statement as a DataFrame of the analyst session, built from the plan that was
    checked. The lake's tables and views must be registered (Lake.register_views,
    views.register_views) in `spark` first."""
    session = analyst_session(spark)
    plan = checked_plan(session, statement, surface(lake, load_views()))
    jdf = session._jvm.org.apache.spark.sql.classic.Dataset.ofRows(session._jsparkSession, plan)
    return ClassicDataFrame(jdf, session)


def run_sql(spark: SparkSession, settings: Settings, query: str, *, limit: int = 50, fmt: str = "table",
            out: TextIO) -> None:
    statement = check_read_only(query)
    check_plan_read_only(spark, statement)   # before registering anything
    lake = Lake(settings)
    # Naming the tables and views is the project's own SQL, run in the caller's session;
    # only then is the analyst's statement analysed, in a session of its own.
    lake.register_views(spark)
    register_views(spark, lake)   # analyst.* views (pipelines/conf/views.yaml)
    df = analyst_frame(spark, lake, statement)
    if fmt == "table":
        with contextlib.redirect_stdout(out):
            df.show(n=limit, truncate=40)
        return
    rows = df.limit(limit).toPandas() if limit else df.toPandas()
    if fmt == "csv":
        rows.to_csv(out, index=False)
    else:
        rows.to_json(out, orient="records", lines=True, date_format="iso")
