"""Kafka billing.events -> bronze.events: raw bytes and coordinates, exactly once.

Exactly once comes from the Delta sink and the checkpoint together: the checkpoint
records the offsets of each micro-batch before it runs and the Delta sink commits a
batch id at most once, so a restart replays the same offsets into a no-op.
"""
from __future__ import annotations

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.streaming import StreamingQuery

from pipelines.core import batch_expressions, kafka_clients
from pipelines.core.context import JobContext, apply_trigger
from pipelines.core.tables import BRONZE_EVENTS, spec

JOB = "bronze"


def read_kafka(spark: SparkSession, ctx: JobContext) -> DataFrame:
    reader = (
        spark.readStream.format("kafka")
        # Bootstrap servers, SASL_SSL and friends: the one configuration every Kafka client
        # of the project shares (credentials from the environment or a secret scope).
        .options(**kafka_clients.spark_options(ctx.settings))
        .option("subscribe", ctx.settings.events_topic)
        .option("startingOffsets", "earliest")
        # Offsets that vanished before we read them (retention, topic recreated) are a
        # loss of billing data: stop loudly rather than skip.
        .option("failOnDataLoss", "true")
        .option("includeHeaders", "true")
        # plan-rules publishes its plan.changed events in Kafka transactions; records of an
        # aborted transaction must never become billing input.
        .option("kafka.isolation.level", "read_committed")
    )
    if ctx.run.max_offsets_per_trigger:
        reader = reader.option("maxOffsetsPerTrigger", str(ctx.run.max_offsets_per_trigger))
    return reader.load()


def to_bronze_rows(df: DataFrame) -> DataFrame:
    return df.select(
        "key", "value", "topic", "partition", "offset",
        F.col("timestamp").alias("kafka_timestamp"),
        F.col("timestampType").alias("kafka_timestamp_type"),
        "headers",
        F.current_timestamp().alias("ingested_at"),
    ).select(*spec(BRONZE_EVENTS).column_names)


def start(spark: SparkSession, ctx: JobContext) -> StreamingQuery:
    ctx.lake.ensure(spark, BRONZE_EVENTS)
    writer = (
        read_kafka(spark, ctx).transform(to_bronze_rows)
        .writeStream.format("delta").outputMode("append")
        .queryName(JOB)
        .option("checkpointLocation", ctx.lake.checkpoint(JOB, "events"))
    )
    # A copy ran faster with its per-task expressions interpreted at every batch size measured.
    with batch_expressions.interpreted_stream(spark):
        return ctx.lake.start_stream(apply_trigger(writer, ctx.run), BRONZE_EVENTS)
