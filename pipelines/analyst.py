"""The analyst surface: SQL over every table by its logical name, reads only."""
from __future__ import annotations

import contextlib
import re
from typing import TextIO

from pyspark.sql import SparkSession

from pipelines.settings import Settings
from pipelines.tables import Lake

_READ_ONLY = re.compile(r"^\s*(\(\s*)*(SELECT|WITH|SHOW|DESCRIBE|DESC|EXPLAIN|VALUES|TABLE)\b", re.IGNORECASE)


class ReadOnlyQueryError(ValueError):
    pass


def check_read_only(query: str) -> str:
    """Analysts read; jobs write. One statement, and it must be a query."""
    stripped = query.strip().rstrip(";").strip()
    if ";" in stripped:
        raise ReadOnlyQueryError("one statement at a time, please")
    if not _READ_ONLY.match(stripped):
        raise ReadOnlyQueryError("only read queries (SELECT, WITH, SHOW, DESCRIBE, EXPLAIN) are allowed here")
    return stripped


def run_sql(spark: SparkSession, settings: Settings, query: str, *, limit: int = 50, fmt: str = "table",
            out: TextIO) -> None:
    statement = check_read_only(query)
    Lake(settings).register_views(spark)
    df = spark.sql(statement)
    if fmt == "table":
        with contextlib.redirect_stdout(out):
            df.show(n=limit, truncate=40)
        return
    rows = df.limit(limit).toPandas() if limit else df.toPandas()
    if fmt == "csv":
        rows.to_csv(out, index=False)
    else:
        rows.to_json(out, orient="records", lines=True, date_format="iso")
