"""An event's identity and the Kafka order of its copies (DESIGN section 4), shared by
ingest's deduplication and by the rules' plan timeline, which keeps the same copy silver keeps.

Identity: (account_id, event_id) is one event forever; the first copy in Kafka order wins.
"""
from __future__ import annotations

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from pipelines.core.tables import KAFKA_ORDER

IDENTITY = ["account_id", "event_id"]


def kafka_order(prefix: str = "") -> Column:
    return F.struct(*[F.col(f"{prefix}{c}").alias(c) for c in KAFKA_ORDER])


def filter_earliest_copy(df: DataFrame) -> DataFrame:
    """Rows of stored events -> one row per identity, the first copy in Kafka order: the copy
    silver keeps (a change feed can hold an event's insert and the earlier copy replacing it)."""
    w = Window.partitionBy(*IDENTITY).orderBy(kafka_order())
    return df.withColumn("_n", F.row_number().over(w)).filter(F.col("_n") == 1).drop("_n")
