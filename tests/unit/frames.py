"""Test DataFrames from inline rows, shared by the unit tests."""
from __future__ import annotations

from pyspark.sql import types as T


def local_frame(spark, rows: list[tuple], schema: str | T.StructType):
    """rows as a DataFrame over a LocalRelation (built through Arrow).

    A DataFrame made from Python rows the default way is an RDD scan that every query
    re-reads slowly; the rule transforms scan their input once per rule."""
    import pandas as pd

    struct = schema if isinstance(schema, T.StructType) else T._parse_datatype_string(schema)
    key = "spark.sql.execution.arrow.pyspark.enabled"
    previous = spark.conf.get(key)
    spark.conf.set(key, "true")
    try:
        # dtype=object: ints stay exact Python ints (no float64 detour when a column has nulls)
        return spark.createDataFrame(pd.DataFrame(rows, columns=struct.fieldNames(), dtype=object), struct)
    finally:
        spark.conf.set(key, previous)
