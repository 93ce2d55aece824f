"""How a stream's micro-batch builds the expressions Spark runs outside whole-stage code
generation: interpreted for a small batch, generated for a large one.

Why: Spark builds those projections, predicates and orderings in every task, and a
generated one is Java source written, formatted and hashed again by each task before the
compiled-class cache answers. Delta's log replay and file statistics, and every scan of a
local checkpoint, use them. In a flight recording of the alert chain (three streams, batches
of a few rows) that was 58 % of the task threads' samples, and a 500-record silver batch
ran about an eighth shorter with them interpreted. But a batch of 100,000 rows pays the
interpreter per row: silver's batches at 1M took 27.7 s instead of 18.3 s with every
batch interpreted (bench/RESULTS.md, "Expressions built in every task").

So a stream's foreachBatch sets the mode from its own batch's size, on the stream's own
session (a streaming query runs on a clone of the session, so no other query sees it).
The setting then also holds for the next batch's stream plan (parse, dedup state), which
runs before its size is known: a continuous stream's batches are small in a row, a
catch-up's large in a row.

Bronze has no foreachBatch: it is a plain copy, Kafka to Delta, and it was faster
interpreted at every batch size measured (50 batches of 20,200 records: 38.4 s against
50.8 s; of 6,060: 37 s against 41 s, RESULTS "Bronze interpreted"), so its stream starts
with the interpreted mode (`interpreted_stream`).

`spark.sql.codegen.factoryMode` is a setting Spark marks internal; its interpreted mode is
the one Spark's own expression tests run every expression in, beside the generated one.
LAKEHOUSE_EXPRESSION_CODEGEN=true keeps Spark's default (generated) for every batch.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from pyspark.sql import SparkSession

from pipelines.core.settings import env_flag

FACTORY_MODE = "spark.sql.codegen.factoryMode"
# Below this many rows a batch's queries run interpreted. 500-record batches gain about an
# eighth; 100,000-record ones take half again as long interpreted (RESULTS).
SMALL_BATCH_ROWS = 10_000


def is_small(rows: int) -> bool:
    """A batch of fewer than SMALL_BATCH_ROWS rows: interpreted here, and in one partition
    for silver's writer (pipelines/ingest/silver.py)."""
    return rows < SMALL_BATCH_ROWS


def expression_mode(rows: int) -> str:
    """`NO_CODEGEN` (interpreted) for a batch of fewer than SMALL_BATCH_ROWS rows, else
    Spark's default `FALLBACK` (generated, interpreted only where compiling fails)."""
    if env_flag("LAKEHOUSE_EXPRESSION_CODEGEN", False):
        return "FALLBACK"
    return "NO_CODEGEN" if is_small(rows) else "FALLBACK"


def set_for_batch(spark: SparkSession, rows: int) -> None:
    """Sets the mode on `spark`, which must be the stream's own session (the batch's)."""
    spark.conf.set(FACTORY_MODE, expression_mode(rows))


@contextmanager
def interpreted_stream(spark: SparkSession) -> Iterator[None]:
    """Around `writeStream...start()` of a stream whose every batch should run interpreted:
    the mode is set on `spark` while the query is created, then put back as it was (unset
    if it was not set).

    Spark (4.1) clones the session for the stream in the query's constructor, which start()
    runs in the calling thread, so the stream keeps the mode and `spark` gets its own back
    before start() returns (tests/unit/test_batch_expressions.py checks both). Other threads
    must not run queries on `spark` meanwhile: the runner starts streams from one thread."""
    if env_flag("LAKEHOUSE_EXPRESSION_CODEGEN", False):
        yield
        return
    before = spark.conf.get(FACTORY_MODE, None)
    spark.conf.set(FACTORY_MODE, "NO_CODEGEN")
    try:
        yield
    finally:
        if before is None:
            spark.conf.unset(FACTORY_MODE)
        else:
            spark.conf.set(FACTORY_MODE, before)
